"""A real Docker registry (Debian's `docker-registry`, distribution 2.8) on loopback, and images made here.

Shared by tests/integration/test_oci*.py and bench/oci_pull.py: nothing is fetched from a public registry.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import socket
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

REGISTRY_BIN = "/usr/bin/docker-registry"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def registry(workdir: Path, *, users: dict[str, str] | None = None) -> Iterator[str]:
    """Runs a registry on 127.0.0.1:<free port> with its storage under `workdir`; yields `127.0.0.1:PORT`.
    With `users`, it asks for Basic auth (htpasswd, bcrypt)."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    config = [
        "version: 0.1",
        "log:", "  level: error", "  accesslog:", "    disabled: true",
        "storage:", "  filesystem:", f"    rootdirectory: {workdir / 'data'}", "  delete:", "    enabled: true",
        "http:", f"  addr: 127.0.0.1:{port}",
    ]
    if users:
        lines = [subprocess.run(["htpasswd", "-Bbn", u, p], check=True, capture_output=True, text=True).stdout.strip()
                 for u, p in users.items()]
        (workdir / "htpasswd").write_text("\n".join(lines) + "\n")
        config += ["auth:", "  htpasswd:", "    realm: shoal-test", f"    path: {workdir / 'htpasswd'}"]
    (workdir / "config.yml").write_text("\n".join(config) + "\n")
    log = open(workdir / "registry.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([REGISTRY_BIN, "serve", str(workdir / "config.yml")], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=2).close()
                break
            except urllib.error.HTTPError:
                break  # 401: up, and asking for auth
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    logged = (workdir / 'registry.log').read_text()
                    raise RuntimeError(f'docker-registry did not start: {logged}') from None
                time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def have_registry_tools() -> str:
    """'' when the registry, skopeo and htpasswd are installed, else what is missing (for a skip reason)."""
    missing = [t for t in (REGISTRY_BIN, "skopeo", "htpasswd") if shutil.which(t) is None]
    return f"missing: {', '.join(missing)}" if missing else ""


def layer_tar(entries: list[tuple]) -> bytes:
    """An uncompressed layer tar. Entries: ("dir", name[, mode]), ("file", name, data[, mode, uid, gid]),
    ("symlink", name, target), ("hardlink", name, target), ("chr", name), ("raw", TarInfo, data|None)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for kind, name, *rest in entries:
            if kind == "raw":
                tf.addfile(name, io.BytesIO(rest[0]) if rest[0] is not None else None)
                continue
            info = tarfile.TarInfo(name)
            info.mtime = 1_700_000_000
            if kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, rest[0] if rest else 0o755
                tf.addfile(info)
            elif kind == "file":
                data = rest[0]
                info.size, info.mode = len(data), rest[1] if len(rest) > 1 else 0o644
                if len(rest) > 2:
                    info.uid, info.gid = rest[2], rest[3]
                tf.addfile(info, io.BytesIO(data))
            elif kind in ("symlink", "hardlink"):
                info.type = tarfile.SYMTYPE if kind == "symlink" else tarfile.LNKTYPE
                info.linkname = rest[0]
                tf.addfile(info)
            elif kind == "chr":
                info.type = tarfile.CHRTYPE
                tf.addfile(info)
    return buf.getvalue()


def random_layer(name: str, size: int, files: int = 8) -> bytes:
    """A layer of incompressible files (so transfer and unpack costs are real)."""
    per = size // files
    return layer_tar([("dir", name)] + [("file", f"{name}/f{i}", os.urandom(per)) for i in range(files)])
