"""Build commands never run on the host (shoal/backends/build_sandbox.py): an image's `run_commands` that write
/etc, /root and /opt change nothing of the host; their writes land in the image, where its containers see them.
"""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="build sandboxes need Linux namespaces")


def test_build_commands_write_the_image_not_the_host(control_plane) -> None:
    log = (control_plane.home / "server.log").read_text()
    if "isolation=process" in log:
        pytest.skip("containers are not sandboxed here: " + log.split("isolation=process", 1)[1].splitlines()[0])
    mark = f"shoal-build-{secrets.token_hex(4)}"
    host_paths = [Path("/etc") / mark, Path("/root") / mark, Path("/opt") / mark, Path(f"/var/tmp/{mark}.pth-ran")]
    os.environ["SHOAL_TEST_BUILD_MARK"] = mark
    try:
        import build_sandbox_app

        assert build_sandbox_app.MARK == mark
        with build_sandbox_app.app.run(quiet=True):
            seen = build_sandbox_app.look.remote(mark)
    finally:
        os.environ.pop("SHOAL_TEST_BUILD_MARK", None)
    assert [p for p in host_paths if p.exists()] == []  # the host is as it was
    assert seen == {"etc": "built-in-sandbox\n", "root": True, "uid": "0\n", "opt": "tool\n", "suid": False}
    # In the image, owned by the container's root: an unprivileged id on the host, not the host's root.
    image_id = build_sandbox_app.image.object_id
    written = control_plane.home / "images" / image_id / "files" / "etc" / mark
    assert written.read_text() == "built-in-sandbox\n"
    assert written.stat().st_uid != 0
    assert not (written.parent.parent / "root" / f"{mark}.suid").stat().st_mode & 0o4000


def test_without_sandboxes_a_root_control_plane_refuses_build_commands(tmp_path, monkeypatch) -> None:
    import asyncio

    from shoal.controlplane.images import ImageBuilder
    from shoal.exception import ImageBuildError
    from shoal.image import Image

    if os.geteuid() != 0:
        pytest.skip("an unprivileged control plane runs them as its containers run: plain processes")
    monkeypatch.setenv("SHOAL_ISOLATION", "process")
    target = tmp_path / "written-on-the-host"
    wire, _ = Image.debian_slim().run_commands(f"touch {target}")._resolve()
    with pytest.raises(ImageBuildError, match="never runs on the host as root"):
        asyncio.run(ImageBuilder(tmp_path / "state").ensure(wire, lambda _text: None))
    assert not target.exists()


def test_a_package_step_after_a_command_that_changed_pythons_start_is_refused(tmp_path) -> None:
    """uv starts the image's Python on the host; a build command's .pth file would run there."""
    import asyncio

    from shoal.controlplane.images import ImageBuilder
    from shoal.exception import ImageBuildError
    from shoal.image import Image

    builder = ImageBuilder(tmp_path / "state")
    if builder.sandbox.availability().isolation != "sandbox":
        pytest.skip("containers are not sandboxed here")
    target = tmp_path / "ran-on-the-host"
    site = "$(python -c 'import sysconfig; print(sysconfig.get_paths()[\"purelib\"])')"
    pth = f"echo \"import os; open('{target}', 'w')\" > {site}/x.pth"
    wire, _ = Image.debian_slim().run_commands(pth).pip_install("six==1.17.0")._resolve()
    with pytest.raises(ImageBuildError, match="would start it on the host"):
        asyncio.run(builder.ensure(wire, lambda _text: None))
    assert not target.exists()
    # Packages installed before the commands are fine, and so is `pip install` inside them.
    ok, _ = Image.debian_slim().pip_install("six==1.17.0").run_commands("python -c 'import six'")._resolve()
    asyncio.run(builder.ensure(ok, lambda _text: None))
