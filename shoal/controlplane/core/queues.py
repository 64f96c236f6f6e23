"""Input queues and their assignment: each pool's queued inputs go to its ready containers, least loaded first;
the containers a queue needs are started (as the autoscaler decides); inputs of a container that ends, times
out or fails go back to the queue, are retried or finish with the error.

This is the dispatch path: everything runs on the control plane's one event loop, and per input it costs a
queue append, a slot in a container and one frame (batched per container).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import TYPE_CHECKING, Any

from ..._spec import frames
from ..._spec.errors import dumps_exception
from ..._spec.retries import retry_delay
from ...exception import ExecutionError, FunctionTimeoutError
from .. import policy
from .containers import Containers, Exit, stop
from .model import FAILURE, GRAPH_INPUTS, SUCCESS, TIMEOUT, Call, Container, Input, Pool
from .outputs import Outputs

if TYPE_CHECKING:
    from ...backends.base import Backend
    from .registry import Registry
    from .warmpool import WarmPool

log = logging.getLogger("shoal.dispatch")


class WebUnavailableError(Exception):
    """A web request cannot get a container: its function's containers fail to start, or its app stopped."""


class Queues:
    def __init__(self, registry: Registry, backend: Backend, containers: Containers, warmpool: WarmPool,
                 outputs: Outputs) -> None:
        self.registry = registry
        self.backend = backend
        self.containers = containers
        self.warmpool = warmpool
        self.outputs = outputs
        self._waiting: set[Pool] = set()  # pools that wanted containers the machine had no room for

    # -- the queue -------------------------------------------------------------------------------------------
    def enqueue(self, pool: Pool, inputs: list[Input], front: bool = False) -> None:
        if front:
            pool.queue.extendleft(reversed(inputs))
        else:
            pool.queue.extend(inputs)
        self.pump(pool)
        if pool.queue:
            self.scale(pool)

    def pump(self, pool: Pool) -> None:
        """Hand queued inputs to ready containers with room, least loaded first."""
        if not pool.queue:
            return
        ready = pool.ready()
        if not ready:
            return
        web = pool.is_web
        if pool.single_use:
            capacity = 1
        elif pool.batch_max_size or web:  # no prefetch: a batch, or requests held by the proxy
            capacity = pool.batch_max_size or pool.max_inputs
        else:
            capacity = policy.prefetch_capacity(pool.max_inputs, pool.avg_exec_s)
        now = time.monotonic()
        loop = asyncio.get_running_loop()
        timeout = pool_timeout(pool)
        for c in sorted(ready, key=lambda c: len(c.running)):
            room = capacity - len(c.running)
            n = room if web else policy.dispatch_batch(
                room=room, queued=len(pool.queue), ready_containers=len(ready), avg_exec_s=pool.avg_exec_s,
            )
            if n <= 0:
                continue
            items = []
            taken = 0
            while pool.queue and taken < n:
                inp = pool.queue.popleft()
                if inp.call.cancelled or (inp.waiter is not None and inp.waiter.done()):
                    continue  # cancelled, or a web request whose client gave up while it waited
                taken += 1
                assign(c, inp, now)
                if inp.waiter is not None:
                    inp.waiter.set_result(c)  # the proxy forwards the request to this container itself
                    continue
                inp.timer = loop.call_later(timeout, self._on_timeout, inp)
                items.append([inp.key, inp.input_id, inp.call.id, inp.args, inp.call.method])
            if items and c.writer is not None:
                c.writer.write(frames.encode(frames.Inputs(items)))
            if not pool.queue:
                break

    def fail_queue(self, pool: Pool, exc: BaseException, data: bytes | None = None) -> None:
        """Every queued input of the pool finishes with `exc` (web requests waiting get a WebUnavailableError)."""
        data = data or dumps_exception(exc)
        while pool.queue:
            inp = pool.queue.popleft()
            if inp.waiter is not None:
                if not inp.waiter.done():
                    why = str(exc) if isinstance(exc, WebUnavailableError) else (pool.last_start_error or str(exc))
                    inp.waiter.set_exception(WebUnavailableError(why))
            elif not inp.call.cancelled:
                self.outputs.finish_output(inp.call, inp.idx, FAILURE, data)

    def drop_call(self, call: Call) -> None:
        """The call ended (terminated, cancelled): its queued inputs leave the queue."""
        pool = call.pool
        pool.queue = type(pool.queue)(i for i in pool.queue if i.call is not call)

    def stats(self, pool: Pool) -> dict[str, int]:
        live = pool.live()
        slots = 1 if pool.single_use else pool.max_inputs
        return {
            "backlog": len(pool.queue),
            "num_total_runners": len(live),
            "num_running_inputs": pool.running_count(),
            "input_headroom": sum(max(0, slots - len(c.running)) for c in live),
        }

    # -- what comes back -------------------------------------------------------------------------------------
    def on_outputs(self, c: Container, items: list[list[Any]]) -> None:
        """An `out` frame: final outputs of inputs `c` ran, [key, "ok"|"err", data, duration] each."""
        pool = c.pool
        finals: list[tuple[Call, int, str, bytes | None]] = []
        for key, status, data, duration in items:
            inp = c.running.pop(key, None)
            if inp is None:
                continue  # timed out or cancelled meanwhile
            if inp.timer:
                inp.timer.cancel()
            inp.container = None
            pool.avg_exec_s = policy.ewma(pool.avg_exec_s, duration)
            if inp.call.cancelled:
                continue
            if status == "ok":
                finals.append((inp.call, inp.idx, SUCCESS, data))
            else:
                self._fail_attempt(inp, FAILURE, data)
        self.outputs.finish_outputs(finals)
        if pool.single_use and c.ready_at is not None:
            self.stop_container(c, "single-use container finished its input")
        self.slots_freed(c)

    def slots_freed(self, c: Container) -> None:
        """Inputs (or requests) of `c` finished: an idle draining container stops; the queue moves on."""
        if not c.running:
            c.idle_since = time.monotonic()
            if c.state == "draining":
                self.stop_container(c, c.stop_reason or "drained")
        self.pump(c.pool)
        if c.pool.queue:
            self.scale(c.pool)

    def _on_timeout(self, inp: Input) -> None:
        c = inp.container
        if c is None:
            return
        c.running.pop(inp.key, None)
        inp.container = None
        timeout = pool_timeout(c.pool)
        data = dumps_exception(FunctionTimeoutError(f"Function {c.pool.tag!r} timed out after {timeout:g}s"))
        self.stop_container(c, f"input {inp.input_id} timed out", kill=True)
        self._fail_attempt(inp, TIMEOUT, data)

    def _fail_attempt(self, inp: Input, status: str, data: bytes) -> None:
        """A user-visible failure: retry per the function's policy or finish with the error."""
        retries = inp.call.pool.options.retries
        inp.attempt += 1
        if retries is not None and inp.attempt <= retries.max_retries and not inp.call.cancelled:
            delay = retry_delay(retries, inp.attempt)
            asyncio.get_running_loop().call_later(delay, self._retry, inp)
        else:
            self.outputs.finish_output(inp.call, inp.idx, status, data)

    def _retry(self, inp: Input) -> None:
        if not inp.call.cancelled and not inp.call.pool.stopped:
            self.enqueue(inp.call.pool, [inp], front=True)

    # -- the containers queues need --------------------------------------------------------------------------
    def scale(self, pool: Pool, decision: policy.Decision | None = None) -> None:
        """Start the containers the autoscaler wants (`decision`, else one made now for the load now)."""
        if pool.stopped:
            return
        now = time.monotonic()
        if pool.start_failures >= policy.MAX_START_FAILURES:
            pause = pool.autoscaler.start_failed(now, pool.last_start_error)
            log.warning("%s: %d container starts failed in a row (last error: %s); warm-up starts pause %gs",
                        pool.tag, pool.start_failures, pool.last_start_error, pause)
            self.fail_queue(pool, ExecutionError(
                f"Function {pool.tag!r}: {pool.start_failures} container starts failed in a row; last error: "
                f"{pool.last_start_error}"))
            pool.start_failures = 0  # the next call tries fresh containers
            return
        live = pool.live()
        if decision is None:
            decision = pool.autoscaler.decide(pool, now, current=len(live), capacity=self.backend.capacity())
        need = decision.desired - len(live)
        if need <= 0:
            self._waiting.discard(pool)
            return
        if not pool.queue and now < pool.autoscaler.backoff_until:
            return  # warm containers (min/buffer) wait out the back-off after failed starts; inputs don't
        free = self.backend.capacity() - len(self.registry.containers)
        if free < need:
            # The machine is full: make room by ending idle containers of other pools; this pool gets
            # another look whenever any container exits.
            self._waiting.add(pool)
            self._evict_idle(need - free, keep=pool)
        starting = sum(1 for c in live if c.state == "starting")
        for _ in range(min(need, max(free, 0))):
            if starting >= max(2, os.cpu_count() or 2):
                break
            starting += 1
            self.start_container(pool)

    def _evict_idle(self, count: int, keep: Pool) -> None:
        """Stop up to `count` idle containers of other pools, longest idle first, above their minimums; warm
        containers go first."""
        count -= self.warmpool.evict(count)
        now = time.monotonic()
        idle = sorted((c for p in self.registry.pools.values() if p is not keep for c in p.ready()
                       if not c.running and c.session_until <= now), key=lambda c: c.idle_since)
        for c in idle[:count]:
            if len(c.pool.live()) > c.pool.autoscaler.min_containers(c.pool.options):
                self.stop_container(c, f"evicted to make room for {keep.tag!r}")

    def start_container(self, pool: Pool) -> Container:
        """A container for `pool`: a warm one of its image when there is one, else a new one."""
        c = self.warmpool.take(pool)
        if c is not None:
            self.containers.adopt(c)
            return c
        return self.containers.launch(pool, self.container_exited)

    def keep_warm(self, pool: Pool) -> None:
        """`pool`'s image is in use: keep warm containers started for its next containers."""
        warm, missing = self.warmpool.wanted(pool)
        for _ in range(missing):
            self.warmpool.started(self.containers.launch(warm, self.container_exited, warm=True))

    def stop_container(self, c: Container, reason: str, kill: bool = False, failed_start: bool = False) -> None:
        """Stop `c` (see `containers.stop`); the inputs it runs go back to the queue now."""
        if stop(c, reason, kill=kill, failed_start=failed_start):
            self._requeue_running(c, charge=False)

    def _requeue_running(self, c: Container, charge: bool, reason: str = "") -> None:
        pool = c.pool
        back = []
        for inp in c.running.values():
            if inp.timer:
                inp.timer.cancel()
            inp.container = None
            if inp.call.cancelled or inp.waiter is not None:
                continue  # a web request was already forwarded: its client sees the failure (502)
            if charge:
                inp.crashes += 1
                if inp.crashes > policy.MAX_CRASH_RETRIES:
                    self.outputs.finish_output(inp.call, inp.idx, FAILURE, dumps_exception(ExecutionError(
                        f"the container running this input died {inp.crashes} times ({reason})")))
                    continue
            back.append(inp)
        c.running.clear()
        if back and not pool.stopped:
            self.enqueue(pool, back, front=True)

    def container_exited(self, c: Container, ended: Exit) -> None:
        """`c` is gone (`Containers` launched it with this): an unexpected end charges its inputs a crash and
        counts as a failed start if it never got ready; its pool, and pools waiting for room, start others."""
        pool = c.pool
        if ended.prev_state != "stopping":
            app = self.registry.apps.get(pool.app_id)
            if app and ended.returncode not in (0, None):
                app.logs.append(c.id, "system", f"container {c.id} exited: {ended.reason}\n")
            if not ended.was_ready:
                pool.start_failures += 1
                if not ended.failed_start and c.init_error is None:  # an init failure already said why
                    pool.last_start_error = f"container {ended.reason}"
            self._requeue_running(c, charge=True, reason=ended.reason)
        if c.init_error is not None:
            self.fail_queue(pool, ExecutionError("init failed"), data=c.init_error)
        if pool.queue:
            self.scale(pool)
        for waiting in list(self._waiting):
            if waiting.stopped:
                self._waiting.discard(waiting)
            elif waiting is not pool:
                self.scale(waiting)


def assign(c: Container, inp: Input, now: float) -> None:
    """`inp` runs in `c` from now: it holds one of the container's slots until its output (or release)."""
    c.next_key += 1
    inp.key = c.next_key
    inp.container = c
    inp.dispatched_at = now
    c.running[inp.key] = inp
    if inp.idx < GRAPH_INPUTS:
        inp.call.tasks[inp.idx] = c.id


def pool_timeout(pool: Pool) -> float:
    return float(pool.options.timeout)
