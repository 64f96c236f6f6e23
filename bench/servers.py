"""Servers (`@app.server()`) through shoal's ingress proxy vs the same process called directly, and a Server's
scale-up under a step of load: `python -m bench.servers`.

1. **The hop.** One tiny ASGI app (`GET /` -> `hello world`, 11 bytes) on `uvicorn --http httptools --loop
   asyncio --lifespan off`, one worker, the same command on both sides:
   * shoal: started by the Server's `@modal.enter()` on 0.0.0.0:8000 in its container (`max_containers=1`,
     `unauthenticated=True`), requests to `Server.get_url()`;
   * direct: started by hand on the host, 127.0.0.1 on a free port.
   Load from `wrk -t1 --latency`, at 1 connection and at 32, the sides taking turns, each warmed up first:
   the added p50 (shoal minus direct) and the requests/s ratio.
2. **Scale-up.** A Server with `target_concurrency=8` whose `GET /sleep?ms=100` answers its container id after
   100 ms. One client (aiohttp, a loop of GETs) starts at zero containers: 503 until the first container is
   ready, retried every 50 ms (counted apart). After a couple of seconds at one client, 63 more join (a step
   to 64 concurrent requests, so 8 containers are the target). Reported: containers ready over time (from the
   control plane's container list, each container's ready time computed from its age and start timings), the
   time from the step to 8 ready containers, and every answer that was not a 200 once the first container was
   up (must be 0). Twice, each from zero in an app run of its own: with the default `scaleup_window` (the
   autoscaler's panic window, 6 s), whose average load ramps up over the window, and with `scaleup_window=2`.

The control plane is a private one (temporary `SHOAL_HOME`), started with `SHOAL_WEB_RATE_LIMIT=0`: the default
is Modal's workspace rate limit of 200 requests/s, which would cap both parts.

    python -m bench.servers [--duration 5] [--rounds 1] [--json out.json] [--keep-home]

Needs `wrk` (Debian: `apt-get install -y wrk`). The app is at module level because the containers import this
module again (as `bench.servers`); nothing heavy is imported at module level.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import shoal as modal

from ._proc import cpu_s, free_port, parse_wrk, wait_gone

ROOT = Path(__file__).resolve().parent.parent
TARGETS = {"added_p50_ms": 0.5, "rps_ratio": 0.80}
STEP_CLIENTS = 64
TARGET_CONCURRENCY = 8
SLEEP_MS = 100
FAST_WINDOW_S = 2

# -- the workload (module level: the container imports this module again) ---------------------------------------
HELLO_ASGI = '''\
import asyncio
import os

CONTAINER = os.environ.get("SHOAL_CONTAINER_ID", "direct").encode()
HELLO = b"hello world"


async def app(scope, receive, send):
    if scope["path"] == "/sleep":
        ms = float(dict(p.split("=", 1) for p in scope["query_string"].decode().split("&") if "=" in p).get("ms", 100))
        await asyncio.sleep(ms / 1000)
        body = CONTAINER
    else:
        body = HELLO
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
'''


def uvicorn_command(host: str, port: int) -> list[str]:
    """The server both sides run: HELLO_ASGI written to a new directory, served by one uvicorn worker."""
    app_dir = tempfile.mkdtemp(prefix="hello-asgi-")
    Path(app_dir, "hello_asgi.py").write_text(HELLO_ASGI)
    return [sys.executable, "-m", "uvicorn", "hello_asgi:app", "--app-dir", app_dir, "--host", host, "--port",
            str(port), "--http", "httptools", "--loop", "asyncio", "--lifespan", "off", "--no-access-log",
            "--log-level", "warning"]


app = modal.App("bench-servers")


@app.server(unauthenticated=True, max_containers=1)
class Hello:
    @modal.enter()
    def start(self):
        self.process = subprocess.Popen(uvicorn_command("0.0.0.0", 8000))


@app.server(unauthenticated=True, target_concurrency=TARGET_CONCURRENCY)
class Scaling:
    """The default scaleup_window (the autoscaler's panic window: 6 s here)."""

    @modal.enter()
    def start(self):
        self.process = subprocess.Popen(uvicorn_command("0.0.0.0", 8000))


@app.server(unauthenticated=True, target_concurrency=TARGET_CONCURRENCY, scaleup_window=FAST_WINDOW_S)
class ScalingFast:
    @modal.enter()
    def start(self):
        self.process = subprocess.Popen(uvicorn_command("0.0.0.0", 8000))


# -- load ----------------------------------------------------------------------------------------------------------
def wrk(url: str, connections: int, duration: float) -> dict[str, Any]:
    """One `wrk -t1 --latency` run: requests/s, p50/p99 [ms]; any error or non-2xx answer fails the bench."""
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{duration:g}s", "--latency", "--timeout", "10s",
                          url], capture_output=True, text=True, check=True).stdout
    figures = parse_wrk(out)
    if figures["socket_errors"] or figures["non_2xx"]:
        raise RuntimeError(f"wrk saw errors against {url}: socket errors {figures['socket_errors']}, "
                           f"{figures['non_2xx']} non-2xx/3xx answers")
    return figures


def wait_served(url: str, timeout: float) -> tuple[float, int]:
    """GET `url` until 200 (a Server at zero answers 503 while its container starts): (seconds, 503s seen)."""
    t0, not_yet = time.perf_counter(), 0
    while True:
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                if resp.status == 200:
                    return time.perf_counter() - t0, not_yet
        except urllib.error.HTTPError as exc:
            if exc.code != 503:
                raise
            not_yet += 1
        except OSError:
            pass
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError(f"{url} not served within {timeout}s")
        time.sleep(0.05)


def containers(function_id: str) -> list[dict[str, Any]]:
    from shoal._client.transport import get_client

    return [c for c in get_client().call("GET", "/v1/containers")["containers"] if c["function_id"] == function_id]


async def step_load(url: str, function_id: str, hold_s: float, after_s: float, max_s: float) -> dict[str, Any]:
    """One client from zero containers, then STEP_CLIENTS at once; see the module docstring."""
    import aiohttp

    answers: list[tuple[float, int, str]] = []  # (monotonic time, status or -1, container id / error)
    ready_at: dict[str, float] = {}  # container id -> monotonic time it became ready
    first_ok = asyncio.Event()
    stop = asyncio.Event()
    target_met = asyncio.Event()

    async def client(session: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            try:
                async with session.get(f"{url}/sleep?ms={SLEEP_MS}") as r:
                    body = (await r.read()).decode(errors="replace")
                answers.append((time.monotonic(), r.status, body if r.status == 200 else body[:120]))
                if r.status == 200:
                    first_ok.set()
                elif not first_ok.is_set():
                    await asyncio.sleep(0.05)  # 503 at zero: retry soon (a client honouring Retry-After waits 1 s)
            except Exception as exc:  # noqa: BLE001 - every failure counts
                answers.append((time.monotonic(), -1, repr(exc)[:120]))
                await asyncio.sleep(0.05)

    async def watch() -> None:
        while not stop.is_set():
            now = time.monotonic()
            for c in await asyncio.to_thread(containers, function_id):
                if c["state"] == "ready" and c["container_id"] not in ready_at:
                    total = (c.get("timings") or {}).get("total")
                    ready_at[c["container_id"]] = now - c["age_s"] + total if total is not None else now
            if len(ready_at) >= TARGET_CONCURRENCY:
                target_met.set()
            await asyncio.sleep(0.1)

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:
        watcher = asyncio.create_task(watch())
        t_zero = time.monotonic()
        tasks = [asyncio.create_task(client(session))]
        await asyncio.wait_for(first_ok.wait(), 120)
        t_first = min(t for t, status, _ in answers if status == 200)
        await asyncio.sleep(hold_s)
        t_step = time.monotonic()
        tasks += [asyncio.create_task(client(session)) for _ in range(STEP_CLIENTS - 1)]
        try:
            await asyncio.wait_for(target_met.wait(), max_s)
            await asyncio.sleep(after_s)
        except asyncio.TimeoutError:
            pass
        stop.set()
        await asyncio.gather(*tasks)
        await watcher
        t_end = time.monotonic()
    before = [a for a in answers if a[0] <= t_first and a[1] != 200]
    after = [a for a in answers if a[0] > t_first and a[1] != 200]
    ready_times = sorted(ready_at.values())
    reached = ready_times[TARGET_CONCURRENCY - 1] - t_step if len(ready_times) >= TARGET_CONCURRENCY else None
    per_container: dict[str, int] = {}
    for t, status, cid in answers:
        if status == 200 and t > t_step:
            per_container[cid] = per_container.get(cid, 0) + 1
    step_answers = [a for a in answers if a[0] > t_step]
    return {
        "first_container_s": t_first - t_zero, "answers_before_first": len(before),
        "statuses_before_first": sorted({a[1] for a in before}),
        "errors_after_first": len(after), "error_samples": [a[2] for a in after[:5]],
        "step_at_s": t_step - t_zero, "target_reached_s": reached,
        "ready_over_time": [(round(t - t_step, 2), i + 1) for i, t in enumerate(ready_times)],
        "containers_at_end": len(ready_times), "requests_after_step": len(step_answers),
        "rps_after_step": len(step_answers) / max(1e-9, t_end - t_step), "per_container": per_container,
        "ran_s": t_end - t_zero,
    }


# -- the run -------------------------------------------------------------------------------------------------------
class ServersBench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.home = Path(tempfile.mkdtemp(prefix="shoal-bench-servers-"))
        self.results: dict[str, Any] = {"meta": {}, "hop": {}, "scale": {}}
        self.direct: subprocess.Popen | None = None

    def log(self, msg: str) -> None:
        print(f"bench.servers: {msg}", file=sys.stderr, flush=True)

    def run(self) -> int:
        a, meta = self.args, self.results["meta"]
        if shutil.which("wrk") is None:
            print("bench.servers: wrk not found (Debian/Ubuntu: apt-get install -y wrk)", file=sys.stderr)
            return 2
        meta.update(machine=f"{os.cpu_count()} cores", load_start=os.getloadavg()[0],
                    started=time.strftime("%Y-%m-%d %H:%M:%S"))
        t_start = time.time()
        os.environ["SHOAL_HOME"] = str(self.home)  # a control plane of its own...
        os.environ["SHOAL_WEB_RATE_LIMIT"] = "0"  # ...without the workspace rate limit (200 requests/s)
        for name in ("SHOAL_SERVER_URL", "SHOAL_TOKEN", "SHOAL_WEB_PORT"):
            os.environ.pop(name, None)
        from shoal._client.transport import get_client, reset_client

        reset_client()
        import bench.servers as w  # the module the containers import, not __main__

        code = 0
        try:
            get_client()  # auto-starts the control plane
            with w.app.run(quiet=True):
                self.hop(w.Hello.get_url())
            for key, server in (("default", w.Scaling), ("fast", w.ScalingFast)):
                # each in an app run of its own, from no container at all (8 is this machine's container cap)
                wait_until(lambda: not get_client().call("GET", "/v1/containers")["containers"], 30)
                with w.app.run(quiet=True):
                    self.log(f"scale-up ({server.name}): 1 client from zero, then {STEP_CLIENTS} ...")
                    self.results["scale"][key] = asyncio.run(step_load(server.get_url(), server.object_id, a.hold,
                                                                       a.after, a.max_wait))
        except Exception:  # noqa: BLE001
            import traceback

            traceback.print_exc()
            code = 1
        finally:
            self.stop_direct()
            self.shutdown(get_client)
            meta["load_end"] = os.getloadavg()[0]
            meta["wall_s"] = time.time() - t_start
        if code == 0:
            self.report()
            if any(sc["errors_after_first"] or sc["target_reached_s"] is None
                   for sc in self.results["scale"].values()):
                code = 1
        if a.json:
            Path(a.json).write_text(json.dumps(self.results, indent=2, default=str) + "\n")
        return code

    def hop(self, shoal_url: str) -> None:
        a, res = self.args, self.results
        port = free_port()
        cmd = uvicorn_command("127.0.0.1", port)
        res["meta"]["uvicorn"] = " ".join(["uvicorn", cmd[3], *cmd[10:]])
        self.direct = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)
        direct_url = f"http://127.0.0.1:{port}/"
        shoal_url = shoal_url.rstrip("/") + "/"
        wait_served(direct_url, 30)
        res["meta"]["first_request_s"], res["meta"]["first_503s"] = wait_served(shoal_url, 120)
        sides = {"direct": direct_url, "shoal": shoal_url}
        for side, url in sides.items():
            self.log(f"warm-up {side} ...")
            wrk(url, 32, 2)
        control_plane = int(json.loads((self.home / "server.json").read_text())["pid"])
        runs: dict[str, list[dict[str, Any]]] = {}
        for i in range(a.rounds):
            for conns in (1, 32):
                for side in (("direct", "shoal") if i % 2 == 0 else ("shoal", "direct")):  # alternate the order
                    self.log(f"round {i + 1}: {side}: wrk -t1 -c{conns} -d{a.duration:g}s --latency ...")
                    cpu0 = cpu_s(control_plane)
                    r = wrk(sides[side], conns, a.duration)
                    r["control_plane_us_per_request"] = (cpu_s(control_plane) - cpu0) / r["requests"] * 1e6
                    runs.setdefault(f"{side}_c{conns}", []).append(r)
        for key, rs in runs.items():  # the median of each figure over the rounds
            res["hop"][key] = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
        res["hop_runs"] = runs

    def stop_direct(self) -> None:
        if self.direct is not None and self.direct.poll() is None:
            self.direct.send_signal(signal.SIGINT)
            try:
                self.direct.wait(10)
            except subprocess.TimeoutExpired:
                self.direct.kill()

    def shutdown(self, get_client: Any) -> None:
        try:
            pid = int(json.loads((self.home / "server.json").read_text())["pid"])
            get_client().call("POST", "/v1/shutdown", {})
            if not wait_gone(pid, 15):
                raise TimeoutError(f"the control plane (pid {pid}) still runs")
        except Exception as exc:  # noqa: BLE001
            self.log(f"shutting the control plane down failed: {exc!r}")
        if self.args.keep_home:
            self.log(f"SHOAL_HOME kept at {self.home}")
        else:
            shutil.rmtree(self.home, ignore_errors=True)

    # -- output ----------------------------------------------------------------------------------------------
    def report(self) -> None:
        meta, hop, scale = self.results["meta"], self.results["hop"], self.results["scale"]
        ok = lambda good: "ok" if good else "MISSED"  # noqa: E731
        rows = [["metric", "shoal Server", "direct", "shoal vs direct", "target"]]
        for conns in (1, 32):
            s, d = hop[f"shoal_c{conns}"], hop[f"direct_c{conns}"]
            added = s["p50_ms"] - d["p50_ms"]
            rows.append([f"latency p50, {conns} connection{'s' if conns > 1 else ''} [ms]", f"{s['p50_ms']:.3f}",
                         f"{d['p50_ms']:.3f}", f"{added * 1e3:+.0f} us",
                         f"added <= {TARGETS['added_p50_ms'] * 1e3:.0f} us {ok(added <= TARGETS['added_p50_ms'])}"])
            rows.append([f"latency p99, {conns} connection{'s' if conns > 1 else ''} [ms]", f"{s['p99_ms']:.3f}",
                         f"{d['p99_ms']:.3f}", f"{(s['p99_ms'] - d['p99_ms']) * 1e3:+.0f} us", ""])
            rows.append([f"  control plane CPU per request, {conns} conn. [us]",
                         f"{s['control_plane_us_per_request']:.0f}", "—", "", ""])
            ratio = s["rps"] / d["rps"]
            rows.append([f"requests/s, {conns} connection{'s' if conns > 1 else ''}", f"{s['rps']:,.0f}",
                         f"{d['rps']:,.0f}", f"{ratio:.2f}x",
                         f">= {TARGETS['rps_ratio']:.2f}x {ok(ratio >= TARGETS['rps_ratio'])}" if conns == 32 else ""])
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        print()
        print(f"shoal Servers bench on {meta['machine']}; load avg {meta['load_start']:.2f} -> {meta['load_end']:.2f}; "
              f"{meta['wall_s']:.0f}s; control plane started with SHOAL_WEB_RATE_LIMIT=0 (no workspace rate limit)")
        print(f"1. the hop: {meta['uvicorn']} (GET / -> 11 bytes), one worker on each side; shoal: started by "
              "@modal.enter() in the Server's container (max_containers=1), through the proxy; direct: the same "
              f"command on the host; wrk -t1 --latency -d{self.args.duration:g}s, sides in turn, warmed up first"
              + (f", medians of {self.args.rounds} rounds" if self.args.rounds > 1 else "") + ". "
              f"First request at zero: 200 after {meta['first_request_s']:.2f}s ({meta['first_503s']} x 503 before)")
        for r in rows:
            print(" | ".join([r[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(r[1:3], widths[1:3], strict=True)),
                              r[3].ljust(widths[3]), r[4]]).rstrip())
            if r is rows[0]:
                print("-+-".join("-" * w for w in widths))
        print(f"2. scale-up: target_concurrency={TARGET_CONCURRENCY}, GET /sleep?ms={SLEEP_MS}; 1 client from zero, "
              f"then a step to {STEP_CLIENTS} clients at t=0; at most 2 containers start at once on this machine")
        for key, window in (("default", "default scaleup_window (6 s)"),
                            ("fast", f"scaleup_window={FAST_WINDOW_S}")):
            sc = scale[key]
            reached = sc["target_reached_s"]
            print(f"   {window}: step {sc['step_at_s']:.1f}s after the first request")
            print(f"     first container ready (from zero): {sc['first_container_s']:.2f}s; answers before it: "
                  f"{sc['answers_before_first']} (statuses {sc['statuses_before_first']}, retried every 50 ms)")
            print("     containers ready over time [s after the step: count]: "
                  + ", ".join(f"{t:+.2f}: {n}" for t, n in sc["ready_over_time"]))
            print(f"     time from the step to {TARGET_CONCURRENCY} ready containers: "
                  + (f"{reached:.2f}s" if reached is not None else "NOT REACHED"))
            print(f"     errors after the first container was up: {sc['errors_after_first']} "
                  f"{ok(sc['errors_after_first'] == 0)} (target 0) {sc['error_samples'] or ''}".rstrip())
            spread = sorted(sc["per_container"].values(), reverse=True)
            print(f"     after the step: {sc['requests_after_step']:,} requests ({sc['rps_after_step']:,.0f}/s), "
                  f"per container {spread}; {sc['containers_at_end']} containers ready at the end")
        sys.stdout.flush()


def wait_until(predicate: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.servers", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=5, help="seconds of each wrk run (default 5)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="repeat the hop's load phases, sides in alternating order, and report medians (1)")
    parser.add_argument("--hold", type=float, default=2, help="seconds at one client before the step (default 2)")
    parser.add_argument("--after", type=float, default=3, help="seconds of load after the target count (default 3)")
    parser.add_argument("--max-wait", type=float, default=30, help="give up on the target count after this (30)")
    parser.add_argument("--json", metavar="PATH", help="also write the raw results as JSON here")
    parser.add_argument("--keep-home", action="store_true", help="keep the temporary SHOAL_HOME (server.log)")
    return ServersBench(parser.parse_args(argv)).run()


if __name__ == "__main__":
    if __package__ in (None, ""):
        sys.path.insert(0, str(ROOT))
    sys.exit(main())
