"""(d) client memory, measured in a fresh process so that memory freed by earlier sections cannot hide growth.

    python -m bench.memprobe {shoal|ray|mp} N [--ray-address ADDR]

Warms the tool up, then samples VmRSS every 10 ms while mapping a trivial function over range(N), and prints
one JSON line: baseline, peak and growth (bytes), and the kernel's VmHWM peak as a cross-check.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from bench import _proc
from bench.workloads import plain_noop


def measure(run: Callable[[], int]) -> dict[str, Any]:
    hwm_reset = _proc.reset_peak_rss()
    sampler = _proc.RssSampler(0.01)
    sampler.start()
    t0 = time.perf_counter()
    count = run()
    elapsed = time.perf_counter() - t0
    sampler.stop()
    st = _proc.status()
    out: dict[str, Any] = {
        "count": count, "elapsed_s": elapsed, "baseline": sampler.baseline, "peak": sampler.peak,
        "growth": sampler.peak - sampler.baseline, "after": st.get("VmRSS", 0), "samples": sampler.samples,
    }
    if hwm_reset:
        out["hwm_growth"] = st.get("VmHWM", 0) - sampler.baseline
    return out


@contextmanager
def shoal_ready() -> Iterator[Callable[[int], int]]:
    from bench import workloads as w

    with w.app.run():
        assert sum(1 for _ in w.noop.map(range(2000))) == 2000  # warm: containers up, client loop started

        def run(n: int) -> int:
            count = 0
            for _ in w.noop.map(range(n)):
                count += 1
            return count

        yield run


@contextmanager
def ray_ready(address: str) -> Iterator[Callable[[int], int]]:
    import logging

    import ray

    ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR)
    try:
        def noop(x):  # local, so Ray pickles it by value: its workers need not import `bench`
            return x

        task = ray.remote(noop)
        ray.get([task.remote(i) for i in range(500)])

        def run(n: int) -> int:
            return len(ray.get([task.remote(i) for i in range(n)]))

        yield run
    finally:
        ray.shutdown()


@contextmanager
def mp_ready() -> Iterator[Callable[[int], int]]:
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(2) as ex:
        list(ex.map(plain_noop, range(2000), chunksize=256))

        def run(n: int) -> int:
            count = 0
            for _ in ex.map(plain_noop, range(n), chunksize=256):
                count += 1
            return count

        yield run


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.memprobe")
    parser.add_argument("tool", choices=["shoal", "ray", "mp"])
    parser.add_argument("n", type=int)
    parser.add_argument("--ray-address", default=None)
    args = parser.parse_args()
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # the bench asks for stacks when this hangs
    ready = {"shoal": shoal_ready, "mp": mp_ready}.get(args.tool)
    ctx = ready() if ready else ray_ready(args.ray_address)
    with ctx as run:
        result = measure(lambda: run(args.n))
    result["ok"] = result["count"] == args.n
    print(json.dumps(result), flush=True)
    sys.exit(0 if result["ok"] else 1)


if __name__ == "__main__":
    main()
