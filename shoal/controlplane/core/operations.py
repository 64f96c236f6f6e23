"""Operator actions on pools and containers: autoscaler overrides, `shoal container stop`, `shoal shell`, and
replacing a Server container that failed its health checks (controlplane/proxy.py checks them)."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from .containers import Containers
from .model import Container, Pool
from .queues import Queues

if TYPE_CHECKING:
    from .registry import Registry

log = logging.getLogger("shoal.dispatch")


class Operations:
    def __init__(self, registry: Registry, containers: Containers, queues: Queues) -> None:
        self.registry = registry
        self.containers = containers
        self.queues = queues

    def update_autoscaler(self, pool: Pool, values: dict[str, Any]) -> dict[str, int]:
        """Runtime overrides of the pool's autoscaler knobs, kept until the app is redeployed; takes effect now
        (a higher min_containers starts containers at once). Raises ValueError on bad values."""
        applied = pool.autoscaler.update(pool.options, values, server=pool.server is not None)
        log.info("%s: autoscaler settings updated: %s", pool.tag, applied)
        self.queues.scale(pool)
        return applied

    def health_failed(self, c: Container, reason: str) -> None:
        """A Server container whose port stopped answering HEALTH_FAILURES checks in a row: replaced."""
        app = self.registry.apps.get(c.pool.app_id)
        if app is not None:
            app.logs.append(c.id, "system", f"container {c.id} failed its health checks ({reason}); replacing it\n")
        self.queues.stop_container(c, f"failed {c.health_failures} health checks in a row ({reason})", kill=True)
        self.queues.scale(c.pool)

    def start_shell(self, pool: Pool) -> Container:
        """`shoal shell`: a container of the pool's function (image, sandbox, secrets, source) that runs nothing
        until it is stopped, for the CLI to exec a shell into. Its state is "shell": it takes no inputs, the
        autoscaler neither counts nor stops it, and its exit is no failed start of the pool; stopping the app
        (the CLI's session ends) stops it."""
        return self.containers.launch(pool, self.queues.container_exited, shell=True)

    def stop_container(self, container_id: str, graceful: bool = False) -> Container | None:
        """`shoal container stop`: the container ends now and its inputs go back to the queue; with `graceful`
        it takes no new inputs and ends once the ones it runs are done."""
        c = self.registry.containers.get(container_id)
        if c is None or c.state in ("stopping", "dead"):
            return c
        if graceful and c.state == "ready" and c.running:
            self.drain(c, "stopped by user (drained)")
            self.queues.scale(c.pool)
            return c
        busy = bool(c.running)
        self.queues.stop_container(c, "stopped by user")
        if busy and c.handle is not None:
            c.handle.terminate()  # its inputs run elsewhere now
        return c

    def drain(self, c: Container, reason: str) -> None:
        """`c` takes no new inputs (neither live nor ready: the pool may replace it) and stops once the ones it
        runs are done (`Queues.slots_freed`). A Server container gets `exit_grace_period` seconds for its
        requests in flight, then it is stopped (SIGTERM-like: `@exit` hooks with 30 s, then killed) whether or
        not they finished."""
        c.state = "draining"
        c.stop_reason = reason
        if c.pool.server is None:
            return
        grace = c.pool.server.exit_grace_period

        def end() -> None:
            if c.state == "draining":
                self.queues.stop_container(c, f"{c.stop_reason} after its exit_grace_period of {grace:g}s")

        asyncio.get_running_loop().call_later(grace, end)
