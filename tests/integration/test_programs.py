"""Small Modal programs under tests/programs/ that combine features, each run as its user runs it (`shoal run`), its
output checked. They differ from Modal's only in `import shoal as modal`."""

from __future__ import annotations

from pathlib import Path

import pytest

from ..conftest import run_cli
from .test_seed_functions import local_lines

PROGRAMS = Path(__file__).parent.parent / "programs"


def shoal_run(program: str) -> list[str]:
    proc = run_cli("run", str(PROGRAMS / program), timeout=240, cwd=PROGRAMS)
    assert proc.returncode == 0, f"shoal run {program} failed:\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return local_lines(proc.stdout)


@pytest.fixture(autouse=True)
def _uses_control_plane(control_plane):
    return control_plane


def test_class_with_enter_and_web_endpoints_spawning_and_polling_a_job() -> None:
    assert shoal_run("jobs_web_poll.py") == ["submitted job True", "result 49 polled until done True"]


def test_map_and_starmap_inside_a_web_handler() -> None:
    assert shoal_run("map_in_web.py") == [
        "squares [0, 1, 4, 9, 16, 25]", "cubes [0, 1, 8, 27, 64, 125]", "errors ['int', 'ValueError']"]


def test_async_local_entrypoint_streams_remote_gen_aio() -> None:
    assert shoal_run("async_remote_gen.py") == [
        "countdown [5, 4, 3, 2, 1]", "shouted ['TO', 'BE', 'OR', 'NOT']", "concurrently 2 X"]


def _needs_volumes(control_plane) -> None:
    from .test_volumes import sandboxed

    if not sandboxed(control_plane.home):
        pytest.skip("volumes are mounted only in sandboxed containers (this control plane: isolation=process)")


def test_scheduled_function_writes_a_volume_a_web_endpoint_serves(control_plane) -> None:
    _needs_volumes(control_plane)
    assert shoal_run("scheduled_volume_web.py") == ["ticks served True timestamped True"]


def test_with_options_fan_out_each_variant_with_its_env_secrets_and_volume(control_plane) -> None:
    _needs_volumes(control_plane)
    assert shoal_run("with_options_fanout.py") == [
        "shards ['0', '1', '2']", "shard 0: 45 (t0)", "shard 1: 190 (t1)", "shard 2: 435 (t2)"]
