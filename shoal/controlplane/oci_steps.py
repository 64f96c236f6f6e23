"""What the steps of an OCI image run, as pure functions of the step (the builder, oci_images.py, runs them),
and the checks of the OCI images' own step fields."""

from __future__ import annotations

import re
import shlex
from typing import Any

from .._spec.images import BASE_KINDS, IMAGE_ID_RE
from ..exception import InvalidError
from ..oci.registry import RegistryError, parse_reference

SCRATCH_INSIDE = "/.shoal/build"  # a step's scratch files as its build container sees them: requirements, a project
REGISTRY_KINDS = ("generic", "aws_ecr", "gcp")


def check_oci_step(step: dict[str, Any], oci: bool) -> None:
    """The fields of the OCI images' own steps (base steps and dockerfile_commands)."""
    kind, where = step["kind"], step["repr"]
    if kind == "dockerfile_commands":
        if not oci:
            raise InvalidError(f"{where}: dockerfile_commands needs a root-filesystem image: debian_slim images "
                               "are virtual environments on this control plane (SHOAL_DEBIAN_SLIM=rootfs makes them "
                               "root filesystems), or start from from_registry or from_dockerfile")
        if not isinstance(step.get("commands"), list):
            raise InvalidError(f"invalid 'commands' in image step {where}")
        if any(re.match(r"\s*FROM\b", c, re.I) for c in step["commands"]):
            raise InvalidError(f"{where}: dockerfile_commands cannot contain FROM")
    if kind == "from_registry":
        if not isinstance(step.get("tag"), str):
            raise InvalidError(f"invalid 'tag' in image step {where}")
        try:
            parse_reference(step["tag"])
        except RegistryError as exc:
            raise InvalidError(f"invalid 'tag' in image step {where}: {exc}") from None
        if step.get("registry", "generic") not in REGISTRY_KINDS:
            raise InvalidError(f"invalid 'registry' in image step {where}: one of {', '.join(REGISTRY_KINDS)}")
    if kind == "from_id" and not (isinstance(step.get("image_id"), str) and IMAGE_ID_RE.match(step["image_id"])):
        raise InvalidError(f"invalid 'image_id' in image step {where}")
    if kind == "from_dockerfile" and not isinstance(step.get("dockerfile"), str):
        raise InvalidError(f"invalid 'dockerfile' in image step {where}")
    if step.get("add_python") is not None and (
            kind not in BASE_KINDS or not re.fullmatch(r"3\.\d+(\.\d+)?", step["add_python"])):
        raise InvalidError(f"invalid 'add_python' in image step {where}: a Python version such as '3.12'")


def apt_script(packages: list[str]) -> str:
    """apt_install: Debian's own tools in the image, as a Dockerfile would run them (the lists are fetched
    fresh, and removed again so the layer holds only the packages)."""
    names = " ".join(shlex.quote(p) for p in packages)
    return ("apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "
            f"{names} && rm -rf /var/lib/apt/lists/*")


def uv_command(step: dict[str, Any], python: str) -> tuple[list[str], dict[str, str], dict[str, str]]:
    """(uv's arguments, scratch files by name (seen at SCRATCH_INSIDE), extra environment) of a package step run
    with the image's own Python: `pip install --python <it> --break-system-packages` (images' system Pythons
    are often "externally managed"), or `sync` into that Python's prefix for uv_sync."""
    files: dict[str, str] = {}
    if step["kind"] == "uv_sync":
        files["pyproject.toml"] = step["pyproject"]
        if step.get("lock") is not None:
            files["uv.lock"] = step["lock"]
        args = ["sync", "--compile-bytecode", "--project", SCRATCH_INSIDE, "--python", python, "--inexact",
                "--no-install-project", "--no-install-workspace"]
        args += ["--frozen"] if step.get("frozen") else []
        for g in step.get("groups") or []:
            args += ["--group", g]
        for e in step.get("extras") or []:
            args += ["--extra", e]
        prefix = python.rsplit("/", 2)[0] or "/"  # /usr/local/bin/python3 -> /usr/local
        extra_env = {"UV_PROJECT_ENVIRONMENT": prefix}
    else:
        args = ["pip", "install", "--compile-bytecode", "--python", python, "--break-system-packages",
                *step.get("packages", [])]
        for i, text in enumerate(step.get("requirements") or []):
            files[f"requirements-{i}.txt"] = text
            args += ["-r", f"{SCRATCH_INSIDE}/requirements-{i}.txt"]
        for flag, key in (("--find-links", "find_links"), ("--index-url", "index_url"),
                          ("--extra-index-url", "extra_index_url")):
            if step.get(key):
                args += [flag, step[key]]
        args += ["--prerelease", "allow"] if step.get("pre") else []
        extra_env = {}
    return [*args, *shlex.split(step.get("extra_options") or "")], files, extra_env


def exec_form(command: str | tuple[str, ...]) -> list[str]:
    """ENTRYPOINT/CMD as the image config holds them: the shell form runs with /bin/sh -c, as Docker does."""
    return ["/bin/sh", "-c", command] if isinstance(command, str) else list(command)
