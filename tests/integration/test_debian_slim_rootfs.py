"""`Image.debian_slim()` as a root filesystem (a control plane with SHOAL_DEBIAN_SLIM=rootfs): Debian bookworm from
Debian's archive (shoal.oci.base; in the machine's base cache, built once), the steps as layers built in build
containers, functions running on that root with nothing of the host's system directories."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import own_control_plane, run_script
from tests.integration.debian_image import debian_base  # noqa: F401 (a fixture)

pytestmark = pytest.mark.slow

APP = '''
import os
import subprocess
import sys

import shoal as modal

image = (modal.Image.debian_slim()
         .apt_install("jq")
         .pip_install("six==1.17.0")
         .run_commands("echo built > /etc/shoal-rootfs-marker")
         .dockerfile_commands("ENV GREETING=hello"))
app = modal.App("debian-slim-rootfs", image=image)


def seen():
    return {"os": open("/etc/os-release").read(), "python": sys.executable, "version": list(sys.version_info[:2]),
            "marker": os.path.exists("/etc/shoal-rootfs-marker"), "jq": os.path.exists("/usr/bin/jq"),
            "host_tool": os.path.exists("/usr/bin/skopeo"), "greeting": os.environ.get("GREETING")}


@app.function()
def built():
    import six
    out = seen()
    out["six"] = six.__version__
    out["jq_says"] = subprocess.run(["jq", "-n", "41 + 1"], capture_output=True, text=True).stdout.strip()
    return out


@app.function(image=modal.Image.debian_slim())
def plain():
    return seen()


if __name__ == "__main__":
    import json
    with app.run():
        print("BUILT", json.dumps(built.remote()))
        print("PLAIN", json.dumps(plain.remote()))
'''


@pytest.fixture
def rootfs_plane(tmp_path: Path, debian_base: None):  # noqa: F811
    yield from own_control_plane(tmp_path / "home", {"SHOAL_DEBIAN_SLIM": "rootfs"})


def _result(stdout: str, label: str) -> dict:
    import json

    line = next((x for x in stdout.splitlines() if x.startswith(label + " ")), None)
    assert line is not None, stdout
    return json.loads(line.split(" ", 1)[1])


def test_debian_slim_is_a_debian_root_filesystem_with_its_steps_as_layers(rootfs_plane, tmp_path):
    assert not os.path.exists("/etc/shoal-rootfs-marker")
    script = tmp_path / "app.py"
    script.write_text(APP)
    proc = run_script(script, timeout=600)
    out = proc.stdout + proc.stderr
    built, plain = _result(proc.stdout, "BUILT"), _result(proc.stdout, "PLAIN")
    assert 'VERSION_CODENAME=bookworm' in built["os"] and built["version"] == [3, 11], out
    assert built["python"] == "/usr/local/bin/python3", out
    assert built["six"] == "1.17.0" and built["jq_says"] == "42" and built["marker"], out
    assert built["greeting"] == "hello", out
    assert os.path.exists("/usr/bin/skopeo") and not built["host_tool"]  # the host's /usr is not the image's
    assert plain["marker"] is False and plain["jq"] is False and 'bookworm' in plain["os"], out
    assert "=> Step 1: apt_install('jq')" in proc.stderr and "Setting up jq" in proc.stderr, out
    assert not os.path.exists("/etc/shoal-rootfs-marker")  # the build's write went to the image's layer only
    again = run_script(script, timeout=300)
    assert _result(again.stdout, "BUILT") == built and "Building image" not in again.stderr, again.stderr


def test_a_python_this_machine_cannot_provide_is_a_clear_build_error(rootfs_plane, tmp_path):
    from shoal.oci.base import BaseImageError, find_interpreter

    try:
        find_interpreter("3.14")
        pytest.skip("this machine has a CPython 3.14 to copy into the base")
    except BaseImageError:
        pass
    script = tmp_path / "app.py"
    script.write_text(APP.replace("modal.Image.debian_slim()", "modal.Image.debian_slim(python_version='3.14')"))
    proc = run_script(script, timeout=300)
    assert proc.returncode != 0
    assert "debian_slim(python_version='3.14')" in proc.stderr, proc.stderr  # the failing step is named
    assert "Python 3.14 cannot be provided on this machine" in proc.stderr, proc.stderr
