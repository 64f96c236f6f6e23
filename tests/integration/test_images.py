"""Images built for real: uv virtual environments, packages from PyPI, Debian packages, other Pythons.

The apps share a handful of images (tests/apps/images_app.py), built once per test session. The builder's own
behaviour (cache hits, forced rebuilds, failing steps, layers) is tested in-process on a scratch directory.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import shoal
from shoal.controlplane.images import ImageBuilder, _discovery_path
from shoal.controlplane.oci_images import debian_slim_mode
from shoal.exception import ImageBuildError
from shoal.image import Image
from tests.conftest import APPS_DIR, run_script

HOST_PYTHON = [sys.version_info.major, sys.version_info.minor]


@pytest.fixture(scope="module")
def images(control_plane):
    import images_app

    with images_app.app.run(quiet=True):
        yield images_app


def manifest(control_plane, image: Image) -> dict:
    return json.loads((control_plane.home / "images" / image.object_id / "manifest.json").read_text())


def test_conflicting_package_versions_in_two_images_at_once(images):
    old = images.six_version.spawn(wait=1.0)
    new = images.everything.spawn(wait=1.0)
    old, new = old.get(timeout=120), new.get(timeout=120)
    assert old["six"] == "1.16.0"
    assert new["six"] == "1.17.0"


def test_python_version_of_an_image(images):
    assert images.everything.remote()["python"] == [3, 12]
    assert list(images.six_version.remote()["python"]) == HOST_PYTHON  # default: the caller's version


def test_apt_package_runs_in_the_function_and_is_not_installed_on_the_host(images):
    assert images.everything.remote()["hello"] == "Hello, world!"
    assert shutil.which("hello") is None
    assert subprocess.run(["dpkg", "-s", "hello"], capture_output=True).returncode != 0


def test_env_workdir_and_local_files(images, control_plane):
    out = images.everything.remote()
    assert out["env"] == "from-env-step"
    # Without a mount namespace the workdir is the image's copy of /app; with one it is /app itself.
    assert out["cwd"] == "/app" or out["cwd"].endswith("/files/app")
    assert out["data"] == "data file content"
    assert out["helper"] == "helper-42"
    assert out["image_id"] == images.rich_image.object_id


def test_default_image_has_the_runtime_and_nothing_of_the_callers_environment(images, control_plane):
    out = images.default_image.remote()
    assert out["leaked"] == []  # installed where the control plane runs, not in the image
    assert out["runtime"] == ["cloudpickle", "msgpack", "tblib", "aiohttp"]
    assert out["python"] == HOST_PYTHON
    if debian_slim_mode() == "rootfs":  # Debian's own Python in the image's root filesystem
        assert (out["executable"], out["prefix"]) == ("/usr/local/bin/python3", "/usr"), out
    else:  # a venv made from the host's interpreter
        assert out["prefix"].startswith(str(control_plane.home / "images" / out["image_id"]))
    assert out["image_id"] == Image.debian_slim().object_id


def test_registering_an_image_again_is_a_cache_hit(images, control_plane):
    before = manifest(control_plane, images.six_old)
    app = shoal.App("images-again")

    @app.function(image=images.six_old, serialized=True)
    def six_again() -> str:
        import six

        return six.__version__

    with app.run(quiet=True):
        assert six_again.remote() == "1.16.0"
    assert manifest(control_plane, images.six_old)["built_at"] == before["built_at"]


def test_a_failing_step_raises_image_build_error_with_its_output(control_plane):
    import images_fail_app

    with pytest.raises(ImageBuildError) as info:
        with images_fail_app.bad_package.run(quiet=True):
            pytest.fail("the app must not start")
    message = str(info.value)
    assert "pip_install('shoal-nonexistent-pkg-xyz')" in message
    assert "shoal-nonexistent-pkg-xyz" in message.split("\n", 1)[1]  # uv's own output follows


def test_build_output_streams_to_the_callers_terminal(control_plane):
    proc = run_script(APPS_DIR / "images_fail_app.py", timeout=180)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "RAISED ImageBuildError" in proc.stdout
    build_lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("[im-")]
    assert any("=> Step 1: pip_install('shoal-nonexistent-pkg-xyz')" in ln for ln in build_lines), proc.stderr
    assert any("shoal-nonexistent-pkg-xyz" in ln and "Step" not in ln for ln in build_lines), proc.stderr


def test_a_follower_that_polls_after_the_app_stopped_still_reads_the_build_output(control_plane):
    """The race behind a flaky test under load: the build fails, the client stops the app, and only then does its
    log follower poll again. The log's tail must still be there (and say the app stopped)."""
    from shoal._client.transport import get_client
    from shoal._serialization import dumps

    client = get_client()
    app_id = client.call("POST", "/v1/apps", {"name": "late-follower", "mode": "ephemeral", "detach": True})["app_id"]
    image = Image.debian_slim().pip_install("shoal-nonexistent-pkg-xyz").to_wire()
    with pytest.raises(ImageBuildError):
        client.call("POST", f"/v1/apps/{app_id}/functions", {"functions": [
            {"tag": "f", "is_generator": False, "is_async": False, "options": {}, "secrets": [], "schedule": None,
             "app_name": "late-follower", "webhook": None, "image": image,
             "serialized_fn": dumps(len, "f")}]})
    client.call("POST", f"/v1/apps/{app_id}/stop", {})
    resp = client.call("GET", f"/v1/apps/{app_id}/logs?after=-1&timeout=0")
    assert resp["state"] == "stopped"
    text = "".join(e["data"] for e in resp["entries"])
    assert "=> Step 1: pip_install('shoal-nonexistent-pkg-xyz')" in text, text


def test_a_python_that_is_not_installed_is_a_clear_error(control_plane):
    import images_fail_app

    uv = ImageBuilder(control_plane.home).uv
    found = subprocess.run([uv, "python", "find", "3.14", "--system", "--python-preference", "system",
                            "--no-python-downloads"], capture_output=True, env={"PATH": _discovery_path()})
    if found.returncode == 0:
        pytest.skip("Python 3.14 is installed on this machine")
    rootfs = debian_slim_mode() == "rootfs"
    missing = r"Python 3\.14 cannot be provided on this machine" if rootfs else r"Python 3\.14 is not installed"
    with pytest.raises(ImageBuildError, match=missing) as info:
        with images_fail_app.missing_python.run(quiet=True):
            pass
    assert ("pyenv install 3.14" if rootfs else "uv python install 3.14") in str(info.value)


# -- the builder on its own ----------------------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.chunks: list[str] = []

    def __call__(self, text: str) -> None:
        self.chunks.append(text)

    @property
    def text(self) -> str:
        return "".join(self.chunks)


def ensure(builder: ImageBuilder, image: Image) -> tuple[object, str]:
    log = Recorder()
    built = asyncio.run(builder.ensure(image.to_wire(), log))
    return built, log.text


def test_cache_hits_run_nothing_and_concurrent_ensures_build_once(tmp_path):
    builder = ImageBuilder(tmp_path, debian_slim="venv")
    image = Image.debian_slim().pip_install("six==1.17.0")

    async def twice() -> list:
        logs = [Recorder(), Recorder()]
        return [*await asyncio.gather(*(builder.ensure(image.to_wire(), log) for log in logs)), logs]

    first, second, logs = asyncio.run(twice())
    assert builder.builds == 1 and first == second
    assert sum("Building image" in log.text for log in logs) == 1
    again, text = ensure(builder, image)
    assert again == first and builder.builds == 1 and text == ""  # no uv, no output: a manifest read
    out = subprocess.run([first.python, "-c", "import six; print(six.__version__)"], capture_output=True,
                         text=True, env=first.env)
    assert out.stdout.strip() == "1.17.0", out.stderr


def test_force_build_rebuilds(tmp_path, monkeypatch):
    builder = ImageBuilder(tmp_path, debian_slim="venv")
    ensure(builder, Image.debian_slim().pip_install("six==1.17.0"))
    _, text = ensure(builder, Image.debian_slim().pip_install("six==1.17.0", force_build=True))
    assert builder.builds == 2 and "Building image" in text
    monkeypatch.setenv("SHOAL_FORCE_BUILD", "1")
    _, text = ensure(builder, Image.debian_slim().pip_install("six==1.17.0"))
    assert builder.builds == 3 and "Building image" in text
    monkeypatch.delenv("SHOAL_FORCE_BUILD")
    ensure(builder, Image.debian_slim().pip_install("six==1.17.0"))
    assert builder.builds == 3


def test_failing_command_names_the_step_and_shows_its_output(tmp_path):
    builder = ImageBuilder(tmp_path, debian_slim="venv")
    image = Image.debian_slim().run_commands("echo preparing", "echo boom-output >&2; exit 7")
    with pytest.raises(ImageBuildError) as info:
        ensure(builder, image)
    message = str(info.value)
    assert "run_commands('echo preparing', 'echo boom-output >&2; exit 7')" in message
    assert "exit status 7" in message and "boom-output" in message
    assert builder.builds == 0
    assert not (tmp_path / "images" / image.object_id / "manifest.json").exists()


def test_commands_env_and_workdir_in_the_build(tmp_path):
    builder = ImageBuilder(tmp_path, debian_slim="venv")
    image = (Image.debian_slim().env({"GREETING": "hi", "PATH": "/opt/extra/bin:$PATH"}).workdir("/srv")
             .run_commands("echo $GREETING > greeting.txt; python -c 'import sys; print(sys.prefix)' > prefix.txt"))
    built, _ = ensure(builder, image)
    root = Path(built.root)
    assert (root / "files" / "srv" / "greeting.txt").read_text() == "hi\n"
    assert (root / "files" / "srv" / "prefix.txt").read_text().strip() == str(root / "venv")
    assert built.workdir == "/srv" and built.env["GREETING"] == "hi"
    assert built.env["PATH"].split(":")[:2] == ["/opt/extra/bin", str(root / "venv" / "bin")]


def test_files_added_at_container_start_do_not_rebuild_the_image(tmp_path):
    builder = ImageBuilder(tmp_path / "state", debian_slim="venv")
    blobs = tmp_path / "state" / "blobs"
    blobs.mkdir(parents=True)
    data = tmp_path / "data.txt"

    def build(content: str) -> tuple[object, str]:
        data.write_text(content)
        image = Image.debian_slim().run_commands("echo built > marker.txt").add_local_file(data, "/root/data.txt")
        wire, files = image._resolve()
        for sha, read in files.items():
            (blobs / sha).write_bytes(read())
        log = Recorder()
        return asyncio.run(builder.ensure(wire, log)), log.text

    first, text = build("one")
    assert "run_commands" in text
    second, text = build("two")
    assert "run_commands" not in text and "Step 0" not in text  # the base image was reused as it is
    assert first.image_id != second.image_id and first.python == second.python
    assert (Path(second.root) / "files" / "root" / "data.txt").read_text() == "two"
    assert (Path(second.root) / "files" / "root" / "marker.txt").read_text() == "built\n"
    assert (Path(first.root) / "files" / "root" / "data.txt").read_text() == "one"


def test_requirements_file_and_uv_sync(tmp_path):
    builder = ImageBuilder(tmp_path / "state", debian_slim="venv")
    (tmp_path / "requirements.txt").write_text("packaging==24.0\n")
    project = tmp_path / "project"
    project.mkdir()
    (project / "pyproject.toml").write_text(
        '[project]\nname = "proj"\nversion = "0.1.0"\nrequires-python = ">=3.10"\ndependencies = ["six==1.16.0"]\n')
    subprocess.run([builder.uv, "lock", "-q", "--project", str(project)], check=True, timeout=120)
    image = Image.debian_slim().pip_install_from_requirements(str(tmp_path / "requirements.txt")).uv_sync(project)
    built, _ = ensure(builder, image)
    out = subprocess.run([built.python, "-c", "import packaging, six, cloudpickle; print(packaging.__version__, "
                          "six.__version__)"], capture_output=True, text=True, env=built.env)
    assert out.stdout.split() == ["24.0", "1.16.0"], out.stderr  # uv_sync kept the runtime and the other step
