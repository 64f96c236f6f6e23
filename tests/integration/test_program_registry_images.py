"""tests/programs/registry_images.py run as its user runs it (`shoal run`): images this test made itself, pushed to
registries on loopback (one asking for credentials), functions on from_registry/from_dockerfile images with
apt_install and run_commands on top, a `.map()`, a class and a web endpoint; what the functions see is checked, and
that the host did not change.

The Debian image (with apt) is built from Debian's archive with mmdebstrap once per run (a minute or more), so
the test is `slow`: `pytest -m slow tests/integration/test_program_registry_images.py`."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from shoal.oci.layout import LayoutWriter
from shoal.oci.registry import push_layout
from tests.integration.debian_image import LAYOUT_TAG, debian_oci_layout  # noqa: F401 (a fixture)
from tests.integration.oci_registry import have_registry_tools, layer_tar, registry
from tests.integration.rootfs_images import rootfs_tars  # noqa: F401 (a fixture)
from tests.integration.test_programs import shoal_run

pytestmark = pytest.mark.skipif(bool(have_registry_tools()), reason=have_registry_tools() or "ok")
USERS = {"puller": "pa55word"}


@pytest.fixture(scope="module")
def registries(tmp_path_factory, debian_oci_layout, rootfs_tars):  # noqa: F811
    """(public registry, private registry): `e2e/debian:v1` in both, `e2e/nopython:v1` (no Python; libm, as any
    glibc distribution has) in the public one."""
    tmp = tmp_path_factory.mktemp("program-registries")
    with registry(tmp / "public") as public, registry(tmp / "private", users=USERS) as private:
        push_layout(debian_oci_layout, LAYOUT_TAG, f"{public}/e2e/debian:v1")
        push_layout(debian_oci_layout, LAYOUT_TAG, f"{private}/e2e/debian:v1", credentials=next(iter(USERS.items())))
        writer = LayoutWriter(tmp / "nopython")
        libm = os.path.realpath("/lib/x86_64-linux-gnu/libm.so.6")
        lib = layer_tar([("dir", "usr"), ("dir", "usr/lib"), ("dir", "usr/lib/x86_64-linux-gnu"),
                         ("file", "usr/lib/x86_64-linux-gnu/libm.so.6", Path(libm).read_bytes(), 0o644)])
        layers = [writer.add_layer(rootfs_tars["base"]), writer.add_layer(lib)]
        writer.tag("v1", writer.add_image(layers, {"Env": ["PATH=/usr/local/bin:/usr/bin:/bin"]}))
        push_layout(tmp / "nopython", "v1", f"{public}/e2e/nopython:v1")
        yield public, private


def host_state() -> dict:
    """What the program's build steps would change if they ran on the host."""
    def listing(root: str) -> list[str]:
        return sorted(os.path.join(d, n) for d, dirs, files in os.walk(root) for n in dirs + files)

    return {
        "dpkg_status": hashlib.sha256(Path("/var/lib/dpkg/status").read_bytes()).hexdigest(),
        "etc_marker": os.path.exists("/etc/marker"), "appuser": os.path.exists("/home/appuser"),
        "usr_local": listing("/usr/local"), "usr_bin": sorted(os.listdir("/usr/bin")),
        "srv_app": os.path.exists("/srv/app"), "opt_work": os.path.exists("/opt/work"),
    }


def reports(lines: list[str]) -> dict[str, object]:
    out = {}
    for line in lines:
        label, _, payload = line.partition(" ")
        out[label] = json.loads(payload)
    return out


@pytest.mark.slow
def test_functions_on_registry_and_dockerfile_images_see_their_images_and_the_host_is_unchanged(
        control_plane, registries, monkeypatch):
    public, private = registries
    user, password = next(iter(USERS.items()))
    monkeypatch.setenv("E2E_REGISTRY", public)
    monkeypatch.setenv("E2E_PRIVATE_REGISTRY", private)
    monkeypatch.setenv("REGISTRY_USERNAME", user)
    monkeypatch.setenv("REGISTRY_PASSWORD", password)
    before = host_state()
    assert not before["etc_marker"], "the host has /etc/marker already: this test could not tell"

    got = reports(shoal_run("registry_images.py"))
    print("REPORTS", json.dumps(got, sort_keys=True))

    common = {"os": "Debian GNU/Linux 12 (bookworm)", "python": "3.11", "host_only": [], "test_image": False}
    registry_seen = got["registry"]
    assert {k: registry_seen[k] for k in common} == common
    assert registry_seen["marker"] == "hi" and registry_seen["tool"] == "tool"
    assert registry_seen["jq"].startswith("jq-") and registry_seen["jq_package"]
    assert (registry_seen["stage"], registry_seen["cwd"], registry_seen["uid"]) == ("registry", "/opt/work", 0)
    assert registry_seen["executable"] in ("/usr/local/bin/python", "/usr/local/bin/python3", "/usr/bin/python3")
    assert got["map"] == [[0, "hi"], [1, "hi"], [4, "hi"], [9, "hi"]]
    assert got["cls"] == [True, "hi"]
    assert got["web"] == {"name": "web", "marker": "hi", "fastapi": True}

    private_seen = got["private"]  # the registry image alone: no apt_install, no run_commands
    assert {k: private_seen[k] for k in common} == common
    assert (private_seen["marker"], private_seen["jq"], private_seen["jq_package"]) == (None, None, False)

    added = got["add_python"]  # the tests' small image without Python, given CPython 3.11 at /usr/local/bin
    assert (added["python"], added["test_image"], added["host_only"]) == ("3.11", True, [])
    assert added["executable"].startswith("/usr/local/bin/python")
    assert added["os"] == "shoal test rootfs" and added["jq"] is None

    built = got["dockerfile"]
    assert {k: built[k] for k in common} == common
    assert built["greeting"] == "bonjour" and built["cwd"] == "/srv/app" and built["uid"] == 1000
    assert built["copied"] == "copied into the image" and built["built"] == "bonjour from the build"
    assert built["home_marker"] == "from-dockerfile" and built["jq_package"] and built["marker"] is None

    assert host_state() == before
