"""Build steps never run on the host (shoal/backends/build_sandbox.py): an image's `run_commands` that write
/etc, /root and /opt change nothing of the host; their writes land in the image, where its containers see them.
Package steps run uv in the same sandbox: a source package whose build writes to the host writes nothing there.
"""

from __future__ import annotations

import io
import os
import secrets
import shutil
import sys
import tarfile
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ControlPlane, venv_control_plane

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="build sandboxes need Linux namespaces")


@pytest.fixture(scope="module")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """These tests are about venv images' build sandbox: a control plane that builds debian_slim() as a venv."""
    yield from venv_control_plane(tmp_path_factory)


def skip_without_sandboxes(control_plane) -> None:
    log = (control_plane.home / "server.log").read_text()
    if "isolation=process" in log:
        pytest.skip("containers are not sandboxed here: " + log.split("isolation=process", 1)[1].splitlines()[0])


def source_package(where: Path, name: str, markers: list[str]) -> Path:
    """A package directory whose setup.py, run when it is built, writes `markers` (absolute paths)."""
    src = where / name
    (src / name).mkdir(parents=True)
    (src / name / "__init__.py").write_text("import os\nVALUE = 'built-from-source'\n")
    (src / "setup.py").write_text(textwrap.dedent(f"""\
        import os
        from setuptools import setup

        for path in {markers!r}:
            try:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "w") as f:
                    f.write("setup.py ran here\\n")
            except OSError:
                pass
        setup(name={name!r}, version="0.1", packages=[{name!r}])
        """))
    return src


def sdist(src: Path, out: Path) -> Path:
    """`src` as a source distribution (`<name>-0.1.tar.gz`, PKG-INFO and all)."""
    name = src.name
    path = out / f"{name}-0.1.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        tar.add(src, arcname=f"{name}-0.1")
        info = f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n".encode()
        member = tarfile.TarInfo(f"{name}-0.1/PKG-INFO")
        member.size = len(info)
        tar.addfile(member, io.BytesIO(info))
    return path


@pytest.fixture
def host_dir():
    """A directory of the host's, outside anything shared with sandboxes: a build that runs on the host can
    write into it."""
    path = Path(tempfile.mkdtemp(prefix="shoal-host-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_build_commands_write_the_image_not_the_host(control_plane) -> None:
    skip_without_sandboxes(control_plane)
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


def test_source_packages_build_in_the_sandbox_not_on_the_host(control_plane, tmp_path, host_dir) -> None:
    """pip_install of a directory and a requirements file naming an sdist: their setup.py runs in a build sandbox,
    whose writes to /tmp are its own and to /root land in the image."""
    import importlib

    import shoal

    skip_without_sandboxes(control_plane)
    if shutil.which("pasta") is None or os.environ.get("SHOAL_CONTAINER_NETWORK", "").strip().lower() == "none":
        pytest.skip("building a source package fetches setuptools: the build sandbox needs outbound network")
    tag = secrets.token_hex(4)
    names = [f"srcpkg_a_{tag}", f"srcpkg_b_{tag}"]
    in_root = [Path(f"/root/shoal-pwned-{tag}-{n}") for n in names]
    on_host = [host_dir / f"pwned-{n}" for n in names]
    by_dir = source_package(tmp_path, names[0], [str(on_host[0]), str(in_root[0])])  # shared with sandboxes
    tarball = sdist(source_package(tmp_path / "b", names[1], [str(on_host[1]), str(in_root[1])]), tmp_path)
    shutil.rmtree(tmp_path / "b")
    requirements = tmp_path / "requirements.txt"
    requirements.write_text(f"{names[1]} @ file:///opt/dist/{tarball.name}\n")  # a path inside the image
    images = [shoal.Image.debian_slim().pip_install(str(by_dir)),
              shoal.Image.debian_slim().add_local_file(tarball, f"/opt/dist/{tarball.name}", copy=True)
              .pip_install_from_requirements(str(requirements))]
    app = shoal.App("build-sandbox-sdist")

    def use(name: str) -> str:
        return importlib.import_module(name).VALUE

    use_dir = app.function(image=images[0], serialized=True, name="use_dir")(use)
    use_sdist = app.function(image=images[1], serialized=True, name="use_sdist")(use)
    with app.run(quiet=True):
        assert use_dir.remote(names[0]) == "built-from-source"
        assert use_sdist.remote(names[1]) == "built-from-source"
    assert [p for p in [*on_host, *in_root] if p.exists()] == []  # the host is as it was
    # setup.py did run, as the build's root, whose /root is the image's.
    for image, mark in zip(images, in_root, strict=True):
        written = control_plane.home / "images" / image.object_id / "files" / "root" / mark.name
        assert written.read_text() == "setup.py ran here\n"


def test_without_sandboxes_a_root_control_plane_refuses_build_commands(tmp_path, monkeypatch, host_dir) -> None:
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
        asyncio.run(ImageBuilder(tmp_path / "state", debian_slim="venv").ensure(wire, lambda _text: None))
    assert not target.exists()
    # Package steps alike: uv would run the package's setup.py.
    package = source_package(tmp_path, "srcpkg_refused", [str(host_dir / "pwned")])
    for image in (Image.debian_slim().pip_install(str(package)), Image.debian_slim().uv_pip_install(str(package))):
        wire, _ = image._resolve()
        with pytest.raises(ImageBuildError, match=r"(?s)at step 1, \w*pip_install\(.*never runs on the host as root"):
            asyncio.run(ImageBuilder(tmp_path / "state", debian_slim="venv").ensure(wire, lambda _text: None))
    assert not (host_dir / "pwned").exists()


def test_a_pth_file_a_command_wrote_never_runs_on_the_host_in_a_later_package_step(tmp_path, host_dir) -> None:
    """uv starts the image's Python (and a build command's .pth file with it): in the build sandbox."""
    import asyncio

    from shoal.controlplane.images import ImageBuilder
    from shoal.image import Image

    builder = ImageBuilder(tmp_path / "state", debian_slim="venv")
    if builder.sandbox.availability().isolation != "sandbox":
        pytest.skip("containers are not sandboxed here")
    target = host_dir / "ran-on-the-host"
    site = "$(python -c 'import sysconfig; print(sysconfig.get_paths()[\"purelib\"])')"
    pth = f"echo \"import os; open('{target}', 'w')\" > {site}/x.pth"
    wire, _ = Image.debian_slim().run_commands(pth).pip_install("six==1.17.0")._resolve()
    built = asyncio.run(builder.ensure(wire, lambda _text: None))
    assert not target.exists()
    # The package is in the image (looked at from here: starting the image's Python would run the .pth file).
    venv_site = next(Path(built.root, "venv", "lib").glob("python3*/site-packages"))
    assert (venv_site / "six.py").is_file() and (venv_site / "x.pth").is_file()


def test_a_state_directory_or_interpreter_under_root_builds(tmp_path) -> None:
    """The image's /root is writable in the build: the host paths the build needs below it (root's default state
    directory ~/.shoal, a pyenv interpreter) get mountpoints there, which are gone from the image afterwards."""
    import asyncio

    from shoal.controlplane.images import ImageBuilder
    from shoal.image import Image

    home = Path(tempfile.mkdtemp(prefix=".shoal-test-", dir=Path.home()))
    try:
        builder = ImageBuilder(home, debian_slim="venv")
        if builder.sandbox.availability().isolation != "sandbox":
            pytest.skip("containers are not sandboxed here")
        image = Image.debian_slim().pip_install("six==1.17.0").run_commands("python -c 'import six' && touch x")
        built = asyncio.run(builder.ensure(image.to_wire(), lambda _text: None))
        files = Path(built.root) / "files"
        assert sorted(str(p.relative_to(files)) for p in files.rglob("*")) == ["root", "root/x"]
    finally:
        shutil.rmtree(home, ignore_errors=True)


def test_a_symlink_a_build_left_where_a_host_path_is_mounted_is_refused(tmp_path, host_dir) -> None:
    """A build command makes the place where the next step mounts uv's binary a symlink to a host directory: the
    sandbox's setup would follow it on the host. The step is refused instead."""
    import asyncio

    from shoal.controlplane.images import ImageBuilder
    from shoal.exception import ImageBuildError
    from shoal.image import Image

    builder = ImageBuilder(tmp_path / "state", debian_slim="venv")
    if builder.sandbox.availability().isolation != "sandbox":
        pytest.skip("containers are not sandboxed here")
    uv = Path(os.path.realpath(builder.uv))
    top = "/" + uv.parts[1]
    if len(uv.parts) < 4 or top in ("/usr", "/bin", "/sbin", "/lib", "/etc", "/tmp", "/proc", "/sys", "/dev", "/run"):
        pytest.skip(f"uv ({uv}) is not below a directory a build can write")
    image = (Image.debian_slim().workdir(top)
             .run_commands(f"mkdir -p {uv.parent.parent} && ln -s {host_dir} {uv.parent}")
             .pip_install("six==1.17.0"))
    with pytest.raises(ImageBuildError, match=rf"step 3, pip_install.*\n.*{uv.parent} is a symlink"):
        asyncio.run(builder.ensure(image.to_wire(), lambda _text: None))
    assert list(host_dir.iterdir()) == []


def test_a_symlink_a_build_left_is_never_followed_by_a_later_step_on_the_host(tmp_path, host_dir) -> None:
    """A build command leaves a symlink to a host directory in the image; a later step the control plane carries
    out itself (workdir, add_local_file) would write through it on the host. The step is refused instead."""
    import asyncio

    from shoal.controlplane.images import ImageBuilder
    from shoal.exception import ImageBuildError
    from shoal.image import Image

    builder = ImageBuilder(tmp_path / "state", debian_slim="venv")
    if builder.sandbox.availability().isolation != "sandbox":
        pytest.skip("containers are not sandboxed here")
    linked = Image.debian_slim().run_commands(f"ln -s {host_dir} /root/escape")
    with pytest.raises(ImageBuildError, match=r"step 2, workdir.*\n.*/root/escape is a symlink"):
        asyncio.run(builder.ensure(linked.workdir("/root/escape/made").to_wire(), lambda _text: None))
    local = tmp_path / "file.txt"
    local.write_text("x")
    image = linked.add_local_file(local, "/root/escape/file.txt", copy=True)
    with pytest.raises(ImageBuildError, match=r"/root/escape is a symlink"):
        asyncio.run(builder.ensure(image.to_wire(), lambda _text: None))
    assert list(host_dir.iterdir()) == []
