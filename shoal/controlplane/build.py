"""The control plane's core (controlplane/core/), built in one place: `build_core` makes every part, in
dependency order, each given what it uses; `Core` holds them for the HTTP API (api.py, deploy.py), the ingress
proxy, the scheduler, the replicas and main.py's housekeeping."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from .._spec.config import RESULT_TTL_S
from ..backends.base import Backend
from .core.apps import Apps
from .core.calls import Calls
from .core.containers import Containers, ControlPlaneAddress
from .core.operations import Operations
from .core.outputs import Outputs
from .core.ownership import AppOwnership, LeasedOwnership, SoleOwner
from .core.queues import Queues
from .core.recovery import Recovery
from .core.registry import Registry
from .core.rollout import Rollout
from .core.runtime_link import RuntimeLink
from .core.scaling import ScalingTick
from .core.variants import Variants
from .core.warmpool import WarmPool
from .core.web_slots import WebSlots
from .replicas import Replicas, app_fence
from .scheduler import Scheduler
from .secrets import SecretStore
from .store import Store
from .store import calls as call_rows
from .volumes import Volumes
from .web_routes import Router

EXPIRY_INTERVAL_S = 3600.0  # how often results older than RESULT_TTL_S are dropped
log = logging.getLogger("shoal.dispatch")


@dataclass
class Core:
    store: Store
    backend: Backend
    registry: Registry
    router: Router
    secrets: SecretStore
    volumes: Volumes
    outputs: Outputs
    containers: Containers
    warmpool: WarmPool
    queues: Queues
    calls: Calls
    web: WebSlots
    operations: Operations
    rollout: Rollout
    runtime: RuntimeLink
    scaling: ScalingTick
    variants: Variants
    recovery: Recovery
    ownership: AppOwnership
    replicas: Replicas | None  # one of several control planes (controlplane/replicas.py), else None
    scheduler: Scheduler
    apps: Apps

    async def housekeeping(self) -> None:
        """Once a second: stop orphaned apps, the autoscaler's tick for every pool, trim the warm pool, forget
        idle calls; hourly: expire results."""
        last_expiry = 0.0
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            try:
                await self.apps.stop_orphans(now)
                for pool in list(self.registry.pools.values()):
                    try:
                        self.scaling.tick(pool, now)
                    except Exception as exc:  # noqa: BLE001 - one app's state never stops the others' work
                        await self.apps.fail_app(pool.app_id, f"the autoscaler of {pool.tag!r} failed: {exc!r}")
                self.warmpool.trim(now)
                self.calls.forget_idle(now)
                if time.time() - last_expiry > EXPIRY_INTERVAL_S:
                    last_expiry = time.time()
                    call_rows.expire(self.store, time.time() - RESULT_TTL_S)
            except Exception:  # noqa: BLE001 - the loop goes on: a failed pass is tried again next second
                log.exception("housekeeping pass failed")

    def shutdown(self) -> None:
        """Kill every container (the control plane is exiting; unfinished inputs stay in the store)."""
        for c in list(self.registry.containers.values()):
            self.queues.stop_container(c, "control plane shutting down", kill=True)


def build_core(store: Store, backend: Backend, state_dir: Path, address: ControlPlaneAddress, *,
               replica_id: str | None = None, warm_size: int | None = None) -> Core:
    """Every part of the core, each given what it uses. `replica_id`: this control plane is one of several
    sharing a PostgreSQL schema; `warm_size`: warm containers per image (default: SHOAL_WARM_POOL, else 1)."""
    registry = Registry()
    router = Router()
    secrets = SecretStore(store, state_dir)
    volumes = Volumes(store, state_dir, backend, registry.containers)
    outputs = Outputs(store, partial(app_fence, replica_id) if replica_id else None)
    warmpool = WarmPool(state_dir, backend, registry, warm_size)
    containers = Containers(registry, backend, secrets, volumes, warmpool, address)
    queues = Queues(registry, backend, containers, warmpool, outputs)
    calls = Calls(registry, store, queues, outputs)
    operations = Operations(registry, containers, queues)
    rollout = Rollout(queues, operations)
    recovery = Recovery(store, registry, queues, outputs, router)
    replicas = Replicas(store, registry, recovery, replica_id) if replica_id else None
    ownership: AppOwnership = LeasedOwnership(replicas, store) if replicas is not None else SoleOwner()
    scheduler = Scheduler(store, registry, calls, ownership)
    apps = Apps(registry, store, ownership, router, scheduler, calls, queues)
    scheduler.on_broken = apps.fail_app
    return Core(
        store=store, backend=backend, registry=registry, router=router, secrets=secrets, volumes=volumes,
        outputs=outputs, containers=containers, warmpool=warmpool, queues=queues, calls=calls,
        web=WebSlots(queues), operations=operations, rollout=rollout,
        runtime=RuntimeLink(registry, containers, queues, outputs, warmpool, rollout),
        scaling=ScalingTick(backend, queues), variants=Variants(registry, store, queues), recovery=recovery,
        ownership=ownership, replicas=replicas, scheduler=scheduler,
        apps=apps,
    )

