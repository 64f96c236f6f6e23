"""Image ids: the SDK names an image by the hash of its steps, and the control plane checks the name before it
builds, so the same steps are built once, by whichever client asks first.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from typing import Any

from ..exception import InvalidError

# Part of every image id: bump it when what a step builds changes, so old builds are not reused.
BUILDER_VERSION = "shoal-2025.06.1"
IMAGE_ID_RE = re.compile(r"^im-[0-9a-f]{64}$")
# Step keys that do not change what is built, so they stay out of the id.
_UNHASHED_KEYS = frozenset({"force", "repr", "secret_env", "named_secret_env", "payload_sha"})
# named_secret_env: the values of `secret_names`, filled in by the control plane; payload_sha: run_function's
# pickle, whose bytes may differ for the same code (its source and arguments are hashed instead)
BUILD_KINDS = frozenset({
    "pip_install", "uv_pip_install", "pip_install_from_requirements", "pip_install_from_pyproject", "uv_sync",
    "apt_install", "run_commands", "env", "workdir", "dockerfile_commands", "run_function",
})
RUN_FUNCTION_MAX_TIMEOUT = 24 * 3600  # seconds a run_function step may take
# Base steps of OCI images: always steps[0] (with python_version None), never elsewhere.
BASE_KINDS = frozenset({"from_registry", "from_dockerfile", "from_id"})  # from_id: a stored OCI image, extended
FILE_KINDS = frozenset({"add_local_file", "add_local_dir", "add_local_python_source"})
STEP_KINDS = BUILD_KINDS | FILE_KINDS


def is_oci(steps: Sequence[dict[str, Any]]) -> bool:
    """An OCI image: its chain starts with a base step (docs/images.md); otherwise a venv image."""
    return bool(steps) and steps[0].get("kind") in BASE_KINDS


def image_id_for(python_version: str | None, steps: Sequence[dict[str, Any]], force_base: bool = False) -> str:
    """The id of an image: sha256 of its canonical chain. Used by the SDK and re-checked by the control plane.
    `python_version` None (an OCI image) and "" hash alike, as null."""
    del force_base  # forcing a rebuild does not change what is built
    canon = json.dumps(
        {"builder": BUILDER_VERSION, "python_version": python_version or None,
         "steps": [_hashed(s) for s in steps]},
        sort_keys=True, separators=(",", ":"), ensure_ascii=True,
    )
    return "im-" + hashlib.sha256(canon.encode()).hexdigest()


def _hashed(step: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in step.items() if k not in _UNHASHED_KEYS}
    if step.get("secret_env"):
        out["secret_keys"] = sorted(step["secret_env"])  # secret values never enter an id
    return out


def check_run_function(step: dict[str, Any]) -> None:
    """A run_function step as the control plane accepts it (its field types were checked with the others')."""
    if not (all(step.get(k) for k in ("function", "payload_sha", "source_sha", "args_sha"))
            and isinstance(step.get("timeout"), int) and 1 <= step["timeout"] <= RUN_FUNCTION_MAX_TIMEOUT):
        raise InvalidError(f"invalid run_function step {step['repr']}: function, payload_sha, source_sha, args_sha "
                           f"and a timeout of 1 to {RUN_FUNCTION_MAX_TIMEOUT} seconds are required")


def split_mounts(steps: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(build steps, trailing `copy=False` file steps). The trailing ones are added on top of a built image,
    so editing those files never re-runs the build steps before them."""
    n = len(steps)
    while n and steps[n - 1]["kind"] in FILE_KINDS and not steps[n - 1].get("copy"):
        n -= 1
    return list(steps[:n]), list(steps[n:])
