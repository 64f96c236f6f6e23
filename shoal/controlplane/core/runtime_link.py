"""The frame protocol with the container runtime (shoal/runtime/): one stream per container, on the control
plane's unix socket (or TCP for containers on other machines).

    runtime → control plane: hello {container_id, token}, then ready {web, timings} | init_failed {exc, summary}
                             | out {items} | item {key, data} | modules {names} | warm_ready
    control plane → runtime: init {definition, …} (or warm {imports}, later init with `assign`), inputs {items},
                             stop

Each frame is a Struct of `shoal/_spec/frames.py`, decoded (and checked) as it is read.

A container the backend has reported gone is fenced: whatever it still sends is discarded.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from typing import TYPE_CHECKING

import msgspec

from ..._spec import frames
from ..metrics import METRICS
from .containers import Containers, format_timings, phase_timings
from .model import ITEM, AppState, Container, Pool
from .outputs import Outputs
from .queues import Queues

if TYPE_CHECKING:
    from .registry import Registry
    from .rollout import Rollout
    from .warmpool import WarmPool

log = logging.getLogger("shoal.dispatch")
HELLO_TIMEOUT_S = 30.0  # a connection to the container listener must say which container it is by then


class RuntimeLink:
    def __init__(self, registry: Registry, containers: Containers, queues: Queues, outputs: Outputs,
                 warmpool: WarmPool, rollout: Rollout) -> None:
        self.registry = registry
        self.containers = containers
        self.queues = queues
        self.outputs = outputs
        self.warmpool = warmpool
        self.rollout = rollout

    async def handle_runtime(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One container runtime's stream: hello, init, then inputs out and outputs in."""
        try:
            hello = await asyncio.wait_for(frames.read_frame(reader), HELLO_TIMEOUT_S)
        except Exception:  # noqa: BLE001 - silent or garbled: a peer that is no runtime of ours (the Ray
            hello = None  # backend's TCP listener is reachable from the network)
        c = self.registry.containers.get(hello.container_id) if isinstance(hello, frames.Hello) else None
        if c is None or not hmac.compare_digest(hello.token.encode(), c.token.encode()) or c.state != "starting":
            writer.close()
            return
        c.writer = writer
        if c.warm:
            writer.write(frames.encode(frames.Warm(self.warmpool.imports_for(c))))
        else:
            self.containers.send_init(c)
        apps = self.registry.apps
        while True:
            try:
                msg = await frames.read_frame(reader)
            except msgspec.DecodeError as exc:  # not a frame of ours: the stream is useless from here on
                log.warning("container %s sent a malformed frame (%s); its stream is closed", c.id, exc)
                break
            if msg is None:
                break
            if c.state == "dead":
                # Fenced: the backend reported this container gone (e.g. its Ray node died) and its inputs were
                # handed to other containers; whatever it still sends is discarded, and its stream closed.
                log.warning("container %s sent a %s frame after it was declared dead; discarded", c.id,
                            type(msg).__name__)
                break
            pool = c.pool  # a warm container changes pools when it is assigned
            if isinstance(msg, frames.Out):  # the hot path first
                self.queues.on_outputs(c, msg.items)
            elif isinstance(msg, frames.Item):
                inp = c.running.get(msg.key)
                if inp is not None and not inp.call.cancelled:
                    self.outputs.add_output(inp.call, inp.idx, ITEM, msg.data, final=False)
            elif isinstance(msg, frames.WarmReady):
                if c.state == "starting" and c.pool.function_id.startswith("warm:"):
                    c.state = "warm"
            elif isinstance(msg, frames.Modules):
                self.warmpool.learn(pool, msg.names)
            elif isinstance(msg, frames.Ready):
                if c.state == "starting":
                    self._ready(c, pool, apps.get(pool.app_id), msg)
            elif isinstance(msg, frames.InitFailed):
                c.init_error = msg.exc
                pool.last_start_error = msg.summary
        # Stream gone: the process is dying or dead; make sure it is.
        if c.state != "dead" and c.handle is not None:
            c.handle.kill()

    def _ready(self, c: Container, pool: Pool, app: AppState | None, msg: frames.Ready) -> None:
        """The container's function is imported and its `@enter` ran: it takes inputs from now."""
        c.web_ports = msg.web
        c.state = "ready"
        c.ready_at = time.monotonic()
        c.idle_since = c.ready_at
        c.timings = phase_timings(c.t_requested, c.t_launch or c.t_requested, msg.timings)
        METRICS.container_ready(c)
        if app is not None:
            app.logs.append(c.id, "info", f"container {c.id} ready in {format_timings(c.timings)}\n")
        pool.start_failures = 0
        pool.autoscaler.started()
        if pool.superseded and c.id not in pool.superseded:
            self.rollout.retire_superseded(pool)  # a container of the new version is ready (rolling)
        self.queues.keep_warm(pool)  # its image is in use: keep one started for the next container
        self.queues.pump(pool)
        if pool.queue and pool.avg_exec_s is not None:
            self.queues.scale(pool)  # a start slot is free; unmeasured inputs wait for their first output
