"""Dashboard page loads with a large store: 1,000 apps and 100,000 calls (each with its input and final output,
one in ten a failure with its traceback), half of the calls on one function (the worst case for its page).

    .venv/bin/python -m bench.dashboard_load [--apps 1000] [--calls 100000] [--rounds 20]

The store is filled through the store's own write functions (SQLite, in a temporary SHOAL_HOME), then a real
control plane is started on it and every page is fetched `--rounds` times over HTTP with a logged-in session;
the table gives each page's median and slowest load, server and network included (docs/observability.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.request
from http.cookiejar import CookieJar
from pathlib import Path


async def fill(home: Path, n_apps: int, n_calls: int) -> dict[str, str]:
    """Apps, functions and calls in the store; returns ids worth fetching the pages of."""
    from shoal._spec.errors import dumps_exception
    from shoal.controlplane.store import SQLiteStore
    from shoal.controlplane.store import apps as app_rows
    from shoal.controlplane.store import calls as call_rows

    store = SQLiteStore(home / "state.db")
    await store.open()
    try:
        raise ValueError("bench failure")
    except ValueError as exc:
        error = dumps_exception(exc)
    functions = []
    for a in range(n_apps):
        app_id = f"ap-{a:020x}"
        app_rows.put_app(store, app_id, f"bench-app-{a}", "deployed" if a % 2 else "ephemeral", False)
        app_rows.set_stopped(store, app_id)
        for f in range(3 if a < 100 else 1):
            function_id = f"fu-{a:010x}{f:010x}"
            app_rows.write_function(store, function_id, app_id, f"fn_{f}", b"")
            functions.append(function_id)
    await store.all_flushed()
    big = functions[0]
    batch_calls, batch_in, batch_out = [], [], []
    for i in range(n_calls):
        function_id = big if i % 2 == 0 else functions[i % len(functions)]
        call_id = f"fc-{i:020x}"
        batch_calls.append(call_id)
        call_rows.put_call(store, call_id, function_id, "remote", 1)
        batch_in.append((call_id, 0, b"args"))
        failed = i % 10 == 0
        batch_out.append((call_id, 0, 0, "failure" if failed else "success", error if failed else b"result", True))
        if len(batch_in) >= 5000 or i == n_calls - 1:
            call_rows.put_inputs(store, batch_in)
            call_rows.put_outputs(store, batch_out)
            for cid in batch_calls:
                call_rows.set_state(store, cid, "complete")
            batch_calls, batch_in, batch_out = [], [], []
            await store.all_flushed()
    await store.close()
    return {"app": "ap-" + f"{0:020x}", "function": big, "call": f"fc-{0:020x}"}


def start_control_plane(home: Path) -> subprocess.Popen:
    env = {**os.environ, "SHOAL_HOME": str(home), "SHOAL_WEB_PORT": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "shoal.controlplane", "--port", "0", "--state-dir", str(home)],
                            stdout=open(home / "server.log", "ab"), stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    deadline = time.monotonic() + 60
    while not (home / "server.json").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError((home / "server.log").read_text())
        time.sleep(0.05)
    return proc


def login(url: str, token: str) -> urllib.request.OpenerDirector:
    req = urllib.request.Request(f"{url}/v1/dashboard/login", method="POST",
                                 headers={"Authorization": f"Bearer {token}"})
    import msgpack

    path = msgpack.unpackb(urllib.request.urlopen(req, timeout=30).read())["path"]
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))
    opener.open(url + path, timeout=30).read()
    return opener


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dashboard_load")
    parser.add_argument("--apps", type=int, default=1000)
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="shoal-dash-bench-"))
    proc = None
    try:
        t0 = time.perf_counter()
        ids = asyncio.run(fill(home, args.apps, args.calls))
        print(f"filled the store: {args.apps} apps, {args.calls} calls in {time.perf_counter() - t0:.1f}s",
              file=sys.stderr)
        proc = start_control_plane(home)
        url = json.loads((home / "server.json").read_text())["url"]
        opener = login(url, (home / "token").read_text().strip())
        pages = {"apps": "/dashboard/", "app": f"/dashboard/apps/{ids['app']}",
                 f"function ({args.calls // 2} calls)": f"/dashboard/functions/{ids['function']}",
                 "call": f"/dashboard/calls/{ids['call']}", "containers": "/dashboard/containers",
                 "web": "/dashboard/web", "storage": "/dashboard/storage"}
        results = {}
        for label, path in pages.items():
            times = []
            for _ in range(args.rounds):
                t = time.perf_counter()
                with opener.open(url + path, timeout=60) as resp:
                    body = resp.read()
                    assert resp.status == 200, (path, resp.status)
                times.append(time.perf_counter() - t)
            results[label] = {"median_ms": statistics.median(times) * 1000, "max_ms": max(times) * 1000,
                              "bytes": len(body)}
        print(f"dashboard page loads, {args.apps} apps and {args.calls} calls in the store (SQLite), "
              f"{args.rounds} loads each, on {os.cpu_count()} cores")
        print(f"{'page':<28} {'median ms':>10} {'max ms':>10} {'bytes':>9}")
        for label, r in results.items():
            print(f"{label:<28} {r['median_ms']:>10.1f} {r['max_ms']:>10.1f} {r['bytes']:>9}")
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))
        return 0
    except Exception:  # noqa: BLE001 - a bench reports and exits non-zero
        traceback.print_exc()
        return 1
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
