"""Sandbox options that go through the function machinery: `gpu=` is placed on a GPU as a function's container is
(its devices and CUDA_VISIBLE_DEVICES) — on a machine where no GPU could ever match the create fails at once naming
the CPU opt-in, and with SHOAL_GPU_FALLBACK=cpu the sandbox runs on the CPU; an image from a private registry whose
secret is named (`Secret.from_name`) is pulled with that secret's credentials."""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path

import pytest

import shoal as modal
from shoal.exception import InvalidError

from ..conftest import ControlPlane, _use_home
from .rootfs_images import rootfs_tars  # noqa: F401 - a fixture (the registry's images)
from .test_oci_images import private_reg  # noqa: F401 - a fixture: a registry on loopback that wants credentials

no_gpus = pytest.mark.skipif(shutil.which("nvidia-smi") is not None,
                             reason="this machine has GPUs: the sandbox would get one")


@no_gpus
def test_a_gpu_sandbox_where_no_gpu_matches_fails_naming_the_cpu_opt_in(control_plane: ControlPlane) -> None:
    app = modal.App.lookup(f"sbgpu-{secrets.token_hex(4)}", create_if_missing=True)
    with pytest.raises(InvalidError, match=r"gpu='T4' can never run here.*SHOAL_GPU_FALLBACK=cpu"):
        modal.Sandbox.create("true", gpu="T4", app=app)


@no_gpus
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


def test_a_private_registry_image_with_a_named_secret(control_plane: ControlPlane, private_reg: str) -> None:  # noqa: F811
    name = f"registry-{secrets.token_hex(4)}"
    modal.Secret.objects.create(name, {"REGISTRY_USERNAME": "builder", "REGISTRY_PASSWORD": "s3cret"})
    app = modal.App.lookup(f"sbreg-{secrets.token_hex(4)}", create_if_missing=True)
    image = modal.Image.from_registry(f"{private_reg}/private/python:v1", secret=modal.Secret.from_name(name))
    sb = modal.Sandbox.create("python3", "-c", "print(open('/etc/os-release').read().split()[0])", image=image,
                              app=app)
    assert sb.stdout.read().startswith("PRETTY_NAME=")
    sb.wait()
    assert sb.returncode == 0
