"""`Image`: what a container runs on — a Python version plus a chain of build steps.

An `Image` is immutable: every method returns a new Image with one more step. Nothing is built here; the
control plane builds an image the first time a function that uses it is registered (`app.run()`, deploy) and
caches it by id. The id is the sha256 of the canonical step chain, in which local files appear by the sha256 of
their content, so editing a file that an image adds gives a new image.

What a build makes (see docs/images.md): from `debian_slim()`, a uv virtual environment for the chosen Python
(found among the interpreters installed on the machine, never downloaded), packages installed with uv, Debian
packages unpacked into the image's own prefix (the host's installed packages are never changed), commands run,
files copied. From `from_registry()` / `from_dockerfile()`, an OCI image: a root filesystem of layers, each later
step one more layer built in a container on the image so far.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import posixpath
import re
import shlex
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import msgspec

from . import _image_function as image_function
from ._container_context import is_local
from ._image_files import (
    AUTO_DOCKERIGNORE,
    AutoDockerIgnore,
    command_sources,
    context_blob,
    copy_sources,
    dockerignore_fn,
    dockerignore_patterns,
    ignore_fn,
    local_blob,
    source_pattern,
)
from ._spec.definitions import ImageSpec
from ._spec.images import BUILD_KINDS, BUILDER_VERSION, FILE_KINDS, IMAGE_ID_RE, image_id_for, is_oci
from .exception import InvalidError

SUPPORTED_PYTHON_VERSIONS = ("3.10", "3.11", "3.12", "3.13", "3.14")


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
            continue  # sent by name (`_secrets_fields`): the control plane reads it when it builds
        out.update({k: v for k, v in s.env().items() if v is not None})
    return out


def _secrets_fields(method: str, secrets: Sequence[Any] | None) -> dict[str, Any]:
    """A build step's secrets as sent: the values of `from_dict`-like ones, the names of named ones."""
    names = [s.name for s in secrets or () if getattr(s, "name", None)]
    return {"secret_env": _secret_env(method, secrets), **({"secret_names": names} if names else {})}


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


# Which keys of the registry secret a pull uses, per registry kind (Modal's names).
REGISTRY_SECRET_KEYS = {"generic": ("REGISTRY_USERNAME", "REGISTRY_PASSWORD"),
                        "aws_ecr": ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"),
                        "gcp": ("SERVICE_ACCOUNT_JSON",)}


def _check_tag(method: str, tag: Any) -> str:
    from .oci.registry import RegistryError, parse_reference

    if not isinstance(tag, str):
        raise InvalidError(f"Image.{method}: `tag` must be an image reference string like 'python:3.12-slim', "
                           f"got {type(tag).__name__}")
    try:
        parse_reference(tag)
    except RegistryError as exc:
        raise InvalidError(f"Image.{method}: `tag`: {exc}") from None
    return tag


def _check_add_python(method: str, add_python: Any) -> str | None:
    """`add_python="3.12"`: a supported major.minor (the interpreter put into the image)."""
    if add_python is None:
        return None
    if not isinstance(add_python, str) or not re.fullmatch(r"\d+\.\d+(\.\d+)?", add_python):
        raise InvalidError(f"Image.{method}: `add_python` must be a Python version like '3.12', got {add_python!r}")
    if add_python.count(".") > 1:
        raise InvalidError(f"Image.{method}: `add_python` takes major.minor ('3.12'), not {add_python!r}")
    if add_python not in SUPPORTED_PYTHON_VERSIONS:
        raise InvalidError(f"Image.{method}: unsupported `add_python` version {add_python}: shoal images support "
                           f"{', '.join(SUPPORTED_PYTHON_VERSIONS)}")
    return add_python


def _check_build_args(method: str, build_args: Any) -> dict[str, str]:
    if not isinstance(build_args, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in build_args.items()):
        raise InvalidError(f"Image.{method}: `build_args` must be a dict of str to str")
    return dict(build_args)


def _check_commands(method: str, commands: Any) -> list[str]:
    if isinstance(commands, str) or not isinstance(commands, (list, tuple)) or not all(
            isinstance(c, str) for c in commands):
        raise InvalidError(f"Image.{method}: `setup_dockerfile_commands` must be a list of strings")
    return list(commands)


def _registry_secret_names(secret: Any) -> list[str]:
    """A named registry secret (`Secret.from_name`): its name, which the control plane resolves when it builds
    (its values never pass through the caller)."""
    from .secret import Secret

    return [secret.name] if isinstance(secret, Secret) and secret.name else []


def _registry_secret_env(method: str, secret: Any, registry: str, *, required: bool) -> dict[str, str]:
    """The values of the registry secret the pull needs; the secret must hold the keys of its registry kind
    (a named one is checked by the control plane, which reads it)."""
    keys = REGISTRY_SECRET_KEYS[registry]
    if secret is None:
        if required:
            raise InvalidError(f"Image.{method} needs `secret`: a shoal.Secret with {' and '.join(keys)}")
        return {}
    if _registry_secret_names(secret):
        return {}
    values = _secret_env(method, [secret])
    missing = [k for k in keys if not values.get(k)]
    if missing and is_local():  # a container imports the module again without the caller's values: it builds nothing
        raise InvalidError(f"Image.{method}: the registry secret lacks {', '.join(missing)} (it needs "
                           f"{' and '.join(keys)})")
    return values


class Image:
    """A container image: a Python version and a chain of build steps. Build it by using it in a function."""

    def __init__(self, python_version: str | None, steps: tuple[dict[str, Any], ...] = (),
                 force_base: bool = False, _local: tuple[dict[str, Any] | None, ...] = ()) -> None:
        self._python_version = python_version
        self._steps = steps  # wire form, without the content hashes of local files
        self._local = _local or (None,) * len(steps)  # per step: what to read locally for it, if anything
        self._force_base = force_base
        self._wire: tuple[ImageSpec, dict[str, Callable[[], bytes]]] | None = None

    def __repr__(self) -> str:
        base = [] if is_oci(self._steps) else [f"debian_slim(python_version={self._python_version!r})"]
        return f"Image({'.'.join([*base, *(s['repr'] for s in self._steps)])})"

    # -- constructors ----------------------------------------------------------------------------------------
    @staticmethod
    def debian_slim(python_version: str | None = None, force_build: bool = False) -> Image:
        """The default image: a virtual environment for `python_version` (default: the caller's major.minor)
        with what the container runtime needs, and nothing of the caller's environment."""
        return Image(_validate_python_version(python_version), force_base=force_build)

    @staticmethod
    def from_id(image_id: str, client: Any = None) -> Image:
        """An image the control plane already has, by its id (`image.object_id`, or a sandbox's
        `snapshot_filesystem()`): used as it is stored, built nowhere. Build steps added to it are built on it
        (an OCI image: a snapshot, or one from from_registry / from_dockerfile)."""
        if not isinstance(image_id, str) or not IMAGE_ID_RE.match(image_id):
            raise InvalidError(f"Image.from_id: `image_id` must be an image id ('im-' and 64 hex digits), "
                               f"got {image_id!r}")
        base = {"kind": "from_id", "image_id": image_id, "repr": _call_repr("from_id", [image_id]), "force": False}
        image = _StoredImage(None, (base,))
        image._wire = (ImageSpec(image_id=image_id), {})  # alone, it is the stored image itself
        return image

    @staticmethod
    def _unsupported(what: str, instead: str) -> InvalidError:
        return InvalidError(f"Image.{what} is not supported by shoal: {instead}")

    @staticmethod
    def _base(method: str, step: dict[str, Any], force_build: bool,
              local: dict[str, Any] | None = None) -> Image:
        """An OCI image: `step` is its base (docs/images.md); it has no Python version of its own."""
        step["force"] = bool(force_build)
        return Image(None, (step,), False, (local,))

    @staticmethod
    def _from_registry(method: str, registry: str, tag: str, secret: Any, setup_dockerfile_commands: Any,
                       force_build: bool, add_python: Any, kwargs: dict[str, Any]) -> Image:
        if kwargs:
            raise InvalidError(f"Image.{method}: unexpected keyword argument(s) {', '.join(sorted(kwargs))}")
        tag = _check_tag(method, tag)
        add_python = _check_add_python(method, add_python)
        setup = _check_commands(method, setup_dockerfile_commands)
        secret_env = _registry_secret_env(method, secret, registry, required=registry != "generic")
        step: dict[str, Any] = {"kind": "from_registry", "tag": tag, "registry": registry, "add_python": add_python,
                                "repr": _call_repr(method, [tag], add_python=add_python)}
        if secret_env:
            step["secret_env"] = secret_env
        if names := _registry_secret_names(secret):
            step["secret_names"] = names
        image = Image._base(method, step, force_build)
        return image.dockerfile_commands(setup) if setup else image

    @staticmethod
    def from_registry(tag: str, secret: Any = None, *, setup_dockerfile_commands: list[str] = [],  # noqa: B006
                      force_build: bool = False, add_python: str | None = None, **kwargs: Any) -> Image:
        """An image from a registry (`python:3.12-slim`, `127.0.0.1:5000/team/app:v1`, `name@sha256:…`),
        pulled by the control plane. `secret`: REGISTRY_USERNAME and REGISTRY_PASSWORD for a private registry;
        `add_python="3.12"` puts that Python at /usr/local/bin/python for images that lack one;
        `setup_dockerfile_commands` run first, as `dockerfile_commands`."""
        return Image._from_registry("from_registry", "generic", tag, secret, setup_dockerfile_commands,
                                    force_build, add_python, kwargs)

    @staticmethod
    def from_aws_ecr(tag: str, secret: Any = None, *, setup_dockerfile_commands: list[str] = [],  # noqa: B006
                     force_build: bool = False, add_python: str | None = None, **kwargs: Any) -> Image:
        """An image from AWS ECR; `secret` holds AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_REGION)."""
        return Image._from_registry("from_aws_ecr", "aws_ecr", tag, secret, setup_dockerfile_commands,
                                    force_build, add_python, kwargs)

    @staticmethod
    def from_gcp_artifact_registry(tag: str, secret: Any = None, *,
                                   setup_dockerfile_commands: list[str] = [],  # noqa: B006 - Modal's signature
                                   force_build: bool = False, add_python: str | None = None,
                                   **kwargs: Any) -> Image:
        """An image from Google Artifact Registry; `secret` holds SERVICE_ACCOUNT_JSON (a service account key)."""
        return Image._from_registry("from_gcp_artifact_registry", "gcp", tag, secret, setup_dockerfile_commands,
                                    force_build, add_python, kwargs)

    @staticmethod
    def from_dockerfile(
        path: str | Path,
        *,
        force_build: bool = False,
        context_dir: str | Path | None = None,
        ignore: Sequence[str] | Callable[[Path], bool] | AutoDockerIgnore = AUTO_DOCKERIGNORE,
        build_args: dict[str, str] = {},  # noqa: B006 - Modal's signature
        registry_secret: Any = None,
        secrets: Sequence[Any] | None = None,
        env: dict[str, str | None] | None = None,
        gpu: Any = None,
        add_python: str | None = None,
    ) -> Image:
        """An image built from a single-stage Dockerfile. The Dockerfile and the files its COPY/ADD lines name
        (relative to `context_dir`, default: the working directory) are read when the app starts, less what
        `ignore` (default: the .dockerignore) leaves out. `registry_secret` is for pulling its FROM image;
        `secrets` and `env` are the environment of its RUN lines (the registry secret's values too)."""
        method = "from_dockerfile"
        if not isinstance(path, (str, Path)):
            raise InvalidError(f"Image.{method}: `path` must be a str or Path, got {type(path).__name__}")
        if context_dir is not None and not isinstance(context_dir, (str, Path)):
            raise InvalidError(f"Image.{method}: `context_dir` must be a str or Path")
        given_ignore = dockerignore_fn(method, ignore)
        args = _check_build_args(method, build_args)
        add_python = _check_add_python(method, add_python)
        step: dict[str, Any] = {"kind": method, "build_args": args, "add_python": add_python,
                                "env": _check_env(method, env),
                                "repr": _call_repr(method, [str(path)], add_python=add_python)}
        # One environment of secrets, as the other build steps have: the RUN lines' `secrets` and the
        # credentials FROM is pulled with (which the RUN lines see too).
        secret_env = {**_secret_env(method, secrets),
                      **_registry_secret_env(method, registry_secret, "generic", required=False)}
        if secret_env:
            step["secret_env"] = secret_env
        if names := [*_secrets_fields(method, secrets).get("secret_names", []),
                     *_registry_secret_names(registry_secret)]:
            step["secret_names"] = names

        def fill(step: dict[str, Any]) -> dict[str, Callable[[], bytes]]:
            dockerfile = Path(path).expanduser().absolute()
            step["dockerfile"] = _read_text(method, dockerfile)
            context = Path.cwd() if context_dir is None else Path(context_dir).expanduser().absolute()
            sources = copy_sources(method, step["dockerfile"], args)
            chosen = given_ignore or dockerignore_patterns(context, dockerfile)
            step["context_sha"], blobs = context_blob(method, context, sources, chosen, {})
            return blobs

        return Image._base(method, step, force_build, {"fill": fill})

    @staticmethod
    def micromamba(python_version: str | None = None, force_build: bool = False) -> Image:
        raise Image._unsupported("micromamba", "start from Image.debian_slim(), or from a registry image that "
                                 "has micromamba (Image.from_registry('mambaorg/micromamba:…'))")

    def dockerfile_commands(
        self,
        *dockerfile_commands: str | list[str],
        context_files: dict[str, str] = {},  # noqa: B006 - Modal's signature
        env: dict[str, str | None] | None = None,
        secrets: Sequence[Any] | None = None,
        gpu: Any = None,
        context_dir: str | Path | None = None,
        force_build: bool = False,
        ignore: Sequence[str] | Callable[[Path], bool] | AutoDockerIgnore = AUTO_DOCKERIGNORE,
        build_args: dict[str, str] = {},  # noqa: B006 - Modal's signature
    ) -> Image:
        """Dockerfile lines (RUN, COPY, ENV, WORKDIR, USER, …; no FROM) built on this image. COPY/ADD read
        `context_files` ({path in the context: local path}) and files of `context_dir` (default: the working
        directory), when the app starts."""
        method = "dockerfile_commands"
        cmds = _flatten(method, dockerfile_commands)
        if not cmds:
            return self
        args = _check_build_args(method, build_args)
        if not isinstance(context_files, Mapping) or not all(
                isinstance(k, str) and isinstance(v, (str, Path)) for k, v in context_files.items()):
            raise InvalidError(f"Image.{method}: `context_files` must be a dict of context path to local path")
        if context_dir is not None and not isinstance(context_dir, (str, Path)):
            raise InvalidError(f"Image.{method}: `context_dir` must be a str or Path")
        given_ignore = dockerignore_fn(method, ignore)
        sources = command_sources(cmds, args)
        for src, line in sources:
            source_pattern(method, src, line)  # a source outside the context is an error now
        extra = {}
        for arc, local in context_files.items():
            norm = posixpath.normpath(arc.lstrip("/"))
            if norm in (".", "..") or norm.startswith("../"):
                raise InvalidError(f"Image.{method}: context file path {arc!r} is not a path inside the context")
            extra[norm] = Path(local).expanduser().absolute()
        step: dict[str, Any] = {"kind": method, "commands": cmds, "build_args": args,
                                "env": _check_env(method, env), **_secrets_fields(method, secrets),
                                "context_sha": None, "repr": _call_repr(method, cmds)}
        if not sources and not extra:
            return self._extend(step, force_build)

        def fill(step: dict[str, Any]) -> dict[str, Callable[[], bytes]]:
            context = Path.cwd() if context_dir is None else Path(context_dir).expanduser().absolute()
            chosen = given_ignore or dockerignore_patterns(context, None)
            step["context_sha"], blobs = context_blob(method, context, sources, chosen, extra)
            return blobs

        return self._extend(step, force_build, local={"fill": fill})

    def run_function(self, raw_f: Callable[..., Any], *, env: dict[str, str | None] | None = None,
                     secrets: Sequence[Any] | None = None, volumes: dict[str, Any] = {},  # noqa: B006
                     network_file_systems: dict[str, Any] = {}, gpu: Any = None, cpu: Any = None,  # noqa: B006
                     memory: Any = None, timeout: int = image_function.DEFAULT_TIMEOUT, cloud: Any = None,
                     region: Any = None, force_build: bool = False, args: Sequence[Any] = (),
                     kwargs: dict[str, Any] = {}, include_source: bool | None = None) -> Image:  # noqa: B006
        """Run `raw_f(*args, **kwargs)` once in a build container on this image; what it writes (downloaded model
        weights, generated files) is the next layer. Rebuilt when its source or arguments change
        (shoal/_image_function.py)."""
        image_function.check(raw_f, args, kwargs, timeout, volumes, network_file_systems)
        name = image_function.name_of(raw_f)
        step = {"kind": "run_function", "function": name, "timeout": timeout,
                "env": _check_env("run_function", env), **_secrets_fields("run_function", secrets),
                "repr": _call_repr("run_function", [name])}

        def fill(step: dict[str, Any]) -> dict[str, Callable[[], bytes]]:
            pickled = image_function.payload(raw_f, args, kwargs)
            step.update(image_function.fingerprint(raw_f, args, kwargs, pickled))
            step["payload_sha"] = sha = hashlib.sha256(pickled).hexdigest()
            return {sha: lambda: pickled}

        return self._extend(step, force_build, local={"fill": fill})

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
        where those files are not); it returns the blobs to upload ({sha256: read}), if any."""
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
            **_secrets_fields(method, secrets),
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
                **_secrets_fields("uv_sync", secrets),
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
                **_secrets_fields("apt_install", secrets), "repr": _call_repr("apt_install", pkgs)}
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
                **_secrets_fields("run_commands", secrets), "repr": _call_repr("run_commands", cmds)}
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
        return self._extend(step, local={"dir": local, "ignore": ignore_fn(ignore)})

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
        return self._extend(step, local={"modules": list(modules), "ignore": ignore_fn(ignore)})

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
                    blobs.update(local["fill"](step) or {})
                elif local is not None:
                    sha, read = local_blob(step, local)
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


class _StoredImage(Image):
    """`Image.from_id`: the stored image as it is; a step added to it makes an ordinary OCI image whose base step
    is the stored one."""

    def __repr__(self) -> str:
        return f"Image.from_id({self.object_id!r})"


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
