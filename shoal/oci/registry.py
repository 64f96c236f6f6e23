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
import ipaddress
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from shoal.oci.store import Image, LayerStore, StoreError, check_digest

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


def pull(store: LayerStore, ref: str | Reference, *, credentials: tuple[str, str] | None = None,
         name: str | None = None, arch: str = "amd64", os_name: str = "linux", timeout: float = 3600,
         plain_http: bool = False) -> Image:
    """Pulls `ref` into the store (only the blobs it lacks), unpacks its layers and records it as `name`
    (default: the normalised reference). A multi-arch index resolves to `os_name`/`arch`. `plain_http`: the
    caller vouches for this one registry being spoken to over HTTP though it is not on loopback (a Ray node
    pulling from its control plane's `http://` URL); every other registry stays HTTPS with verification."""
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
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
            except subprocess.TimeoutExpired:
                raise RegistryError(f"pulling {reference}: timed out after {timeout:.0f} s") from None
            if proc.returncode != 0:
                raise _error(reference, proc.stderr, credentials is not None)
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
