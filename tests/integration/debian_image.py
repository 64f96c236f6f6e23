"""Debian bookworm with Python 3.11 and apt (shoal.oci.base.debian_slim, built from Debian's archive with
mmdebstrap: a minute or more, once per machine in its base cache), written once per test run and shared by
pytest-xdist workers as an OCI layout that tests push to a registry on loopback (tests/integration/oci_registry.py).
Nothing is fetched from a public registry.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import urllib.request
from pathlib import Path

import pytest

from shoal.oci.layout import LayoutWriter

LAYOUT_TAG = "v1"


def unavailable() -> str:
    """'' when this machine can build the image, else why not (for a skip reason)."""
    from shoal.oci.base import DEFAULT_MIRROR

    if os.geteuid() != 0:
        return "mmdebstrap builds as root"
    if shutil.which("mmdebstrap") is None:
        return "mmdebstrap is not installed"
    mirror = os.environ.get("SHOAL_DEBIAN_MIRROR") or DEFAULT_MIRROR
    try:
        urllib.request.urlopen(f"{mirror}/dists/bookworm/Release", timeout=10).close()
    except OSError as exc:
        return f"the Debian archive is not reachable: {exc}"
    return ""


def debian_layout(cache_dir: Path) -> Path:
    """An OCI layout under `cache_dir` holding Debian bookworm (Python 3.11, apt) as `LAYOUT_TAG`; built unless
    another worker of this run built it (a file lock guards the build)."""
    from shoal.oci.base import debian_slim, default_cache
    from shoal.oci.store import LayerStore

    cache_dir.mkdir(parents=True, exist_ok=True)
    layout = cache_dir / "layout"
    fd = os.open(cache_dir / ".debian.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if not (layout / "index.json").is_file():
            store = LayerStore(cache_dir / "store")
            image = debian_slim(store, "3.11", cache=default_cache())
            shutil.rmtree(layout, ignore_errors=True)
            (layout / "blobs" / "sha256").mkdir(parents=True)
            for digest in image.blob_digests:
                os.link(store.blob_path(digest), layout / "blobs" / "sha256" / digest.split(":", 1)[1])
            LayoutWriter(layout).tag(LAYOUT_TAG, {
                "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": image.manifest_digest,
                "size": store.blob_path(image.manifest_digest).stat().st_size})
    finally:
        os.close(fd)
    return layout


def _cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    if os.environ.get("SHOAL_TEST_DEBIAN_CACHE"):
        return Path(os.environ["SHOAL_TEST_DEBIAN_CACHE"])
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    return shared / "debian-image"


@pytest.fixture(scope="session")
def debian_oci_layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Debian layout, built once per run (shared by xdist workers: their base temp dirs' parent), or kept
    across runs in `SHOAL_TEST_DEBIAN_CACHE` when that names a directory."""
    return debian_layout(_cache_dir(tmp_path_factory))


@pytest.fixture(scope="session")
def debian_base(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The Python 3.11 base in the machine's base cache (shoal.oci.base.default_cache), or a skip saying why not."""
    debian_layout(_cache_dir(tmp_path_factory))
