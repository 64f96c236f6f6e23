"""What every image gets for the container runtime (cloudpickle, msgpack, tblib, aiohttp, the web server), and
how those packages are taken from the control plane's own environment when an image runs the same Python."""

from __future__ import annotations

import os
import re
import shutil
from importlib import metadata
from pathlib import Path

# Web functions: the runtime serves ASGI/WSGI apps itself (uvicorn with httptools and websockets; a2wsgi for
# WSGI), whatever the image installs. An image's own versions of these come first on its path.
WEB_REQUIREMENTS = ["uvicorn>=0.30", "httptools>=0.6", "websockets>=12", "a2wsgi>=1.10"]


def _runtime_requirements() -> list[str]:
    """What every image gets for the container runtime. cloudpickle is pinned to the control plane's version:
    functions pickled by the caller must unpickle in the container."""
    try:
        cloudpickle = f"cloudpickle=={metadata.version('cloudpickle')}"
    except metadata.PackageNotFoundError:
        cloudpickle = "cloudpickle>=3.0"
    return [cloudpickle, "msgpack>=1.0", "msgspec>=0.18", "tblib>=3.0", "aiohttp>=3.9", *WEB_REQUIREMENTS]


RUNTIME_REQUIREMENTS = _runtime_requirements()
RUNTIME_NAMES = ("cloudpickle", "msgpack", "msgspec", "tblib", "aiohttp", "uvicorn", "httptools", "websockets",
                 "a2wsgi", "pip")


def copy_host_packages(names: tuple[str, ...], target: Path) -> list[str]:
    """Hard-link (or copy) the installed distributions `names` and what they require from the control plane's
    environment into `target`, laid out as `pip install --target` would. Returns the names it could not take
    (not installed here, or installed without a file list). Requirements not installed here are conditional
    ones this Python does not need (the control plane's installer evaluated their markers for it)."""
    missing = []
    seen: set[str] = set()
    stack = [(n, True) for n in reversed(names)]
    while stack:
        name, top = stack.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            if top:
                missing.append(name)
            continue
        base = Path(str(dist.locate_file("")))
        files = [f for f in dist.files or [] if not str(f).startswith("..") and "__pycache__" not in str(f)]
        if not files:
            if top:
                missing.append(name)
            continue
        for f in files:
            src, dst = base / f, target / f
            if not src.is_file():
                continue
            dst.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy2(src, dst)
        for req in dist.requires or []:
            if "extra ==" not in req:
                stack.append((re.split(r"[\s<>=!~;\[(]", req.strip(), maxsplit=1)[0], False))
    return missing
