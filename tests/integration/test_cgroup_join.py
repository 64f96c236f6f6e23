"""A container's move into its cgroups when their directories went away meanwhile (another container's clean-up
racing with this creation): the backend makes them again, limits written, and moves it once more
(backends/local.py `_join_cgroup`, backends/sandbox.py `Cgroups.restore`). Real cgroups, where writable."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
from pathlib import Path

import pytest

from shoal.backends.local import LocalBackend
from shoal.backends.sandbox import Limits


def test_a_move_into_cgroups_that_went_away_is_tried_again(tmp_path: Path) -> None:
    backend = LocalBackend(isolation="process", state_dir=tmp_path, netns_pool=0)
    if not backend.cgroups.available:
        pytest.skip(f"no writable cgroups here: {backend.cgroups.reason}")
    cid = f"ta-test{secrets.token_hex(6)}"
    cgroup = backend.cgroups.create(cid, Limits(pids_max=64))
    dirs = list(cgroup.dirs)
    proc = subprocess.Popen(["sleep", "60"])
    try:
        for d in dirs:
            os.rmdir(d)  # (the shared parent stays: other control planes on this machine may use it now)
        assert asyncio.run(backend._join_cgroup(cid, cgroup, proc.pid))
        for d in dirs:
            assert str(proc.pid) in Path(d, "cgroup.procs").read_text().split()
        pids = [d for d in dirs if os.path.exists(os.path.join(d, "pids.max"))]
        for d in pids:
            assert Path(d, "pids.max").read_text().strip() == "64"
    finally:
        proc.kill()
        proc.wait()
        cgroup.remove_now(timeout=5.0)
    assert not any(os.path.exists(d) for d in dirs)

