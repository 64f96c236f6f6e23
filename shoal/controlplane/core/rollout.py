"""Rolling a pool to a new version of its function (controlplane/deploy.py): the containers it had are
*superseded*.

- rolling (the default): they keep taking inputs until a container of the new version is ready; then idle ones
  stop and busy ones drain (no new inputs; they stop, running `@exit`, once their inputs are done). Each ready
  one gets a replacement at once, so a warm pool stays warm.
- recreate: they stop at once; the inputs they were running go back to the queue.
"""

from __future__ import annotations

from .. import policy
from .model import Pool
from .operations import Operations
from .queues import Queues


class Rollout:
    def __init__(self, queues: Queues, operations: Operations) -> None:
        self.queues = queues
        self.operations = operations

    def roll(self, pool: Pool, strategy: str, version: int) -> None:
        """The pool's definition just changed: supersede the containers it has."""
        reason = f"replaced by version {version} ({strategy})"
        pool.superseded &= set(pool.containers)  # forget those already gone
        for c in list(pool.containers.values()):
            if c.state in ("stopping", "dead"):
                continue
            pool.superseded.add(c.id)
            if strategy == "recreate":
                self.operations.stop_container(c.id)  # busy ones are terminated; their inputs run again elsewhere
            elif c.state not in ("ready", "draining"):
                self.queues.stop_container(c, reason)  # still starting (or pending) with the old definition
        # Ready ones keep serving until a container of the new version is ready (retire_superseded).
        self.replace_superseded(pool)
        self.queues.scale(pool)

    def replace_superseded(self, pool: Pool) -> bool:
        """Start a container of the current version for each superseded one still serving (as far as the
        machine has room now); False once none is left to replace."""
        serving = sum(1 for cid in pool.superseded
                      if (c := pool.containers.get(cid)) is not None and c.state == "ready")
        if pool.stopped or not serving:
            return False
        cap = pool.options.max_containers
        desired = min(serving, int(cap)) if cap else serving
        self.queues.scale(pool, policy.Decision(desired=desired, current=len(pool.live()), reason="rolling update"))
        return True

    def retire_superseded(self, pool: Pool) -> None:
        """A container of the new version is ready: those of an earlier version take no new inputs; idle ones
        stop now, busy ones once their inputs are done (draining)."""
        for cid in list(pool.superseded):
            c = pool.containers.get(cid)
            if c is None:
                pool.superseded.discard(cid)
            elif c.state == "ready" and c.running:
                self.operations.drain(c, "replaced by a new version (drained)")
            elif c.state in ("starting", "ready"):
                self.queues.stop_container(c, "replaced by a new version")
