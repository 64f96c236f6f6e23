"""The Debian base image built from Debian's archive with mmdebstrap, run from its layers stacked with overlayfs.

The builds are slow (about 2 to 3 minutes each on 2 busy cores: they download and unpack ~40 Debian packages), so
they are marked `slow` and share one store per module: CI runs them once
(`pytest -m slow tests/integration/test_oci_base.py`).
They skip, saying why, without root, mmdebstrap or a reachable Debian archive.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest

from shoal.oci.base import DEFAULT_MIRROR, BaseImageError, debian_slim, find_interpreter
from shoal.oci.store import Image, LayerStore
from tests.integration.test_oci import overlay_mount


def _why_not() -> str:
    if os.geteuid() != 0:
        return "mmdebstrap builds as root"
    if shutil.which("mmdebstrap") is None:
        return "mmdebstrap is not installed"
    try:
        urllib.request.urlopen(f"{DEFAULT_MIRROR}/dists/bookworm/Release", timeout=10).close()
    except OSError as exc:
        return f"the Debian archive is not reachable: {exc}"
    return ""


def _run_in(store: LayerStore, image: Image, tmp: Path, argv: list[str]) -> subprocess.CompletedProcess:
    """Runs argv chrooted into the image's layers stacked with overlayfs (what a container's root will be)."""
    with overlay_mount(store, image, tmp) as merged:
        chroot = shutil.which("chroot") or "/usr/sbin/chroot"
        return subprocess.run([chroot, str(merged), *argv], capture_output=True, text=True, timeout=60,
                              env={"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"})


def test_a_version_that_cannot_be_provided_is_a_clear_error() -> None:
    with pytest.raises(BaseImageError, match=r"Python 3\.19 cannot be provided on this machine: Debian bookworm's "
                                             r"python3 is 3\.11, and no CPython 3\.19 is installed"):
        find_interpreter("3.19")
    with pytest.raises(BaseImageError, match="expected 3.X or 3.X.Y"):
        find_interpreter("three")


@pytest.fixture(scope="module")
def base_store(tmp_path_factory) -> LayerStore:
    reason = _why_not()
    if reason:
        pytest.skip(reason)
    return LayerStore(tmp_path_factory.mktemp("base-store"))


@pytest.mark.slow
def test_debian_slim_311_is_bookworms_python_and_a_cache_hit_the_second_time(base_store, tmp_path) -> None:
    image = debian_slim(base_store, "3.11")
    assert len(image.layers) == 1
    proc = _run_in(base_store, image, tmp_path, ["/usr/local/bin/python", "-c",
                                                 "import sys, ssl; print(sys.version.split()[0], sys.executable)"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("3.11.")
    root = base_store.lowerdirs(image)[0]
    assert not os.listdir(root / "dev")  # bare: the runtime provides /dev, /etc/resolv.conf
    assert not (root / "etc/resolv.conf").exists() and not (root / "etc/hostname").exists()
    assert (root / "etc/ssl/certs/ca-certificates.crt").is_file()
    assert [p.name for p in (root / "var/lib/apt/lists").iterdir() if p.is_file() and p.name != "lock"] == []
    assert ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" in image.config.env)
    blobs = sorted(p.name for p in (base_store.blobs / "sha256").iterdir())
    assert debian_slim(base_store, "3.11") == image  # cached by content: nothing rebuilt
    assert sorted(p.name for p in (base_store.blobs / "sha256").iterdir()) == blobs


@pytest.mark.slow
def test_debian_slim_other_versions_copy_a_pyenv_interpreter_to_usr_local(base_store, tmp_path) -> None:
    try:
        prefix = find_interpreter("3.12")
    except BaseImageError as exc:
        pytest.skip(str(exc))
    image = debian_slim(base_store, "3.12")
    code = "import sys, ssl, sqlite3, ctypes, lzma; print(sys.version.split()[0])"
    proc = _run_in(base_store, image, tmp_path, ["/usr/local/bin/python", "-c", code])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == prefix.name
    root = base_store.lowerdirs(image)[0]
    assert not (root / "usr/bin/python3").exists()  # only the one Python
    assert (root / "usr/local/bin/pip3").read_text().startswith("#!/usr/local/bin/python")
    site = sorted(p.name for p in (root / "usr/local/lib/python3.12/site-packages").iterdir())
    assert [n for n in site if not n.startswith("pip") and n != "README.txt"] == []  # nothing of this machine's
