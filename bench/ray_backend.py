"""shoal on a Ray cluster next to plain Ray tasks on the same cluster, in one run:

    python -m bench.ray_backend [--quick] [--json out.json]

A three-node cluster is built on this machine (`ray.cluster_utils.Cluster`: a head and two workers, 2 CPUs
each, token authentication on, node health checks every 0.5 s, a node dead after 4 missed ones), and a shoal
control plane of its own (temporary SHOAL_HOME) runs with `SHOAL_BACKEND=ray` against it.

(a) throughput: `.map` of N trivial inputs on shoal (containers in Ray actors; inputs over shoal's own TCP
    stream), and N plain Ray tasks (`ray.get([f.remote(i) ...])`) from a driver on the same cluster. Also the
    first result of a never-run function (an actor placed and a container started in it) next to a new Ray
    actor's first call.
(b) failover: 300 inputs of 50 ms each on three workers, one per node (shoal: three containers; Ray: tasks
    that take a whole node's 2 CPUs); a worker node is killed (SIGKILL of its processes) once the run is under
    way. Reported: from the node's death to the last result, and the run's time against the same run without a
    death. For shoal also: from the node's death to the control plane declaring its containers dead.

Timings are this machine's (2 cores shared with the cluster's own daemons); ratios are the point.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):
    sys.path.insert(0, str(ROOT))

HEALTH_CHECKS = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500,
                 "health_check_timeout_ms": 500, "health_check_failure_threshold": 4}
FAILOVER_N = 300
FAILOVER_S = 0.05


@contextlib.contextmanager
def _output_to(path: Path) -> Iterator[None]:
    """Processes started meanwhile (the cluster's raylets and their state dumps) write to `path`, not here."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for f in (*saved, fd):
            os.close(f)


def _cluster() -> Any:
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(16))
    from ray._raylet import AuthenticationTokenLoader, Config
    from ray.cluster_utils import Cluster

    Config.initialize("")  # this process read the mode when it imported ray
    AuthenticationTokenLoader.instance().reset_cache()
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 2, "include_dashboard": False, "_system_config": HEALTH_CHECKS})
    for _ in range(2):
        cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    return cluster


def _start_control_plane(home: Path, address: str) -> subprocess.Popen:
    env = {**os.environ, "SHOAL_BACKEND": "ray", "SHOAL_RAY_ADDRESS": address, "SHOAL_WEB_PORT": "0"}
    log = open(home / "server.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "shoal.controlplane", "--port", "0", "--state-dir", str(home)],
                            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    deadline = time.monotonic() + 60
    while not (home / "server.json").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"control plane did not start: {(home / 'server.log').read_text()[-2000:]}")
        time.sleep(0.05)
    return proc


def _containers(tag: str) -> list[dict[str, Any]]:
    from shoal._client.transport import get_client

    return [c for c in get_client().call("GET", "/v1/containers")["containers"] if c["function"] == tag]


def _wait(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


class Bench:
    def __init__(self, quick: bool) -> None:
        self.n = 2000 if quick else 10_000
        self.reps = 1 if quick else 3
        self.rows: dict[str, dict[str, Any]] = {}
        self.ray_log = Path(os.devnull)

    def set(self, key: str, tool: str, value: float, **details: Any) -> None:
        self.rows.setdefault(key, {})[tool] = value
        if details:
            self.rows[key].setdefault("details", {})[tool] = details

    # -- (a) -----------------------------------------------------------------------------------------------
    def shoal_throughput(self, w: Any) -> None:
        w.noop.remote(0)  # the app's source is in Ray's object store; Ray's idle workers are in use
        samples = []
        for i in range(3):  # never-run functions: an actor placed, its container started on its node
            t0 = time.perf_counter()
            getattr(w, f"cold_{i}").remote(0)
            samples.append(time.perf_counter() - t0)
        self.set("cold", "shoal", statistics.median(samples), samples=samples)
        list(w.noop.map(range(1000)))  # measured: the map below batches inputs
        times = []
        for _ in range(self.reps):
            t0 = time.perf_counter()
            out = list(w.noop.map(range(self.n)))
            times.append(time.perf_counter() - t0)
            assert out == list(range(self.n))
        self.set("throughput", "shoal", self.n / statistics.median(times), seconds=times,
                 containers=len(_containers("noop")))

    def ray_throughput(self, ray: Any) -> None:
        @ray.remote
        def noop(x):
            return x

        @ray.remote(num_cpus=0.125)
        class Box:
            def call(self, x):
                return x

        samples = []
        for _ in range(5):  # the first two may find Ray's prestarted idle workers
            t0 = time.perf_counter()
            box = Box.remote()
            ray.get(box.call.remote(0))
            samples.append(time.perf_counter() - t0)
            ray.kill(box)
        self.set("cold", "ray", statistics.median(samples[2:]), samples=samples)

        ray.get([noop.remote(i) for i in range(500)])  # workers started
        times = []
        for _ in range(self.reps):
            t0 = time.perf_counter()
            out = ray.get([noop.remote(i) for i in range(self.n)])
            times.append(time.perf_counter() - t0)
            assert out == list(range(self.n))
        self.set("throughput", "ray", self.n / statistics.median(times), seconds=times)

    # -- (b) -----------------------------------------------------------------------------------------------
    def shoal_failover(self, w: Any, cluster: Any) -> None:
        assert _wait(lambda: sum(c["state"] == "ready" for c in _containers("work")) == 3, 120)
        t0 = time.perf_counter()
        assert [r[0] for r in w.work.map(range(FAILOVER_N), kwargs={"seconds": FAILOVER_S})] == list(
            range(FAILOVER_N))
        baseline = time.perf_counter() - t0
        assert _wait(lambda: sum(c["state"] == "ready" for c in _containers("work")) == 3, 120)
        workers = {n.node_id: n for n in cluster.worker_nodes}
        on_victim = [c for c in _containers("work") if c["node"] in workers]
        assert on_victim, "no container of the failover function on a worker node"
        victim = on_victim[0]["node"]
        doomed = {c["container_id"] for c in _containers("work") if c["node"] == victim}
        results: list[Any] = []
        times: dict[str, float] = {}

        def run() -> None:
            t = time.perf_counter()
            for r in w.work.map(range(FAILOVER_N), kwargs={"seconds": FAILOVER_S}):
                results.append(r)
            times["end"] = time.perf_counter()
            times["total"] = times["end"] - t

        th = threading.Thread(target=run)
        th.start()
        _wait(lambda: len(results) >= FAILOVER_N // 3, 120)
        t_kill = time.perf_counter()
        with _output_to(self.ray_log):
            cluster.remove_node(workers[victim], allow_graceful=False)
        _wait(lambda: not any(c["container_id"] in doomed for c in _containers("work")), 120)
        detected = time.perf_counter() - t_kill
        th.join(300)
        assert [r[0] for r in results] == list(range(FAILOVER_N)), "lost or wrong results"
        self.set("failover_last", "shoal", times["end"] - t_kill)
        self.set("failover_total", "shoal", times["total"], baseline=baseline)
        self.set("failover_extra", "shoal", times["total"] - baseline)
        self.set("failover_detect", "shoal", detected)
        with _output_to(self.ray_log):
            cluster.add_node(num_cpus=2)
            cluster.wait_for_nodes()

    def ray_failover(self, ray: Any, cluster: Any) -> None:
        @ray.remote(num_cpus=2, max_retries=3)
        def work(x, seconds):
            time.sleep(seconds)
            return x, ray.get_runtime_context().get_node_id()

        def run_all() -> list[Any]:
            return ray.get([work.remote(i, FAILOVER_S) for i in range(FAILOVER_N)])

        run_all()  # workers started on every node
        t0 = time.perf_counter()
        assert [r[0] for r in run_all()] == list(range(FAILOVER_N))
        baseline = time.perf_counter() - t0
        victim = next(iter(cluster.worker_nodes))
        refs = [work.remote(i, FAILOVER_S) for i in range(FAILOVER_N)]
        t0 = time.perf_counter()
        ready, _ = ray.wait(refs, num_returns=FAILOVER_N // 3, timeout=120)
        t_kill = time.perf_counter()
        with _output_to(self.ray_log):
            cluster.remove_node(victim, allow_graceful=False)
        out = ray.get(refs)
        end = time.perf_counter()
        assert [r[0] for r in out] == list(range(FAILOVER_N)), "lost or wrong results"
        self.set("failover_last", "ray", end - t_kill)
        self.set("failover_total", "ray", end - t0, baseline=baseline)
        self.set("failover_extra", "ray", end - t0 - baseline)
        with _output_to(self.ray_log):
            cluster.add_node(num_cpus=2)
            cluster.wait_for_nodes()

    # -- output --------------------------------------------------------------------------------------------
    def table(self) -> str:
        spec = [
            ("throughput", f"(a) .map of {self.n // 1000}k trivial inputs [inputs/s]", "higher"),
            ("cold", "(a) first result: new container / new Ray actor, median of 3 [s]", "lower"),
            ("failover_detect", "(b) node death → its containers declared dead [s]", "lower"),
            ("failover_last", "(b) node death → last result [s]", "lower"),
            ("failover_total", f"(b) {FAILOVER_N} × {FAILOVER_S * 1000:.0f} ms with a node death [s]", "lower"),
            ("failover_extra", "(b) … minus the same run without one [s]", "lower"),
        ]
        lines = [["metric", "shoal (ray backend)", "ray tasks", "shoal / ray"]]
        for key, label, better in spec:
            row = self.rows.get(key, {})
            s, r = row.get("shoal"), row.get("ray")
            ratio = ""
            if isinstance(s, float) and isinstance(r, float) and r > 0 and s > 0:
                ratio = f"{s / r:.2g}x " + ("throughput" if better == "higher" else "time")
            lines.append([label, _fmt(s), _fmt(r), ratio])
        widths = [max(len(x[i]) for x in lines) for i in range(4)]
        out = []
        for i, r in enumerate(lines):
            out.append(" | ".join([r[0].ljust(widths[0]), r[1].rjust(widths[1]), r[2].rjust(widths[2]), r[3]]))
            if i == 0:
                out.append("-+-".join("-" * w for w in widths))
        return "\n".join(out)


def _fmt(v: Any) -> str:
    if v is None:
        return "—"
    if v >= 1000:
        return f"{v:,.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ray_backend")
    parser.add_argument("--quick", action="store_true", help="2k inputs, one repetition")
    parser.add_argument("--json", type=Path, default=None, help="also write the raw results here")
    args = parser.parse_args()
    try:
        import ray
    except ImportError:
        print("bench.ray_backend: ray is not installed (pip install 'shoal[ray]')", file=sys.stderr)
        return 2
    home = Path(tempfile.mkdtemp(prefix="shoal-bench-ray-"))
    os.environ["SHOAL_HOME"] = str(home)
    os.environ.pop("SHOAL_SERVER_URL", None)
    b = Bench(args.quick)
    t_start = time.perf_counter()
    ray_log = home / "ray-nodes.log"
    with _output_to(ray_log):
        cluster = _cluster()
    b.ray_log = ray_log
    cp = None
    try:
        cp = _start_control_plane(home, cluster.address)
        from bench import ray_workloads as w

        with w.app.run(quiet=True):
            b.shoal_throughput(w)
            b.shoal_failover(w, cluster)
        # Ray's driver prints the raylets' death notices and state dumps: to the log, not over the table.
        with _output_to(ray_log):
            ray.init(address=cluster.address, log_to_driver=False, logging_level="ERROR")
            b.ray_throughput(ray)
            b.ray_failover(ray, cluster)
    finally:
        if ray.is_initialized():
            with _output_to(ray_log):
                ray.shutdown()
        if cp is not None:
            cp.terminate()
            try:
                cp.wait(15)
            except subprocess.TimeoutExpired:
                cp.kill()
        with _output_to(ray_log):
            for node in list(cluster.worker_nodes):
                cluster.remove_node(node, allow_graceful=False)
            if cluster.head_node is not None:
                cluster.remove_node(cluster.head_node, allow_graceful=False)
        shutil.rmtree(home, ignore_errors=True)
    print(f"shoal Ray backend vs Ray tasks, one 3-node Ray {ray.__version__} cluster on this machine "
          f"({os.cpu_count()} cores), {time.perf_counter() - t_start:.0f} s")
    print(b.table())
    tp = b.rows.get("throughput", {})
    if isinstance(tp.get("shoal"), float) and isinstance(tp.get("ray"), float):
        print(f"throughput: shoal is {tp['shoal'] / tp['ray']:.1f}x Ray tasks (target >= 5x)")
    if args.json:
        args.json.write_text(json.dumps(b.rows, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
