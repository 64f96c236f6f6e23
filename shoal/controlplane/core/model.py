"""In-memory state of the control plane: apps, calls, their inputs, container pools and containers."""

from __future__ import annotations

import asyncio
import collections
import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import msgspec

from ..._spec.definitions import FunctionDefinition, Options, ServerConfig
from .autoscaler import PoolAutoscaler
from .logs import AppLogs, wake_all

if TYPE_CHECKING:
    from ...backends.base import ContainerHandle

# Output statuses as stored and sent to clients.
SUCCESS, FAILURE, TIMEOUT, TERMINATED, ITEM = "success", "failure", "timeout", "terminated", "item"
GRAPH_INPUTS = 1000  # inputs of a call whose container and final status are kept for its call graph
GRAPH_CHILDREN = 10_000  # calls made from one call's inputs that its call graph keeps


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(10)}"


def input_id_of(call_id: str, idx: int) -> str:
    """An input's id: `in-<call id without fc->-<index>` (calls.py reads a parent's back from it)."""
    return f"in-{call_id[3:]}-{idx}"


class AppState:
    """A running app: its functions (tag or variant key -> function id), its log, its client sessions."""

    def __init__(self, app_id: str, name: str | None, mode: str, detach: bool) -> None:
        self.id = app_id
        self.name = name
        self.mode = mode
        self.detach = detach
        self.state = "running"
        self.functions: dict[str, str] = {}  # tag -> function_id
        self.logs = AppLogs()
        self.sessions = 0
        self.orphaned_at: float | None = time.monotonic()  # no client session attached yet

    def session_started(self) -> None:
        """A client holds the app open (a log follower, an image build): it is not orphaned."""
        self.sessions += 1
        self.orphaned_at = None

    def session_ended(self) -> None:
        self.sessions -= 1
        if self.sessions == 0:
            self.orphaned_at = time.monotonic()


class Input:
    """One input of a call; lives until its final output is produced."""

    __slots__ = ("call", "idx", "args", "attempt", "crashes", "key", "container", "timer", "dispatched_at", "waiter",
                 "queued_at")

    def __init__(self, call: Call, idx: int, args: bytes | None) -> None:
        call.open[idx] = self
        self.call = call
        self.idx = idx
        self.args = args
        self.attempt = 0  # user-visible failures so far (exceptions and timeouts)
        self.crashes = 0  # container deaths while running it; not charged to `retries`
        self.key = 0
        self.container: Container | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.dispatched_at = 0.0
        self.queued_at = time.monotonic()  # for its queue time (metrics.py)
        # A web request (controlplane/proxy.py): resolved with the container that got its slot; no frame is sent.
        self.waiter: asyncio.Future | None = None

    @property
    def input_id(self) -> str:
        return input_id_of(self.call.id, self.idx)


class Call:
    """A FunctionCall: one input (remote, spawn, generator) or many (map)."""

    def __init__(self, call_id: str, pool: Pool, kind: str, total: int | None, method: str | None = None) -> None:
        self.id = call_id
        self.pool = pool
        self.kind = kind
        self.method = method  # the method of a class this call runs (None for functions)
        self.total = total  # None while a map is still streaming inputs in
        self.received: set[int] | None = set() if total is None else None
        self.next_seq = 0
        self.published = -1  # highest seq visible to readers (outputs show once committed)
        # Recovered from the store (a restart, a takeover): outputs up to this seq are read from there.
        self.recovered_seq = -1
        self.done = 0
        self.cancelled = False
        self.state = "running"
        self.visible: collections.deque[tuple[int, int, str, bytes | None, bool]] = collections.deque()
        self.open: dict[int, Input] = {}  # inputs without a final output yet (bounded by the map window)
        self.results: dict[int, tuple[str, bytes | None]] = {}  # final outputs, kept for get(index)
        self.result_waiters: dict[int, list[asyncio.Future]] = collections.defaultdict(list)
        self.output_waiters: list[asyncio.Future] = []
        self.last_active = time.monotonic()
        # The call graph (`FunctionCall.get_call_graph`), in memory: the input of another call this one was made
        # from, the calls made from this one's inputs, and for its first GRAPH_INPUTS inputs the container each
        # last ran in and each final status.
        self.parent: tuple[Call, int] | None = None
        self.children: list[Call] = []
        self.tasks: dict[int, str] = {}
        self.final_status: dict[int, str] = {}

    @property
    def keeps_results(self) -> bool:
        """Single-input calls keep their result for `get()`; maps stream outputs and forget them once read."""
        return self.kind != "map"

    @property
    def finished(self) -> bool:
        return self.total is not None and self.done >= self.total

    @property
    def drained(self) -> bool:
        """Finished, and every output already visible to readers."""
        return self.finished and self.published == self.next_seq - 1

    def publish(self, seq: int, idx: int, status: str, data: bytes | None, final: bool) -> None:
        """Make a committed output visible to readers."""
        self.last_active = time.monotonic()
        self.published = seq
        self.visible.append((seq, idx, status, data, final))
        if final and idx < GRAPH_INPUTS:
            self.final_status[idx] = status
        if final and self.keeps_results:
            self.results[idx] = (status, data)
            for fut in self.result_waiters.pop(idx, []):
                if not fut.done():
                    fut.set_result((status, data))
        waiters, self.output_waiters = self.output_waiters, []
        wake_all(waiters)

    def outputs_after(self, after: int, limit: int) -> list[tuple[int, int, str, bytes | None, bool]]:
        if self.kind in ("map", "gen"):  # the one reader acknowledges what it has seen
            while self.visible and self.visible[0][0] <= after:
                self.visible.popleft()
        out = []
        for item in self.visible:
            if item[0] > after:
                out.append(item)
                if len(out) >= limit:
                    break
        return out


@dataclass
class Container:
    id: str
    pool: Pool
    token: str
    state: str = "starting"  # starting → ready → stopping → dead
    writer: asyncio.StreamWriter | None = None
    handle: ContainerHandle | None = None
    running: dict[int, Input] = field(default_factory=dict)
    next_key: int = 0
    created_at: float = field(default_factory=time.monotonic)
    ready_at: float | None = None
    t_requested: float = field(default_factory=time.time)  # wall clock, to line up with the runtime's report
    t_launch: float | None = None  # when the backend was asked to start it (after waiting for resources)
    warm: bool = False  # started for the warm pool: no function until assigned (see controlplane/core/warmpool.py)
    shell: bool = False  # `shoal shell`: runs nothing, takes no inputs, state "shell" (Operations.start_shell)
    idle_since: float = field(default_factory=time.monotonic)
    stop_reason: str | None = None  # set when the control plane itself ends the container
    init_error: bytes | None = None
    pending_reason: str | None = None  # why it waits to start (no free GPU of its model), shown to users
    timings: dict[str, float] = field(default_factory=dict)
    web_ports: dict[str, int] = field(default_factory=dict)  # web target ("" or a method) -> port inside
    health_failures: int = 0  # a Server container's failed port checks in a row
    session_until: float = 0.0  # kept (not scaled down) until then: a Server session lives on it (server_sessions)
    exited: asyncio.Future | None = None  # resolved with the exit code once the process and its pipes are done


class Pool:
    """All containers of one function, and the inputs waiting for them."""

    def __init__(self, function_id: str, app_id: str, definition: FunctionDefinition) -> None:
        self.function_id = function_id
        self.app_id = app_id
        self.definition = definition
        self.options: Options = pool_options(definition)
        self.queue: collections.deque[Input] = collections.deque()
        self.containers: dict[str, Container] = {}
        self.avg_exec_s: float | None = None
        self.start_failures = 0
        self.last_start_error: str | None = None
        self.stopped = False
        self.autoscaler = PoolAutoscaler()  # samples, last decision, runtime overrides
        # Containers started for an earlier version of a deployed app: not counted as live, retired once one of
        # the new version is ready (controlplane/deploy.py).
        self.superseded: set[str] = set()
        self.web_call: Call | None = None  # the requests of a web function count as inputs of this call

    def redefine(self, definition: FunctionDefinition) -> None:
        """A redeploy gave the function a new definition: its options, and a fresh start for its autoscaler
        (runtime overrides last until a redeploy) and its count of failed starts."""
        self.definition = definition
        self.options = pool_options(definition)
        self.start_failures = 0
        self.autoscaler.reset()

    @property
    def tag(self) -> str:
        return self.definition.tag

    @property
    def generation(self) -> int:
        """The version of the deployed app that set this definition (0: not deployed)."""
        return self.definition.generation

    @property
    def max_inputs(self) -> int:
        return self.options.max_inputs

    @property
    def target_inputs(self) -> int:
        return self.options.target_inputs or self.batch_max_size or self.max_inputs

    @property
    def batch_max_size(self) -> int:
        """Inputs one container takes at once for a dynamically batched function (0: not batched)."""
        return self.options.batch_max_size or 0

    @property
    def is_web(self) -> bool:
        """A web function, a class with web methods or a Server: requests take container slots directly."""
        return self.definition.has_web()

    @property
    def server(self) -> ServerConfig | None:
        """An `@app.server`'s settings (port, target_concurrency, max_concurrency, …); None for functions."""
        return self.definition.server

    @property
    def single_use(self) -> bool:
        return self.options.single_use_containers

    def live(self) -> list[Container]:
        return [c for c in self.containers.values() if c.state in ("starting", "ready") and c.id not in self.superseded]

    def ready(self) -> list[Container]:
        return [c for c in self.containers.values() if c.state == "ready"]

    def running_count(self) -> int:
        return sum(len(c.running) for c in self.containers.values())


def needs_params(definition: FunctionDefinition) -> bool:
    """The base pool of a class with required parameters (its parameter sets get pools of their own)."""
    cls = definition.cls
    return cls is not None and definition.params is None and any(not p.has_default for p in cls.params)


def pool_options(definition: FunctionDefinition) -> Options:
    """A pool's options: the definition's, except that a class with required parameters runs only in its
    parameter sets' pools, so its own pool keeps no warm containers."""
    if needs_params(definition):
        return msgspec.structs.replace(definition.options, min_containers=None, buffer_containers=None)
    return definition.options
