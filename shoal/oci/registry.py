"""Pulling images from OCI / Docker Registry v2 registries into the layer store, by driving `skopeo copy`.

Why skopeo rather than our own HTTP client (docs/oci.md says more): it is the containers project's registry client
(the same code as podman and buildah), kept current with what registries actually do — bearer-token and Basic
auth, OCI and Docker schema 2 manifests and indexes, redirects to blob storage, retries, zstd, the cloud
registries' quirks — and it verifies every blob against its digest. Its `--dest-shared-blob-dir` writes blobs
straight into the store's content-addressed blob directory, skipping those already there, so a pull transfers
only the layers the machine lacks. What is ours is small: naming (Docker's reference normalisation), credentials
(never on a command line, never the host's own), errors a user can act on, and recording the result.
"""

from __future__ import annotations

import base64
import dataclasses
import gzip
import io
import ipaddress
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from shoal.oci.store import Image, LayerStore, StoreError, check_digest
from shoal.oci.unpack import LayerError

DOCKER_HUB = "docker.io"
_REPO_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_HOST = re.compile(r"^(?:\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+)(?::[0-9]+)?$")


class RegistryError(Exception):
    """A pull that failed; the message names the image and what went wrong."""


class RegistryAuthError(RegistryError):
    """The registry wants credentials that were not given, or refused the ones given."""


class ImageNotFoundError(RegistryError):
    pass


@dataclasses.dataclass(frozen=True)
class Reference:
    registry: str  # host[:port]
    repository: str  # e.g. library/python
    tag: str = ""
    digest: str = ""

    def __str__(self) -> str:
        s = f"{self.registry}/{self.repository}"
        if self.tag:
            s += f":{self.tag}"
        if self.digest:
            s += f"@{self.digest}"
        return s

    @property
    def host(self) -> str:
        h = self.registry
        if h.startswith("["):
            return h[1:h.index("]")]
        return h.rsplit(":", 1)[0] if ":" in h else h

    @property
    def loopback(self) -> bool:
        """Registries on loopback are spoken to over plain HTTP (as Docker's insecure registries); others HTTPS."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


def parse_reference(ref: str) -> Reference:
    """Docker's normalisation: `python:3.11` is `docker.io/library/python:3.11`; no tag and no digest is `latest`."""
    original = ref
    if not ref or ref != ref.strip() or any(c.isspace() for c in ref):
        raise RegistryError(f"invalid image reference {original!r}")
    digest = ""
    if "@" in ref:
        ref, digest = ref.split("@", 1)
        try:
            check_digest(digest)
        except StoreError as exc:
            raise RegistryError(f"invalid image reference {original!r}: {exc}") from None
    tag = ""
    last = ref.rsplit("/", 1)[-1]
    if ":" in last:
        ref, tag = ref.rsplit(":", 1)
        if not _TAG.match(tag):
            raise RegistryError(f"invalid image reference {original!r}: bad tag {tag!r}")
    first, _, rest = ref.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost" or first.startswith("[")):
        registry, repository = first, rest
        if not _HOST.match(registry):
            raise RegistryError(f"invalid image reference {original!r}: bad registry {registry!r}")
    else:
        registry, repository = DOCKER_HUB, ref if rest else f"library/{ref}"
    if not all(_REPO_COMPONENT.match(c) for c in repository.split("/")):
        raise RegistryError(f"invalid image reference {original!r}: repository names are lowercase "
                            "letters, digits and separators (. _ -)")
    if not tag and not digest:
        tag = "latest"
    return Reference(registry=registry, repository=repository, tag=tag, digest=digest)


def _auth_file(directory: Path, ref: Reference, credentials: tuple[str, str]) -> Path:
    """A containers-auth.json for this registry only, mode 0600: a password on skopeo's command line would be
    readable by every user of the machine in /proc/PID/cmdline."""
    user, password = credentials
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    path = directory / "auth.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"auths": {ref.registry: {"auth": token}}}, f)
    return path


def _error(ref: Reference, stderr: str, has_credentials: bool) -> RegistryError:
    text = stderr.strip()
    low = text.lower()
    last = text.splitlines()[-1] if text else "(no output)"
    if "unauthorized" in low or "authentication required" in low or "denied" in low or " 401" in low:
        if has_credentials:
            return RegistryAuthError(f"pulling {ref}: the registry {ref.registry} refused the credentials given "
                                     f"(REGISTRY_USERNAME/REGISTRY_PASSWORD) ({last})")
        return RegistryAuthError(f"pulling {ref}: the registry {ref.registry} requires credentials and none were "
                                 "given: pass a secret with REGISTRY_USERNAME and REGISTRY_PASSWORD")
    if "manifest unknown" in low or "name unknown" in low or "not found" in low:
        return ImageNotFoundError(f"pulling {ref}: no such image in {ref.registry} ({last})")
    if "no image found in manifest list" in low or "choosing image instance" in low:
        return ImageNotFoundError(f"pulling {ref}: the image has no linux/amd64 variant ({last})")
    if "connection refused" in low or "no such host" in low or "i/o timeout" in low:
        return RegistryError(f"pulling {ref}: cannot reach the registry {ref.registry} ({last})")
    return RegistryError(f"pulling {ref}: {last}")


def skopeo_path() -> str:
    found = shutil.which("skopeo")
    if found is None:
        raise RegistryError("pulling images needs skopeo (Debian package `skopeo`), which is not installed")
    return found


_FOLLOW_POLL_S = 0.002  # a blob being written: how long to wait at its end before reading on


class _AbandonedError(Exception):
    """skopeo stopped before the blob being followed was complete."""


class _FollowReader(io.RawIOBase):
    """Reads a blob skopeo is still writing (`oci-put-blob*` in the pull's layout directory): at the end of what is
    written so far it waits for more, until skopeo has renamed the file into the blob directory (it renames a blob
    only once it is complete and its digest checked) — then the end is the real one."""

    def __init__(self, path: Path, skopeo: subprocess.Popen) -> None:
        self._fd = os.open(path, os.O_RDONLY)
        self._path = path
        self._skopeo = skopeo

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:  # type: ignore[override]
        while True:
            n = os.readv(self._fd, [buf])
            if n:
                return n
            if not self._path.exists():  # renamed: complete; read what was written after our last read
                return os.readv(self._fd, [buf])
            if self._skopeo.poll() is not None:
                raise _AbandonedError
            time.sleep(_FOLLOW_POLL_S)

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)
        super().close()


class _EarlyUnpacker:
    """Unpacks each layer blob while skopeo is still fetching it (and the others), so that a pull costs about the
    transfer instead of the transfer followed by the unpacking. Layer directories are named by the diff id their
    content has, so the record finds them; anything that goes wrong here is left to the record, which unpacks
    from the blobs as before (and reports the error)."""

    def __init__(self, store: LayerStore, layout: Path, skopeo: subprocess.Popen) -> None:
        self._store, self._layout, self._skopeo = store, layout, skopeo
        self._threads: list[threading.Thread] = []
        self._watcher = threading.Thread(target=self._watch, daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        seen: set[str] = set()
        while True:
            done = self._skopeo.poll() is not None
            try:
                names = [n for n in os.listdir(self._layout) if n.startswith("oci-put-blob") and n not in seen]
            except FileNotFoundError:
                names = []
            for name in names:
                seen.add(name)
                try:
                    reader = _FollowReader(self._layout / name, self._skopeo)
                except FileNotFoundError:
                    continue  # already renamed (a small blob): the record unpacks it if it is a layer
                t = threading.Thread(target=self._unpack, args=(reader, name), daemon=True)
                t.start()
                self._threads.append(t)
            if done:
                return
            time.sleep(0.003)

    def _unpack(self, reader: _FollowReader, name: str) -> None:
        try:
            stream = io.BufferedReader(reader, 1 << 20)
            head = stream.peek(4)[:4]
            if head[:2] == b"\x1f\x8b":
                self._store.unpack_stream(gzip.GzipFile(fileobj=stream, mode="rb"), name)  # type: ignore[arg-type]
            elif len(head) == 4 and head != b"\x28\xb5\x2f\xfd" and not head.lstrip().startswith(b"{"):
                self._store.unpack_stream(stream, name)  # an uncompressed tar; zstd and JSON are left to the record
        except (_AbandonedError, LayerError, OSError, EOFError, StoreError):
            pass
        finally:
            reader.close()

    def join(self) -> None:
        self._watcher.join()
        for t in self._threads:
            t.join()


def pull(store: LayerStore, ref: str | Reference, *, credentials: tuple[str, str] | None = None,
         name: str | None = None, arch: str = "amd64", os_name: str = "linux", timeout: float = 3600,
         plain_http: bool = False, early_unpack: bool = True) -> Image:
    """Pulls `ref` into the store (only the blobs it lacks), unpacks its layers and records it as `name`
    (default: the normalised reference). A multi-arch index resolves to `os_name`/`arch`. `plain_http`: the
    caller vouches for this one registry being spoken to over HTTP though it is not on loopback (a Ray node
    pulling from its control plane's `http://` URL); every other registry stays HTTPS with verification.
    `early_unpack`: unpack each layer while skopeo still fetches it (False: after the transfer, for comparison)."""
    reference = ref if isinstance(ref, Reference) else parse_reference(ref)
    if credentials is not None and not credentials[0]:
        raise RegistryAuthError(f"pulling {reference}: REGISTRY_USERNAME is empty")
    with store.lock():
        work = store.scratch_dir("pull-")
        try:
            verify = "false" if reference.loopback or plain_http else "true"
            cmd = [skopeo_path(), "--insecure-policy", "--override-arch", arch, "--override-os", os_name, "copy",
                   "--quiet", "--retry-times", "2", f"--src-tls-verify={verify}",
                   "--dest-shared-blob-dir", str(store.blobs)]
            if credentials is None:
                cmd.append("--src-no-creds")  # never the host's own registry logins
            else:
                cmd += ["--src-authfile", str(_auth_file(work, reference, credentials))]
            cmd += [f"docker://{reference}", f"oci:{work / 'layout'}:image"]
            env = {k: v for k, v in os.environ.items() if k not in ("REGISTRY_AUTH_FILE", "DOCKER_CONFIG")}
            env["HOME"] = str(work)  # no ~/.docker/config.json or containers/auth.json of the host's user
            env["XDG_RUNTIME_DIR"] = str(work)
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
            early = _EarlyUnpacker(store, work / "layout", proc) if early_unpack else None
            try:
                _, stderr = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise RegistryError(f"pulling {reference}: timed out after {timeout:.0f} s") from None
            finally:
                if early is not None:
                    early.join()
            if proc.returncode != 0:
                raise _error(reference, stderr, credentials is not None)
            index = json.loads((work / "layout" / "index.json").read_text())
            manifest_digest = index["manifests"][0]["digest"]
            return store.record(name or str(reference), manifest_digest)
        finally:
            shutil.rmtree(work, ignore_errors=True)


def push_layout(layout: Path, tag: str, ref: str, *, all_platforms: bool = False,
                credentials: tuple[str, str] | None = None, docker_format: bool = False) -> None:
    """Pushes `oci:LAYOUT:TAG` to a registry (plain HTTP for loopback ones) — how tests and benchmarks publish the
    images they make."""
    reference = parse_reference(ref)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [skopeo_path(), "--insecure-policy", "copy", "--quiet",
               f"--dest-tls-verify={'false' if reference.loopback else 'true'}"]
        if all_platforms:
            cmd.append("--all")
        if docker_format:
            cmd.append("--format=v2s2")  # Docker schema 2 manifests and media types, as `docker push` makes
        if credentials is None:
            cmd.append("--dest-no-creds")
        else:
            cmd += ["--dest-authfile", str(_auth_file(Path(tmp), reference, credentials))]
        cmd += [f"oci:{layout}:{tag}", f"docker://{reference}"]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HOME": tmp})
    if proc.returncode != 0:
        raise RegistryError(f"pushing {reference}: {proc.stderr.strip()}")
