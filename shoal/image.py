"""`Image`: what a container runs on — a Python version plus a chain of build steps.

An `Image` is immutable: every method returns a new Image with one more step. Nothing is built here; the
control plane builds an image the first time a function that uses it is registered (`app.run()`, deploy) and
caches it by id. The id is the sha256 of the canonical step chain, in which local files appear by the sha256 of
their content, so editing a file that an image adds gives a new image.

What a build makes (see docs/images.md): a uv virtual environment for the chosen Python (found among the
interpreters installed on the machine, never downloaded), packages installed with uv, Debian packages unpacked
into the image's own prefix (the host's installed packages are never changed), commands run, files copied.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import re
import shlex
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from fnmatch import fnmatch
from pathlib import Path, PurePosixPath
from typing import Any

import msgspec

from ._spec.definitions import ImageSpec
from ._spec.images import BUILD_KINDS, BUILDER_VERSION, FILE_KINDS, image_id_for
from .exception import InvalidError

SUPPORTED_PYTHON_VERSIONS = ("3.10", "3.11", "3.12", "3.13", "3.14")
MAX_LOCAL_BYTES = 1 << 30


def _validate_python_version(version: str | None) -> str:
    if version is None:
        return f"{sys.version_info.major}.{sys.version_info.minor}"
    if not isinstance(version, str):
        raise InvalidError(f"python_version must be a string like '3.12', got {version!r}")
    parts = version.split(".")
    if not (2 <= len(parts) <= 3 and all(p.isdigit() for p in parts)):
        raise InvalidError(f"python_version must look like '3.12' or '3.12.1', got {version!r}")
    if ".".join(parts[:2]) not in SUPPORTED_PYTHON_VERSIONS:
        raise InvalidError(f"Unsupported Python version {version}: shoal images support "
                           f"{', '.join(SUPPORTED_PYTHON_VERSIONS)}")
    return version


def _flatten(method: str, args: Sequence[str | list[str]]) -> list[str]:
    out: list[str] = []
    for a in args:
        if isinstance(a, str):
            out.append(a)
        elif isinstance(a, (list, tuple)) and all(isinstance(x, str) for x in a):
            out.extend(a)
        else:
            raise InvalidError(f"Image.{method}: arguments must be strings or lists of strings, got {a!r}")
    return [a for a in (x.strip() for x in out) if a]


def _check_packages(method: str, packages: list[str]) -> None:
    flags = [p for p in packages if p.startswith("-")]
    if flags:
        raise InvalidError(f"Image.{method}: the package list contains flags ({', '.join(flags)}); pass them with "
                           "`extra_options=` instead")


def _check_env(method: str, env: dict[str, str | None] | None) -> dict[str, str]:
    if env is None:
        return {}
    if not isinstance(env, dict):
        raise InvalidError(f"Image.{method}: `env` must be a dict of str to str")
    out = {}
    for k, v in env.items():
        if not isinstance(k, str) or (v is not None and not isinstance(v, str)):
            raise InvalidError(f"Image.{method}: environment variables must be str to str, got {k!r}: {v!r}")
        if v is not None:
            out[k] = v
    return out


def _secret_env(method: str, secrets: Sequence[Any] | None) -> dict[str, str]:
    from .secret import Secret

    out: dict[str, str] = {}
    for s in secrets or ():
        if not isinstance(s, Secret):
            raise InvalidError(f"Image.{method}: secrets must be shoal.Secret objects, got {type(s).__name__}")
        if s.name:
            raise InvalidError(f"Image.{method}: named secrets ({s.name!r}) are not available to image builds; "
                               "use Secret.from_dict / from_dotenv / from_local_environ")
        out.update({k: v for k, v in s.env().items() if v is not None})
    return out


def _call_repr(method: str, args: Sequence[Any], **kwargs: Any) -> str:
    parts = [repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items() if v not in (None, "", False, [], {})]
    text = f"{method}({', '.join(parts)})"
    return text if len(text) <= 200 else text[:197] + "...)"


def _absolute_remote(method: str, remote_path: str | PurePosixPath) -> str:
    remote = str(remote_path)
    if not PurePosixPath(remote).is_absolute():
        raise InvalidError(f"Image.{method}() only supports absolute remote paths, got {remote!r}")
    return remote


def NON_PYTHON_FILES(path: Path) -> bool:  # noqa: N802 - Modal's name for this filter
    """The default `ignore` of `add_local_python_source`: everything that is not a `.py` file."""
    return path.suffix != ".py"


def _ignore_fn(ignore: Sequence[str] | Callable[[Path], bool]) -> Callable[[Path], bool]:
    """Patterns are matched against the path relative to the directory, dockerignore-style: `*` crosses `/`,
    a pattern matching a directory excludes what is inside it, and `!pattern` re-includes; last match wins."""
    if callable(ignore):
        return ignore
    if isinstance(ignore, str) or not all(isinstance(p, str) for p in ignore):
        raise InvalidError("`ignore` must be a list of patterns or a callable taking a Path")
    rules = [(p.startswith("!"), p.lstrip("!").strip().removeprefix("./").strip("/")) for p in ignore if p.strip()]

    def match(rel: Path) -> bool:
        text = rel.as_posix()
        prefixes = [text] + ["/".join(rel.parts[:i]) for i in range(1, len(rel.parts))]
        excluded = False
        for negated, pattern in rules:
            if any(fnmatch(p, pattern) for p in prefixes):
                excluded = not negated
        return excluded

    return match


# Content hashes of local files, keyed by (path, size, mtime): repeated `app.run()`s do not re-read them.
_file_hashes: dict[tuple[str, int, int], str] = {}
_tree_blobs: dict[tuple[Any, ...], tuple[str, bytes]] = {}


def _hash_file(path: Path) -> str:
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    sha = _file_hashes.get(key)
    if sha is None:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        sha = _file_hashes[key] = h.hexdigest()
    return sha


def _pack_tree(files: list[tuple[str, Path]], what: str) -> tuple[str, bytes]:
    from ._client.source import pack_files

    key = tuple((arc, str(p), p.stat().st_size, p.stat().st_mtime_ns, p.stat().st_mode & 0o111) for arc, p in files)
    hit = _tree_blobs.get(key)
    if hit is None:
        hit = pack_files(files, what, limit=MAX_LOCAL_BYTES, keep_exec=True)
        if len(_tree_blobs) > 64:
            _tree_blobs.clear()
        _tree_blobs[key] = hit
    return hit


def _walk(root: Path, ignore: Callable[[Path], bool], prefix: str = "") -> list[tuple[str, Path]]:
    files = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for name in sorted(filenames):
            path = Path(dirpath) / name
            rel = path.relative_to(root)
            if not path.is_file() or ignore(rel):
                continue
            files.append((prefix + rel.as_posix(), path))
    return files


class Image:
    """A container image: a Python version and a chain of build steps. Build it by using it in a function."""

    def __init__(self, python_version: str, steps: tuple[dict[str, Any], ...] = (), force_base: bool = False,
                 _local: tuple[dict[str, Any] | None, ...] = ()) -> None:
        self._python_version = python_version
        self._steps = steps  # wire form, without the content hashes of local files
        self._local = _local or (None,) * len(steps)  # per step: what to read locally for it, if anything
        self._force_base = force_base
        self._wire: tuple[ImageSpec, dict[str, Callable[[], bytes]]] | None = None

    def __repr__(self) -> str:
        chain = ".".join([f"debian_slim(python_version={self._python_version!r})",
                          *(s["repr"] for s in self._steps)])
        return f"Image({chain})"

    # -- constructors ----------------------------------------------------------------------------------------
    @staticmethod
    def debian_slim(python_version: str | None = None, force_build: bool = False) -> Image:
        """The default image: a virtual environment for `python_version` (default: the caller's major.minor)
        with what the container runtime needs, and nothing of the caller's environment."""
        return Image(_validate_python_version(python_version), force_base=force_build)

    @staticmethod
    def _unsupported(what: str) -> InvalidError:
        return InvalidError(f"Image.{what} is not supported by shoal: images are uv virtual environments on the "
                            "host, not OCI images. Start from Image.debian_slim() and add packages and files.")

    @staticmethod
    def from_registry(tag: str, *args: Any, **kwargs: Any) -> Image:
        raise Image._unsupported("from_registry")

    @staticmethod
    def from_dockerfile(path: str | Path, *args: Any, **kwargs: Any) -> Image:
        raise Image._unsupported("from_dockerfile")

    @staticmethod
    def micromamba(python_version: str | None = None, force_build: bool = False) -> Image:
        raise Image._unsupported("micromamba")

    @staticmethod
    def from_aws_ecr(tag: str, *args: Any, **kwargs: Any) -> Image:
        raise Image._unsupported("from_aws_ecr")

    @staticmethod
    def from_gcp_artifact_registry(tag: str, *args: Any, **kwargs: Any) -> Image:
        raise Image._unsupported("from_gcp_artifact_registry")

    def dockerfile_commands(self, *args: Any, **kwargs: Any) -> Image:
        raise Image._unsupported("dockerfile_commands")

    def run_function(self, *args: Any, **kwargs: Any) -> Image:
        raise Image._unsupported("run_function")

    # -- chaining --------------------------------------------------------------------------------------------
    def _extend(self, step: dict[str, Any], force_build: bool = False,
                local: dict[str, Any] | None = None) -> Image:
        if step["kind"] in BUILD_KINDS:
            for prev in self._steps:
                if prev["kind"] in FILE_KINDS and not prev.get("copy"):
                    raise InvalidError(
                        f"Image.{step['kind']}() comes after {prev['repr']}, which adds files at container start "
                        f"(copy=False). Build steps cannot follow it: use copy=True, or add the files last.")
        if force_build:
            step["force"] = True
        return Image(self._python_version, (*self._steps, step), self._force_base, (*self._local, local))

    def _pip_step(self, method: str, packages: list[str], args: Sequence[Any], *, find_links: str | None,
                  index_url: str | None, extra_index_url: str | None, pre: bool, extra_options: str,
                  force_build: bool, env: dict[str, str | None] | None, secrets: Sequence[Any] | None,
                  fill: Callable[[dict[str, Any]], None] | None = None) -> Image:
        """`fill` adds what must be read from local files, when the image is first sent (never in containers,
        where those files are not)."""
        _check_packages(method, packages)
        for name, value in (("find_links", find_links), ("index_url", index_url),
                            ("extra_index_url", extra_index_url)):
            if value is not None and not isinstance(value, str):
                raise InvalidError(f"Image.{method}: `{name}` must be a string")
        if not isinstance(extra_options, str):
            raise InvalidError(f"Image.{method}: `extra_options` must be a string of flags")
        try:
            shlex.split(extra_options)
        except ValueError as exc:
            raise InvalidError(f"Image.{method}: cannot parse extra_options {extra_options!r}: {exc}") from exc
        if not packages and fill is None:
            return self
        step = {
            "kind": method, "packages": packages, "requirements": [],
            "find_links": find_links, "index_url": index_url, "extra_index_url": extra_index_url, "pre": bool(pre),
            "extra_options": extra_options, "env": _check_env(method, env),
            "secret_env": _secret_env(method, secrets),
            "repr": _call_repr(method, args, extra_options=extra_options, index_url=index_url),
        }
        return self._extend(step, force_build, local={"fill": fill} if fill else None)

    def pip_install(
        self,
        *packages: str | list[str],
        find_links: str | None = None,
        index_url: str | None = None,
        extra_index_url: str | None = None,
        pre: bool = False,
        extra_options: str = "",
        force_build: bool = False,
        env: dict[str, str | None] | None = None,
        secrets: Sequence[Any] | None = None,
        gpu: Any = None,
    ) -> Image:
        """Install Python packages (with uv, into the image's virtual environment)."""
        pkgs = _flatten("pip_install", packages)
        return self._pip_step("pip_install", pkgs, pkgs, find_links=find_links, index_url=index_url,
                              extra_index_url=extra_index_url, pre=pre, extra_options=extra_options,
                              force_build=force_build, env=env, secrets=secrets)

    def uv_pip_install(
        self,
        *packages: str | list[str],
        requirements: list[str] | None = None,
        find_links: str | None = None,
        index_url: str | None = None,
        extra_index_url: str | None = None,
        pre: bool = False,
        extra_options: str = "",
        force_build: bool = False,
        uv_version: str | None = None,
        env: dict[str, str | None] | None = None,
        secrets: Sequence[Any] | None = None,
        gpu: Any = None,
    ) -> Image:
        """Install Python packages with uv; `requirements` are local requirements files to install from."""
        pkgs = _flatten("uv_pip_install", packages)
        if requirements is not None and (isinstance(requirements, str) or not isinstance(requirements, list)):
            raise InvalidError("Image.uv_pip_install: `requirements` must be a list of file paths")
        paths = list(requirements or [])

        def fill(step: dict[str, Any]) -> None:
            step["requirements"] = [_read_text("uv_pip_install", r) for r in paths]

        return self._pip_step("uv_pip_install", pkgs, [*pkgs, *paths], find_links=find_links,
                              index_url=index_url, extra_index_url=extra_index_url, pre=pre,
                              extra_options=extra_options, force_build=force_build, env=env, secrets=secrets,
                              fill=fill if paths else None)

    def pip_install_from_requirements(
        self,
        requirements_txt: str,
        find_links: str | None = None,
        *,
        index_url: str | None = None,
        extra_index_url: str | None = None,
        pre: bool = False,
        extra_options: str = "",
        force_build: bool = False,
        env: dict[str, str | None] | None = None,
        secrets: Sequence[Any] | None = None,
        gpu: Any = None,
    ) -> Image:
        """Install the packages a local requirements file lists (read now; its content is part of the id)."""
        def fill(step: dict[str, Any]) -> None:
            step["requirements"] = [_read_text("pip_install_from_requirements", requirements_txt)]

        return self._pip_step("pip_install_from_requirements", [], [str(requirements_txt)], find_links=find_links,
                              index_url=index_url, extra_index_url=extra_index_url, pre=pre,
                              extra_options=extra_options, force_build=force_build, env=env, secrets=secrets,
                              fill=fill)

    def pip_install_from_pyproject(
        self,
        pyproject_toml: str,
        optional_dependencies: list[str] = [],  # noqa: B006 - Modal's signature
        *,
        find_links: str | None = None,
        index_url: str | None = None,
        extra_index_url: str | None = None,
        pre: bool = False,
        extra_options: str = "",
        force_build: bool = False,
        env: dict[str, str | None] | None = None,
        secrets: Sequence[Any] | None = None,
        gpu: Any = None,
    ) -> Image:
        """Install `[project].dependencies` of a local pyproject.toml, plus the named optional groups
        (the project itself is not installed)."""
        groups = list(optional_dependencies)

        def fill(step: dict[str, Any]) -> None:
            data = _load_toml("pip_install_from_pyproject", pyproject_toml)
            project = data.get("project") or {}
            pkgs = list(project.get("dependencies") or [])
            optional = project.get("optional-dependencies") or {}
            for group in groups:
                if group not in optional:
                    raise InvalidError(f"Image.pip_install_from_pyproject: {pyproject_toml} has no optional "
                                       f"dependency group {group!r}")
                pkgs.extend(optional[group])
            _check_packages("pip_install_from_pyproject", pkgs)
            step["packages"] = pkgs

        return self._pip_step("pip_install_from_pyproject", [], [str(pyproject_toml), *groups],
                              find_links=find_links, index_url=index_url, extra_index_url=extra_index_url, pre=pre,
                              extra_options=extra_options, force_build=force_build, env=env, secrets=secrets,
                              fill=fill)

    def uv_sync(
        self,
        uv_project_dir: str = "./",
        *,
        force_build: bool = False,
        groups: list[str] | None = None,
        extras: list[str] | None = None,
        frozen: bool = True,
        extra_options: str = "",
        uv_version: str | None = None,
        secrets: Sequence[Any] | None = None,
        gpu: Any = None,
    ) -> Image:
        """Install a uv project's locked dependencies (pyproject.toml and uv.lock; not the project itself)."""
        project = Path(uv_project_dir).expanduser()

        def fill(step: dict[str, Any]) -> None:
            step["pyproject"] = _read_text("uv_sync", project / "pyproject.toml")
            lock_path = project / "uv.lock"
            if frozen and not lock_path.is_file():
                raise InvalidError(f"Image.uv_sync: {lock_path} not found (frozen=True needs a lock file; run "
                                   "`uv lock`, or pass frozen=False)")
            step["lock"] = lock_path.read_text() if lock_path.is_file() else None

        for name, value in (("groups", groups), ("extras", extras)):
            if value is not None and (isinstance(value, str) or not all(isinstance(v, str) for v in value)):
                raise InvalidError(f"Image.uv_sync: `{name}` must be a list of strings")
        if not isinstance(extra_options, str):
            raise InvalidError("Image.uv_sync: `extra_options` must be a string of flags")
        step = {"kind": "uv_sync", "groups": list(groups or []),
                "extras": list(extras or []), "frozen": bool(frozen), "extra_options": extra_options,
                "secret_env": _secret_env("uv_sync", secrets),
                "repr": _call_repr("uv_sync", [str(uv_project_dir)], groups=groups, extras=extras)}
        return self._extend(step, force_build, local={"fill": fill})

    def apt_install(
        self,
        *packages: str | list[str],
        force_build: bool = False,
        env: dict[str, str | None] | None = None,
        secrets: Sequence[Any] | None = None,
        gpu: Any = None,
    ) -> Image:
        """Add Debian packages: downloaded and unpacked into the image's own prefix, never installed on the
        host. Their binaries are on PATH and their libraries on LD_LIBRARY_PATH."""
        pkgs = _flatten("apt_install", packages)
        _check_packages("apt_install", pkgs)
        bad = [p for p in pkgs if not re.fullmatch(r"[a-z0-9][a-z0-9+.\-]*(:[a-z0-9]+)?(=[A-Za-z0-9.+~:\-]+)?", p)]
        if bad:
            raise InvalidError(f"Image.apt_install: not Debian package names: {', '.join(map(repr, bad))}")
        if not pkgs:
            return self
        step = {"kind": "apt_install", "packages": pkgs, "env": _check_env("apt_install", env),
                "secret_env": _secret_env("apt_install", secrets), "repr": _call_repr("apt_install", pkgs)}
        return self._extend(step, force_build)

    def run_commands(
        self,
        *commands: str | list[str],
        env: dict[str, str | None] | None = None,
        secrets: Sequence[Any] | None = None,
        volumes: dict[str, Any] | None = None,
        gpu: Any = None,
        force_build: bool = False,
    ) -> Image:
        """Run shell commands (bash) in the image's environment, one after another."""
        cmds = _flatten("run_commands", commands)
        if not cmds:
            return self
        if volumes:
            warnings.warn("Image.run_commands: volumes are not mounted during shoal image builds", stacklevel=2)
        step = {"kind": "run_commands", "commands": cmds, "env": _check_env("run_commands", env),
                "secret_env": _secret_env("run_commands", secrets), "repr": _call_repr("run_commands", cmds)}
        return self._extend(step, force_build)

    def env(self, vars: dict[str, str]) -> Image:  # noqa: A002 - Modal's parameter name
        """Set environment variables in the image (for later build steps and for containers)."""
        checked = _check_env("env", vars)
        if not checked:
            return self
        return self._extend({"kind": "env", "vars": checked, "repr": _call_repr("env", [checked])})

    def workdir(self, path: str | PurePosixPath) -> Image:
        """Set the working directory of later build steps and of containers (created if missing)."""
        remote = _absolute_remote("workdir", path)
        return self._extend({"kind": "workdir", "path": remote, "repr": _call_repr("workdir", [remote])})

    def add_local_file(self, local_path: str | Path, remote_path: str, *, copy: bool = False) -> Image:
        """Add a local file at `remote_path` (a directory if it ends with '/'). With copy=False (the default)
        the file is added after the build steps, so editing it never re-runs them; build steps may only
        follow files added with copy=True."""
        remote = str(remote_path)
        if remote.endswith("/"):
            remote += Path(local_path).name
        remote = _absolute_remote("add_local_file", remote)
        local = Path(local_path).expanduser().absolute()
        step = {"kind": "add_local_file", "remote_path": remote, "copy": bool(copy),
                "repr": _call_repr("add_local_file", [str(local_path), remote], copy=copy)}
        return self._extend(step, local={"file": local})

    def add_local_dir(self, local_path: str | Path, remote_path: str, *, copy: bool = False,
                      ignore: Sequence[str] | Callable[[Path], bool] = []) -> Image:  # noqa: B006 - Modal's
        """Add a local directory's content at `remote_path`. `ignore`: dockerignore-style patterns relative to
        the directory, or a callable taking the relative Path and returning True to leave a file out."""
        remote = _absolute_remote("add_local_dir", remote_path)
        local = Path(local_path).expanduser().absolute()
        step = {"kind": "add_local_dir", "remote_path": remote, "copy": bool(copy),
                "repr": _call_repr("add_local_dir", [str(local_path), remote], copy=copy)}
        return self._extend(step, local={"dir": local, "ignore": _ignore_fn(ignore)})

    def add_local_python_source(self, *modules: str, copy: bool = False,
                                ignore: Sequence[str] | Callable[[Path], bool] = NON_PYTHON_FILES) -> Image:
        """Add local Python packages/modules (by import name) under /root, which is on the path."""
        for m in modules:
            if not isinstance(m, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", m):
                raise InvalidError(f"Image.add_local_python_source: {m!r} is not a module name")
        if not modules:
            return self
        step = {"kind": "add_local_python_source", "remote_path": "/root", "modules": list(modules),
                "copy": bool(copy), "repr": _call_repr("add_local_python_source", list(modules), copy=copy)}
        return self._extend(step, local={"modules": list(modules), "ignore": _ignore_fn(ignore)})

    def pipe(self, func: Callable[..., Image], *args: Any, **kwargs: Any) -> Image:
        """`func(self, *args, **kwargs)`: apply a function that builds on an image."""
        return func(self, *args, **kwargs)

    @contextlib.contextmanager
    def imports(self) -> Iterator[None]:
        """`with image.imports(): import torch` — tolerate ImportError where the package is not installed
        (on your machine, or in containers of other images); inside this image's containers errors are raised."""
        try:
            yield
        except Exception as exc:
            if _in_image(self):
                raise
            if not isinstance(exc, ImportError):
                warnings.warn(f"caught a non-ImportError exception in an `imports()` block: {exc!r}",
                              stacklevel=3)

    # -- wire ------------------------------------------------------------------------------------------------
    @property
    def object_id(self) -> str:
        return self.to_wire().image_id

    def to_wire(self) -> ImageSpec:
        """What the control plane builds: the id, the Python version and the steps."""
        return self._resolve()[0]

    def _resolve(self) -> tuple[ImageSpec, dict[str, Callable[[], bytes]]]:
        """The wire form and the local blobs it refers to ({sha256: read}); local files are read here."""
        if self._wire is None:
            blobs: dict[str, Callable[[], bytes]] = {}
            steps = []
            for step, local in zip(self._steps, self._local, strict=True):
                step = dict(step)
                if local is not None and "fill" in local:
                    local["fill"](step)
                elif local is not None:
                    sha, read = _local_blob(step, local)
                    step["sha"] = sha
                    blobs[sha] = read
                steps.append(step)
            wire = ImageSpec(image_id=image_id_for(self._python_version, steps), builder=BUILDER_VERSION,
                             python_version=self._python_version, steps=steps)
            self._wire = (wire, blobs)
        wire, blobs = self._wire
        from ._spec.config import env_flag

        force_base = self._force_base or env_flag("SHOAL_FORCE_BUILD")
        return (msgspec.structs.replace(wire, force_base=True) if force_base else wire), blobs


def _read_text(method: str, path: str | Path) -> str:
    p = Path(path).expanduser()
    try:
        return p.read_text()
    except OSError as exc:
        raise InvalidError(f"Image.{method}: cannot read {p}: {exc.strerror or exc}") from exc


def _load_toml(method: str, path: str | Path) -> dict[str, Any]:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ImportError as exc:
            raise InvalidError(f"Image.{method} needs Python 3.11+ (or the `tomli` package)") from exc
    text = _read_text(method, path)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidError(f"Image.{method}: {path} is not valid TOML: {exc}") from exc


def _local_blob(step: dict[str, Any], local: dict[str, Any]) -> tuple[str, Callable[[], bytes]]:
    kind = step["kind"]
    if "file" in local:
        path: Path = local["file"]
        if not path.is_file():
            raise InvalidError(f"Image.{kind}: local file {path} not found")
        step["mode"] = 0o755 if path.stat().st_mode & 0o111 else 0o644
        return _hash_file(path), path.read_bytes
    if "dir" in local:
        root: Path = local["dir"]
        if not root.is_dir():
            raise InvalidError(f"Image.{kind}: local directory {root} not found")
        files = _walk(root, local["ignore"])
    else:
        files = []
        for name in local["modules"]:
            try:
                spec = importlib.util.find_spec(name)
            except (ImportError, ValueError) as exc:
                raise InvalidError(f"Image.add_local_python_source: cannot find module {name!r}: {exc}") from exc
            if spec is None:
                raise InvalidError(f"Image.add_local_python_source: module {name!r} not found")
            arc = name.replace(".", "/")
            if spec.submodule_search_locations:
                for location in spec.submodule_search_locations:
                    files += _walk(Path(location), local["ignore"], prefix=arc + "/")
            elif spec.origin and spec.origin.endswith(".py"):
                files.append((arc + ".py", Path(spec.origin)))
            else:
                raise InvalidError(f"Image.add_local_python_source: {name!r} is not a local Python source module "
                                   f"({spec.origin})")
    sha, blob = _pack_tree(files, f"Image.{kind} content")
    return sha, lambda: blob


def _in_image(image: Image) -> bool:
    """True inside a container of `image`."""
    image_id = os.environ.get("SHOAL_IMAGE_ID")
    if not image_id or "SHOAL_CONTAINER_ID" not in os.environ:
        return False
    try:
        return image.object_id == image_id
    except Exception:  # noqa: BLE001 - local files of another image are not here: not this image
        return False


_default_image: Image | None = None


def check_image(image: Any, where: str) -> None:
    """`image=` of App / @app.function / @app.cls must be a shoal.Image."""
    if image is not None and not isinstance(image, Image):
        raise InvalidError(f"{where}: `image` must be a shoal.Image (e.g. shoal.Image.debian_slim()), "
                           f"got {type(image).__name__}")


def wire_for(image: Image | None, client: Any, uploaded: set[str]) -> ImageSpec:
    """The wire form of a function's image (default: `Image.debian_slim()`), after uploading the local files
    it refers to as content-addressed blobs the control plane does not have yet."""
    global _default_image
    if image is None:
        image = _default_image = _default_image or Image.debian_slim()
    wire, blobs = image._resolve()
    for sha, read in blobs.items():
        if sha not in uploaded:
            status_code, _ = client.request_raw("HEAD", f"/v1/blobs/{sha}")
            if status_code == 404:
                client.request_raw("PUT", f"/v1/blobs/{sha}", read())
            uploaded.add(sha)
    return wire
