"""Functions in built images: pinned packages, apt packages, another Python, env/workdir/files, the default."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import shoal as modal

HERE = Path(__file__).parent

six_old = modal.Image.debian_slim().pip_install("six==1.16.0")
rich_image = (
    modal.Image.debian_slim(python_version="3.12")
    .pip_install("six==1.17.0")
    .apt_install("hello")
    .env({"IMAGES_TEST_ENV": "from-env-step"})
    .workdir("/app")
    .add_local_file(HERE / "images_data.txt", "/app/data.txt", copy=True)
    .add_local_python_source("images_helper")
)

app = modal.App("images-test")

with rich_image.imports():
    import images_helper  # noqa: F401 - present in rich_image's containers only... and here, on the test's path


@app.function(image=six_old)
def six_version(wait: float = 0.0) -> dict:
    import six

    time.sleep(wait)
    return {"six": six.__version__, "python": sys.version_info[:2], "pid": os.getpid()}


@app.function(image=rich_image)
def everything(wait: float = 0.0) -> dict:
    import images_helper
    import six

    time.sleep(wait)
    hello = subprocess.run(["hello"], capture_output=True, text=True)
    return {
        "six": six.__version__,
        "python": list(sys.version_info[:2]),
        "hello": hello.stdout.strip(),
        "env": os.environ.get("IMAGES_TEST_ENV"),
        "cwd": os.getcwd(),
        "data": Path("data.txt").read_text().strip(),
        "helper": images_helper.VALUE,
        "image_id": os.environ.get("SHOAL_IMAGE_ID"),
        "pid": os.getpid(),
    }


@app.function()
def default_image() -> dict:
    """In the default image: the runtime works, nothing of the control plane's environment is importable."""
    import importlib.util

    return {
        "executable": sys.executable,
        "prefix": sys.prefix,
        "python": list(sys.version_info[:2]),
        "leaked": [m for m in ("pytest", "rich", "ray") if importlib.util.find_spec(m) is not None],
        "runtime": [m for m in ("cloudpickle", "msgpack", "tblib", "aiohttp")
                    if importlib.util.find_spec(m) is not None],
        "image_id": os.environ.get("SHOAL_IMAGE_ID"),
    }
