"""`Sandbox.create(gpu=…)`: placed on a GPU as a function's container is (its devices and CUDA_VISIBLE_DEVICES); on
a machine where no GPU could ever match, the create fails at once naming the CPU opt-in, and with
SHOAL_GPU_FALLBACK=cpu the sandbox runs on the CPU."""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path

import pytest

import shoal as modal
from shoal.exception import InvalidError

from ..conftest import ControlPlane, _use_home

pytestmark = pytest.mark.skipif(shutil.which("nvidia-smi") is not None,
                                reason="this machine has GPUs: the sandbox would get one")


def test_a_gpu_sandbox_where_no_gpu_matches_fails_naming_the_cpu_opt_in(control_plane: ControlPlane) -> None:
    app = modal.App.lookup(f"sbgpu-{secrets.token_hex(4)}", create_if_missing=True)
    with pytest.raises(InvalidError, match=r"gpu='T4' can never run here.*SHOAL_GPU_FALLBACK=cpu"):
        modal.Sandbox.create("true", gpu="T4", app=app)


def test_with_the_cpu_fallback_a_gpu_sandbox_runs_on_the_cpu(tmp_path: Path) -> None:
    previous = os.environ.get("SHOAL_HOME")
    cp = ControlPlane(tmp_path / "home", env={"SHOAL_GPU_FALLBACK": "cpu"}).start()
    try:
        _use_home(cp.home)
        app = modal.App.lookup("sbgpu-fallback", create_if_missing=True)
        sb = modal.Sandbox.create("sh", "-c", 'echo "CUDA=${CUDA_VISIBLE_DEVICES:-unset}"', gpu="T4", app=app)
        assert sb.stdout.read() == "CUDA=unset\n"
        assert sb.wait() is None and sb.returncode == 0
    finally:
        cp.stop()
        if previous:
            _use_home(Path(previous))
