"""The Ray backend on a multi-node Ray cluster built on this machine (`ray.cluster_utils.Cluster`): a head and two
workers, one with a (fake) A100, one in region eu-west, token authentication on, node health checks tuned so a
dead node is noticed in seconds. A control plane runs with `SHOAL_BACKEND=ray` against it.

The tests run in file order: the raylet test replaces the eu-west node it kills; the node-death test, near the
end, takes a worker away for good.
"""

from __future__ import annotations

import os
import secrets
import signal
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ..conftest import ControlPlane, _use_home, run_cli, wait_for

ray = pytest.importorskip("ray", reason="the Ray backend needs ray (pip install 'shoal[ray]')")
from ray.cluster_utils import Cluster  # noqa: E402

# With `--dist loadgroup` these tests share one worker and so one cluster (where loadgroup works: with
# pytest 9.2 and xdist 3.8 it silently does not group). Split over workers, each worker builds its own
# cluster; each test needs only that the tests before it on its worker left three nodes up.
pytestmark = pytest.mark.xdist_group("ray-cluster")

# A dead node is noticed after ~2 s instead of ~15 s (GCS health checks of the raylets).
HEALTH_CHECKS = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500,
                 "health_check_timeout_ms": 500, "health_check_failure_threshold": 4}


@dataclass
class RayNodes:
    cluster: Any
    head: Any
    gpu: Any
    eu: Any


@pytest.fixture(scope="module")
def ray_nodes() -> Iterator[RayNodes]:
    saved = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    # Every process joining the cluster (its nodes, the control plane) needs the mode and the token.
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(16)
    # This process read Ray's config when it imported ray: read it again (as `ray.init()` does when it turns
    # token authentication on), and forget any token it loaded.
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 2, "include_dashboard": False, "_system_config": HEALTH_CHECKS})
    try:
        gpu = cluster.add_node(num_cpus=2, num_gpus=1, resources={"accelerator_type:A100": 1})
        eu = cluster.add_node(num_cpus=2, resources={"region:eu-west": 1})
        cluster.wait_for_nodes()
        yield RayNodes(cluster, cluster.head_node, gpu, eu)
    finally:
        for node in list(cluster.worker_nodes):
            cluster.remove_node(node, allow_graceful=False)
        if cluster.head_node is not None:
            cluster.remove_node(cluster.head_node, allow_graceful=False)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def ray_control_plane(ray_nodes: RayNodes, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    previous = os.environ.get("SHOAL_HOME")
    cp = ControlPlane(tmp_path_factory.mktemp("shoal-ray-home"), env={
        "SHOAL_BACKEND": "ray", "SHOAL_RAY_ADDRESS": ray_nodes.cluster.address}).start()
    _use_home(cp.home)
    yield cp
    cp.stop()
    if previous:
        _use_home(Path(previous))


@pytest.fixture(scope="module")
def app(ray_control_plane: ControlPlane) -> Iterator[Any]:
    import ray_app

    with ray_app.app.run():
        yield ray_app


def containers(tag: str | None = None) -> list[dict[str, Any]]:
    from shoal._client.transport import get_client

    out = get_client().call("GET", "/v1/containers")["containers"]
    return [c for c in out if tag is None or c["function"] == tag]


def app_log(app_id: str) -> str:
    from shoal._client.transport import get_client

    entries = get_client().call("GET", f"/v1/apps/{app_id}/logs?after=-1")["entries"]
    return "".join(e["data"] for e in entries)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_control_plane_reports_the_ray_backend(ray_control_plane: ControlPlane) -> None:
    import json

    assert json.loads((ray_control_plane.home / "server.json").read_text())["backend"] == "ray"


def test_shoal_up_with_the_ray_backend(ray_nodes: RayNodes, tmp_path: Path) -> None:
    import json

    env = {"SHOAL_HOME": str(tmp_path / "home"), "SHOAL_BACKEND": ""}
    wrong = run_cli("up", "--ray-address", ray_nodes.cluster.address, env=env)
    assert wrong.returncode != 0 and "--ray-address needs --backend ray" in wrong.stderr
    up = run_cli("up", "--backend", "ray", "--ray-address", ray_nodes.cluster.address, "-d", env=env)
    try:
        assert up.returncode == 0, up.stderr
        assert json.loads((tmp_path / "home" / "server.json").read_text())["backend"] == "ray"
    finally:
        down = run_cli("down", env=env)
    assert down.returncode == 0, down.stderr


def test_no_cluster_at_the_address_is_a_clear_error(tmp_path: Path) -> None:
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "shoal.controlplane", "--backend", "ray", "--ray-address", "127.0.0.1:1",
                        "--state-dir", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert "cannot use the Ray cluster at 127.0.0.1:1" in r.stderr and "no Ray cluster answers" in r.stderr


def test_map_spreads_over_nodes_and_returns_every_result(app: Any, ray_nodes: RayNodes) -> None:
    # min_containers=3: three containers, placed by Ray with the SPREAD strategy.
    assert wait_for(lambda: sum(c["state"] == "ready" for c in containers("spread")) == 3, timeout=90)
    listed = {c["node"] for c in containers("spread")}
    results = list(app.spread.map(range(1000)))
    assert [r[0] for r in results] == [2 * i for i in range(1000)]
    nodes = {r[1] for r in results}
    cluster_nodes = {n.node_id for n in (ray_nodes.head, ray_nodes.gpu, ray_nodes.eu)}
    assert nodes <= cluster_nodes
    assert len(listed) >= 2, listed  # the containers are on several nodes…
    assert len(nodes) >= 2, nodes  # …and the inputs ran on several
    assert len({r[2] for r in results}) >= 2


def test_containers_on_ray_are_sandboxed_like_local_ones(app: Any) -> None:
    from shoal._client.transport import get_client

    where = app.where.remote()
    info = get_client().call("GET", f"/v1/containers/{where['container']}")
    assert info["backend"] == "ray" and info["node"] == where["node"]
    if info["isolation"] != "sandbox":
        pytest.skip(f"containers are not sandboxed here ({info['isolation']})")
    assert info["sandboxed"]
    assert where["hostname"] == where["container"][:63]  # its own uts namespace, as on the local backend
    assert not where["home_visible"]  # the control plane's state directory (token, database) is hidden


def test_gpu_function_runs_on_the_node_with_that_gpu(app: Any, ray_nodes: RayNodes) -> None:
    where = app.on_gpu.remote()
    assert where["node"] == ray_nodes.gpu.node_id
    assert where["cuda"] == "0"  # the GPU Ray gave the actor


def test_gpu_fallback_takes_the_first_model_the_cluster_has(app: Any, ray_nodes: RayNodes) -> None:
    assert app.gpu_fallback.remote()["node"] == ray_nodes.gpu.node_id


def test_region_function_runs_in_its_region(app: Any, ray_nodes: RayNodes) -> None:
    for _ in range(3):
        assert app.in_region.remote()["node"] == ray_nodes.eu.node_id


def test_a_gpu_no_node_has_stays_pending_with_the_reason(app: Any) -> None:
    call = app.no_such_gpu.spawn()
    assert wait_for(lambda: any(c["state"] == "pending" for c in containers("no_such_gpu")), timeout=30)
    reason = next(c["pending_reason"] for c in containers("no_such_gpu") if c["state"] == "pending")
    assert "H100" in reason and "no node of the Ray cluster" in reason, reason
    call.cancel()
    assert wait_for(lambda: not containers("no_such_gpu"), timeout=30)


def test_nested_call_from_a_container_on_the_cluster(app: Any) -> None:
    assert app.nested.remote(41) == 42


def test_a_volume_is_refused_with_the_reason(ray_control_plane: ControlPlane) -> None:
    import ray_volume_app

    with pytest.raises(Exception, match="cannot mount volumes yet"):
        with ray_volume_app.app.run():
            pass


def test_web_endpoint_is_reached_through_the_actor(app: Any, ray_nodes: RayNodes) -> None:
    url = app.web.get_web_url()
    with urllib.request.urlopen(url, timeout=60) as resp:
        body = resp.read().decode()
    assert body in {n.node_id for n in (ray_nodes.head, ray_nodes.gpu, ray_nodes.eu)}


def test_container_stops_before_its_dead_raylet_is_noticed(app: Any, ray_nodes: RayNodes) -> None:
    """Fencing: when only a node's raylet dies, its actor could keep serving for seconds; its container must be
    gone by the time the control plane declares it dead and hands its inputs to a replacement."""
    app.in_region.remote()
    box = [c for c in containers("in_region") if c["state"] == "ready"]
    assert box and box[0]["node"] == ray_nodes.eu.node_id
    cid = box[0]["container_id"]
    from shoal._client.transport import get_client

    pid = get_client().call("GET", f"/v1/containers/{cid}")["pid"]
    assert alive(pid)
    ray_nodes.eu.kill_raylet()
    assert wait_for(lambda: not any(c["container_id"] == cid for c in containers()), timeout=60, interval=0.02)
    assert not alive(pid)  # gone before the control plane moved on
    assert "its Ray node" in app_log(app.app.app_id)
    ray_nodes.cluster.remove_node(ray_nodes.eu, allow_graceful=False)
    # No other node is in eu-west: the function runs again once a new one joins.
    ray_nodes.eu = ray_nodes.cluster.add_node(num_cpus=2, resources={"region:eu-west": 1})
    assert app.in_region.remote()["node"] == ray_nodes.eu.node_id


def test_worker_node_death_mid_map_loses_no_result(app: Any, ray_nodes: RayNodes) -> None:
    n = 300
    results: list[Any] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.extend(app.slow.map(range(n)))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    t = threading.Thread(target=run)
    t.start()
    workers = {ray_nodes.gpu.node_id: ray_nodes.gpu, ray_nodes.eu.node_id: ray_nodes.eu}

    def busy_worker() -> str | None:
        for c in containers("slow"):
            if c["node"] in workers and c["state"] == "ready" and c["running_inputs"]:
                return c["node"]
        return None

    assert wait_for(busy_worker, timeout=90)
    victim = busy_worker()
    assert victim is not None
    pids = []
    from shoal._client.transport import get_client

    for c in containers("slow"):
        if c["node"] == victim:
            pids.append(get_client().call("GET", f"/v1/containers/{c['container_id']}")["pid"])
    ray_nodes.cluster.remove_node(workers[victim], allow_graceful=False)
    t.join(timeout=150)
    assert not t.is_alive() and not errors, errors
    assert [r[0] for r in results] == list(range(n))
    assert all(not alive(pid) for pid in pids)
    log = app_log(app.app.app_id)
    assert "its Ray node" in log and "died" in log


def test_sigkill_of_a_container_process_is_reported_like_a_local_crash(app: Any) -> None:
    """Not a node death: the container's own process dies; its input runs again elsewhere."""
    call = app.slow.spawn(7, 3.0)
    assert wait_for(lambda: any(c["running_inputs"] for c in containers("slow")), timeout=60)
    from shoal._client.transport import get_client

    busy = next(c for c in containers("slow") if c["running_inputs"])
    pid = get_client().call("GET", f"/v1/containers/{busy['container_id']}")["pid"]
    os.kill(pid, signal.SIGKILL)
    assert call.get(timeout=90)[0] == 7  # it ran again in another container
