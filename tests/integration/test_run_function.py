"""`Image.run_function`: a Python function run once in a build container on the image so far; what it writes is
the image's next layer, and the host never changes. Real builds (ImageBuilder in-process, real build sandboxes),
and one app through a real control plane whose function reads what the build wrote."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

import shoal
from shoal.controlplane.images import ImageBuilder
from shoal.exception import ImageBuildError
from shoal.image import Image
from tests.conftest import run_script
from tests.integration.test_images import Recorder

GREETING = "a module global"  # the function's module travels by value: its globals come with it


def _shout(text: str) -> str:
    return text.upper()


def write_marker(path: str, text: str, *, suffix: str = "") -> str:
    import sys

    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(f"{_shout(text)}{suffix}|{GREETING}|{os.environ.get('TOKEN')}|{sys.prefix}|{shoal.is_local()}")
    return "dropped"


def fails() -> None:
    raise RuntimeError("no weights today")


def sleeps() -> None:
    import time

    time.sleep(120)


def ensure(builder: ImageBuilder, image: Image) -> tuple[Any, str]:
    """Build as the control plane does once the client has uploaded the image's blobs."""
    wire, blobs = image._resolve()
    builder.blob_dir.mkdir(parents=True, exist_ok=True)
    for sha, read in blobs.items():
        (builder.blob_dir / sha).write_bytes(read())
    log = Recorder()
    return asyncio.run(builder.ensure(wire, log)), log.text


def test_the_function_writes_the_image_with_its_args_globals_and_secrets_and_never_the_host(tmp_path):
    builder = ImageBuilder(tmp_path / "state", debian_slim="venv")
    image = Image.debian_slim().run_function(
        write_marker, args=("/etc/shoal-run-function/marker", "weights"), kwargs={"suffix": "!"},
        secrets=[shoal.Secret.from_dict({"TOKEN": "tok"})])
    built, log = ensure(builder, image)
    marker = Path(built.root) / "files" / "etc" / "shoal-run-function" / "marker"
    loud, global_, token, prefix, local = marker.read_text().split("|")
    assert (loud, global_, token, local) == ("WEIGHTS!", GREETING, "tok", "False")  # in a container, as in Modal
    assert prefix == str(Path(built.root) / "venv")  # the image's own Python ran it
    assert not Path("/etc/shoal-run-function").exists()
    assert f"run_function('{__name__}.write_marker')" in log
    again, log = ensure(builder, image)
    assert again.image_id == built.image_id and "run_function" not in log and builder.builds == 1


def test_a_failing_function_names_the_step_and_shows_its_traceback(tmp_path):
    builder = ImageBuilder(tmp_path / "state", debian_slim="venv")
    with pytest.raises(ImageBuildError) as info:
        ensure(builder, Image.debian_slim().run_function(fails))
    message = str(info.value)
    assert f"run_function('{__name__}.fails')" in message
    assert "RuntimeError: no weights today" in message and "exit status 1" in message
    assert builder.builds == 0


def test_a_function_past_its_timeout_fails_the_build(tmp_path):
    builder = ImageBuilder(tmp_path / "state", debian_slim="venv")
    with pytest.raises(ImageBuildError) as info:
        ensure(builder, Image.debian_slim().run_function(sleeps, timeout=1))
    assert "timed out after 1s" in str(info.value)


APP = '''
import os
import shoal as modal

WEIGHTS = "/opt/model/weights.txt"


def download(name, size):
    os.makedirs(os.path.dirname(WEIGHTS), exist_ok=True)
    with open(WEIGHTS, "w") as f:
        f.write(name * size)


image = modal.Image.debian_slim().run_function(download, args=("w",), kwargs={{"size": {size}}})
app = modal.App("run-function-app", image=image)


@app.function()
def weights():
    return open(WEIGHTS).read()


if __name__ == "__main__":
    with app.run():
        print("RESULT", weights.remote())
'''


def test_an_apps_function_sees_what_run_function_wrote_and_new_args_rebuild(control_plane, tmp_path):
    script = tmp_path / "run_function_app.py"
    script.write_text(APP.format(size=3))
    proc = run_script(script, timeout=300)
    assert "RESULT www" in proc.stdout, proc.stdout + proc.stderr
    assert "run_function('__main__.download')" in proc.stderr  # the build's output reached the caller
    again = run_script(script, timeout=300)
    assert "RESULT www" in again.stdout and "Building image" not in again.stderr, again.stderr
    script.write_text(APP.format(size=5))
    changed = run_script(script, timeout=300)
    assert "RESULT wwwww" in changed.stdout and "Building image" in changed.stderr, changed.stdout + changed.stderr
    assert not Path("/opt/model/weights.txt").exists()
