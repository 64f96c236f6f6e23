"""The control plane's metrics, in Prometheus' text format on `/metrics` (docs/observability.md lists them).

Names are Modal's OpenTelemetry ones where Modal has one (`modal.input_events.input_queue_time_us` becomes
`modal_input_events_input_queue_time_us`, as an OpenTelemetry-to-Prometheus bridge writes it), shoal's own
(`shoal_*`) otherwise, labelled by app and function as Modal tags them.

Why this shape: the dispatch path pays only for what must be counted as it happens (an input's outcome, queue
and execution time, a call, a cold start, a web request): each is a counter increment or a histogram observation
on a labelled child cached per function, a few microseconds per input. Everything that is a level (pending and
running inputs, containers, CPU and memory) is read from the registry and the containers' cgroups when scraped.
The same hooks keep a short ring of recent inputs per function and of container exits for the dashboard.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from ..backends.local_exec import children

if TYPE_CHECKING:
    from .core.containers import Exit
    from .core.model import Call, Container, Input, Pool
    from .core.registry import Registry

LABELS = ("app_name", "app_id", "function_name", "function_id")
# Microseconds (Modal's unit for input events): 1 ms .. 10 min.
US_BUCKETS = (1e3, 2.5e3, 5e3, 1e4, 2.5e4, 5e4, 1e5, 2.5e5, 5e5, 1e6, 2.5e6, 5e6, 1e7, 3e7, 6e7, 3e8, 6e8)
S_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
RECENT_INPUTS = 2000  # per function, for the dashboard's percentiles and calls over time
RECENT_EXITS = 500
LOOP_LAG_INTERVAL_S = 0.25
PRUNE_EVERY_S = 60.0
GONE_AFTER_S = 900.0  # a function's series stay this long after it stopped (scrapers see its last counts)


class Metrics:
    """Every metric the control plane exports, in a registry of its own (not the process-global one)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=False)
        self.total_inputs = Counter("modal_input_events_total_inputs", "Inputs finished (any outcome)", LABELS,
                                    registry=r)
        self.successes = Counter("modal_input_events_successes", "Inputs finished successfully", LABELS, registry=r)
        self.outcomes = Counter("shoal_inputs", "Inputs finished, by outcome (success, failure, timeout, "
                                "terminated)", (*LABELS, "status"), registry=r)
        self.elapsed = Histogram("modal_input_events_elapsed_time_us", "An input's execution time (dispatch to "
                                 "result), microseconds", LABELS, buckets=US_BUCKETS, registry=r)
        self.queue_time = Histogram("modal_input_events_input_queue_time_us", "Time an input waited in its "
                                    "queue before a container took it, microseconds", LABELS, buckets=US_BUCKETS,
                                    registry=r)
        self.coldstart = Histogram("modal_input_events_coldstart_time_us", "A container's cold start (asked for "
                                   "to ready), microseconds", LABELS, buckets=US_BUCKETS, registry=r)
        self.calls = Counter("shoal_calls", "Function calls created, by kind (remote, spawn, gen, map)",
                             (*LABELS, "kind"), registry=r)
        self.calls_finished = Counter("shoal_calls_finished", "Function calls finished, by state (complete, "
                                      "terminated)", (*LABELS, "state"), registry=r)
        self.container_exits = Counter("shoal_container_exits", "Containers ended, by reason (stopped, exited, "
                                       "failed, oom, killed, timeout)", (*LABELS, "reason"), registry=r)
        self.web_requests = Counter("shoal_web_requests", "Requests to web endpoints and Servers, by status code",
                                    (*LABELS, "status"), registry=r)
        self.web_latency = Histogram("shoal_web_request_duration_seconds", "Web endpoint and Server request "
                                     "latency through the ingress proxy, seconds", LABELS, buckets=S_BUCKETS,
                                     registry=r)
        self.store_commit = Histogram("shoal_store_commit_seconds", "Duration of one group commit of the store",
                                      buckets=S_BUCKETS, registry=r)
        self.loop_lag = Histogram("shoal_event_loop_lag_seconds", "How late the control plane's event loop ran a "
                                  f"timer (sampled every {LOOP_LAG_INTERVAL_S:g}s)", buckets=S_BUCKETS, registry=r)
        self._children: dict[str, tuple[Any, ...]] = {}
        self.recent: dict[str, collections.deque[tuple[float, str, float, float]]] = {}
        self.exits: collections.deque[dict[str, Any]] = collections.deque(maxlen=RECENT_EXITS)
        self._registry: Registry | None = None
        self._gone_since: dict[str, float] = {}
        self._live: LiveCollector | None = None

    def attach(self, registry: Registry) -> None:
        """Read levels (queues, containers, their CPU and memory) from this registry when scraped."""
        self._registry = registry
        if self._live is None:
            self._live = LiveCollector(self)
            self.registry.register(self._live)

    # -- labels ----------------------------------------------------------------------------------------------
    def labels(self, pool: Pool) -> tuple[str, str, str, str]:
        app = self._registry.apps.get(pool.app_id) if self._registry is not None else None
        return ((app.name if app is not None else None) or pool.app_id, pool.app_id, pool.tag, pool.function_id)

    def _child(self, pool: Pool) -> tuple[Any, ...]:
        """The labelled children the dispatch path updates, made once per function."""
        ch = self._children.get(pool.function_id)
        if ch is None:
            lb = self.labels(pool)
            ch = self._children[pool.function_id] = (
                self.total_inputs.labels(*lb), self.successes.labels(*lb), self.elapsed.labels(*lb),
                self.queue_time.labels(*lb), {}, lb,
            )
            self.recent[pool.function_id] = collections.deque(maxlen=RECENT_INPUTS)
        return ch

    # -- hooks (the dispatch path: keep them cheap) ----------------------------------------------------------
    def input_finished(self, pool: Pool, inp: Input, status: str) -> None:
        """An input got its final output (`Outputs.finish_outputs`)."""
        now = time.monotonic()
        total, ok, elapsed, queued, cache, lb = self._child(pool)
        total.inc()
        if status == "success":
            ok.inc()
        self._extra(cache, lb, self.outcomes, status).inc()
        exec_s = queue_s = 0.0
        if inp.dispatched_at:
            exec_s = now - inp.dispatched_at
            queue_s = max(0.0, inp.dispatched_at - inp.queued_at)
            elapsed.observe(exec_s * 1e6)
            queued.observe(queue_s * 1e6)
        self.recent[pool.function_id].append((time.time(), status, queue_s, exec_s))

    @staticmethod
    def _extra(cache: dict[Any, Any], lb: tuple[str, ...], metric: Any, *values: str) -> Any:
        """The child of `metric` for this function (and any more label values), made once."""
        child = cache.get((metric, *values))
        if child is None:
            child = cache[(metric, *values)] = metric.labels(*lb, *values)
        return child

    def call_started(self, pool: Pool, kind: str) -> None:
        ch = self._child(pool)
        self._extra(ch[4], ch[5], self.calls, kind).inc()

    def call_finished(self, call: Call) -> None:
        ch = self._child(call.pool)
        self._extra(ch[4], ch[5], self.calls_finished, call.state).inc()

    def container_ready(self, c: Container) -> None:
        total = c.timings.get("total")
        if total is not None and not c.pool.function_id.startswith("warm:"):
            ch = self._child(c.pool)
            self._extra(ch[4], ch[5], self.coldstart).observe(total * 1e6)

    def container_exited(self, c: Container, ended: Exit) -> None:
        """A container ended: counted by why, and kept (with its last CPU and memory) for the dashboard."""
        reason = exit_class(c.stop_reason, ended.reason, ended.prev_state, ended.failed_start)
        if not c.pool.function_id.startswith("warm:"):
            ch = self._child(c.pool)
            self._extra(ch[4], ch[5], self.container_exits, reason).inc()
        self.exits.append({"container_id": c.id, "app_id": c.pool.app_id, "function_id": c.pool.function_id,
                           "function": c.pool.tag, "t": time.time(), "reason": reason, "detail": ended.reason,
                           "stop_reason": c.stop_reason, "timings": dict(c.timings),
                           "returncode": ended.returncode})

    def web_request(self, pool: Pool | None, status: int, seconds: float) -> None:
        if pool is None:
            return
        ch = self._child(pool)
        self._extra(ch[4], ch[5], self.web_requests, str(status)).inc()
        self._extra(ch[4], ch[5], self.web_latency).observe(seconds)

    def commit_took(self, seconds: float) -> None:
        """From the store's writer thread (prometheus_client's metrics are thread-safe)."""
        self.store_commit.observe(seconds)

    async def watch_loop(self) -> None:
        """Event-loop lag: how late a timer fires; a loop blocked by slow work delays every request. Now and
        then, the series of functions gone for a while are dropped (`prune`)."""
        last_prune = time.monotonic()
        while True:
            t0 = time.monotonic()
            await asyncio.sleep(LOOP_LAG_INTERVAL_S)
            now = time.monotonic()
            self.loop_lag.observe(max(0.0, now - t0 - LOOP_LAG_INTERVAL_S))
            if now - last_prune >= PRUNE_EVERY_S:
                last_prune = now
                self.prune(now)

    def prune(self, now: float) -> None:
        """Forget the series and recent inputs of functions that left the registry GONE_AFTER_S ago (ephemeral
        apps come and go: without this, every function ever run would stay in memory and in every scrape)."""
        if self._registry is None:
            return
        pools = self._registry.pools
        for function_id in list(self._children):
            if function_id in pools:
                self._gone_since.pop(function_id, None)
                continue
            since = self._gone_since.setdefault(function_id, now)
            if now - since < GONE_AFTER_S:
                continue
            *_, cache, lb = self._children.pop(function_id)
            del self._gone_since[function_id]
            self.recent.pop(function_id, None)
            for metric in (self.total_inputs, self.successes, self.elapsed, self.queue_time, self.coldstart,
                           self.web_latency):
                with contextlib.suppress(KeyError):
                    metric.remove(*lb)
            for key in cache:
                if isinstance(key, tuple):
                    with contextlib.suppress(KeyError):
                        key[0].remove(*lb, key[1])


def exit_class(stop_reason: str | None, detail: str, prev_state: str, failed_start: bool) -> str:
    """One word for why a container ended, for a label: timeout, oom, stopped (by the control plane),
    failed (never started), killed (a signal), exited (by itself)."""
    if stop_reason and "timed out" in stop_reason:
        return "timeout"
    if detail.startswith("out of memory"):  # the backend saw the OOM kill (not describe_exit's guess)
        return "oom"
    if prev_state == "stopping":
        return "stopped"
    if failed_start or detail == "could not be started":
        return "failed"
    if detail.startswith("killed"):
        return "killed"
    return "exited"


# -- levels, read when scraped ---------------------------------------------------------------------------------
class LiveCollector(Collector):
    """Pending and running inputs, containers, and each container's CPU and memory, read at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._cpu_last: dict[str, tuple[float, float]] = {}  # container id -> (cpu seconds, monotonic time)

    def collect(self) -> Iterator[Any]:
        registry = self.metrics._registry
        if registry is None:
            return
        names = list(LABELS)
        pending = GaugeMetricFamily("modal_function_pending_inputs", "Inputs queued, waiting for a container",
                                    labels=names)
        running = GaugeMetricFamily("modal_function_running_inputs", "Inputs running in containers", labels=names)
        live = GaugeMetricFamily("modal_container_running", "Containers starting or ready", labels=names)
        cnames = [*names, "container_id"]
        cpu = GaugeMetricFamily("modal_cpu_utilization", "A container's CPU use since the last scrape, in cores",
                                labels=cnames)
        cpu_total = CounterMetricFamily("shoal_container_cpu_seconds", "A container's CPU time", labels=cnames)
        mem = GaugeMetricFamily("modal_memory_usage", "A container's memory use, bytes", labels=cnames)
        peak = GaugeMetricFamily("shoal_container_memory_peak_bytes", "A container's peak memory use, bytes",
                                 labels=cnames)
        for pool in list(registry.pools.values()):
            lb = list(self.metrics.labels(pool))
            pending.add_metric(lb, len(pool.queue))
            running.add_metric(lb, pool.running_count())
            live.add_metric(lb, len(pool.live()))
        now = time.monotonic()
        seen = set()
        for c in list(registry.containers.values()):
            usage = container_usage(c)
            if usage is None:
                continue
            seen.add(c.id)
            lb = [*self.metrics.labels(c.pool), c.id]
            cpu_s, mem_b, peak_b = usage
            last = self._cpu_last.get(c.id)
            self._cpu_last[c.id] = (cpu_s, now)
            if last is not None and now > last[1]:
                cpu.add_metric(lb, max(0.0, (cpu_s - last[0]) / (now - last[1])))
            cpu_total.add_metric(lb, cpu_s)
            mem.add_metric(lb, mem_b)
            if peak_b is not None:
                peak.add_metric(lb, peak_b)
        for gone in set(self._cpu_last) - seen:
            del self._cpu_last[gone]
        yield from (pending, running, live, cpu, cpu_total, mem, peak)


def container_usage(c: Container) -> tuple[float, int, int | None] | None:
    """(CPU seconds, memory bytes, peak memory bytes or None) of a container: from its cgroup when it has one,
    else from its process tree in /proc; None when neither can be read (another machine, already gone)."""
    handle = c.handle
    if handle is None or getattr(handle, "node_id", None):
        return None
    cgroup = getattr(handle, "cgroup", None)
    if cgroup is not None:
        try:
            return cgroup.usage()
        except (OSError, ValueError, KeyError, IndexError):
            pass  # this hierarchy lacks a controller: the processes tell
    try:
        return _proc_usage(handle.pid)
    except (OSError, ValueError, AttributeError):
        return None


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _proc_usage(pid: int) -> tuple[float, int, int | None]:
    """CPU time, resident memory and peak resident memory (the sum of each process's VmHWM) of `pid` and its
    descendants."""
    cpu, rss, peak, todo, seen = 0.0, 0, 0, [pid], set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            fields = _read(f"/proc/{p}/stat").rsplit(")", 1)[1].split()
            cpu += (int(fields[11]) + int(fields[12])) / _TICKS
            for line in _read(f"/proc/{p}/status").splitlines():
                if line.startswith(("VmRSS:", "VmHWM:")):
                    kb = int(line.split()[1]) * 1024
                    if line.startswith("VmRSS:"):
                        rss += kb
                    else:
                        peak += kb
            todo.extend(children(p))
        except (OSError, IndexError):
            if p == pid:
                raise
    return cpu, rss, peak


METRICS = Metrics()  # one per control plane process; the core's hooks update it
