"""shoal vs Ray vs multiprocessing, side by side: `python -m bench` (or `python bench/run.py`).

Sections (select with --only, by name or letter):
  a latency     warm `.remote()` round trip, p50/p99
  b throughput  `.map` over trivial inputs, inputs/s
  c cold        first result of a never-run function; platform start
  d memory      client peak RSS growth while mapping (in a fresh process per tool)
  e idle        control plane RSS once the app has stopped

The tools run one after another, never at the same time: first multiprocessing, then shoal (on a control
plane of its own in a temporary SHOAL_HOME, shut down afterwards), then Ray (one `ray.init` for all its rows).
See bench/README.md.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # `python bench/run.py`
    sys.path.insert(0, str(ROOT))

from bench import _proc  # noqa: E402

SECTIONS = {"a": "latency", "b": "throughput", "c": "cold", "d": "memory", "e": "idle"}
TOOLS = ["shoal", "ray_actor", "ray_task", "mp"]
HEADERS = {"shoal": "shoal", "ray_actor": "ray actor", "ray_task": "ray task", "mp": "multiprocessing"}
MP_CHUNKSIZE = 256
MIB = _proc.MIB


@dataclass
class Config:
    quick: bool
    latency_n: int
    latency_warmup: int
    map_sizes: list[int]  # shoal and multiprocessing
    ray_map_n: int
    map_reps: int  # repetitions of the smallest map size (median reported)
    cold_reps: int
    memory_n: int
    step_timeout_s: float  # watchdog: a step that takes longer is reported as a hang and the bench exits

    @classmethod
    def make(cls, quick: bool) -> Config:
        if quick:
            return cls(True, latency_n=1000, latency_warmup=100, map_sizes=[5000], ray_map_n=5000, map_reps=1,
                       cold_reps=3, memory_n=5000, step_timeout_s=45)
        return cls(False, latency_n=2000, latency_warmup=200, map_sizes=[10_000, 100_000], ray_map_n=10_000,
                   map_reps=3, cold_reps=5, memory_n=100_000, step_timeout_s=300)


def k(n: int) -> str:
    return f"{n // 1000}k" if n % 1000 == 0 and n >= 1000 else str(n)


# -- results ---------------------------------------------------------------------------------------------------
@dataclass
class Row:
    key: str
    section: str
    label: str
    unit: str
    better: str  # "lower" | "higher"
    word: str  # what the ratio compares: latency, throughput, time, memory
    ray_pair: tuple[str, ...] = ("ray_actor", "ray_task")  # what the "shoal / ray" ratio compares with
    cells: dict[str, Any] = field(default_factory=dict)  # tool -> number | Note
    extra: dict[str, Any] = field(default_factory=dict)  # tool -> raw details for the JSON


class Note(str):
    """A cell that is text, not a figure: an error, "ray not installed", "n/a"."""


class Results:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.rows: dict[str, Row] = {}
        self.errors: list[str] = []
        self.meta: dict[str, Any] = {}
        self.footnotes: list[str] = []
        self.lock = threading.Lock()

    def row(self, key: str, section: str, label: str, unit: str, better: str, word: str) -> Row:
        if key not in self.rows:
            self.rows[key] = Row(key, section, label, unit, better, word)
        return self.rows[key]

    def set(self, key: str, tool: str, value: Any, **extra: Any) -> None:
        row = self.rows[key]
        row.cells[tool] = value
        if extra:
            row.extra[tool] = extra

    def error(self, keys: list[str], tool: str, what: str, exc: BaseException) -> None:
        msg = f"{tool} / {what}: {type(exc).__name__}: {exc}"
        self.errors.append(msg)
        print(f"bench: error in {msg}", file=sys.stderr)
        traceback.print_exception(exc, file=sys.stderr)
        for key in keys:
            if key in self.rows and tool not in self.rows[key].cells:
                self.rows[key].cells[tool] = Note("error")

    def note_all(self, tool: str, text: str) -> None:
        for row in self.rows.values():
            row.cells.setdefault(tool, Note(text))

    # -- output --------------------------------------------------------------------------------------------
    def ratio(self, row: Row, among: tuple[str, ...] = ("ray_actor", "ray_task", "mp"), name: bool = True) -> str:
        """shoal's figure over the best of the tools `among` (lower is better for latency, time and memory)."""
        shoal = row.cells.get("shoal")
        alts = {t: v for t, v in row.cells.items() if t in among and _is_num(v)}
        if not _is_num(shoal) or not alts:
            return ""
        pick = min if row.better == "lower" else max
        best_tool = pick(alts, key=lambda t: alts[t])
        best = alts[best_tool]
        vs = f" ({HEADERS[best_tool]})" if name else ""
        if best <= 0 or shoal <= 0:
            return "n/a" + vs
        return f"{_fmt_ratio(shoal / best)} {row.word}{vs}"

    def legend(self) -> str:
        return ("ratio = shoal's figure / the best other figure in the row (for latency, time and memory, < 1x means "
                "shoal is better; for throughput, > 1x).\n"
                "(c) new process: shoal starts a container (a Python process) for a never-run function; Ray starts a "
                "worker process for a new actor\n    once its prestarted idle workers are used up (the row below is "
                "the case where one is idle); multiprocessing forks its warm parent.")

    def table(self) -> str:
        header = ["metric", *(HEADERS[t] for t in TOOLS), "shoal / best alternative", "shoal / best ray"]
        lines = [header]
        for row in self.rows.values():
            label = f"({_letter(row.section)}) {row.label} [{row.unit}]"
            lines.append([label, *(_fmt(row.cells.get(t)) for t in TOOLS), self.ratio(row),
                          self.ratio(row, among=row.ray_pair)])
        widths = [max(len(r[i]) for r in lines) for i in range(len(header))]
        out = []
        for n, r in enumerate(lines):
            cells = [r[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(r[1:-2], widths[1:-2], strict=True)),
                     r[-2].ljust(widths[-2]), r[-1]]
            out.append(" | ".join(cells).rstrip())
            if n == 0:
                out.append("-+-".join("-" * w for w in widths))
        return "\n".join(out)

    def to_json(self) -> dict[str, Any]:
        return {
            "meta": self.meta,
            "config": self.cfg.__dict__,
            "rows": [
                {"key": r.key, "section": r.section, "label": r.label, "unit": r.unit, "better": r.better,
                 "values": {t: (v if _is_num(v) else str(v)) for t, v in r.cells.items()},
                 "ratio": self.ratio(r), "ratio_vs_ray": self.ratio(r, among=r.ray_pair),
                 "details": r.extra}
                for r in self.rows.values()
            ],
            "errors": self.errors,
            "footnotes": self.footnotes,
        }


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _letter(section: str) -> str:
    return next(letter for letter, name in SECTIONS.items() if name == section)


def _fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, Note):
        return str(v)
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def _fmt_ratio(x: float) -> str:
    if x >= 10:
        return f"{x:.0f}x"
    if x >= 0.1:
        return f"{x:.2g}x"
    if x >= 0.01:
        return f"{x:.3f}x"
    return "<0.01x"


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    s = sorted(values)
    pos = (len(s) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


# -- safety: a hung step is reported, not waited on forever ----------------------------------------------------
class Watchdog:
    def __init__(self, on_hang: Callable[[str], None]) -> None:
        self.on_hang = on_hang

    @contextmanager
    def step(self, what: str, seconds: float, on_fire: Callable[[], None] = lambda: None) -> Iterator[None]:
        timer = threading.Timer(seconds, self._fire, args=(what, seconds, on_fire))
        timer.daemon = True
        timer.start()
        try:
            yield
        finally:
            timer.cancel()

    def _fire(self, what: str, seconds: float, on_fire: Callable[[], None]) -> None:
        on_fire()
        print(f"\nbench: HANG: {what} did not finish within {seconds:.0f}s; stacks of this process:",
              file=sys.stderr, flush=True)
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        try:
            self.on_hang(what)
        finally:
            os._exit(3)


class Bench:
    def __init__(self, cfg: Config, sections: list[str], use_ray: bool, keep_home: bool) -> None:
        self.cfg = cfg
        self.sections = sections
        self.use_ray = use_ray
        self.keep_home = keep_home
        self.r = Results(cfg)
        self.watchdog = Watchdog(self._on_hang)
        self.shoal_home: Path | None = None
        self.shoal_started = False
        self.json_path: str | None = None
        self._start = time.time()
        self._declare_rows()

    def want(self, section: str) -> bool:
        return section in self.sections

    def _declare_rows(self) -> None:
        c, r = self.cfg, self.r
        if self.want("latency"):
            r.row("lat_p50", "latency", f"remote() round trip p50, {c.latency_n} calls", "ms", "lower", "latency")
            r.row("lat_p99", "latency", f"remote() round trip p99, {c.latency_n} calls", "ms", "lower", "latency")
        if self.want("throughput"):
            sizes = sorted(set(c.map_sizes) | {c.ray_map_n})
            for n in sizes:
                reps = f", median of {c.map_reps}" if n == min(sizes) and c.map_reps > 1 else ""
                r.row(f"map_{n}", "throughput", f"map {k(n)} warm{reps}", "inputs/s", "higher", "throughput")
            n0 = min(c.map_sizes)
            r.row(f"map_{n0}_cold", "throughput", f"map {k(n0)} incl. cold start / pool start", "inputs/s",
                  "higher", "throughput")
        if self.want("cold"):
            r.row("cold", "cold", f"cold start, new process, to first result, median of {c.cold_reps}", "ms",
                  "lower", "time").ray_pair = ("ray_actor",)  # the pairing: a new actor's process
            r.row("cold_pooled", "cold", "cold start on an idle pooled worker (Ray only)", "ms", "lower", "time")
            r.row("platform_start", "cold", "platform start (control plane / ray.init)", "s", "lower", "time")
        if self.want("memory"):
            r.row("mem_growth", "memory", f"client peak RSS growth, map {k(c.memory_n)}", "MiB", "lower", "memory")
            r.row("mem_time", "memory", f"  (that map's rate, {k(c.memory_n)} inputs)", "inputs/s", "higher",
                  "throughput")
        if self.want("idle"):
            r.row("idle_rss", "idle", "control plane RSS, idle after the app stopped", "MiB", "lower", "memory")
            r.row("peak_rss", "idle", "control plane peak RSS (VmHWM) over the bench", "MiB", "lower", "memory")

    # -- plumbing ------------------------------------------------------------------------------------------
    def _mark(self, keys: list[str], tool: str, text: str) -> None:
        for key in keys:
            if key in self.r.rows and tool in TOOLS:
                self.r.rows[key].cells.setdefault(tool, Note(text))

    def _on_hang(self, what: str) -> None:
        self.r.errors.append(f"HANG: {what} (did not finish within {self.cfg.step_timeout_s:.0f}s)")
        self._shutdown_shoal()
        self.finish()
        self.report()
        for pid in _proc.descendants(os.getpid()):  # Ray's daemons and workers, a memprobe, a process pool
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass

    @contextmanager
    def measuring(self, tool: str, what: str, keys: list[str], watch: bool = True) -> Iterator[None]:
        """Run one measurement under the watchdog; an exception becomes an 'error' cell and the bench goes on."""
        print(f"bench: {tool}: {what} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        try:
            with self.watchdog.step(f"{tool}: {what}", self.cfg.step_timeout_s if watch else 1e9,
                                    lambda: self._mark(keys, tool, "HANG")):
                yield
        except Exception as exc:  # noqa: BLE001 - reported in the table and on stderr, then the bench goes on
            self.r.error(keys, tool, what, exc)
        finally:
            print(f"bench: {tool}: {what}: {time.perf_counter() - t0:.1f}s", file=sys.stderr, flush=True)

    def _memprobe(self, tool: str, extra_args: list[str] = ()) -> dict[str, Any]:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.memprobe", tool, str(self.cfg.memory_n), *extra_args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=str(ROOT),
        )
        try:
            stdout, stderr = proc.communicate(timeout=self.cfg.step_timeout_s - 5)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGUSR1)  # memprobe dumps its threads' stacks
            time.sleep(1.0)
            proc.kill()
            stdout, stderr = proc.communicate()
            raise RuntimeError(f"memprobe {tool} did not finish within {self.cfg.step_timeout_s - 5:.0f}s; its "
                               f"output:\n{(stderr or stdout)[-4000:]}") from None
        lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
        if proc.returncode != 0 or not lines:
            raise RuntimeError(f"memprobe {tool} exited {proc.returncode}: {(stderr or stdout)[-2000:]}")
        return json.loads(lines[-1])

    def _record_memory(self, tool: str, m: dict[str, Any]) -> None:
        self.r.set("mem_growth", tool, m["growth"] / MIB, **m)
        self.r.set("mem_time", tool, m["count"] / m["elapsed_s"])

    # -- multiprocessing -----------------------------------------------------------------------------------
    def run_mp(self) -> None:
        from concurrent.futures import ProcessPoolExecutor

        from bench.workloads import plain_noop

        cfg, r = self.cfg, self.r
        if self.want("latency"):
            with self.measuring("mp", "latency", ["lat_p50", "lat_p99"]), ProcessPoolExecutor(2) as ex:
                samples = _latency(lambda i: ex.submit(plain_noop, i).result(), cfg)
                r.set("lat_p50", "mp", percentile(samples, 50) * 1e3, n=len(samples), mean_ms=_mean_ms(samples))
                r.set("lat_p99", "mp", percentile(samples, 99) * 1e3)
        if self.want("throughput"):
            n0 = min(cfg.map_sizes)
            with self.measuring("mp", "map incl. pool start", [f"map_{n0}_cold"]):
                t0 = time.perf_counter()
                with ProcessPoolExecutor(2) as ex:
                    out = list(ex.map(plain_noop, range(n0), chunksize=MP_CHUNKSIZE))
                    dt = time.perf_counter() - t0
                _check(out, n0)
                r.set(f"map_{n0}_cold", "mp", n0 / dt, seconds=dt)
            with ProcessPoolExecutor(2) as ex:
                list(ex.map(plain_noop, range(2000), chunksize=MP_CHUNKSIZE))  # workers up
                for n in cfg.map_sizes:
                    with self.measuring("mp", f"map {k(n)}", [f"map_{n}"]):
                        reps = cfg.map_reps if n == n0 else 1
                        times = []
                        for _ in range(reps):
                            t0 = time.perf_counter()
                            out = list(ex.map(plain_noop, range(n), chunksize=MP_CHUNKSIZE))
                            times.append(time.perf_counter() - t0)
                            _check(out, n)
                        r.set(f"map_{n}", "mp", n / statistics.median(times), seconds=times, chunksize=MP_CHUNKSIZE)
        if self.want("cold"):
            with self.measuring("mp", "cold start", ["cold", "cold_pooled"]):
                times = []
                for i in range(cfg.cold_reps):
                    t0 = time.perf_counter()
                    ex = ProcessPoolExecutor(1)
                    assert ex.submit(plain_noop, i).result() == i
                    times.append(time.perf_counter() - t0)
                    ex.shutdown()
                r.set("cold", "mp", statistics.median(times) * 1e3, seconds=times,
                      what="ProcessPoolExecutor(1) creation + first submit().result()")
        if self.want("memory"):
            with self.measuring("mp", "client memory", ["mem_growth", "mem_time"]):
                self._record_memory("mp", self._memprobe("mp"))

    # -- shoal ---------------------------------------------------------------------------------------------
    def run_shoal(self) -> None:
        cfg, r = self.cfg, self.r
        try:
            from bench import workloads as w
            from shoal._client.transport import get_client
        except Exception as exc:  # noqa: BLE001
            self.r.error(list(r.rows), "shoal", "import", exc)
            return
        with self.measuring("shoal", "control plane start", ["platform_start", *r.rows]):
            t0 = time.perf_counter()
            client = get_client()
            self.shoal_started = True
            if "platform_start" in r.rows:
                r.set("platform_start", "shoal", time.perf_counter() - t0,
                      what="first SDK call auto-starts `python -m shoal.controlplane` and waits until it answers")
        if not self.shoal_started:
            return
        self.r.meta["shoal_home"] = str(self.shoal_home)
        # Each part runs in an app run of its own, and the next one starts only once the last one's containers
        # are gone: the local backend's container cap (default 4 per core) would otherwise be full of idle
        # containers of earlier parts, and a pool that finds the cap full waits for good (see README, "Known
        # issues"). Mapping `noop` in (d) happens in a fresh process, so memory freed here cannot hide growth.
        try:
            if self.want("latency") or self.want("throughput") or self.sections == ["idle"]:
                with self.measuring("shoal", "app run (a, b)", list(r.rows), watch=False), w.app.run():
                    self._shoal_latency_throughput(w, cfg, r)
                self._shoal_wait_idle(client)
            if self.want("cold"):
                with self.measuring("shoal", "app run (c)", ["cold"], watch=False), w.app.run():
                    self._shoal_cold(w, cfg, r)
                self._shoal_wait_idle(client)
            if self.want("memory"):
                with self.measuring("shoal", "client memory", ["mem_growth", "mem_time"]):
                    self._record_memory("shoal", self._memprobe("shoal"))
                self._shoal_wait_idle(client)
        finally:
            if self.want("idle"):
                with self.measuring("shoal", "idle control plane", ["idle_rss", "peak_rss"]):
                    self._shoal_idle(client)
            self._shutdown_shoal()

    def _shoal_wait_idle(self, client: Any, timeout: float = 15.0) -> int:
        """Wait until the control plane has no container left (app runs end by stopping theirs)."""
        deadline = time.monotonic() + timeout
        while True:
            left = len(client.call("GET", "/v1/containers")["containers"])
            if not left or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        if left:
            self.r.errors.append(f"shoal: {left} container(s) still listed {timeout:.0f}s after the app stopped")
        return left

    def _shoal_latency_throughput(self, w: Any, cfg: Config, r: Results) -> None:
        if self.want("latency"):
            with self.measuring("shoal", "latency", ["lat_p50", "lat_p99"]):
                t0 = time.perf_counter()
                assert w.noop.remote(-1) == -1
                first = time.perf_counter() - t0
                samples = _latency(w.noop.remote, cfg)
                r.set("lat_p50", "shoal", percentile(samples, 50) * 1e3, n=len(samples),
                      mean_ms=_mean_ms(samples), first_call_s=first)
                r.set("lat_p99", "shoal", percentile(samples, 99) * 1e3)
        if self.want("throughput"):
            n0 = min(cfg.map_sizes)
            with self.measuring("shoal", f"map {k(n0)} incl. cold start", [f"map_{n0}_cold"]):
                t0 = time.perf_counter()
                out = list(w.map_noop.map(range(n0)))
                dt = time.perf_counter() - t0
                _check(out, n0)
                r.set(f"map_{n0}_cold", "shoal", n0 / dt, seconds=dt)
            with self.measuring("shoal", "map warm-up", []):
                _check(list(w.map_noop.map(range(n0))), n0)
            for n in cfg.map_sizes:
                with self.measuring("shoal", f"map {k(n)}", [f"map_{n}"]):
                    reps = cfg.map_reps if n == n0 else 1
                    times = []
                    for _ in range(reps):
                        t0 = time.perf_counter()
                        out = list(w.map_noop.map(range(n)))
                        times.append(time.perf_counter() - t0)
                        _check(out, n)
                    r.set(f"map_{n}", "shoal", n / statistics.median(times), seconds=times,
                          containers=_shoal_containers())
        if not self.want("latency") and not self.want("throughput"):
            assert w.noop.remote(1) == 1  # (e) alone: some activity before the app stops

    def _shoal_cold(self, w: Any, cfg: Config, r: Results) -> None:
        with self.measuring("shoal", "cold start", ["cold"]):
            if cfg.cold_reps > w.N_COLD:
                raise ValueError(f"cold_reps={cfg.cold_reps} > N_COLD={w.N_COLD} in bench/workloads.py")
            times = []
            for i in range(cfg.cold_reps):
                fn = getattr(w, f"cold_{i}")
                t0 = time.perf_counter()
                got = fn.remote(i)
                times.append(time.perf_counter() - t0)
                if got != i:
                    raise AssertionError(f"cold_{i}.remote({i}) returned {got!r}")
            r.set("cold", "shoal", statistics.median(times) * 1e3, seconds=times,
                  container_timings=_shoal_container_timings([f"cold_{i}" for i in range(cfg.cold_reps)]),
                  what="first .remote() of a never-run function, app already running")

    def _shoal_idle(self, client: Any) -> None:
        left = self._shoal_wait_idle(client)
        time.sleep(1.0)  # let it settle
        info = json.loads((self.shoal_home / "server.json").read_text())
        pid = int(info["pid"])
        st = _proc.status(pid)
        self.r.set("idle_rss", "shoal", st["VmRSS"] / MIB, pid=pid, rss_anon_mib=st.get("RssAnon", 0) / MIB,
                   pss_mib=_proc.pss(pid) / MIB,
                   containers_left=left, children=len(_proc.descendants(pid)))
        self.r.set("peak_rss", "shoal", st["VmHWM"] / MIB)

    def _shutdown_shoal(self) -> None:
        if not self.shoal_started:
            return
        self.shoal_started = False
        try:
            from shoal._client.transport import get_client

            info = json.loads((self.shoal_home / "server.json").read_text())
            get_client().call("POST", "/v1/shutdown", {})
            if not _proc.wait_gone(int(info["pid"]), 15):
                print(f"bench: the shoal control plane (pid {info['pid']}) did not exit within 15s of "
                      "POST /v1/shutdown", file=sys.stderr)
                self.r.errors.append("shoal control plane did not exit after /v1/shutdown")
        except Exception as exc:  # noqa: BLE001
            print(f"bench: shutting the shoal control plane down failed: {exc!r}", file=sys.stderr)
            self.r.errors.append(f"shoal shutdown: {exc!r}")

    # -- ray -----------------------------------------------------------------------------------------------
    def run_ray(self) -> None:
        r = self.r
        if not self.use_ray:
            r.note_all("ray_actor", "skipped")
            r.note_all("ray_task", "skipped")
            return
        try:
            import ray
        except ImportError:
            print("bench: ray not installed; its rows are skipped", file=sys.stderr)
            r.note_all("ray_actor", "ray not installed")
            r.note_all("ray_task", "ray not installed")
            return
        r.meta["ray_version"] = ray.__version__
        with self.measuring("ray", "ray.init", ["platform_start", *r.rows]):
            t0 = time.perf_counter()
            self.r.meta["ray_auth_mode"] = _ray_init(ray)
            if "platform_start" in r.rows:
                r.set("platform_start", "ray_task", time.perf_counter() - t0,
                      what="ray.init(num_cpus=2) of a new local cluster")
        if not ray.is_initialized():
            r.note_all("ray_actor", "ray.init failed")
            r.note_all("ray_task", "ray.init failed")
            return
        try:
            self._ray_sections(ray)
        finally:
            ray.shutdown()

    def _ray_sections(self, ray: Any) -> None:
        cfg, r = self.cfg, self.r

        def noop(x):  # local: Ray pickles it by value, so its workers need not import `bench`
            return x

        class Echo:
            def f(self, x):
                return x

            def pid(self):
                return os.getpid()

        task = ray.remote(noop)
        actor_cls = ray.remote(Echo)
        if self.want("cold"):  # first, while Ray's prestarted workers are still idle
            self._ray_cold(ray, actor_cls)
        if self.want("latency"):
            with self.measuring("ray_actor", "latency", ["lat_p50", "lat_p99"]):
                actor = actor_cls.remote()
                samples = _latency(lambda i: ray.get(actor.f.remote(i)), cfg)
                r.set("lat_p50", "ray_actor", percentile(samples, 50) * 1e3, n=len(samples),
                      mean_ms=_mean_ms(samples))
                r.set("lat_p99", "ray_actor", percentile(samples, 99) * 1e3)
                ray.kill(actor)
            with self.measuring("ray_task", "latency", ["lat_p50", "lat_p99"]):
                samples = _latency(lambda i: ray.get(task.remote(i)), cfg)
                r.set("lat_p50", "ray_task", percentile(samples, 50) * 1e3, n=len(samples),
                      mean_ms=_mean_ms(samples))
                r.set("lat_p99", "ray_task", percentile(samples, 99) * 1e3)
        if self.want("throughput"):
            n = cfg.ray_map_n
            with self.measuring("ray_task", f"{k(n)} tasks", [f"map_{n}"]):
                ray.get([task.remote(i) for i in range(1000)])  # warm
                times = []
                for _ in range(cfg.map_reps):
                    t0 = time.perf_counter()
                    out = ray.get([task.remote(i) for i in range(n)])
                    times.append(time.perf_counter() - t0)
                    _check(out, n)
                r.set(f"map_{n}", "ray_task", n / statistics.median(times), seconds=times,
                      what="submit all tasks, then one ray.get")
        if self.want("memory"):
            with self.measuring("ray_task", "client memory", ["mem_growth", "mem_time"]):
                address = ray.get_runtime_context().gcs_address
                self._record_memory("ray_task", self._memprobe("ray", ["--ray-address", address]))
        if self.want("idle"):
            with self.measuring("ray_actor", "idle daemons", ["idle_rss", "peak_rss"]):
                time.sleep(1.0)
                self._ray_idle()

    def _ray_cold(self, ray: Any, actor_cls: Any) -> None:
        """Ray's figure is bimodal: an actor or a never-run task is fast on an idle worker process that Ray
        started earlier (it prestarts num_cpus of them), and ~1 s when a worker process has to start. Each sample
        is sorted by whether its worker was idle just before; both medians are reported."""
        cfg, r = self.cfg, self.r

        def idle_workers() -> set[int]:
            return {pid for pid in _proc.descendants(os.getpid()) if _proc.cmdline(pid).startswith("ray::IDLE")}

        deadline = time.monotonic() + 10
        while not idle_workers() and time.monotonic() < deadline:
            time.sleep(0.1)

        def record(tool: str, samples: dict[str, list[float]], what: str) -> None:
            for key, kind in (("cold", "new"), ("cold_pooled", "pooled")):
                if samples[kind]:
                    r.set(key, tool, statistics.median(samples[kind]) * 1e3, seconds=samples[kind], what=what)

        with self.measuring("ray_task", "cold start", ["cold", "cold_pooled"]):
            samples: dict[str, list[float]] = {"new": [], "pooled": []}
            for i in range(cfg.cold_reps):
                idle = idle_workers()
                fresh = ray.remote(_fresh_function(i))
                t0 = time.perf_counter()
                got, pid = ray.get(fresh.remote(i))
                samples["pooled" if pid in idle else "new"].append(time.perf_counter() - t0)
                assert got == i
            record("ray_task", samples, "first call of a never-run remote function")
        with self.measuring("ray_actor", "cold start", ["cold", "cold_pooled"]):
            samples = {"new": [], "pooled": []}
            for i in range(cfg.cold_reps + 6):
                if len(samples["new"]) >= cfg.cold_reps:
                    break
                idle = idle_workers()
                t0 = time.perf_counter()
                actor = actor_cls.remote()
                got = ray.get(actor.f.remote(i))
                dt = time.perf_counter() - t0
                samples["pooled" if ray.get(actor.pid.remote()) in idle else "new"].append(dt)
                assert got == i
                ray.kill(actor)
                time.sleep(0.2)
            record("ray_actor", samples, "actor creation + first method call")

    def _ray_idle(self) -> None:
        """RSS of Ray's daemons for this session (gcs_server, raylet, agents, monitors), workers apart."""
        daemons: dict[str, tuple[int, int, int]] = {}
        workers: dict[str, int] = {}
        for pid in _proc.descendants(os.getpid()):
            cmd = _proc.cmdline(pid)
            try:
                st = _proc.status(pid)
            except OSError:
                continue
            if not cmd:
                continue
            argv = cmd.split()
            name = argv[0].rsplit("/", 1)[-1]
            if name.startswith("python"):  # a Python daemon: name it by its script
                name = next((a.rsplit("/", 1)[-1] for a in argv[1:] if a.endswith(".py")), name)
            if name.startswith("ray::") and not name.endswith("Agent"):  # ray::IDLE, ray::Echo, ...: workers
                workers[f"{pid} {name}"] = st.get("VmRSS", 0)
            else:
                daemons[f"{pid} {name}"] = (st.get("VmRSS", 0), st.get("VmHWM", 0), _proc.pss(pid))
        rss = sum(v[0] for v in daemons.values())
        hwm = sum(v[1] for v in daemons.values())
        self.r.set("idle_rss", "ray_actor", rss / MIB, daemons_mib={n: v[0] / MIB for n, v in daemons.items()},
                   pss_mib=sum(v[2] for v in daemons.values()) / MIB,
                   idle_workers_mib={n: v / MIB for n, v in workers.items()})
        self.r.set("peak_rss", "ray_actor", hwm / MIB)
        names = ", ".join(sorted({n.split()[1] for n in daemons}))
        self.r.footnotes.append(
            f"(e) ray column: the sum over this Ray session's {len(daemons)} daemon processes ({names})"
            + (f"; its {len(workers)} worker processes ({sum(workers.values()) / MIB:.0f} MiB) are left out" if workers
               else "") + ".\n"
            "    shoal column: the control plane process alone (no container is left once the app stopped).")

    # -- all -----------------------------------------------------------------------------------------------
    def run(self) -> int:
        start = time.time()
        self.r.meta.update(
            machine=f"{os.cpu_count()} cores, {platform.machine()}, {platform.system()} {platform.release()}",
            python=sys.version.split()[0], quick=self.cfg.quick, sections=self.sections,
            loadavg_start=os.getloadavg(), started=time.strftime("%Y-%m-%d %H:%M:%S"),
        )
        self._start = start
        # shoal gets a control plane of its own: set before anything imports shoal (bench.workloads does).
        self.shoal_home = Path(tempfile.mkdtemp(prefix="shoal-bench-"))
        os.environ["SHOAL_HOME"] = str(self.shoal_home)
        os.environ.pop("SHOAL_SERVER_URL", None)
        os.environ.pop("SHOAL_TOKEN", None)
        self.run_mp()
        self.run_shoal()
        self.run_ray()
        self.finish()
        self.report()
        return 0 if not self.r.errors else 1

    def finish(self) -> None:
        if self.shoal_home is not None and not self.keep_home:
            shutil.rmtree(self.shoal_home, ignore_errors=True)
        elif self.shoal_home is not None:
            print(f"bench: SHOAL_HOME kept at {self.shoal_home}", file=sys.stderr)
        self.r.meta["loadavg_end"] = os.getloadavg()
        self.r.meta["wall_s"] = time.time() - self._start
        for row in self.r.rows.values():  # what does not apply to a tool
            for t in TOOLS:
                row.cells.setdefault(t, None)

    def report(self) -> None:
        r = self.r
        print()
        print(f"shoal bench ({'quick' if self.cfg.quick else 'full'}) on {r.meta['machine']}, "
              f"Python {r.meta['python']}"
              + (f", Ray {r.meta['ray_version']} (RAY_AUTH_MODE={r.meta.get('ray_auth_mode')})"
                 if "ray_version" in r.meta else "")
              + f"; load avg {r.meta['loadavg_start'][0]:.2f} -> {r.meta['loadavg_end'][0]:.2f}; "
              f"{r.meta['wall_s']:.0f}s")
        print(r.table())
        print(r.legend())
        for note in r.footnotes:
            print(note)
        if r.errors:
            print("\nerrors:")
            for e in r.errors:
                print(f"  {e}")
        if self.json_path:
            Path(self.json_path).write_text(json.dumps(r.to_json(), indent=2, default=str) + "\n")
        sys.stdout.flush()


def _latency(call: Callable[[int], Any], cfg: Config) -> list[float]:
    for i in range(cfg.latency_warmup):
        call(i)
    samples = []
    for i in range(cfg.latency_n):
        t0 = time.perf_counter()
        got = call(i)
        samples.append(time.perf_counter() - t0)
        if got != i:
            raise AssertionError(f"call {i} returned {got!r}")
    return samples


def _mean_ms(samples: list[float]) -> float:
    return statistics.fmean(samples) * 1e3


def _check(out: list[Any], n: int) -> None:
    if len(out) != n or out != list(range(n)):
        bad = next((i for i, v in enumerate(out) if v != i), len(out))
        raise AssertionError(f"map returned wrong results: {len(out)} outputs for {n} inputs, first wrong at {bad}")


def _fresh_function(i: int) -> Callable[[Any], Any]:
    def fn(x):
        import os

        return x, os.getpid()

    fn.__name__ = fn.__qualname__ = f"fresh_{i}_{time.time_ns()}"
    return fn


def _shoal_containers() -> int:
    from shoal._client.transport import get_client

    return len(get_client().call("GET", "/v1/containers")["containers"])


def _shoal_container_timings(tags: list[str]) -> dict[str, Any]:
    from shoal._client.transport import get_client

    return {c["function"]: c.get("timings") for c in get_client().call("GET", "/v1/containers")["containers"]
            if c["function"] in tags}


def _ray_init(ray: Any) -> str:
    """Start a new local Ray cluster for the Ray rows. Ray 2.60 turns token authentication on by default for a
    new local cluster (RAY_AUTH_MODE unset: it generates ~/.ray/auth_token and logs a warning). That works;
    where it cannot (no writable home, a stale token), retry with RAY_AUTH_MODE=disabled. Returns the mode."""
    import logging

    kwargs = dict(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                  logging_level=logging.ERROR)
    try:
        ray.init(**kwargs)
    except Exception as exc:  # noqa: BLE001
        if "auth" not in str(exc).lower() and "token" not in str(exc).lower():
            raise
        print(f"bench: ray.init failed with token authentication ({exc}); retrying with RAY_AUTH_MODE=disabled",
              file=sys.stderr)
        ray.shutdown()
        os.environ["RAY_AUTH_MODE"] = "disabled"
        ray.init(**kwargs)
    return os.environ.get("RAY_AUTH_MODE", "unset")


def parse_sections(values: list[str] | None) -> list[str]:
    if not values:
        return list(SECTIONS.values())
    chosen = set()
    for value in values:
        for name in value.split(","):
            name = name.strip().lower()
            if not name:
                continue
            name = SECTIONS.get(name, name)
            if name not in SECTIONS.values():
                raise SystemExit(f"bench: unknown section {name!r}; choose from "
                                 + ", ".join(f"{v} ({letter})" for letter, v in SECTIONS.items()))
            chosen.add(name)
    return [s for s in SECTIONS.values() if s in chosen]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for CI smoke runs (< 60 s)")
    parser.add_argument("--only", action="append", metavar="NAME",
                        help="run only these sections (repeatable or comma-separated): "
                             + ", ".join(f"{v} ({letter})" for letter, v in SECTIONS.items()))
    parser.add_argument("--json", metavar="PATH", help="also write the raw results as JSON here")
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray rows")
    parser.add_argument("--keep-home", action="store_true", help="keep the temporary SHOAL_HOME (server.log)")
    args = parser.parse_args(argv)
    bench = Bench(Config.make(args.quick), parse_sections(args.only), use_ray=not args.no_ray,
                  keep_home=args.keep_home)
    bench.json_path = args.json
    return bench.run()


if __name__ == "__main__":
    sys.exit(main())
