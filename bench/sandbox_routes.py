"""What the control plane's sandbox routes cost, over HTTP with the real client (docs/sandboxes.md): an exec round
trip on a running sandbox (`POST …/exec` of `echo hi`, its output read to the end, its exit code), and a sandbox
created to the first line of its output (`echo hi` as its command), each repeated, on a control plane started for
the run in a temporary SHOAL_HOME.

    python -m bench.sandbox_routes [--repeat 50] [--gap 0.5]
    SHOAL_SANDBOX_WARM_POOL=1 python -m bench.sandbox_routes   # creations served by warm sandboxes
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time


def _pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--gap", type=float, default=0.5, help="seconds between two creations")
    args = parser.parse_args()
    home = tempfile.mkdtemp(prefix="shoal-bench-sb-")
    os.environ["SHOAL_HOME"] = home
    server = subprocess.Popen([sys.executable, "-m", "shoal.controlplane", "--port", "0", "--state-dir", home],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        while not os.path.exists(os.path.join(home, "server.json")):
            time.sleep(0.02)
        from shoal._client.transport import get_client

        c = get_client()
        app = c.call("POST", "/v1/apps/lookup", {"name": "bench-sandbox-routes", "create_if_missing": True})["app_id"]

        def first_line(path: str) -> bytes:
            offset, out = 0, b""
            while b"\n" not in out:
                r = c.call("GET", f"{path}/output?fd=stdout&offset={offset}&timeout=30")
                out, offset = out + r["data"], r["offset"]
            return out

        sid = c.call("POST", "/v1/sandboxes", {"app_id": app})["sandbox_id"]
        execs = []
        for i in range(args.repeat + 3):
            t0 = time.perf_counter()
            eid = c.call("POST", f"/v1/sandboxes/{sid}/exec", {"argv": ["echo", "hi"]})["exec_id"]
            assert first_line(f"/v1/execs/{eid}") == b"hi\n"
            assert c.call("GET", f"/v1/execs/{eid}/wait?timeout=30")["returncode"] == 0
            if i >= 3:
                execs.append(time.perf_counter() - t0)
        c.call("POST", f"/v1/sandboxes/{sid}/terminate")
        creates = []
        for i in range(max(5, args.repeat // 5) + 1):
            time.sleep(args.gap)  # (with SHOAL_SANDBOX_WARM_POOL: room for the pool to refill meanwhile)
            t0 = time.perf_counter()
            sid = c.call("POST", "/v1/sandboxes", {"app_id": app, "command": ["echo", "hi"]})["sandbox_id"]
            assert first_line(f"/v1/sandboxes/{sid}") == b"hi\n"
            if i >= 1:
                creates.append(time.perf_counter() - t0)
        warm = os.environ.get("SHOAL_SANDBOX_WARM_POOL", "0")
        for label, xs in (("exec round trip (echo hi, output to eof, exit code)", execs),
                          (f"create -> first output line (command echo hi; warm pool {warm})", creates)):
            print(f"{label}: p50 {statistics.median(xs) * 1000:.1f} ms, p90 {_pct(xs, 0.9) * 1000:.1f} ms, "
                  f"n={len(xs)}")
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    main()
