"""The Functions guide (seed 000) snippets, run near-verbatim as user scripts against a real control plane.

Left out: snippets that need images, named secrets, volumes, GPUs, web endpoints, firing schedules or
`@modal.concurrent`. Each script is in tests/apps/seed_functions_*.py and runs as its own process; it finds the
test control plane through SHOAL_HOME.
"""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.conftest import APPS_DIR, run_script

CONTAINER_MARK = re.compile(r"^\[(ta-[0-9a-f]+|shoal)\] ")


def run_seed(name: str) -> subprocess.CompletedProcess:
    proc = run_script(APPS_DIR / name, timeout=120, cwd=APPS_DIR)
    assert proc.returncode == 0, f"{name} failed:\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


def local_lines(output: str) -> list[str]:
    """Lines the script printed itself (container output is forwarded with a `[container-id] ` mark)."""
    return [line for line in output.splitlines() if not CONTAINER_MARK.match(line)]


@pytest.fixture(autouse=True)
def _uses_control_plane(control_plane):
    return control_plane


def test_hello_remote_local_map_spawn():
    proc = run_seed("seed_functions_basics.py")
    assert local_lines(proc.stdout) == [
        "Hello, World!",  # hello.remote("World")
        "Hello, World!",  # hello.local("World")
        "['Hello, Alice!', 'Hello, Bob!', 'Hello, Charlie!']",  # list(hello.map(names))
        "spawned: Hello, World!",  # hello.spawn("World").get()
    ]


def test_async_function_remote_aio_in_async_with():
    proc = run_seed("seed_functions_async.py")
    assert local_lines(proc.stdout) == ["Hello, World!"]


def test_generator_remote_gen():
    proc = run_seed("seed_functions_generator.py")
    assert local_lines(proc.stdout) == [str(i) for i in range(10)]


def test_retries_and_timeouts_decorators():
    proc = run_seed("seed_functions_retries_timeouts.py")
    assert local_lines(proc.stdout) == [
        "flaky_api_call: None",
        "resilient_function: None",
        "long_running_task: None",
        "slow_startup_function: None",
        "api_call: None",
        "batch_process: None",
    ]


def test_cpu_and_memory_requests_and_limits():
    proc = run_seed("seed_functions_resources.py")
    assert local_lines(proc.stdout) == [
        "cpu_intensive: None",
        "bounded_resources: None",
        "remote pid differs: True",
    ]


def test_region_selection_is_accepted_and_warns_not_enforced():
    proc = run_seed("seed_functions_regions.py")
    assert local_lines(proc.stdout) == [
        "east_coast_only region: ['us-east-1']",
        "multi_region region: ['us-east-1', 'eu-west-1']",
        "east_coast_only: None",
        "multi_region: None",
    ]
    local_err = local_lines(proc.stderr)
    assert any("region" in line and "not enforce" in line for line in local_err), proc.stderr


def test_autoscaling_options_and_focused_functions():
    proc = run_seed("seed_functions_autoscaling.py")
    assert local_lines(proc.stdout) == [
        "auto_scaled: None",
        "extract_data: None",
        "transform_data: None",
        "do_everything: None",
    ]
