"""The image builder: turns an image spec (shoal.Image.to_wire()) into a directory containers run from.

`SHOAL_HOME/images/<image_id>/` holds, once built:

    manifest.json   written last: its presence is what makes the image built (a cache hit reads only this)
    venv/           `uv venv` for the image's Python (an interpreter found on this machine, never downloaded),
                    with what the container runtime needs (cloudpickle, msgpack, tblib, aiohttp) and a .pth
                    file that makes the `shoal` package importable through `shoal-sdk/shoal` (a symlink to
                    the control plane's own package: nothing else of the control plane's environment)
    apt-root/       Debian packages unpacked with `dpkg -x` (never installed on the host)
    files/          the image's files by container path: `files/root/x.py` is `/root/x.py` in the container
    build/          scratch space of build steps

Images whose chain ends with files added with `copy=False` are built in two layers: the build steps as their own
image (`base` in the manifest), and a thin image that hard-links the base's files/ and apt-root/, uses its venv,
and adds those files on top, so editing them never re-runs a build step.

Builds stream their output through `log` as it is produced; a failing step raises ImageBuildError naming the
step, with the end of its output. See docs/images.md.
"""

from __future__ import annotations

import asyncio
import codecs
import collections
import dataclasses
import glob
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import signal
import stat
import sys
import sysconfig
import tarfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path, PurePosixPath
from typing import Any, NoReturn

import msgspec

from .._spec.config import package_dir
from .._spec.definitions import ImageSpec
from .._spec.images import (
    BASE_KINDS,
    BUILDER_VERSION,
    IMAGE_ID_RE,
    STEP_KINDS,
    check_run_function,
    image_id_for,
    split_mounts,
)
from ..backends.base import ContainerImage
from ..backends.build_sandbox import ALWAYS_WRITABLE, BuildSandbox, BuildSetupError
from ..backends.sandbox import SYSTEM_DIRS, layer_id_shift
from ..exception import ImageBuildError, InvalidError
from .oci_images import OciBuilder, debian_slim_mode, oci_chain
from .oci_steps import check_oci_step
from .runtime_packages import RUNTIME_NAMES, RUNTIME_REQUIREMENTS
from .runtime_packages import copy_host_packages as _copy_host_packages

Log = Callable[[str], None]

SHOAL_PACKAGE_DIR = str(package_dir())
STANDARD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
TAIL_CHARS = 4000
# Variables of the control plane's environment that build tools may see (network, locale, package indexes).
_BUILD_ENV_NAMES = {"HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "NETRC", "SSL_CERT_FILE",
                    "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "XDG_CACHE_HOME", "XDG_CONFIG_HOME"}
_BUILD_ENV_PREFIXES = ("LC_", "PIP_", "UV_")
_BUILD_ENV_DROP = {"UV_PYTHON", "UV_PROJECT_ENVIRONMENT", "UV_SYSTEM_PYTHON"}


WARM_IMPORTS = "import shoal.runtime.worker, shoal.app, shoal.functions, shoal.cls, cloudpickle, msgpack, tblib"


def _multiarch() -> str:
    return sysconfig.get_config_var("MULTIARCH") or f"{platform.machine()}-linux-gnu"


def _inside(env: dict[str, str]) -> dict[str, str]:
    """A build environment as a build sandbox's root sees it: its own home and temporary directory."""
    drop = ("XDG_CACHE_HOME", "XDG_CONFIG_HOME", "NETRC")  # host paths the sandbox does not see
    return {**{k: v for k, v in env.items() if k not in drop},
            "HOME": "/root", "TMPDIR": "/tmp", "USER": "root", "LOGNAME": "root"}


def _build_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if (k in _BUILD_ENV_NAMES or k.startswith(_BUILD_ENV_PREFIXES) or k.lower().endswith("_proxy"))
           and k not in _BUILD_ENV_DROP}
    env.setdefault("LANG", "C.UTF-8")
    env.update(extra or {})
    return env


def _discovery_path() -> str:
    """PATH for finding interpreters: the control plane's PATH without shim directories (a pyenv shim for a
    version that is not active fails and stops uv's search), plus pyenv's installed 3.x versions."""
    dirs = [d for d in os.environ.get("PATH", STANDARD_PATH).split(os.pathsep)
            if d and "shims" not in Path(d).parts]
    pyenv_root = os.environ.get("PYENV_ROOT")
    if not pyenv_root and shutil.which("pyenv"):
        import subprocess

        try:
            pyenv_root = subprocess.run(["pyenv", "root"], capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pyenv_root = None
    if pyenv_root:
        versions = glob.glob(os.path.join(pyenv_root, "versions", "3.*", "bin"))
        dirs += sorted((v for v in versions if re.search(r"/3\.\d+\.\d+/bin$", v)), reverse=True)
    return os.pathsep.join(dict.fromkeys(dirs))


_FIELD_TYPES = {"packages": "strs", "requirements": "strs", "commands": "strs", "groups": "strs", "extras": "strs",
                "modules": "strs", "vars": "env", "env": "env", "secret_env": "env", "extra_options": "str",
                "find_links": "str", "index_url": "str", "extra_index_url": "str", "pyproject": "str",
                "lock": "str", "mode": "int", "tag": "str", "dockerfile": "str", "build_args": "env",
                "add_python": "str", "context_sha": "str", "registry": "str",
                "secret_names": "strs", "named_secret_env": "env", "function": "str", "timeout": "int"}


def _is(value: Any, kind: str) -> bool:
    if kind == "strs":
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if kind == "env":
        return isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())
    return isinstance(value, str if kind == "str" else int)


def check_spec(spec: ImageSpec, slim_rootfs: bool | None = None) -> ImageSpec:
    """Validate an image spec from a client (its types were checked when its definition was decoded); its id
    must be the hash of its steps. An OCI image has no python_version and a base step (BASE_KINDS) first. With
    `slim_rootfs` (default: `debian_slim_mode()`) debian_slim chains are root filesystems and may have OCI steps."""
    image_id, version = spec.image_id, spec.python_version
    if not IMAGE_ID_RE.match(image_id):
        raise InvalidError(f"invalid image id {image_id!r}")
    oci = bool(spec.steps) and isinstance(spec.steps[0], dict) and spec.steps[0].get("kind") in BASE_KINDS
    slim_rootfs = debian_slim_mode() == "rootfs" if slim_rootfs is None else slim_rootfs
    if oci and version is not None:
        raise InvalidError(f"invalid python_version {version!r}: an image from {spec.steps[0]['kind']} has none "
                           "(use add_python=)")
    if not oci and (version is None or not re.fullmatch(r"3\.\d+(\.\d+)?", version)):
        raise InvalidError(f"invalid python_version {version!r}")
    if spec.builder != BUILDER_VERSION:
        raise InvalidError(f"image spec from builder {spec.builder!r}; this control plane builds "
                           f"{BUILDER_VERSION!r} (upgrade the client or the control plane so they match)")
    for i, step in enumerate(spec.steps):
        kinds = STEP_KINDS | BASE_KINDS if i == 0 else STEP_KINDS
        if not isinstance(step, dict) or step.get("kind") not in kinds or not isinstance(step.get("repr"), str):
            raise InvalidError(f"invalid image step {step!r}")
        for remote in (step.get("remote_path"), step.get("path")):  # each a path inside the image
            if remote is not None and (not isinstance(remote, str) or not remote.startswith("/")
                                       or ".." in PurePosixPath(remote).parts):
                raise InvalidError(f"invalid image path {remote!r} in {step['repr']}")
        for key in ("sha", "context_sha", "payload_sha", "source_sha", "args_sha"):
            if step.get(key) is not None and not (isinstance(step[key], str)
                                                  and re.fullmatch(r"[0-9a-f]{64}", step[key])):
                raise InvalidError(f"invalid blob id {key!r} in {step['repr']}")
        for key, kind in _FIELD_TYPES.items():
            if key in step and step[key] is not None and not _is(step[key], kind):
                raise InvalidError(f"invalid {key!r} in image step {step['repr']}")
        if step["kind"] == "run_function":
            check_run_function(step)
        if any(p.startswith("-") for p in step.get("packages") or []):
            raise InvalidError(f"flags in the package list of {step['repr']}: use extra_options")
        check_oci_step(step, oci or slim_rootfs)
    if image_id_for(version, spec.steps) != image_id:
        raise InvalidError(f"image id {image_id} does not match its steps")
    return spec


def _fold_named_secrets(spec: ImageSpec) -> ImageSpec:
    """Steps' `named_secret_env` (the values of their named secrets, resolved by the control plane) under their own
    `secret_env`, which is what the steps read."""
    if not any(s.get("named_secret_env") for s in spec.steps):
        return spec
    steps = [{**{k: v for k, v in s.items() if k != "named_secret_env"},
              "secret_env": {**s["named_secret_env"], **(s.get("secret_env") or {})}}
             if s.get("named_secret_env") else s for s in spec.steps]
    return msgspec.structs.replace(spec, steps=steps)


@dataclasses.dataclass
class _Build:
    """What a build has made so far."""

    image_id: str
    root: Path
    log: Log
    python: str = ""
    python_version: str = ""
    base_python: str = ""
    runtime: str = ""  # the shared directory of the runtime's packages
    env: dict[str, str] = dataclasses.field(default_factory=dict)  # ENV steps
    workdir: str | None = None
    apt: bool = False
    step_no: int = 0
    step_repr: str = ""

    @property
    def venv(self) -> Path:
        return self.root / "venv"

    @property
    def files(self) -> Path:
        return self.root / "files"

    def path_env(self) -> dict[str, str]:
        """PATH and friends of containers and build commands of this image (never the host's PATH)."""
        path = [str(self.venv / "bin")]
        env = {"VIRTUAL_ENV": str(self.venv)}
        if self.apt:
            apt = self.root / "apt-root"
            path += [str(apt / d) for d in ("usr/local/bin", "usr/bin", "bin", "usr/sbin", "sbin", "usr/games")]
            arch = _multiarch()
            env["LD_LIBRARY_PATH"] = os.pathsep.join(
                str(apt / d) for d in (f"usr/lib/{arch}", f"lib/{arch}", "usr/lib", "lib"))
        env["PATH"] = os.pathsep.join([*path, STANDARD_PATH])
        return env

    def container_env(self) -> dict[str, str]:
        env = self.path_env()
        if (self.files / "root").is_dir():
            env["PYTHONPATH"] = str(self.files / "root")  # add_local_python_source: /root is on the path
        image_path = env["PATH"].split(os.pathsep)
        env.update(self.env)
        if env["PATH"] != os.pathsep.join(image_path):  # an ENV PATH keeps the image's own dirs (apt, venv)
            own = [d for d in image_path if d not in STANDARD_PATH.split(os.pathsep)]
            user = env["PATH"].split(os.pathsep)
            env["PATH"] = os.pathsep.join([*(d for d in own if d not in user), *user])
        return env


class ImageBuilder:
    """Builds images once per machine and caches them by id."""

    def __init__(self, state_dir: Path, blob_dir: Path | None = None, debian_slim: str | None = None) -> None:
        self.dir = Path(state_dir) / "images"
        self.blob_dir = blob_dir or Path(state_dir) / "blobs"
        self.apt_cache = self.dir / ".cache" / "apt"
        # uv's cache for package steps, shared read-write with their build sandboxes: shoal's own, never the host's
        # (~/.cache/uv), which uv on the host (the runtime's packages, `uv venv`) goes on using.
        self.uv_cache = self.dir / ".cache" / "uv"
        self._locks: dict[str, asyncio.Lock] = {}
        self._apt_lock = asyncio.Lock()
        self._runtime_lock = asyncio.Lock()
        self._pythons: dict[str, tuple[str, str, str]] = {}
        self._discovery_path: str | None = None
        self.builds = 0  # images built (cache misses) by this builder
        self._oci: OciBuilder | None = None
        self.sandbox = BuildSandbox(str(state_dir))  # where run_commands and package steps' uv run
        self.slim_rootfs = (debian_slim or debian_slim_mode()) == "rootfs"  # what debian_slim() chains become
        try:
            from uv import find_uv_bin

            self.uv = find_uv_bin()
        except (ImportError, FileNotFoundError):
            self.uv = shutil.which("uv") or "uv"  # a build then fails naming it

    @property
    def oci(self) -> OciBuilder:
        """The builder of OCI images (made on first use: it opens the layer store, SHOAL_HOME/oci)."""
        if self._oci is None:
            self._oci = OciBuilder(self.dir, self.blob_dir, self.sandbox, self.uv, layer_id_shift(),
                                   self.runtime_for)
        return self._oci

    async def runtime_for(self, python_version: str, libc: str, log: Log | None = None) -> str:
        """The container runtime's packages for an OCI image's Python X.Y (its libc: glibc or musl), shared by
        the images of that X.Y and bound read-only into their containers: linked from the control plane's own
        environment when it runs the same X.Y on glibc, else wheels installed once with `uv pip install --target
        --python-version --python-platform` on the host (wheels only: no package code runs)."""
        machine = platform.machine() or "x86_64"
        tag = f"{machine}-manylinux_2_28" if libc == "glibc" else f"{machine}-unknown-linux-musl"
        key = hashlib.sha256(json.dumps([python_version, tag, RUNTIME_REQUIREMENTS]).encode()).hexdigest()[:12]
        target = self.dir / ".runtime" / f"oci-py{python_version}-{libc}-{key}"
        if (target / ".complete").exists():
            return str(target)
        async with self._runtime_lock:
            if (target / ".complete").exists():
                return str(target)
            tmp = target.with_name(f"{target.name}.tmp{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            tmp.chmod(0o755)  # read by containers' root, which is not the host's
            missing = list(RUNTIME_NAMES)
            if python_version == sysconfig.get_python_version() and libc == "glibc":
                missing = await asyncio.to_thread(_copy_host_packages, RUNTIME_NAMES, tmp)
            if missing:
                wanted = [r for r in [*RUNTIME_REQUIREMENTS, "pip"] if re.split(r"[<>=!~ ]", r)[0] in missing]
                if log is not None:
                    log(f"Runtime packages for Python {python_version} ({tag}): installing {', '.join(wanted)}\n")
                argv = [self.uv, "pip", "install", "--target", str(tmp), "--python", sys.executable,
                        "--python-version", python_version, "--python-platform", tag, "--only-binary", ":all:",
                        *wanted]
                rc, out = await self._exec(argv, env=_build_env({"PATH": STANDARD_PATH}), cwd=tmp, log=None)
                if rc != 0:
                    shutil.rmtree(tmp, ignore_errors=True)
                    raise ImageBuildError(f"installing the container runtime's packages for Python {python_version} "
                                          f"({tag}) failed:\n{out[-TAIL_CHARS:].strip()}")
            (tmp / ".complete").touch()
            shutil.rmtree(target, ignore_errors=True)  # an incomplete one, from a build that was interrupted
            tmp.rename(target)
        return str(target)

    # -- cache -----------------------------------------------------------------------------------------------
    def cached(self, image_id: str) -> ContainerImage | None:
        """The built image, or None: one small JSON read."""
        try:
            manifest = json.loads((self.dir / image_id / "manifest.json").read_bytes())
        except (OSError, ValueError):
            return None
        if manifest.get("kind") == "oci":
            return OciBuilder.image_from(manifest)
        if (self.slim_rootfs or manifest.get("builder") != BUILDER_VERSION
                or manifest.get("runtime") != RUNTIME_REQUIREMENTS or manifest.get("shoal") != SHOAL_PACKAGE_DIR
                or not os.path.exists(manifest["python"]) or not os.path.isdir(manifest.get("runtime_dir") or "")):
            return None  # a venv image where debian_slim is now a root filesystem, or built for another runtime,
            # or its interpreter or runtime packages are gone
        return ContainerImage(image_id=image_id, python=manifest["python"], root=manifest["root"],
                              env=manifest["env"], workdir=manifest["workdir"])

    async def ensure(self, spec: ImageSpec, log: Log) -> ContainerImage:
        """The built image of `spec`, building it first if this machine has not (or if a step is forced)."""
        if not spec.steps and spec.python_version is None:  # Image.from_id (a sandbox's snapshot): stored only
            if not IMAGE_ID_RE.match(spec.image_id):
                raise InvalidError(f"invalid image id {spec.image_id!r}")
            if (hit := self.cached(spec.image_id)) is None:
                raise InvalidError(f"image {spec.image_id} is not stored on this control plane (an image known by "
                                   "its id only cannot be built)")
            return hit
        spec = _fold_named_secrets(check_spec(spec, self.slim_rootfs))
        image_id = spec.image_id
        build_steps, mounts = split_mounts(spec.steps)
        force = spec.force_base is True or any(s.get("force") for s in spec.steps)
        if not force and (hit := self.cached(image_id)) is not None:
            return hit
        async with self._locks.setdefault(image_id, asyncio.Lock()):
            if not force and (hit := self.cached(image_id)) is not None:
                return hit  # built while we waited
            if self.slim_rootfs or (spec.steps and spec.steps[0]["kind"] in BASE_KINDS):
                built = await self.oci.build(image_id, oci_chain(spec), spec.force_base is True, log)
                self.builds += 1
                return built
            if not mounts:
                return await self._build(spec, log)
            base_spec = msgspec.structs.replace(spec, steps=build_steps,
                                                image_id=image_id_for(spec.python_version or "", build_steps))
            base = await self.ensure(base_spec, log)
            return await self._layer(image_id, base, mounts, log)

    # -- building --------------------------------------------------------------------------------------------
    async def _build(self, spec: ImageSpec, log: Log) -> ContainerImage:
        image_id = spec.image_id
        steps = spec.steps
        python_version = spec.python_version or ""
        root = self._fresh_dir(image_id)
        b = _Build(image_id, root, log)
        t0 = time.monotonic()
        log(f"Building image {image_id} (steps 0 to {len(steps)})\n")  # the total: clients show "step 2/4"
        forced_from = 0 if spec.force_base is True else next(
            (i + 1 for i, s in enumerate(steps) if s.get("force")), len(steps) + 1)
        b.step_repr = f"debian_slim(python_version={python_version!r})"
        self._header(b)
        await self._base(b, python_version, forced_from == 0)
        for i, step in enumerate(steps, start=1):
            b.step_no, b.step_repr = i, step["repr"]
            self._header(b)
            await getattr(self, "_step_" + step["kind"])(b, step, i >= forced_from)
        manifest = {"image_id": image_id, "builder": BUILDER_VERSION, "runtime": RUNTIME_REQUIREMENTS,
                    "shoal": SHOAL_PACKAGE_DIR, "python": b.python, "python_version": b.python_version,
                    "base_python": b.base_python, "runtime_dir": b.runtime, "root": str(root),
                    "env": b.container_env(),
                    "workdir": b.workdir, "built_at": time.time(), "build_s": round(time.monotonic() - t0, 3),
                    "steps": [s["repr"] for s in steps]}
        self._commit(root, manifest)
        log(f"Built image {image_id} in {time.monotonic() - t0:.2f}s\n")
        return self.cached(image_id) or _missing(image_id)

    async def _layer(self, image_id: str, base: ContainerImage, mounts: list[dict[str, Any]],
                     log: Log) -> ContainerImage:
        """A base image plus files added with copy=False: hard links of the base's files and the new files."""
        root = self._fresh_dir(image_id)
        assert base.root is not None
        base_root = Path(base.root)
        # Hard links, so this image's root holds all it needs besides the venv (which its interpreter's paths
        # name): a sandbox that shows containers this root sees the base's files and apt packages too.
        for part in ("files", "apt-root"):
            if (base_root / part).is_dir():
                await asyncio.to_thread(shutil.copytree, base_root / part, root / part, symlinks=True,
                                        copy_function=os.link)
        b = _Build(image_id, root, log)
        for step in mounts:
            b.step_repr = step["repr"]
            await getattr(self, "_step_" + step["kind"])(b, step, False)
        apt = str(base_root / "apt-root")
        env = {k: v.replace(apt, str(root / "apt-root")) for k, v in base.env.items()}
        if (root / "files" / "root").is_dir():
            env["PYTHONPATH"] = str(root / "files" / "root")
        base_manifest = json.loads((Path(base.root) / "manifest.json").read_bytes())
        manifest = {**base_manifest, "image_id": image_id, "root": str(root), "env": env, "base": base.image_id,
                    "built_at": time.time(), "steps": [*base_manifest["steps"], *(s["repr"] for s in mounts)]}
        self._commit(root, manifest)
        return self.cached(image_id) or _missing(image_id)

    def _fresh_dir(self, image_id: str) -> Path:
        """An empty directory at the image's final path (venvs are not relocatable, so builds happen in place;
        the manifest, written last, is what marks it built). An older build is moved aside first."""
        root = self.dir / image_id
        if root.exists():
            trash = self.dir / ".trash" / f"{image_id}.{time.time_ns()}"
            trash.parent.mkdir(parents=True, exist_ok=True)
            root.rename(trash)
            asyncio.get_running_loop().run_in_executor(None, shutil.rmtree, trash, True)
        root.mkdir(parents=True)
        return root

    def _commit(self, root: Path, manifest: dict[str, Any]) -> None:
        tmp = root / "manifest.json.tmp"
        tmp.write_text(json.dumps(manifest, indent=1))
        tmp.replace(root / "manifest.json")
        self.builds += 1

    @staticmethod
    def _header(b: _Build) -> None:
        b.log(f"=> Step {b.step_no}: {b.step_repr}\n")

    async def _base(self, b: _Build, version: str, forced: bool) -> None:
        """Step 0: the virtual environment, with the container runtime's packages and shoal on its path."""
        python, b.python_version, soabi = await self._find_python(version, b)
        b.base_python = python
        venv = self._uv(b, ["venv", "--no-project", "--python", python, str(b.venv)], forced,
                        env={"UV_VENV_CLEAR": "1"})  # an offline attempt may leave a partial one
        _, runtime = await asyncio.gather(venv, self._runtime_dir(b, python, b.python_version, soabi))
        b.python = str(b.venv / "bin" / "python")
        b.runtime = str(runtime)
        sdk = b.root / "shoal-sdk"
        sdk.mkdir()
        (sdk / "shoal").symlink_to(SHOAL_PACKAGE_DIR, target_is_directory=True)
        site = glob.glob(str(b.venv / "lib" / "python3.*" / "site-packages"))
        if not site:
            self._fail(b, f"no site-packages in {b.venv}")
        # After site-packages on sys.path: packages the image installs itself take precedence.
        Path(site[0], "_shoal_runtime.pth").write_text(f"{sdk}\n{runtime}\n")
        for name in ("pip", "pip3"):  # pip comes with the runtime packages; `pip install` targets this venv
            script = b.venv / "bin" / name
            script.write_text('#!/bin/sh\nexec "$(dirname -- "$0")/python" -m pip "$@"\n')
            script.chmod(0o755)
        b.files.mkdir()
        # Bytecode of what a container's runtime imports, compiled now, on the host, while the venv holds nothing of
        # the user's: later the image's interpreter only ever runs sandboxed (its trees read-only there).
        await self._exec([b.python, "-I", "-c", WARM_IMPORTS], env=_build_env({"PATH": STANDARD_PATH}), cwd=b.root,
                         log=None)

    async def _runtime_dir(self, b: _Build, python: str, full_version: str, soabi: str) -> Path:
        """The container runtime's packages (and pip) for one interpreter, shared by its images: copied from
        the control plane's own environment when that runs the same Python (no download at all), else
        installed with `uv pip install --target` once per machine. Forced builds leave it alone: it depends
        only on shoal's own requirements, which are part of its path."""
        key = hashlib.sha256(json.dumps([os.path.realpath(python), soabi, RUNTIME_REQUIREMENTS]).encode())
        target = self.dir / ".runtime" / f"py{full_version}-{key.hexdigest()[:12]}"
        if (target / ".complete").exists():
            return target
        async with self._runtime_lock:
            if (target / ".complete").exists():
                return target
            tmp = target.with_name(f"{target.name}.tmp{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            missing = list(RUNTIME_NAMES)
            if soabi and soabi == sysconfig.get_config_var("SOABI"):
                missing = await asyncio.to_thread(_copy_host_packages, RUNTIME_NAMES, tmp)
                if len(missing) < len(RUNTIME_NAMES):
                    b.log(f"Runtime packages: {len(RUNTIME_NAMES) - len(missing)} of {len(RUNTIME_NAMES)} linked "
                          "from the control plane's environment (same Python)\n")
            if missing:
                wanted = [r for r in [*RUNTIME_REQUIREMENTS, "pip"] if re.split(r"[<>=!~ ]", r)[0] in missing]
                await self._uv(b, ["pip", "install", "--target", str(tmp), "--python", python, *wanted], False)
            (tmp / ".complete").touch()
            if target.exists():  # an incomplete one, from a build that was interrupted
                shutil.rmtree(target, ignore_errors=True)
            tmp.rename(target)
        return target

    async def _find_python(self, version: str, b: _Build) -> tuple[str, str, str]:
        """(interpreter, its full version, its SOABI) for `version`, among the interpreters installed here."""
        if version in self._pythons:
            return self._pythons[version]
        self.dir.mkdir(parents=True, exist_ok=True)
        if self._discovery_path is None:
            self._discovery_path = await asyncio.to_thread(_discovery_path)
        env = _build_env({"PATH": self._discovery_path, "UV_PYTHON_DOWNLOADS": "never"})
        argv = [self.uv, "python", "find", version, "--system", "--no-project", "--python-preference", "system",
                "--no-python-downloads"]
        rc, out = await self._exec(argv, env=env, cwd=self.dir, log=None)
        python = out.strip().splitlines()[-1].strip() if rc == 0 and out.strip() else ""
        if not python:
            raise ImageBuildError(
                f"Image build for {b.image_id} failed: Python {version} is not installed on this machine, and "
                f"shoal never downloads interpreters. Install it (for example `uv python install {version}`, "
                f"`pyenv install {version}`, or your OS's python{version} package), or use another "
                f"python_version.\n{out.strip()[-TAIL_CHARS:]}")
        code = "import platform, sysconfig; print(platform.python_version(), sysconfig.get_config_var('SOABI'))"
        rc, info = await self._exec([python, "-I", "-c", code], env=_build_env(), cwd=self.dir, log=None)
        parts = info.split() if rc == 0 else []
        self._pythons[version] = (python, parts[0] if parts else version, parts[1] if len(parts) > 1 else "")
        return self._pythons[version]

    # -- steps -----------------------------------------------------------------------------------------------
    async def _step_pip_install(self, b: _Build, step: dict[str, Any], forced: bool) -> None:
        # Bytecode compiled now: image trees are read-only in containers, which could not cache it themselves.
        argv = ["pip", "install", "--compile-bytecode", "--python", b.python, *step.get("packages", [])]
        for i, text in enumerate(step.get("requirements") or []):
            req = b.root / "build" / f"requirements-{b.step_no}-{i}.txt"
            req.parent.mkdir(exist_ok=True)
            req.write_text(text)
            argv += ["-r", str(req)]
        for flag, key in (("--find-links", "find_links"), ("--index-url", "index_url"),
                          ("--extra-index-url", "extra_index_url")):
            if step.get(key):
                argv += [flag, step[key]]
        if step.get("pre"):
            argv += ["--prerelease", "allow"]
        argv += shlex.split(step.get("extra_options") or "")
        await self._uv_step(b, argv, forced, env={**step.get("env", {}), **step.get("secret_env", {})})

    _step_uv_pip_install = _step_pip_install
    _step_pip_install_from_requirements = _step_pip_install
    _step_pip_install_from_pyproject = _step_pip_install

    async def _step_uv_sync(self, b: _Build, step: dict[str, Any], forced: bool) -> None:
        project = b.root / "build" / f"uv-project-{b.step_no}"
        project.mkdir(parents=True)
        (project / "pyproject.toml").write_text(step["pyproject"])
        if step.get("lock") is not None:
            (project / "uv.lock").write_text(step["lock"])
        argv = ["sync", "--compile-bytecode", "--project", str(project), "--python", b.python, "--inexact",
                "--no-install-project",
                "--no-install-workspace"]
        if step.get("frozen"):
            argv.append("--frozen")
        for g in step.get("groups", []):
            argv += ["--group", g]
        for e in step.get("extras", []):
            argv += ["--extra", e]
        argv += shlex.split(step.get("extra_options") or "")
        await self._uv_step(b, argv, forced, env={**step.get("secret_env", {}), "UV_PROJECT_ENVIRONMENT": str(b.venv)})

    async def _step_apt_install(self, b: _Build, step: dict[str, Any], forced: bool) -> None:
        """Download the packages and those of their dependencies this host lacks; unpack them into apt-root."""
        async with self._apt_lock:
            debs = await self._apt_download(b, step["packages"], forced)
        target = b.root / "apt-root"
        target.mkdir(exist_ok=True)
        for deb in debs:
            b.log(f"Unpacking {deb.name}\n")
            await self._checked(b, ["dpkg", "-x", str(deb), str(target)], env=_build_env({"PATH": STANDARD_PATH}),
                                cwd=b.root)
        b.apt = True

    async def _apt_download(self, b: _Build, packages: list[str], forced: bool) -> list[Path]:
        if not shutil.which("apt-get") or not shutil.which("dpkg"):
            self._fail(b, "apt_install needs apt-get and dpkg on the machine that builds images")
        env = _build_env({"PATH": STANDARD_PATH, "DEBIAN_FRONTEND": "noninteractive"})
        opts = ["-o", "APT::Sandbox::User=root"] if os.geteuid() == 0 else []
        if not glob.glob("/var/lib/apt/lists/*_Packages*"):  # no package lists: keep our own, never the host's
            lists = self.apt_cache / "lists"
            opts += ["-o", f"Dir::State::Lists={lists}", "-o", f"Dir::Cache={self.apt_cache / 'pkgcache'}"]
            if forced or not glob.glob(str(lists / "*_Packages*")):
                (lists / "partial").mkdir(parents=True, exist_ok=True)
                (self.apt_cache / "pkgcache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
                await self._checked(b, ["apt-get", *opts, "update"], env=env, cwd=self.apt_cache)
        names = [p.split("=")[0] for p in packages]
        rc, out = await self._exec(
            ["apt-cache", *opts, "depends", "--recurse", "--no-recommends", "--no-suggests", "--no-conflicts",
             "--no-breaks", "--no-replaces", "--no-enhances", *names], env=env, cwd=self.dir, log=None)
        if rc != 0:
            self._fail(b, out)
        deps = [line.strip() for line in out.splitlines() if line and not line[0].isspace()]
        rc, listing = await self._exec(["dpkg-query", "-W", "-f", "${Package}\t${db:Status-Abbrev}\n"],
                                       env=env, cwd=self.dir, log=None)
        installed = {ln.split("\t")[0] for ln in listing.splitlines() if ln.split("\t")[-1].startswith("ii")}
        wanted = list(dict.fromkeys([*packages, *(d for d in deps if re.fullmatch(r"[a-z0-9][a-z0-9+.\-]*", d)
                                                  and d not in installed and d not in names)]))
        self.apt_cache.mkdir(parents=True, exist_ok=True)
        cached = {p: sorted(self.apt_cache.glob(f"{p.split('=')[0]}_*.deb")) for p in wanted}
        missing = [p for p in wanted if forced or not cached[p]]
        if missing:
            for p in missing:
                for old in cached[p]:
                    old.unlink()
            await self._checked(b, ["apt-get", *opts, "download", *missing], env=env, cwd=self.apt_cache)
        debs = []
        for p in wanted:
            found = sorted(self.apt_cache.glob(f"{p.split('=')[0]}_*.deb"))
            if not found:
                self._fail(b, f"apt-get download did not produce a package file for {p}")
            debs.append(found[-1])
        return debs

    async def _step_run_commands(self, b: _Build, step: dict[str, Any], forced: bool) -> None:
        bash = shutil.which("bash", path=STANDARD_PATH) or "/bin/sh"
        await self._run_code(b, step, "run_commands runs", [[bash, "-c", cmd] for cmd in step["commands"]],
                             echo=step["commands"])

    async def _step_run_function(self, b: _Build, step: dict[str, Any], forced: bool) -> None:
        """The pickled function (shoal/runtime/build_function.py) run with the image's Python; the pickle is
        copied into the image's build directory for the run only."""
        payload = b.root / "build" / f"run-function-{step['payload_sha']}"
        payload.parent.mkdir(exist_ok=True)
        shutil.copyfile(self._blob(b, step["payload_sha"]), payload)
        try:
            await self._run_code(b, step, "run_function runs", [
                [b.python, "-m", "shoal.runtime.build_function", str(payload), str(step["timeout"])]])
        finally:
            payload.unlink(missing_ok=True)

    async def _run_code(self, b: _Build, step: dict[str, Any], what: str, argvs: list[list[str]],
                        echo: list[str] | None = None) -> None:
        """A step's commands, one after another, in a build sandbox (backends/build_sandbox.py), never on the host:
        writes to /etc, /root, the venv, … land in the image. Without sandboxes only an unprivileged control plane
        runs them, as the plain processes its containers are then; as root it refuses."""
        workdir = b.workdir or "/root"
        cwd = self._image_dir(b, workdir)
        env = _build_env({**b.container_env(), **step.get("env", {}), **step.get("secret_env", {})})
        sandboxed = await self._sandboxed(b, what)
        try:
            for n, argv in enumerate(argvs):
                if echo:
                    b.log(f"$ {echo[n]}\n")
                if not sandboxed:
                    await self._checked(b, argv, env=env, cwd=cwd)
                else:
                    await self._checked(b, await self._sandbox_argv(b, argv, workdir), env=_inside(env),
                                        cwd=Path("/"))
        finally:
            await self._tidy(b)

    async def _step_env(self, b: _Build, step: dict[str, Any], forced: bool) -> None:
        """As Docker's ENV: `$NAME` / `${NAME}` expand to the image's value so far (e.g. PATH=/opt/x:$PATH)."""
        current = b.container_env()
        for k, v in step["vars"].items():
            b.env[k] = re.sub(r"\$(\w+)|\$\{(\w+)\}", lambda m: current.get(m.group(1) or m.group(2), ""), v)

    async def _step_workdir(self, b: _Build, step: dict[str, Any], forced: bool) -> None:
        b.workdir = step["path"]
        self._image_dir(b, step["path"])

    async def _step_add_local_file(self, b: _Build, step: dict[str, Any], forced: bool) -> None:
        remote = PurePosixPath(step["remote_path"])
        dest = self._image_dir(b, str(remote.parent)) / remote.name
        tmp = dest.with_name(dest.name + ".shoal-tmp")
        tmp.unlink(missing_ok=True)  # (never written through: a build step may have left a link there)
        await asyncio.to_thread(shutil.copyfile, self._blob(b, step["sha"]), tmp)
        tmp.chmod(int(step.get("mode", 0o644)) & 0o777)
        tmp.replace(dest)

    async def _step_add_local_dir(self, b: _Build, step: dict[str, Any], forced: bool) -> None:
        dest = self._image_dir(b, step["remote_path"])  # the tar's "data" filter keeps what it writes inside
        blob = self._blob(b, step["sha"])

        def extract() -> None:
            with tarfile.open(blob) as tar:
                tar.extractall(dest, filter="data")

        await asyncio.to_thread(extract)

    _step_add_local_python_source = _step_add_local_dir

    def _image_dir(self, b: _Build, path: str) -> Path:
        """The image's directory for the absolute `path`, made where missing, as the control plane (the host's
        root) writes there: a symlink an earlier build step left on the way is refused, never followed (it could
        lead anywhere on the host)."""
        cur = b.files
        for part in PurePosixPath(path).parts[1:]:
            cur = cur / part
            try:
                st = os.lstat(cur)
            except FileNotFoundError:
                os.mkdir(cur, 0o755)
                continue
            if not stat.S_ISDIR(st.st_mode):
                kind = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a directory"
                self._fail(b, f"the image's {'/' + os.path.relpath(cur, b.files)} is {kind}: {path} cannot be "
                              "written there")
        return cur

    def _blob(self, b: _Build, sha: str) -> Path:
        path = self.blob_dir / sha
        if not path.is_file():
            self._fail(b, f"the local files of this step (blob {sha}) were not uploaded")
        return path

    # -- processes -------------------------------------------------------------------------------------------
    async def _sandboxed(self, b: _Build, what: str) -> bool:
        """Whether this step's code runs in a build sandbox (else as the plain processes containers are then);
        a control plane running as root without sandboxes refuses the step."""
        avail = await asyncio.to_thread(self.sandbox.availability)
        if avail.isolation != "sandbox" and os.geteuid() == 0:
            self._fail(b, f"{what} in a sandbox, and containers cannot be sandboxed here ({avail.reason}); it never "
                          "runs on the host as root")
        return avail.isolation == "sandbox"

    async def _sandbox_argv(self, b: _Build, command: list[str], cwd: str, **kw: Any) -> list[str]:
        """The argv that runs `command` in a build sandbox of the image (BuildSandbox.argv)."""
        try:
            return await asyncio.to_thread(self.sandbox.argv, str(b.root), b.base_python, command, cwd,
                                           ro=[b.runtime, *kw.pop("ro", [])], **kw)
        except BuildSetupError as exc:
            self._fail(b, str(exc))

    async def _tidy(self, b: _Build) -> None:
        def tidy() -> None:
            self.sandbox.tidy(str(b.root))
            _tidy_build_layers(b.root)

        await asyncio.to_thread(tidy)

    async def _uv(self, b: _Build, args: list[str], forced: bool, env: dict[str, str] | None = None) -> None:
        """uv on the host, for what installs nothing of the user's (the venv, the runtime's packages)."""
        full_env = _build_env({"PATH": self._discovery_path or STANDARD_PATH, **(env or {})})
        argv = [self.uv, *args]

        async def run(extra: list[str], network: bool, log: Log | None) -> tuple[int, str]:
            return await self._exec([*argv, *extra], env=full_env, cwd=b.root, log=log)

        await self._offline_first(b, forced, run)

    async def _uv_step(self, b: _Build, args: list[str], forced: bool, env: dict[str, str]) -> None:
        """uv for a package step, in a build sandbox of the image (backends/build_sandbox.py): resolving and
        installing starts the image's Python, and building a source distribution runs the package's own code.
        Paths and file:// URLs in the step are paths as the build sees them (the image's files, directories the
        installation shares with containers). The sandbox sees uv's binary (read-only) and shoal's uv cache
        (read-write); packages are copied out of the cache, never hard-linked, so a later build that writes the
        cache cannot change an image already built."""
        kind = b.step_repr.split("(", 1)[0]
        sandboxed = await self._sandboxed(b, f"{kind} runs uv, which runs a source package's build code,")
        await asyncio.to_thread(self.uv_cache.mkdir, mode=0o700, parents=True, exist_ok=True)
        full_env = _build_env({**b.path_env(), **b.env, **env, "UV_CACHE_DIR": str(self.uv_cache),
                               "UV_LINK_MODE": "copy", "UV_PYTHON_DOWNLOADS": "never"})
        uv = os.path.realpath(self.uv) if os.path.isabs(self.uv) else self.uv

        async def run(extra: list[str], network: bool, log: Log | None) -> tuple[int, str]:
            argv = [uv, *args, *extra]
            if not sandboxed:
                return await self._exec(argv, env=full_env, cwd=b.root, log=log)
            argv = await self._sandbox_argv(b, argv, str(b.root), rw=[str(self.uv_cache)],
                                            ro=[uv] if os.path.isabs(uv) else [], network=network)
            return await self._exec(argv, env=_inside(full_env), cwd=Path("/"), log=log)

        try:
            await self._offline_first(b, forced, run)
        finally:
            if sandboxed:
                await self._tidy(b)

    async def _offline_first(self, b: _Build, forced: bool,
                             run: Callable[[list[str], bool, Log | None], Awaitable[tuple[int, str]]]) -> None:
        """Run uv (`run(extra args, network, log)`) offline first (a warm cache then costs milliseconds, with no
        index round trip), online when the cache lacks something; a forced step goes online and refreshes what
        it installs. The output of an offline attempt that failed is not shown."""
        if not forced:
            quiet: list[str] = []
            rc, _ = await run(["--offline"], False, quiet.append)
            if rc == 0:
                b.log("".join(quiet))
                return
            b.log("(not everything is in the local cache: resolving online)\n")
        rc, out = await run(["--refresh"] if forced else [], True, b.log)
        if rc != 0:
            self._fail(b, out, rc)

    async def _checked(self, b: _Build, argv: list[str], *, env: dict[str, str], cwd: Path) -> str:
        rc, out = await self._exec(argv, env=env, cwd=cwd, log=b.log)
        if rc != 0:
            self._fail(b, out, rc)
        return out

    def _fail(self, b: _Build, output: str, rc: int | None = None) -> NoReturn:
        status = f" (exit status {rc})" if rc is not None else ""
        tail = output[-TAIL_CHARS:].rstrip()
        raise ImageBuildError(f"Image build for {b.image_id} failed at step {b.step_no}, {b.step_repr}{status}:\n"
                              f"{tail}")

    @staticmethod
    async def _exec(argv: list[str], *, env: dict[str, str], cwd: Path, log: Log | None) -> tuple[int, str]:
        """Run a process, passing its output (stdout and stderr, in order) to `log` as it is produced; returns
        the exit status and the end of the output."""
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT, env=env, cwd=str(cwd), start_new_session=True)
        except OSError as exc:
            return 127, f"cannot run {argv[0]}: {exc}\n"
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        tail: collections.deque[str] = collections.deque()
        size = 0
        try:
            assert proc.stdout is not None
            while chunk := await proc.stdout.read(65536):
                text = decoder.decode(chunk)
                if not text:
                    continue
                if log is not None:
                    log(text)
                tail.append(text)
                size += len(text)
                while size - len(tail[0]) > 4 * TAIL_CHARS:
                    size -= len(tail.popleft())
            return await proc.wait(), "".join(tail)
        finally:
            if proc.returncode is None:  # cancelled: the client went away, or the control plane is stopping
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def _tidy_build_layers(root: Path) -> None:
    """After build commands: no set-user/group-id file they made stays in the image's trees (they wrote there as
    the host's root, through an idmapped mount); what the build sandbox made and left empty goes (each system
    dir in files/ costs containers an overlay)."""
    for top in (root / "files", root / "venv"):
        for dirpath, _, names in os.walk(top):
            for name in names:
                path = os.path.join(dirpath, name)
                try:
                    st = os.lstat(path)
                    if stat.S_ISREG(st.st_mode) and st.st_mode & (stat.S_ISUID | stat.S_ISGID):
                        os.chmod(path, stat.S_IMODE(st.st_mode) & ~(stat.S_ISUID | stat.S_ISGID))
                except OSError:
                    pass
    shutil.rmtree(root / "build" / "overlay-work", ignore_errors=True)
    for d in (*SYSTEM_DIRS, *ALWAYS_WRITABLE):
        try:
            (root / "files" / d.lstrip("/")).rmdir()
        except OSError:
            pass  # not empty (the build wrote there), or not there


def _missing(image_id: str) -> ContainerImage:
    raise ImageBuildError(f"image {image_id} was built but cannot be used (its interpreter is missing)")
