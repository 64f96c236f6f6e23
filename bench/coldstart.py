"""Cold start of a function whose module imports FastAPI: shoal with its warm pool, shoal without it, and a Ray
actor created for the call (its `__init__` imports FastAPI). Plus the memory an idle container costs.

    python -m bench.coldstart [--repeat 5]

Every shoal call goes to a new container (`single_use_containers=True`); calls are 1.5 s apart so the warm pool
can refill, as it would between real cold starts.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def shoal_first_results(warm: bool, repeat: int, names: tuple[str, ...] = ("handler",),
                        home: str | None = None) -> dict[str, list[float]]:
    """First result of `repeat` calls of each function of bench/fastapi_workload.py named in `names`, each call
    in a new container, on a control plane started with or without its warm pool (`home`: its SHOAL_HOME, so a
    second control plane finds the images built by the first)."""
    from shoal._client.transport import reset_client

    os.environ["SHOAL_HOME"] = home or tempfile.mkdtemp(prefix="shoal-bench-cold-")
    os.environ["SHOAL_WARM_POOL"] = "1" if warm else "0"
    reset_client()
    from bench import fastapi_workload as w

    try:
        with contextlib.ExitStack() as running:
            for app in {id(a): a for a in (w.oci_app if n == "handler_oci" else w.app for n in names)}.values():
                running.enter_context(app.run(quiet=True))
            out: dict[str, list[float]] = {}
            for name in names:
                fn = getattr(w, name)
                fn.remote(-1)  # builds the image once and puts it in use
                samples = out[name] = []
                for i in range(repeat):
                    time.sleep(1.5)
                    t0 = time.perf_counter()
                    fn.remote(i)
                    samples.append(time.perf_counter() - t0)
        return out
    finally:
        shutdown()


def shutdown() -> None:
    """Stops the auto-started control plane and waits for its process to exit (a next one may use its home)."""
    from shoal._client.transport import get_client, reset_client

    info = Path(os.environ["SHOAL_HOME"]) / "server.json"
    pid = json.loads(info.read_text()).get("pid") if info.exists() else None
    get_client().call("POST", "/v1/shutdown", {})
    reset_client()
    deadline = time.monotonic() + 30
    while pid and Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def ray_actor_first_results(repeat: int) -> list[float] | None:
    try:
        import ray
    except ImportError:
        return None
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, address="local")

    @ray.remote
    class Handler:
        def __init__(self) -> None:
            import fastapi  # noqa: F401

        def handle(self, x: int) -> int:
            return x

    samples = []
    for i in range(repeat + 2):  # Ray prestarts two idle workers: use them up first, as a steady stream would
        t0 = time.perf_counter()
        actor = Handler.remote()
        ray.get(actor.handle.remote(i))
        dt = time.perf_counter() - t0
        ray.kill(actor)
        if i >= 2:
            samples.append(dt)
    ray.shutdown()
    return samples


def idle_container_overhead_mib() -> tuple[float, float]:
    """(runtime RSS minus a bare interpreter's, supervisor + init RSS) of one idle sandboxed container."""
    from shoal._client.transport import get_client, reset_client

    home = tempfile.mkdtemp(prefix="shoal-bench-rss-")
    os.environ["SHOAL_HOME"] = home
    os.environ["SHOAL_WARM_POOL"] = "0"
    reset_client()
    from bench import workloads as w

    probe = "print([l for l in open('/proc/self/status') if l.startswith('VmRSS')][0].split()[1])"
    bare = int(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout)
    try:
        with w.app.run(quiet=True):
            top = w.container_pid.remote()  # sandboxed: the supervisor's host pid; else the runtime's
            chain = [top]
            while _children(chain[-1]):
                chain.append(_children(chain[-1])[0])  # supervisor → init → runtime
            runtime = _rss_kb(chain[-1])
            parents = sum(_rss_kb(p) for p in chain[:-1])
        return (runtime - bare) / 1024, parents / 1024
    finally:
        get_client().call("POST", "/v1/shutdown", {})
        reset_client()


def _rss_kb(pid: int) -> int:
    return next(int(line.split()[1]) for line in open(f"/proc/{pid}/status") if line.startswith("VmRSS"))


def _children(pid: int) -> list[int]:
    try:
        return [int(x) for x in open(f"/proc/{pid}/task/{pid}/children").read().split()]
    except OSError:
        return []


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.coldstart")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    warm = shoal_first_results(True, args.repeat)["handler"]
    cold = shoal_first_results(False, args.repeat)["handler"]
    ray_samples = ray_actor_first_results(args.repeat)
    runtime_mib, sandbox_mib = idle_container_overhead_mib()
    med = {k: statistics.median(v) * 1000 for k, v in (("warm", warm), ("cold", cold)) if v}
    ray_ms = statistics.median(ray_samples) * 1000 if ray_samples else None
    print(f"cold start to first result, module imports fastapi (median of {args.repeat}, ms):")
    print(f"  shoal, warm pool      {med['warm']:8.1f}   target <= 50")
    print(f"  shoal, no warm pool   {med['cold']:8.1f}   target <= 600")
    if ray_ms is not None:
        print(f"  ray actor (new proc)  {ray_ms:8.1f}")
        print(f"  ratio: warm pool {med['warm'] / ray_ms:.3f}x, no warm pool {med['cold'] / ray_ms:.3f}x of Ray")
    print(f"idle container: runtime {runtime_mib:.1f} MiB over a bare interpreter, sandbox supervisor + init "
          f"{sandbox_mib:.1f} MiB RSS (shared pages counted); target <= 30 MiB in all")


if __name__ == "__main__":
    main()
