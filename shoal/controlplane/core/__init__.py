"""The control plane's core: what runs now, and the parts that act on it, one module each.

    registry      Registry: apps, pools, calls and containers in memory (each map written by the part owning it)
    model         the in-memory records: AppState, Pool, Call, Input, Container
    apps          Apps: apps created, functions registered, apps and functions stopped, orphaned apps
    calls         Calls: calls created, map inputs added, calls cancelled or terminated
    queues        Queues: each pool's input queue, assignment to containers, timeouts, retries, scaling on demand
    outputs       Outputs: results stored behind the group commit, then shown to readers (fenced on replicas)
    containers    Containers: container lifecycle: secrets, volumes, waiting for room, the backend, exits
    runtime_link  RuntimeLink: the frame protocol with each container's runtime
    scaling       ScalingTick: the autoscaler's once-a-second tick per pool (autoscaler.py keeps its state)
    warmpool      WarmPool: started runtimes per image waiting for a function
    web_slots     WebSlots: container slots for the ingress proxy's requests
    variants      Variants: class parameter sets and `with_options` pools
    rollout       Rollout: superseding a pool's containers when a new version is deployed
    recovery      Recovery: running apps rebuilt from the store at start or takeover; letting go of one
    operations    Operations: autoscaler overrides, container stop, `shoal shell`, health failures
    ownership     which apps this control plane may act for (one owner per app among replicas)
    logs          AppLogs: each app's log, read by cursor and followed live

Each part gets its collaborators in its constructor (controlplane/build.py makes them) and calls the others
through their public methods.
"""
