"""The OCI image builder: images whose chain starts with `from_registry` or `from_dockerfile` are real root
filesystems, a stack of layers in the control plane's layer store (`SHOAL_HOME/oci`, shoal.oci.store).

The base is pulled (shoal.oci.registry, credentials from the step's secret). Every later step is one layer:
  * steps that run code (RUN / run_commands, apt_install, the pip steps, add_python's `ldconfig`) run in a build
    container whose root is the image so far plus a writable upper directory (BuildSandbox.run_on_layers); the
    upper directory becomes the step's layer (shoal.oci.upper.layer_from_upper). Nothing runs on the host.
  * steps that only place files (COPY/ADD, add_local_*, add_python's interpreter, WORKDIR's directory) write the
    layer straight from the files (oci_files.py): no code runs.
  * ENV / WORKDIR / USER / ENTRYPOINT / CMD and `env` / `workdir` change the image config only.
Each layer is cached by a key chained from its parent's key and the step as it is hashed into the image id (plus
the build context's blob), so changing step 3 rebuilds from step 3 on. A built image's record
(`SHOAL_HOME/images/<image_id>/manifest.json`, `"kind": "oci"`) is all a cache hit reads.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import re
import shutil
import sys
import tarfile
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, NoReturn

from .._spec.definitions import ImageSpec
from .._spec.images import BASE_KINDS, BUILDER_VERSION, _hashed
from ..backends.base import ContainerImage
from ..backends.build_sandbox import BuildSandbox, BuildSetupError
from ..backends.sandbox import OCI_BOOT, RUNTIME_MOUNT, SDK_MOUNT, SHOAL_PACKAGE_DIR, wanted_isolation
from ..exception import ImageBuildError
from ..oci import dockerfile as df
from ..oci.base import BaseImageError, debian_slim, default_cache, find_interpreter
from ..oci.layout import store_layer
from ..oci.registry import RegistryError, parse_reference, pull
from ..oci.store import Image, Layer, LayerStore, StoreError
from ..oci.unpack import LayerError
from ..oci.upper import layer_from_upper
from . import oci_files
from .oci_credentials import registry_credentials
from .oci_files import FileStepError, LayerTar
from .oci_steps import SCRATCH_INSIDE, apt_script, exec_form, uv_command

Log = Callable[[str], None]
TAIL_CHARS = 4000
STANDARD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
KIND = "oci"
GLIBC_LOADERS = {"x86_64": "/lib64/ld-linux-x86-64.so.2", "aarch64": "/lib/ld-linux-aarch64.so.1"}
DEBIAN_SLIM_KIND = "debian_slim"  # the base step ImageBuilder puts before a debian_slim chain built as rootfs
LAYER_RECIPE = 1  # part of every step's cache key: bump when what a step's layer holds changes
# Where a build container sees what the builder lends it (read-only unless said otherwise).
UV_INSIDE = "/.shoal/bin/uv"
UV_CACHE_INSIDE = "/.shoal/uv-cache"  # read-write
# run_function's runner, started as containers start the runtime (the image's packages before the runtime's copies)
RUN_FUNCTION_BOOT = OCI_BOOT.replace("'shoal.runtime'", "'shoal.runtime.build_function'")
CA_INSIDE = "/.shoal/ca-certificates.crt"  # the control plane's SSL_CERT_FILE, for uv
_PROBE = ("import platform, sys; v = sys.version_info; "
          "print('shoal-probe', f'{v[0]}.{v[1]}', platform.libc_ver()[0] or 'musl')")


@dataclasses.dataclass
class _State:
    """The image so far: its layers (bottom first), its config, and the cache key of the chain that made it."""

    image_id: str
    key: str
    layers: list[dict[str, Any]]
    config: dict[str, Any]
    step_no: int = 0
    step_repr: str = ""

    def env(self) -> dict[str, str]:
        env = dict(e.split("=", 1) for e in self.config.get("Env") or [] if "=" in e)
        env.setdefault("PATH", STANDARD_PATH)
        return env

    def set_env(self, values: dict[str, str]) -> None:
        env = {**dict(e.split("=", 1) for e in self.config.get("Env") or [] if "=" in e), **values}
        self.config["Env"] = [f"{k}={v}" for k, v in env.items()]

    @property
    def workdir(self) -> str:
        return self.config.get("WorkingDir") or "/"

    def chain(self, *parts: Any) -> str:
        """The next key: sha256 of this key and what the next step is."""
        data = json.dumps([self.key, *parts], sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(data.encode()).hexdigest()


def debian_slim_mode() -> str:
    """What `Image.debian_slim()` builds on this control plane (`SHOAL_DEBIAN_SLIM`): "rootfs" (a Debian root
    filesystem from Debian's archive, an OCI image like a registry's) or "venv" (a virtual environment over the
    host's system directories). Unset or "auto": rootfs where this machine can build and run it (root, mmdebstrap
    installed, containers not plain processes), else venv. docs/images.md says why both exist."""
    mode = (os.environ.get("SHOAL_DEBIAN_SLIM") or "auto").strip().lower()
    if mode not in ("auto", "venv", "rootfs"):
        raise ValueError(f"SHOAL_DEBIAN_SLIM={mode!r}: expected 'rootfs', 'venv' or 'auto'")
    if mode != "auto":
        return mode
    can = os.geteuid() == 0 and shutil.which("mmdebstrap") is not None and wanted_isolation() != "process"
    return "rootfs" if can else "venv"


def oci_chain(spec: ImageSpec) -> list[dict[str, Any]]:
    """The steps OciBuilder builds: an OCI chain as it is; a debian_slim chain (SHOAL_DEBIAN_SLIM=rootfs) after a
    base step naming its Python."""
    if spec.steps and spec.steps[0]["kind"] in BASE_KINDS:
        return list(spec.steps)
    return [{"kind": DEBIAN_SLIM_KIND, "python_version": spec.python_version,
             "repr": f"debian_slim(python_version={spec.python_version!r})"}, *spec.steps]


class OciBuilder:
    """Builds OCI images for ImageBuilder (which validates specs, locks per image id, and serves cache hits)."""

    def __init__(self, images_dir: Path, blob_dir: Path, sandbox: BuildSandbox, uv: str, id_shift: int,
                 runtime_for: Callable[[str, str, Log], Awaitable[str]]) -> None:
        self.dir = images_dir
        self.blob_dir = blob_dir
        self.sandbox = sandbox
        self.uv = os.path.realpath(uv) if os.path.isabs(uv) else (shutil.which(uv) or uv)
        self.id_shift = id_shift
        self.runtime_for = runtime_for
        self.store = LayerStore(images_dir.parent / "oci", id_shift=id_shift)
        self.steps_dir = images_dir / ".cache" / "oci-steps"  # step key -> its layer
        self.uv_cache = images_dir / ".cache" / "uv-oci"  # written by build containers' root, never the host's uv
        self._uv_static: str | None = None
        self._step_locks: dict[str, asyncio.Lock] = {}  # step key -> held while that step is built
        self.builds = 0

    # -- records ---------------------------------------------------------------------------------------------------
    def record_path(self, image_id: str) -> Path:
        return self.dir / image_id / "manifest.json"

    def write_record(self, manifest: dict[str, Any]) -> None:
        """Writes an image's record (what `ImageBuilder.cached` serves), atomically."""
        path = self.record_path(manifest["image_id"])
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name("manifest.json.tmp")
        tmp.write_text(json.dumps(manifest, indent=1))
        tmp.replace(path)

    def snapshot(self, base_id: str, upper_dir: Path, skip: list[str],
                 claim: Callable[[str], None] = lambda image_id: None) -> str:
        """A new image: the OCI image `base_id` plus a container's writable layer `upper_dir` (a sandbox's
        snapshot; the runtime's mountpoints `skip` left out). Its id is the hash of the base's and the layer's,
        so the same changes on the same image give the same image; `claim` hears it before anything is recorded
        under it (the image clean-up must leave it be). Runs in a thread."""
        found = self.stored(base_id)
        if found is None:
            raise ImageBuildError(f"image {base_id} is not an OCI image in the layer store (pruned?): it cannot be "
                                  "snapshotted")
        base, stored = found
        with self.store.lock():  # (shared: a prune waits, so the base's layers stay while the new one is added)
            layer = layer_from_upper(self.store, upper_dir, skip=skip)
            image_id = "im-" + hashlib.sha256(f"snapshot:{base_id}:{layer['diff_id']}".encode()).hexdigest()
            claim(image_id)
            image = self.store.record_image(image_id, [*stored.layers, layer], base["config"])
            lowerdirs = [str(p) for p in self.store.lowerdirs(image)]
        self.write_record({**base, "image_id": image_id, "store_name": image_id, "layers": [
            x.diff_id for x in image.layers], "lowerdirs": lowerdirs, "built_at": time.time(), "build_s": 0.0,
            "steps": [*base.get("steps", []), f"snapshot of a sandbox on {base_id}"], "snapshot_of": base_id})
        return image_id

    def stored(self, image_id: str) -> tuple[dict[str, Any], Image] | None:
        """(record, store entry) of an OCI image built or snapshotted here whose layers are all present; None for
        an unknown, pruned or venv image."""
        try:
            record = json.loads(self.record_path(image_id).read_bytes())
        except (OSError, ValueError):
            return None
        stored = self.store.get(record["store_name"]) if record.get("kind") == KIND else None
        if stored is None or not all(self.store.layer_path(x.diff_id).is_dir() for x in stored.layers):
            return None
        return record, stored

    @staticmethod
    def image_from(manifest: dict[str, Any]) -> ContainerImage | None:
        """The ContainerImage of a record, or None when its layers or runtime packages are gone (pruned)."""
        if manifest.get("builder") != BUILDER_VERSION or not all(os.path.isdir(d) for d in manifest["lowerdirs"]):
            return None
        if manifest["runtime_dir"] and not os.path.isdir(manifest["runtime_dir"]):
            return None
        return ContainerImage(image_id=manifest["image_id"], python=manifest["python"], env=manifest["env"],
                              workdir=manifest["workdir"], layers=manifest["lowerdirs"],
                              runtime_dir=manifest["runtime_dir"], user=manifest["user"] or None)

    # -- building --------------------------------------------------------------------------------------------------
    async def build(self, image_id: str, steps: list[dict[str, Any]], force_base: bool, log: Log) -> ContainerImage:
        ordered = steps  # trailing add_local_*(copy=False) steps are layers on top: editing them re-runs nothing
        forced_from = 0 if force_base else next((i for i, s in enumerate(ordered) if s.get("force")), len(ordered))
        t0 = time.monotonic()
        log(f"Building image {image_id} (steps 0 to {len(steps) - 1})\n")
        async with self._store_lock():
            st = _State(image_id=image_id, key="", layers=[], config={})
            for i, step in enumerate(ordered):
                st.step_no, st.step_repr = i, step["repr"]
                log(f"=> Step {i}: {step['repr']}\n")
                await self._step(st, step, i >= forced_from, log)
            python = await asyncio.to_thread(self._python, st)
            version, libc = ("", "")
            if python:
                version, libc = await self._probe(st, python, log)
            runtime_dir = await self.runtime_for(version, libc, log) if version else ""
            image = await asyncio.to_thread(self._record_image, image_id, st)
            lowerdirs = [str(p) for p in await asyncio.to_thread(self.store.lowerdirs, image)]
        env = st.env()
        manifest = {"kind": KIND, "image_id": image_id, "builder": BUILDER_VERSION, "store_name": image_id,
                    "layers": [x["diff_id"] for x in st.layers], "lowerdirs": lowerdirs, "config": st.config,
                    "python": python, "python_version": version, "libc": libc, "runtime_dir": runtime_dir,
                    "env": env, "workdir": st.config.get("WorkingDir") or None, "user": st.config.get("User") or "",
                    "built_at": time.time(), "build_s": round(time.monotonic() - t0, 3),
                    "steps": [s["repr"] for s in ordered]}
        self.write_record(manifest)
        self.builds += 1
        log(f"Built image {image_id} in {time.monotonic() - t0:.2f}s\n")
        image_out = self.image_from(manifest)
        if image_out is None:
            raise ImageBuildError(f"image {image_id} was built but its layers are gone (pruned meanwhile?)")
        return image_out

    async def _step(self, st: _State, step: dict[str, Any], forced: bool, log: Log) -> None:
        kind = step["kind"]
        try:
            if kind == "from_id":
                await asyncio.to_thread(self._from_stored, st, step["image_id"])
            elif kind == DEBIAN_SLIM_KIND:
                await self._debian_slim(st, step["python_version"], log)
            elif kind == "from_registry":
                await self._from_registry(st, step, step["tag"], forced, log)
            elif kind == "from_dockerfile":
                await self._dockerfile(st, step, df.parse(step["dockerfile"], step.get("build_args") or {}),
                                       forced, log)
            elif kind == "dockerfile_commands":
                parsed = df.parse("FROM scratch\n" + "\n".join(step["commands"]), step.get("build_args") or {})
                await self._dockerfile(st, step, parsed[1:], forced, log, where="command", first_line=2)
            else:
                await self._shoal_step(st, step, forced, log)
            if step.get("add_python"):
                await self._add_python(st, step["add_python"], forced, log)
        except (df.DockerfileError, FileStepError, RegistryError, BaseImageError, StoreError, LayerError,
                tarfile.TarError, OSError) as exc:
            self._fail(st, str(exc))

    # -- bases -----------------------------------------------------------------------------------------------------
    async def _from_registry(self, st: _State, step: dict[str, Any], ref: str, forced: bool, log: Log) -> None:
        """The base image. One pulled anonymously is reused from the store (a forced step pulls again); with
        credentials it is always pulled (skopeo fetches only the blobs the store lacks), so the registry checks
        them every time, and it is recorded apart: a later build without credentials never gets a private image
        from the store, it asks the registry (which refuses it)."""
        name = str(parse_reference(ref))
        creds = await asyncio.to_thread(registry_credentials, step)
        image = self.store.get(name) if creds is None and not forced else None
        if image is None or not all(self.store.layer_path(x.diff_id).is_dir() for x in image.layers):
            log(f"Pulling {name}\n")
            record = name if creds is None else f"{name} (with credentials)"
            image = await asyncio.to_thread(pull, self.store, ref, credentials=creds, name=record)
        st.layers = [_info(x) for x in image.layers]
        st.config = dict((await asyncio.to_thread(self.store.read_json_blob, image.config_digest)).get("config") or {})
        st.key = st.chain("base", BUILDER_VERSION, LAYER_RECIPE, image.manifest_digest)

    async def _debian_slim(self, st: _State, version: str, log: Log) -> None:
        """The base of `Image.debian_slim()` where it is a root filesystem (SHOAL_DEBIAN_SLIM=rootfs): Debian
        bookworm assembled from Debian's archive (shoal.oci.base), built once per machine and cached by content."""
        image = await asyncio.to_thread(debian_slim, self.store, version, log=lambda m: log(m + "\n"),
                                        cache=default_cache())
        st.layers = [_info(x) for x in image.layers]
        st.config = dict((await asyncio.to_thread(self.store.read_json_blob, image.config_digest)).get("config") or {})
        st.key = st.chain("debian_slim", BUILDER_VERSION, LAYER_RECIPE, image.manifest_digest)

    def _from_stored(self, st: _State, image_id: str) -> None:
        """The base of `Image.from_id(…)` with steps on top: that OCI image as it is stored here (built from a
        registry or a Dockerfile, or a sandbox's snapshot), its layers and config."""
        found = self.stored(image_id)
        if found is None:
            self._fail(st, f"image {image_id} is not an OCI image stored here (unknown, pruned, or a debian_slim "
                           "image): build steps can be added to images from from_registry or from_dockerfile and to "
                           "sandboxes' snapshots")
        base, stored = found
        st.layers = [_info(x) for x in stored.layers]
        st.config = dict(base.get("config") or {})
        st.key = st.chain("from_id", BUILDER_VERSION, image_id)

    async def _add_python(self, st: _State, version: str, forced: bool, log: Log) -> None:
        """CPython `version` at /usr/local/bin/python (the machine's pyenv build, copied as the Debian base image
        copies it), then `ldconfig` and a smoke test in a build container."""
        prefix = await asyncio.to_thread(find_interpreter, version)
        loader = GLIBC_LOADERS.get(os.uname().machine, "")
        lowerdirs = [Path(p) for p in self._lowerdirs(st)]
        if loader and (await asyncio.to_thread(oci_files.resolve, lowerdirs, loader))[1] is None:
            self._fail(st, f"add_python needs an image with glibc (the interpreters this machine has are built "
                           f"against it), and this image has no {loader}: use an image of a glibc distribution "
                           "(Debian, Ubuntu, Fedora, ...), or one with Python")
        python3 = prefix / "bin" / "python3"
        ident = [prefix.name, "bundled-libs", *([os.stat(python3).st_mtime_ns] if python3.exists() else [])]
        log(f"Adding Python {prefix.name} at /usr/local/bin/python\n")
        await self._file_layer(st, ["add_python", ident], forced,
                               lambda out: oci_files.python_tree(out, prefix))
        script = ("if command -v ldconfig >/dev/null 2>&1; then ldconfig; fi; "
                  "/usr/local/bin/python3 -c 'import sys; print(\"Python\", sys.version.split()[0])'")
        await self._run_layer(st, ["add_python:ldconfig"], forced, log, [["/bin/sh", "-c", script]],
                              user=None, env={})

    async def _dockerfile(self, st: _State, step: dict[str, Any], steps: list[df.Step], forced: bool, log: Log,
                          where: str = "Dockerfile line", first_line: int = 1) -> None:
        context = self._blob(step["context_sha"]) if step.get("context_sha") else None
        extra_env = {**(step.get("env") or {}), **(step.get("secret_env") or {})}  # for RUN only, not kept
        for d in steps:
            text = f"{where} {d.line - first_line + 1}: {type(d).__name__.upper()}"
            if isinstance(d, df.From):
                await self._from_registry(st, step, d.image, forced, log)
            elif isinstance(d, df.Run):
                log(f"{text} {d.command if isinstance(d.command, str) else json.dumps(list(d.command))}\n")
                argv = ["/bin/sh", "-c", d.command] if isinstance(d.command, str) else list(d.command)
                await self._run_layer(st, ["RUN", argv, d.build_env], forced, log, [argv],
                                      user=st.config.get("User") or None, env={**dict(d.build_env), **extra_env})
            elif isinstance(d, df.Copy):
                log(f"{text} {' '.join(d.sources)} {d.dest}\n")
                dest = d.dest if d.dest.startswith("/") else f"{st.workdir.rstrip('/')}/{d.dest}"
                owner, mode = self._chown(st, d.chown), int(d.chmod, 8) if d.chmod else None
                what = ["ADD" if d.add else "COPY", d.sources, dest, d.chown, d.chmod, step.get("context_sha")]
                await self._file_layer(
                    st, what, forced, lambda out, d=d, dest=dest, owner=owner, mode=mode: oci_files.copy_from_context(
                        out, context, d.sources, dest, add=d.add, owner=owner, mode=mode))
            elif isinstance(d, df.Env):
                st.set_env(dict(d.vars))
            elif isinstance(d, df.Workdir):
                await self._workdir(st, d.path, forced)
            elif isinstance(d, df.User):
                st.config["User"] = d.user
            elif isinstance(d, df.Entrypoint):
                st.config["Entrypoint"] = exec_form(d.command)
                st.config.pop("Cmd", None)  # as Docker: a new ENTRYPOINT drops the base image's CMD
            elif isinstance(d, df.Cmd):
                st.config["Cmd"] = exec_form(d.command)
            st.key = st.chain("config", st.config)

    def _chown(self, st: _State, spec: str) -> tuple[int, int]:
        if not spec:
            return 0, 0
        user, _, group = spec.partition(":")
        return oci_files.lookup_ids([Path(p) for p in self._lowerdirs(st)], user, group)

    # -- shoal's own steps -----------------------------------------------------------------------------------------
    async def _shoal_step(self, st: _State, step: dict[str, Any], forced: bool, log: Log) -> None:
        kind = step["kind"]
        hashed = _hashed(step)
        secrets = step.get("secret_env") or {}
        if kind == "env":
            current = st.env()
            st.set_env({k: re.sub(r"\$(\w+)|\$\{(\w+)\}", lambda m: current.get(m.group(1) or m.group(2), ""), v)
                        for k, v in step["vars"].items()})
            st.key = st.chain("config", st.config)
        elif kind == "workdir":
            await self._workdir(st, step["path"], forced)
            st.key = st.chain("config", st.config)
        elif kind == "run_commands":
            argvs = [["/bin/sh", "-c", c] for c in step["commands"]]
            await self._run_layer(st, hashed, forced, log, argvs, user=st.config.get("User") or None,
                                  env={**step.get("env", {}), **secrets}, echo=step["commands"])
        elif kind == "apt_install":
            script = apt_script(step["packages"])
            await self._run_layer(st, hashed, forced, log, [["/bin/sh", "-c", script]], user=None,
                                  env={**step.get("env", {}), **secrets, "DEBIAN_FRONTEND": "noninteractive"})
        elif kind in ("pip_install", "uv_pip_install", "pip_install_from_requirements", "pip_install_from_pyproject",
                      "uv_sync"):
            await self._uv_step(st, step, hashed, forced, log)
        elif kind == "run_function":
            await self._run_function(st, step, hashed, forced, log)
        elif kind in ("add_local_file", "add_local_dir", "add_local_python_source"):
            blob = self._blob(step["sha"])
            if kind == "add_local_file":
                def write(out: LayerTar) -> None:
                    oci_files.add_file(out, blob, step["remote_path"], mode=int(step.get("mode", 0o644)) & 0o777)
            else:
                def write(out: LayerTar) -> None:
                    oci_files.add_tree(out, blob, step["remote_path"])
            await self._file_layer(st, hashed, forced, write)
        else:
            self._fail(st, f"step kind {kind!r} is not supported on an OCI image")

    async def _workdir(self, st: _State, path: str, forced: bool) -> None:
        path = path if path.startswith("/") else f"{st.workdir.rstrip('/')}/{path}"
        st.config["WorkingDir"] = path
        if not await asyncio.to_thread(oci_files.is_dir, [Path(p) for p in self._lowerdirs(st)], path):
            await self._file_layer(st, ["WORKDIR", path], forced, lambda out: out.mkdir(path))

    async def _uv_step(self, st: _State, step: dict[str, Any], hashed: dict[str, Any], forced: bool,
                       log: Log) -> None:
        """uv bound into the build container read-only, run with the image's own Python (`uv pip install
        --python <it> --break-system-packages`): packages land in that Python's site-packages in the image."""
        python = await asyncio.to_thread(self._python, st)
        if not python:
            self._fail(st, f"{step['kind']} needs Python in the image, and it has none on its PATH: start from an "
                           "image with Python, or pass add_python='3.X'")
        scratch = Path(tempfile.mkdtemp(prefix="step-", dir=self.store.tmp))
        try:
            args, files, extra_env = uv_command(step, python)
            for name, text in files.items():
                (scratch / name).write_text(text)
            os.chmod(scratch, 0o755)
            warm = await asyncio.to_thread(self._uv_cache_dir)
            env = {**step.get("env", {}), **(step.get("secret_env") or {}), **extra_env,
                   "UV_CACHE_DIR": UV_CACHE_INSIDE, "UV_LINK_MODE": "copy", "UV_PYTHON_DOWNLOADS": "never",
                   **{k: v for k, v in os.environ.items() if k.startswith(("PIP_INDEX", "PIP_EXTRA", "UV_INDEX",
                                                                             "UV_EXTRA_INDEX"))}}
            binds = [[await self._static_uv(log), UV_INSIDE, False], [str(self.uv_cache), UV_CACHE_INSIDE, True],
                     [str(scratch), SCRATCH_INSIDE, False]]
            ca = os.environ.get("SSL_CERT_FILE") or ""
            if os.path.isfile(ca):  # the installation's CA bundle (a TLS-inspecting proxy's, a private index's)
                binds.append([os.path.realpath(ca), CA_INSIDE, False])
                env["SSL_CERT_FILE"] = CA_INSIDE
            await self._run_layer(st, hashed, forced, log, [[UV_INSIDE, *args]], user=None, env=env, binds=binds,
                                  offline_first=["--offline"] if warm and not forced else None,
                                  online_extra=["--refresh"] if forced else [])
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    async def _run_function(self, st: _State, step: dict[str, Any], hashed: dict[str, Any], forced: bool,
                            log: Log) -> None:
        """The pickled function (shoal/runtime/build_function.py) run by the image's own Python, as its USER, with
        shoal's package and the runtime's packages bound read-only where function containers have them."""
        python = await asyncio.to_thread(self._python, st)
        version, libc = await self._probe(st, python, log) if python else ("", "")
        if not version:
            self._fail(st, "run_function needs a working Python in the image: start from an image with Python, or "
                           "pass add_python='3.X'")
        runtime = await self.runtime_for(version, libc, log)
        scratch = Path(tempfile.mkdtemp(prefix="step-", dir=self.store.tmp))
        try:
            shutil.copyfile(self._blob(step["payload_sha"]), scratch / "payload")
            os.chmod(scratch, 0o755)  # read by the build's USER, which need not be root
            binds = [[SHOAL_PACKAGE_DIR, f"{SDK_MOUNT}/shoal", False], [runtime, RUNTIME_MOUNT, False],
                     [str(scratch), SCRATCH_INSIDE, False]]
            argv = [python, "-c", RUN_FUNCTION_BOOT, f"{SCRATCH_INSIDE}/payload", str(step["timeout"])]
            await self._run_layer(st, hashed, forced, log, [argv], user=st.config.get("User") or None,
                                  env={**step.get("env", {}), **(step.get("secret_env") or {})}, binds=binds)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    async def _static_uv(self, log: Log) -> str:
        """A statically linked uv of the control plane's uv's version (PyPI's musl build), fetched once per
        machine: it runs in any image, which need not have the C libraries the control plane's uv links to."""
        if self._uv_static is None:
            proc = await asyncio.create_subprocess_exec(self.uv, "--version", stdout=asyncio.subprocess.PIPE)
            out, _ = await proc.communicate()
            version = out.decode().split()[1] if out.split() else "0"
            target = self.dir / ".cache" / f"uv-static-{version}"
            if not (target / "bin" / "uv").is_file():
                log(f"Fetching a static build of uv {version} for build containers (once per machine)\n")
                tmp = Path(tempfile.mkdtemp(prefix="uv-static-", dir=self.store.tmp))
                machine = os.uname().machine
                proc = await asyncio.create_subprocess_exec(
                    self.uv, "pip", "install", "--quiet", "--target", str(tmp), "--python", sys.executable,
                    "--python-platform", f"{machine}-unknown-linux-musl", "--only-binary", ":all:", f"uv=={version}",
                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
                out, _ = await proc.communicate()
                if proc.returncode != 0 or not (tmp / "bin" / "uv").is_file():
                    shutil.rmtree(tmp, ignore_errors=True)
                    raise ImageBuildError(f"fetching uv {version} (static, musl) for build containers failed:\n"
                                          f"{out.decode(errors='replace')[-TAIL_CHARS:]}")
                shutil.rmtree(target, ignore_errors=True)
                tmp.rename(target)
            self._uv_static = str(target / "bin" / "uv")
        return self._uv_static

    def _uv_cache_dir(self) -> bool:
        """uv's cache for build containers (bound writable, idmapped: their root writes it as the host's root
        would); never the host's own, and uv copies out of it (UV_LINK_MODE=copy) so no layer shares its files.
        Whether it holds anything (an offline attempt is worth a try)."""
        self.uv_cache.mkdir(parents=True, mode=0o700, exist_ok=True)
        return any(self.uv_cache.iterdir())

    # -- layers ----------------------------------------------------------------------------------------------------
    def _lowerdirs(self, st: _State) -> list[str]:
        return [str(self.store.layer_path(x["diff_id"])) for x in reversed(st.layers)]

    def _cached_layer(self, key: str) -> dict[str, Any] | None:
        try:
            info = json.loads((self.steps_dir / f"{key}.json").read_bytes())["layer"]
        except (OSError, ValueError, KeyError):
            return None
        if not self.store.layer_path(info["diff_id"]).is_dir() or not self.store.has_blob(info["digest"]):
            return None  # pruned since
        return info

    def _remember(self, key: str, info: dict[str, Any]) -> None:
        self.steps_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.steps_dir, prefix=".tmp-")
        with os.fdopen(fd, "w") as f:
            json.dump({"layer": info}, f)
        os.replace(tmp, self.steps_dir / f"{key}.json")

    async def _file_layer(self, st: _State, what: Any, forced: bool, write: Callable[[LayerTar], Any]) -> None:
        """A layer written from files by `write` (no code runs), cached by key."""
        key = st.chain(what)
        info = None if forced else self._cached_layer(key)
        if info is None:
            def make() -> dict[str, Any]:
                scratch = Path(tempfile.mkdtemp(prefix="files-", dir=self.store.tmp))
                try:
                    out = LayerTar(scratch / "layer.tar", [Path(p) for p in self._lowerdirs(st)], self.id_shift)
                    try:
                        write(out)
                    finally:
                        out.close()
                    return store_layer(self.store, scratch / "layer.tar")
                finally:
                    shutil.rmtree(scratch, ignore_errors=True)

            info = await asyncio.to_thread(make)
            self._remember(key, info)
        st.layers.append(info)
        st.key = key

    async def _run_layer(self, st: _State, what: Any, forced: bool, log: Log, argvs: list[list[str]],
                         **kw: Any) -> None:
        """`_run_layer_now`, one build of a step key at a time: images of one app that share their first steps
        (`base.apt_install(...)`, then `base.run_commands(...)` and `base.pip_install(...)`) are built in
        parallel, and the second to reach a shared step waits for the first's layer instead of running it too."""
        lock = self._step_locks.setdefault(st.chain(what), asyncio.Lock())
        async with lock:
            await self._run_layer_now(st, what, forced, log, argvs, **kw)

    async def _run_layer_now(self, st: _State, what: Any, forced: bool, log: Log, argvs: list[list[str]], *,
                             user: str | None, env: dict[str, str], binds: list[list[Any]] | None = None,
                             echo: list[str] | None = None, offline_first: list[str] | None = None,
                             online_extra: list[str] | None = None) -> None:
        """A layer made by running `argvs` in turn in a build container on the image so far, cached by key.
        Secret values are in `env` for the run only: they are not part of the key and not of the image."""
        key = st.chain(what)
        info = None if forced else self._cached_layer(key)
        if info is not None:
            log("(cached)\n")
        else:
            run_env = {**st.env(), **env}
            if not user:  # (another user's HOME comes from the image's /etc/passwd, set by the sandbox)
                run_env.setdefault("HOME", "/root")
            lowerdirs = self._lowerdirs(st)
            scratch = Path(tempfile.mkdtemp(prefix="run-", dir=self.store.tmp))
            try:
                tail: collections.deque[str] = collections.deque(maxlen=400)

                def tee(text: str) -> None:
                    tail.append(text)
                    log(text)

                created: set[str] = set()  # mountpoints the sandbox made in the upper: no part of the layer

                async def attempt(argv: list[str], network: bool, out: Log) -> int:
                    try:
                        return await self.sandbox.run_on_layers(
                            lowerdirs, str(scratch / "upper"), str(scratch / "work"), argv, env=run_env,
                            cwd=st.workdir, user=user, network=network, binds=binds or [], log=out,
                            created=created)
                    except BuildSetupError as exc:
                        self._fail(st, str(exc))

                for n, argv in enumerate(argvs):
                    for d in ("upper", "work"):
                        (scratch / d).mkdir(exist_ok=True)
                    if echo:
                        log(f"$ {echo[n]}\n")
                    if offline_first is not None:
                        quiet: list[str] = []
                        if await attempt([*argv, *offline_first], False, quiet.append) == 0:
                            log("".join(quiet))
                            continue
                        log("(not everything is in the local cache: resolving online)\n")
                        for d in ("upper", "work"):  # what the failed attempt left is no part of the image
                            shutil.rmtree(scratch / d, ignore_errors=True)
                            (scratch / d).mkdir()
                        created.clear()
                    rc = await attempt([*argv, *(online_extra or [])], True, tee)
                    if rc != 0:
                        self._fail(st, "".join(tail), rc)
                info = await asyncio.to_thread(layer_from_upper, self.store, str(scratch / "upper"), skip=created)
            finally:
                await asyncio.to_thread(shutil.rmtree, scratch, True)
            self._remember(key, info)
        st.layers.append(info)
        st.key = key

    # -- the end of a build ----------------------------------------------------------------------------------------
    def _python(self, st: _State) -> str:
        """The image's Python: /usr/local/bin/python when add_python put it there, else python3/python on its
        PATH (looked up in the layers: nothing runs)."""
        return oci_files.find_program([Path(p) for p in self._lowerdirs(st)], st.env()["PATH"],
                                      ("python3", "python"))

    async def _probe(self, st: _State, python: str, log: Log) -> tuple[str, str]:
        """(X.Y, libc) of the image's Python, asked of it in a build container (its writes are thrown away);
        remembered by the layer file the interpreter resolves to, so images on one base ask once."""
        _, binary = await asyncio.to_thread(oci_files.resolve, [Path(p) for p in self._lowerdirs(st)], python)
        memo = self.steps_dir / f"probe-{hashlib.sha256(str(binary).encode()).hexdigest()}.json"
        try:
            found = json.loads(memo.read_bytes())
            return found["version"], found["libc"]
        except (OSError, ValueError, KeyError):
            pass
        out: list[str] = []
        scratch = Path(tempfile.mkdtemp(prefix="probe-", dir=self.store.tmp))
        try:
            for d in ("upper", "work"):
                (scratch / d).mkdir()
            try:
                rc = await self.sandbox.run_on_layers(
                    self._lowerdirs(st), str(scratch / "upper"), str(scratch / "work"), [python, "-I", "-c", _PROBE],
                    env=st.env(), cwd="/", user=None, network=False, binds=[], log=out.append)
            except BuildSetupError as exc:
                self._fail(st, str(exc))
        finally:
            await asyncio.to_thread(shutil.rmtree, scratch, True)
        m = re.search(r"shoal-probe (3\.\d+) (\w+)", "".join(out))
        if rc != 0 or not m:
            log(f"The image's {python} does not run ({''.join(out)[-500:].strip()}): functions cannot run on it\n")
            return "", ""
        self.steps_dir.mkdir(parents=True, exist_ok=True)
        memo.write_text(json.dumps({"version": m.group(1), "libc": m.group(2)}))
        return m.group(1), m.group(2)

    def _record_image(self, image_id: str, st: _State) -> Image:
        """Records the built image in the layer store under its id (so it can be served and garbage-collected)."""
        return self.store.record_image(image_id, [Layer(**x) for x in st.layers], st.config)

    # -- helpers ---------------------------------------------------------------------------------------------------
    def _blob(self, sha: str) -> Path:
        path = self.blob_dir / sha
        if not path.is_file():
            raise FileStepError(f"the local files of this step (blob {sha}) were not uploaded")
        return path

    @contextlib.asynccontextmanager
    async def _store_lock(self) -> AsyncIterator[None]:
        """The store's shared lock for the whole build: prune must not take the layers of steps built but not
        yet recorded."""
        fd = os.open(self.store.root / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)

    @staticmethod
    def _fail(st: _State, output: str, rc: int | None = None) -> NoReturn:
        status = f" (exit status {rc})" if rc is not None else ""
        raise ImageBuildError(f"Image build for {st.image_id} failed at step {st.step_no}, {st.step_repr}{status}:\n"
                              f"{output[-TAIL_CHARS:].rstrip()}")


def _info(layer: Layer) -> dict[str, Any]:
    return {"digest": layer.digest, "diff_id": layer.diff_id, "size": layer.size, "media_type": layer.media_type}
