"""Warm containers and min_containers on an OCI image (from_registry): the warm container a call gets runs on the
image's root, as a cold one does. The image is the tests' small one with Python (rootfs_images.py) in a registry
on loopback."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from shoal._client.transport import get_client
from shoal.oci.registry import push_layout
from tests.integration.oci_registry import have_registry_tools, registry
from tests.integration.rootfs_images import rootfs_tars, write_layout  # noqa: F401 (a fixture)

from ..conftest import wait_for

pytestmark = pytest.mark.skipif(bool(have_registry_tools()), reason=have_registry_tools() or "ok")

APP = '''
import os
import sys

import shoal as modal

image = modal.Image.from_registry("{tag}").run_commands("echo warm > /etc/warm-marker")
app = modal.App("oci-warm", image=image)


def seen() -> dict:
    def read(path):
        try:
            return open(path).read().strip()
        except OSError:
            return None

    return {{"container": os.environ.get("SHOAL_CONTAINER_ID"), "marker": read("/etc/warm-marker"),
             "test_image": os.path.exists("/etc/shoal-test-image"), "executable": sys.executable,
             "host_only": [p for p in ("/usr/bin/skopeo", "/work", "/usr/bin/jq") if os.path.exists(p)],
             "cwd": os.getcwd(), "source": os.path.exists(os.path.abspath(__file__)),
             "secret": os.environ.get("WARM_SECRET")}}


@app.function(single_use_containers=True, secrets=[modal.Secret.from_dict({{"WARM_SECRET": "s3"}})])
def probe() -> dict:
    return seen()


@app.function(min_containers=1)
def kept() -> dict:
    return seen()
'''


@pytest.fixture(scope="module")
def image_tag(tmp_path_factory, rootfs_tars):  # noqa: F811
    tmp = tmp_path_factory.mktemp("oci-warm")
    with registry(tmp / "registry") as address:
        push_layout(write_layout(tmp / "python", rootfs_tars, "python", tag="v1"), "v1", f"{address}/warm/python:v1")
        yield f"{address}/warm/python:v1"


def load_app(tmp_path, tag: str):
    path = tmp_path / "oci_warm_app.py"
    path.write_text(APP.format(tag=tag))
    spec = importlib.util.spec_from_file_location("oci_warm_app", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["oci_warm_app"] = module
    spec.loader.exec_module(module)
    return module


def containers() -> list[dict]:
    return get_client().call("GET", "/v1/containers")["containers"]


def on_the_image(seen: dict) -> bool:
    return (seen["marker"], seen["test_image"], seen["host_only"], seen["source"]) == ("warm", True, [], True)


def test_a_call_on_a_registry_image_gets_a_warm_container_on_the_image_root(control_plane, tmp_path, image_tag):
    mod = load_app(tmp_path, image_tag)
    with mod.app.run(quiet=True):
        first = mod.probe.remote()
        assert on_the_image(first), first
        assert first["secret"] == "s3"
        assert wait_for(lambda: any(c["function"] == "(warm)" and c["state"] == "warm" for c in containers()),
                        timeout=120), containers()
        warm_id = next(c["container_id"] for c in containers() if c["function"] == "(warm)" and c["state"] == "warm")
        second = mod.probe.remote()
        assert second["container"] == warm_id, "the call did not get the warm container"
        assert on_the_image(second), second
        assert (second["secret"], second["cwd"], second["executable"]) == ("s3", first["cwd"], first["executable"])


def test_min_containers_on_a_registry_image_are_started_before_a_call(control_plane, tmp_path, image_tag):
    mod = load_app(tmp_path, image_tag)
    with mod.app.run(quiet=True):
        assert wait_for(lambda: any(c["function"].endswith("kept") and c["state"] == "ready"
                                    for c in containers()), timeout=120), containers()
        kept_ids = {c["container_id"] for c in containers() if c["function"].endswith("kept")}
        seen = mod.kept.remote()
        assert on_the_image(seen), seen
        assert seen["container"] in kept_ids
