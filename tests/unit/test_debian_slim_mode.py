"""What `Image.debian_slim()` becomes on a control plane (controlplane/oci_images.py, debian_slim_mode): a root
filesystem where the machine can build and run one, else a virtual environment; an explicit choice wins."""

from __future__ import annotations

import os
import shutil

import pytest

from shoal.controlplane.oci_images import debian_slim_mode


def test_an_explicit_mode_wins_and_a_bad_one_is_named(monkeypatch):
    monkeypatch.setenv("SHOAL_DEBIAN_SLIM", " Venv ")
    assert debian_slim_mode() == "venv"
    monkeypatch.setenv("SHOAL_DEBIAN_SLIM", "rootfs")
    monkeypatch.setenv("SHOAL_ISOLATION", "process")
    assert debian_slim_mode() == "rootfs"  # asked for: its containers then fail to start, saying why
    monkeypatch.setenv("SHOAL_DEBIAN_SLIM", "docker")
    with pytest.raises(ValueError, match="SHOAL_DEBIAN_SLIM='docker': expected 'rootfs', 'venv' or 'auto'"):
        debian_slim_mode()


@pytest.mark.parametrize("mode", ["", "auto"])
def test_auto_is_rootfs_only_where_the_machine_can_build_and_run_one(monkeypatch, mode):
    monkeypatch.setenv("SHOAL_DEBIAN_SLIM", mode)
    monkeypatch.delenv("SHOAL_ISOLATION", raising=False)
    can = os.geteuid() == 0 and shutil.which("mmdebstrap") is not None
    assert debian_slim_mode() == ("rootfs" if can else "venv")
    monkeypatch.setenv("SHOAL_ISOLATION", "process")  # containers are plain processes: no root of their own
    assert debian_slim_mode() == "venv"
    monkeypatch.delenv("SHOAL_ISOLATION")
    monkeypatch.setenv("PATH", "/nonexistent")  # no mmdebstrap to build the base with
    assert debian_slim_mode() == "venv"
