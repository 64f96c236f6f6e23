"""The Ray node cache (backends/ray.py `_NodeCache`): what an earlier container start on a node found out about an
interpreter is reused only while it still holds — not for a venv made again at the same path (a rebuilt image, a
state directory used again), nor under another install of shoal (the paths name its package)."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from dataclasses import asdict

import pytest

from shoal.backends import ray as ray_backend
from shoal.backends.local import LocalBackend
from shoal.backends.sandbox import Availability


@pytest.fixture
def node_tmp(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the node's private directory goes here
    return tmp_path


def test_cached_paths_hold_only_for_the_same_venv_and_the_same_shoal(node_tmp):
    venv_python = node_tmp / "venv" / "bin" / "python"
    venv_python.parent.mkdir(parents=True)
    venv_python.symlink_to(sys.executable)
    # A backend as a Ray actor makes it, from what an earlier one found (no probe).
    backend = LocalBackend(state_dir=node_tmp / "state", netns_pool=0, known={
        "availability": asdict(Availability("sandbox", "root")), "paths": {str(venv_python): ["/seen/by/containers"]}})
    cache = ray_backend._NodeCache("auto")
    cache.save(backend)
    backend.shutdown()
    assert cache.load()["paths"] == {str(venv_python): ["/seen/by/containers"]}

    # The venv made again at the same path (its interpreter unchanged): its paths must be found out again.
    venv_python.unlink()
    venv_python.symlink_to(sys.executable)
    os.utime(venv_python, ns=(1, 1), follow_symlinks=False)
    assert cache.load()["paths"] == {}

    cache.save(backend)
    data = json.loads(cache.path.read_text())
    cache.path.write_text(json.dumps({**data, "shoal": "/another/install/shoal"}))
    assert cache.load() == {}
