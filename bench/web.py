"""Web endpoints through shoal's ingress proxy vs the same FastAPI app on plain uvicorn: `python -m bench.web`.

One run, printed side by side with ratios:

1. A hello-world FastAPI app (`GET /` returns `{"hello": "world"}`), served
   * through shoal: `@modal.asgi_app()` in one container (`max_containers=1`, `@modal.concurrent(max_inputs=100)`
     so the proxy never queues a request), on a control plane of its own (temporary `SHOAL_HOME`, started with
     `SHOAL_WEB_RATE_LIMIT=0`: no per-workspace rate limit), at the URL `get_web_url()` gives;
   * directly: `uvicorn --http httptools`, one worker, `--log-level warning --no-access-log`, on 127.0.0.1.
   Load from `wrk -t1`: requests/s and latency p50/p99 at 32 connections, latency at 1 connection. Each target is
   warmed up first (container started, keep-alive connections made).
2. A 1 GiB streaming upload (`POST /upload` with a Content-Length; the app counts the body with
   `Request.stream()`), through the proxy and direct: MB/s, and the control plane's VmRSS before, peak during
   (sampled every 50 ms from /proc/<pid>/status) and after.

CPU time per request of each process (from /proc/<pid>/stat, wrk's from wait4) goes with every load phase, so
where the time goes is in the output too.

    python -m bench.web [--duration 8] [--c1-duration 5] [--rounds 1] [--upload-mib 1024] [--json out.json]
                        [--keep-home]

Needs `wrk` (Debian: `apt-get install wrk`). The workload (the app and its image) is at module level here
because shoal ships this module's source to the container, which imports it again as `bench.web`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import shoal as modal

from ._proc import MIB, cpu_s, descendants, free_port, parse_wrk, rss, wait_gone

ROOT = Path(__file__).resolve().parent.parent
TARGETS = {"rps": 0.70, "add_p50_c32_ms": 1.0, "add_p50_c1_ms": 0.150}

# -- the workload (module level: the container imports this module again) ---------------------------------------
IMAGE_DESC = 'Image.debian_slim().pip_install("fastapi[standard]")'
image = modal.Image.debian_slim().pip_install("fastapi[standard]")  # the default image has no FastAPI
app = modal.App("bench-web", image=image)


def make_app() -> Any:
    """The FastAPI app both sides serve: shoal's container (through `hello` below) and the direct uvicorn
    (`uvicorn --factory bench.web:make_app`)."""
    from fastapi import FastAPI, Request

    web = FastAPI()

    @web.get("/")
    def root():
        return {"hello": "world"}

    async def upload(request: Request):
        n = 0
        async for chunk in request.stream():
            n += len(chunk)
        return {"bytes": n}

    upload.__annotations__ = {"request": Request}  # a real class: this module's annotations are strings
    web.add_api_route("/upload", upload, methods=["POST"])

    @web.get("/info")
    async def info():
        import asyncio
        import importlib.metadata as md

        versions = {}
        for name in ("fastapi", "starlette", "uvicorn", "httptools", "uvloop"):
            try:
                versions[name] = md.version(name)
            except md.PackageNotFoundError:
                versions[name] = None
        return {"versions": versions, "loop": type(asyncio.get_running_loop()).__module__,
                "python": sys.version.split()[0], "pid": os.getpid()}

    return web


@app.function(max_containers=1)
@modal.concurrent(max_inputs=100)
@modal.asgi_app()
def hello():
    return make_app()


# -- /proc helpers -----------------------------------------------------------------------------------------------
class RssSampler(threading.Thread):
    """VmRSS of another process every `interval` seconds; keeps the peak and the samples."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.pid, self.interval = pid, interval
        self.samples: list[tuple[float, int]] = []
        self.peak = rss(pid)
        self._stop_event = threading.Event()

    def run(self) -> None:
        with open(f"/proc/{self.pid}/status", "rb") as f:
            while not self._stop_event.is_set():
                f.seek(0)
                for line in f.read().splitlines():
                    if line.startswith(b"VmRSS:"):
                        value = int(line.split()[1]) * 1024
                        self.samples.append((time.monotonic(), value))
                        self.peak = max(self.peak, value)
                        break
                self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()
        self.peak = max(self.peak, rss(self.pid))


# -- load --------------------------------------------------------------------------------------------------------
def wrk(url: str, connections: int, duration: float, procs: dict[str, list[int]], prefix: list[str] = ()
        ) -> dict[str, Any]:
    """One `wrk -t1 --latency` run; requests/s, p50/p99 (ms), errors, and the CPU seconds each process group in
    `procs` spent during it (wrk's own from wait4)."""
    before = {name: sum(cpu_s(p) for p in pids) for name, pids in procs.items()}
    t0 = time.perf_counter()
    proc = subprocess.Popen([*prefix, "wrk", "-t1", f"-c{connections}", f"-d{duration:g}s", "--latency",
                             "--timeout", "10s", url], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = proc.stdout.read()  # type: ignore[union-attr]
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    cpu = {name: sum(cpu_s(p) for p in pids) - before[name] for name, pids in procs.items()}
    cpu["wrk"] = usage.ru_utime + usage.ru_stime
    if proc.returncode != 0:
        raise RuntimeError(f"wrk exited {proc.returncode}:\n{out}")
    figures = parse_wrk(out)
    n = figures["requests"]
    return {**figures, "wall_s": wall, "cpu_s": cpu,
            "cpu_us_per_request": {k: v / max(1, n) * 1e6 for k, v in cpu.items()}, "raw": out}


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of each figure over the rounds (one round: that run)."""
    med = statistics.median
    out: dict[str, Any] = {k: med(r[k] for r in runs) for k in ("rps", "p50_ms", "p99_ms", "requests")}
    out["cpu_us_per_request"] = {k: med(r["cpu_us_per_request"][k] for r in runs)
                                 for k in runs[0]["cpu_us_per_request"]}
    out["rounds"] = len(runs)
    return out


def upload(url: str, size: int, chunk: int = 1 << 20) -> dict[str, Any]:
    """POST `size` bytes of generated data with a Content-Length, streamed from one buffer; the app answers with
    the byte count it read."""
    u = urllib.parse.urlsplit(url)
    host, port = u.hostname, u.port or 80
    buf = memoryview((bytes(range(256)) * (chunk // 256 + 1))[:chunk])
    sock = socket.create_connection((host, port), timeout=120)
    try:
        t0 = time.perf_counter()
        sock.sendall(f"POST /upload HTTP/1.1\r\nHost: {u.netloc}\r\nContent-Type: application/octet-stream\r\n"
                     f"Content-Length: {size}\r\n\r\n".encode())
        left = size
        while left:
            n = min(left, chunk)
            sock.sendall(buf[:n])
            left -= n
        sent = time.perf_counter() - t0
        resp = b""
        while b"\r\n\r\n" not in resp:
            data = sock.recv(65536)
            if not data:
                break
            resp += data
        head, _, body = resp.partition(b"\r\n\r\n")
        m = re.search(rb"content-length:\s*(\d+)", head, re.I)
        while m and len(body) < int(m.group(1)):
            data = sock.recv(65536)
            if not data:
                break
            body += data
        dt = time.perf_counter() - t0
    finally:
        sock.close()
    status = head.split(b" ", 2)[1:2]
    if status != [b"200"]:
        raise RuntimeError(f"upload answered {head[:200]!r} {body[:200]!r}")
    got = json.loads(body)["bytes"]
    if got != size:
        raise RuntimeError(f"the app read {got} bytes of {size}")
    return {"seconds": dt, "send_s": sent, "mb_per_s": size / dt / 1e6, "bytes": size}


def get_json(url: str, timeout: float = 120) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            get_json(url, timeout=2)
            return
        except OSError:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"{proc.args} exited {proc.returncode}") from None
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


# -- the run -----------------------------------------------------------------------------------------------------
class WebBench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.home = Path(tempfile.mkdtemp(prefix="shoal-bench-web-"))
        self.results: dict[str, Any] = {"meta": {}, "load": {}, "runs": {}, "upload": {}}
        self.direct: subprocess.Popen | None = None
        self.server_pid: int | None = None

    def log(self, msg: str) -> None:
        print(f"bench.web: {msg}", file=sys.stderr, flush=True)

    def run(self) -> int:
        a, meta = self.args, self.results["meta"]
        meta.update(machine=f"{os.cpu_count()} cores", load_start=os.getloadavg(),
                    started=time.strftime("%Y-%m-%d %H:%M:%S"), image=IMAGE_DESC, duration_s=a.duration,
                    c1_duration_s=a.c1_duration, upload_bytes=a.upload_mib * MIB, rounds=a.rounds)
        t_start = time.time()
        if shutil.which("wrk") is None:
            print("bench.web: wrk not found (Debian/Ubuntu: apt-get install wrk)", file=sys.stderr)
            return 2
        # a control plane of its own, without the per-workspace rate limit (Modal's 200 req/s by default)
        os.environ["SHOAL_HOME"] = str(self.home)
        os.environ["SHOAL_WEB_RATE_LIMIT"] = "0"
        os.environ["SHOAL_WEB_PORT"] = "0"  # any free port: never another control plane's 8700
        for name in ("SHOAL_SERVER_URL", "SHOAL_TOKEN"):
            os.environ.pop(name, None)
        from shoal._client.transport import get_client, reset_client

        reset_client()
        import bench.web as w  # the module the container imports, not __main__

        code = 0
        try:
            get_client()  # auto-starts the control plane
            self.server_pid = int(json.loads((self.home / "server.json").read_text())["pid"])
            self.start_direct()
            t0 = time.perf_counter()
            with w.app.run(quiet=True):
                meta["app_run_enter_s"] = time.perf_counter() - t0
                shoal_url = w.hello.get_web_url().rstrip("/") + "/"
                t0 = time.perf_counter()
                wait_http(shoal_url + "info", 120)
                meta["first_request_s"] = time.perf_counter() - t0
                self.measure(shoal_url)
        except Exception:  # noqa: BLE001
            import traceback

            traceback.print_exc()
            code = 1
        finally:
            self.stop_direct()
            self.shutdown_shoal(get_client)
            meta["load_end"] = os.getloadavg()
            meta["wall_s"] = time.time() - t_start
        if code == 0:
            self.report()
        if a.json:
            slim = json.loads(json.dumps(self.results, default=str))
            Path(a.json).write_text(json.dumps(slim, indent=2) + "\n")
        return code

    def start_direct(self) -> None:
        port = free_port()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        cmd = [sys.executable, "-m", "uvicorn", "bench.web:make_app", "--factory", "--host", "127.0.0.1",
               "--port", str(port), "--http", "httptools", "--workers", "1", "--log-level", "warning",
               "--no-access-log"]
        self.results["meta"]["direct_cmd"] = " ".join(["uvicorn", *cmd[3:]])
        self.direct = subprocess.Popen(cmd, env=env, cwd=str(ROOT), stdin=subprocess.DEVNULL)
        self.direct_url = f"http://127.0.0.1:{port}/"
        wait_http(self.direct_url + "info", 30, self.direct)

    def stop_direct(self) -> None:
        if self.direct is not None and self.direct.poll() is None:
            self.direct.send_signal(signal.SIGINT)
            try:
                self.direct.wait(10)
            except subprocess.TimeoutExpired:
                self.direct.kill()
                self.direct.wait()

    def shutdown_shoal(self, get_client: Any) -> None:
        try:
            get_client().call("POST", "/v1/shutdown", {})
            if self.server_pid:
                wait_gone(self.server_pid, 15)
        except Exception as exc:  # noqa: BLE001
            self.log(f"shutting the control plane down failed: {exc!r}")
        if self.args.keep_home:
            self.log(f"SHOAL_HOME kept at {self.home}")
        else:
            shutil.rmtree(self.home, ignore_errors=True)

    def measure(self, shoal_url: str) -> None:
        a, res = self.args, self.results
        sp = self.server_pid
        assert sp is not None and self.direct is not None
        res["meta"]["shoal_container"] = get_json(shoal_url + "info")
        res["meta"]["direct"] = get_json(self.direct_url + "info")
        res["meta"]["shoal_url"], res["meta"]["direct_url"] = shoal_url, self.direct_url
        containers = descendants(sp)  # the container's supervisor, init and runtime (and any warm-pool ones)
        sides: dict[str, tuple[str, dict[str, list[int]], list[str]]] = {
            "shoal": (shoal_url, {"control plane": [sp], "container": containers}, []),
            "direct": (self.direct_url, {"uvicorn": [self.direct.pid]}, []),
        }
        inner = container_port(containers, res["meta"]["shoal_container"]["pid"])
        if inner is not None:  # diagnostic: the container's own uvicorn port, the proxy bypassed
            pid, port, prefix = inner
            sides["container"] = (f"http://127.0.0.1:{port}/", {"container": containers}, prefix)
            res["meta"]["container_port"] = {"pid": pid, "port": port, "via": " ".join(prefix) or "host network"}
        else:
            res["meta"]["container_port"] = None
        order = [s for s in ("direct", "container", "shoal") if s in sides]
        for side in order:  # warm-up: container started, keep-alive connections made (proxy -> container too)
            url, procs, prefix = sides[side]
            self.log(f"warm-up {side} ...")
            wrk(url, 32, 2, procs, prefix)
        runs: dict[str, list[dict[str, Any]]] = res["runs"]
        for rnd in range(a.rounds):  # each round: every side at 32 connections, then at 1; order flips per round
            for conns, dur in ((32, a.duration), (1, a.c1_duration)):
                for side in (order if rnd % 2 == 0 else order[::-1]):
                    url, procs, prefix = sides[side]
                    self.log(f"round {rnd + 1}/{a.rounds}: {side}: wrk -t1 -c{conns} -d{dur:g}s --latency ...")
                    r = wrk(url, conns, dur, procs, prefix)
                    r["loadavg"] = os.getloadavg()[0]
                    if r["non_2xx"] or r["socket_errors"]:
                        raise RuntimeError(f"{side} c{conns}: {r['non_2xx']} non-2xx, socket errors "
                                           f"{r['socket_errors']}")
                    runs.setdefault(f"{side}_c{conns}", []).append(r)
        res["load"] = {key: median_run(rs) for key, rs in runs.items()}
        size = a.upload_mib * MIB
        for side, url in (("direct", self.direct_url), ("shoal", shoal_url)):
            self.log(f"{side}: upload {a.upload_mib} MiB ...")
            procs = {"control plane": [sp], "container": containers, "uvicorn": [self.direct.pid]}
            cpu0 = {k: sum(cpu_s(p) for p in v) for k, v in procs.items()}
            if side == "shoal":
                time.sleep(0.5)
                before = rss(sp)
                sampler = RssSampler(sp, 0.05)
                sampler.start()
            try:
                r = upload(url, size)
            finally:
                if side == "shoal":
                    sampler.stop()
            r["cpu_s"] = {k: sum(cpu_s(p) for p in v) - cpu0[k] for k, v in procs.items()}
            if side == "shoal":
                time.sleep(1.0)
                r.update(rss_before=before, rss_peak=sampler.peak, rss_after=rss(sp),
                         rss_samples=len(sampler.samples))
            res["upload"][side] = r

    # -- output ----------------------------------------------------------------------------------------------
    def report(self) -> None:
        res, meta = self.results, self.results["meta"]
        load, up = res["load"], res["upload"]
        has_inner = "container_c32" in load
        rows: list[list[str]] = []

        def cell(v: float | None, fmt: str) -> str:
            return "—" if v is None else fmt.format(v)

        def add(label: str, shoal: float | None, inner: float | None, direct: float | None, fmt: str = "{:,.0f}",
                ratio: str = "", target: str = "") -> None:
            rows.append([label, cell(shoal, fmt), cell(inner, fmt), cell(direct, fmt), ratio, target])

        def get(side: str, conns: int, key: str) -> float | None:
            r = load.get(f"{side}_c{conns}")
            return None if r is None else r[key]

        ok = lambda good: "ok" if good else "MISSED"  # noqa: E731
        s_rps, d_rps = get("shoal", 32, "rps"), get("direct", 32, "rps")
        add("requests/s, 32 connections", s_rps, get("container", 32, "rps"), d_rps,
            ratio=f"{s_rps / d_rps:.2f}x", target=f">= {TARGETS['rps']:.2f}x {ok(s_rps / d_rps >= TARGETS['rps'])}")
        for conns, key in ((32, "add_p50_c32_ms"), (1, "add_p50_c1_ms")):
            what = "32 connections" if conns == 32 else "1 connection"
            for q in ("p50", "p99"):
                sv, dv = get("shoal", conns, f"{q}_ms"), get("direct", conns, f"{q}_ms")
                added = sv - dv
                target = ""
                if q == "p50":
                    limit = TARGETS[key]
                    target = (f"added <= {limit * 1e3:.0f} us" if limit < 1 else f"added <= {limit:g} ms") + \
                        f" {ok(added <= limit)}"
                add(f"latency {q}, {what} [ms]", sv, get("container", conns, f"{q}_ms"), dv, "{:.3f}",
                    f"{added * 1e3:+.0f} us", target)
        s1, d1 = get("shoal", 1, "rps"), get("direct", 1, "rps")
        add("requests/s, 1 connection", s1, get("container", 1, "rps"), d1, ratio=f"{s1 / d1:.2f}x")
        for conns in (32, 1):
            cs = load[f"shoal_c{conns}"]["cpu_us_per_request"]
            cd = load[f"direct_c{conns}"]["cpu_us_per_request"]
            ci = load[f"container_c{conns}"]["cpu_us_per_request"] if has_inner else None
            total = cs["control plane"] + cs["container"]
            add(f"CPU per request, c{conns}, server side [us]", total, ci["container"] if ci else None,
                cd["uvicorn"], "{:.0f}", f"{total / max(cd['uvicorn'], 1e-9):.2f}x")
            add("  the control plane (proxy) [us]", cs["control plane"], None, None, "{:.0f}")
            add("  the container (uvicorn + FastAPI) [us]", cs["container"], ci["container"] if ci else None,
                cd["uvicorn"], "{:.0f}", f"{cs['container'] / max(cd['uvicorn'], 1e-9):.2f}x")
            add("  wrk [us]", cs["wrk"], ci["wrk"] if ci else None, cd["wrk"], "{:.0f}")
        us, ud = up["shoal"], up["direct"]
        gib = meta["upload_bytes"] / 1024 ** 3
        add(f"upload {gib:g} GiB, Content-Length [MB/s]", us["mb_per_s"], None, ud["mb_per_s"], "{:,.0f}",
            f"{us['mb_per_s'] / ud['mb_per_s']:.2f}x")
        add("  CPU: the control plane (proxy) [s]", us["cpu_s"]["control plane"], None, None, "{:.2f}")
        add("  CPU: the app (container / uvicorn) [s]", us["cpu_s"]["container"], None, ud["cpu_s"]["uvicorn"],
            "{:.2f}")
        grow = (us["rss_peak"] - us["rss_before"]) / MIB
        add("control plane RSS before the upload [MiB]", us["rss_before"] / MIB, None, None, "{:.1f}")
        add(f"control plane RSS peak during it ({us['rss_samples']} samples) [MiB]", us["rss_peak"] / MIB, None,
            None, "{:.1f}", f"{grow:+.1f} MiB", f"flat (a few MiB) {ok(grow < 16)}")
        add("control plane RSS 1 s after it [MiB]", us["rss_after"] / MIB, None, None, "{:.1f}",
            f"{(us['rss_after'] - us['rss_before']) / MIB:+.1f} MiB")

        print()
        print(f"shoal web bench on {meta['machine']}; load avg {meta['load_start'][0]:.2f} -> "
              f"{meta['load_end'][0]:.2f}; {meta['wall_s']:.0f}s")
        print(f"  shoal:  {meta['shoal_url']} (the ingress proxy), one container (max_containers=1, "
              f"@modal.concurrent(max_inputs=100)), image {meta['image']};")
        print("          control plane started with SHOAL_WEB_RATE_LIMIT=0 (no per-workspace rate limit)")
        inner = meta.get("container_port")
        if inner:
            print(f"  container, no proxy: wrk straight to the container's uvicorn port {inner['port']} "
                  f"({inner['via']}): what the container costs without the proxy")
        else:
            print("  container, no proxy: — (could not find the container's port, or enter its network namespace)")
        print(f"  direct: {meta['direct_cmd']}")
        for name, info in (("container", meta["shoal_container"]), ("direct", meta["direct"])):
            v = info["versions"]
            print(f"  {name + ':':10s} Python {info['python']}, loop {info['loop']}, "
                  + ", ".join(f"{k} {v[k]}" for k in v))
        rounds = self.args.rounds
        print(f"  load: wrk -t1 --latency, -c32 -d{meta['duration_s']:g}s and -c1 -d{meta['c1_duration_s']:g}s, "
              "each target warmed up first (2 s at -c32); GET / -> {\"hello\": \"world\"} (a sync `def`)"
              + (f"; medians of {rounds} rounds, order alternating" if rounds > 1 else ""))
        header = ["metric", "shoal", "container, no proxy", "direct uvicorn", "shoal vs direct", "target"]
        table = [header, *rows]
        widths = [max(len(r[i]) for r in table) for i in range(len(header))]

        def line(r: list[str]) -> str:
            return " | ".join([r[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(r[1:4], widths[1:4], strict=True)),
                               r[4].ljust(widths[4]), r[5]]).rstrip()

        print(line(header))
        print("-+-".join("-" * w for w in widths))
        for r in rows:
            print(line(r))
        print("shoal vs direct: a ratio (throughput), or shoal's figure minus direct's (latency). CPU per request: "
              "the processes' CPU time\n(utime + stime, 10 ms ticks) during the phase / requests served; "
              "the container's sums its supervisor, init and runtime.")
        sys.stdout.flush()


def container_port(pids: list[int], runtime_pid_inside: int) -> tuple[int, int, list[str]] | None:
    """(host pid, port, command prefix) of the container runtime's listening uvicorn socket: `nsenter -n` into
    its network namespace when it has its own (sandboxed containers), nothing when it shares ours."""
    for pid in pids:
        try:
            cmd = open(f"/proc/{pid}/cmdline", "rb").read()
            nspid = open(f"/proc/{pid}/status").read().split("NSpid:")[1].split("\n")[0].split()
        except (OSError, IndexError):
            continue
        if b"shoal.runtime" not in cmd or str(runtime_pid_inside) != nspid[-1]:
            continue
        try:
            inodes = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
            lines = open(f"/proc/{pid}/net/tcp").read().splitlines()[1:]
        except OSError:
            return None
        for ln in lines:
            f = ln.split()
            if f[3] == "0A" and f"socket:[{f[9]}]" in inodes and f[1].startswith("0100007F:"):
                port = int(f[1].split(":")[1], 16)
                own = os.readlink(f"/proc/{pid}/ns/net") != os.readlink("/proc/self/ns/net")
                prefix = ["nsenter", "-t", str(pid), "-n"] if own else []
                if own and (shutil.which("nsenter") is None or subprocess.run(
                        [*prefix, "true"], capture_output=True).returncode != 0):
                    return None
                return pid, port, prefix
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.web", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=8, help="seconds of each 32-connection run (default 8)")
    parser.add_argument("--c1-duration", type=float, default=5, help="seconds of each 1-connection run (default 5)")
    parser.add_argument("--upload-mib", type=int, default=1024, help="upload size in MiB (default 1024)")
    parser.add_argument("--json", metavar="PATH", help="also write the raw results as JSON here")
    parser.add_argument("--rounds", type=int, default=1,
                        help="repeat the load phases, alternating the order, and report medians (default 1)")
    parser.add_argument("--keep-home", action="store_true", help="keep the temporary SHOAL_HOME (server.log)")
    return WebBench(parser.parse_args(argv)).run()


if __name__ == "__main__":
    if __package__ in (None, ""):
        sys.path.insert(0, str(ROOT))
    sys.exit(main())
