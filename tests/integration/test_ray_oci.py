"""A function on a registry image on the Ray backend, end to end: a control plane with SHOAL_BACKEND=ray builds
the image into its layer store; the container's node — a Ray node with a SHOAL_HOME of its own, no path shared
with the control plane — pulls the layers from the control plane and runs the function on the image's root.

Run with `-n 1` at most (a Ray cluster is heavy)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shoal.oci.registry import push_layout
from shoal.oci.store import LayerStore
from tests.integration.oci_registry import have_registry_tools, registry
from tests.integration.rootfs_images import rootfs_tars, write_layout  # noqa: F401 (a fixture)

from ..conftest import ControlPlane, _use_home, run_script

ray = pytest.importorskip("ray", reason="the Ray backend needs ray (pip install 'shoal[ray]')")
from ray.cluster_utils import Cluster  # noqa: E402

pytestmark = [pytest.mark.skipif(bool(have_registry_tools()), reason=have_registry_tools() or "ok"),
              pytest.mark.xdist_group("ray-cluster")]

APP = '''
import os
import sys

import shoal as modal

image = modal.Image.from_registry("{tag}").run_commands("echo on-ray > /etc/ray-marker")
app = modal.App("oci-on-ray", image=image)


@app.function()
def seen(x: int) -> dict:
    def read(path):
        try:
            return open(path).read().strip()
        except OSError:
            return None

    return {{"x": x * x, "marker": read("/etc/ray-marker"), "test_image": os.path.exists("/etc/shoal-test-image"),
             "python": list(sys.version_info[:2]), "executable": sys.executable,
             "host_only": [p for p in ("/usr/bin/skopeo", "/work", "/usr/bin/jq") if os.path.exists(p)]}}


if __name__ == "__main__":
    import json

    with app.run():
        print("RESULT", json.dumps(seen.remote(3)))
        print("MAP", json.dumps([r["x"] for r in seen.map(range(4))]))
'''


@pytest.fixture(scope="module")
def cluster_with_own_home(tmp_path_factory) -> Iterator[tuple[Any, Path]]:
    """A one-node Ray cluster whose processes have a SHOAL_HOME of their own (not the control plane's)."""
    node_home = tmp_path_factory.mktemp("ray-node-home")
    saved = {k: os.environ.get(k) for k in ("SHOAL_HOME",)}
    os.environ["SHOAL_HOME"] = str(node_home)  # what the node's processes inherit
    try:
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    try:
        yield cluster, node_home
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.fixture(scope="module")
def image_tag(tmp_path_factory, rootfs_tars):  # noqa: F811
    tmp = tmp_path_factory.mktemp("ray-oci-reg")
    with registry(tmp / "registry") as address:
        push_layout(write_layout(tmp / "python", rootfs_tars, "python", tag="v1"), "v1", f"{address}/ray/python:v1")
        yield f"{address}/ray/python:v1"


def test_a_function_on_a_registry_image_runs_on_a_ray_node_that_pulled_it(cluster_with_own_home, image_tag,
                                                                          tmp_path) -> None:
    cluster, node_home = cluster_with_own_home
    previous = os.environ.get("SHOAL_HOME")
    cp = ControlPlane(tmp_path / "cp-home", env={"SHOAL_BACKEND": "ray",
                                                 "SHOAL_RAY_ADDRESS": cluster.address}).start()
    try:
        _use_home(cp.home)
        script = tmp_path / "oci_on_ray.py"
        script.write_text(APP.format(tag=image_tag))
        proc = run_script(script, timeout=600)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, out
        result = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))
        import json

        seen = json.loads(result.split(" ", 1)[1])
        assert (seen["x"], seen["marker"], seen["test_image"], seen["host_only"]) == (9, "on-ray", True, []), seen
        assert seen["python"] == [3, 11] and seen["executable"] == "/usr/bin/python3"
        assert "MAP [0, 1, 4, 9]" in proc.stdout, out
        # the node pulled the image into its own store, not the control plane's
        pulled = [image.name for image in LayerStore(node_home / "oci").list()]
        assert any(name.startswith("shoal/im-") for name in pulled), pulled
    finally:
        cp.stop()
        if previous:
            _use_home(Path(previous))
