"""Modal programs that use the rest of Modal's surface, run as a user runs them (`shoal run app.py`)."""

from __future__ import annotations

import re
import subprocess

import pytest

from ..conftest import APPS_DIR, ControlPlane, run_cli
from .test_seed_functions import local_lines


def run_ok(target: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`shoal run` of an app in APPS_DIR, which must succeed."""
    proc = run_cli("run", str(APPS_DIR / target), *args, env=env, timeout=180, cwd=APPS_DIR)
    assert proc.returncode == 0, f"shoal run {target} failed:\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


def shoal_run(target: str, *args: str, env: dict[str, str] | None = None) -> list[str]:
    return local_lines(run_ok(target, *args, env=env).stdout)


def test_get_call_graph_shows_nested_calls_with_their_status(control_plane) -> None:
    lines = shoal_run("call_graph_app.py::main")
    assert lines[0] == "result 206"
    assert lines[1] == "roots 1 True"
    assert lines[2:] == [
        "middle SUCCESS module=call_graph_app",
        "  fails FAILURE module=call_graph_app",
        "  leaf SUCCESS module=call_graph_app",
        "  leaf SUCCESS module=call_graph_app",
        "  leaf SUCCESS module=call_graph_app",
        "  leaf SUCCESS module=call_graph_app",
    ]


def test_app_attributes_cron_in_containers_modal_env_and_with_options_secrets(control_plane) -> None:
    """The module defines a Cron schedule, so every one of its containers constructs one (without croniter)."""
    proc = run_ok("compat_app.py")
    output = proc.stdout + proc.stderr
    assert output.count("cpu=4096 asked, but this machine has") == 1, output  # said once, for three containers
    assert local_lines(proc.stdout) == [
        "name compat-surface description compat-surface interactive False",
        "app_id True image True",
        "functions ['greeting', 'modal_env', 'nightly'] entrypoints ['main']",
        "classes {} web []",
        "nightly nightly ran",
        'env {"MODAL_TASK_ID": true, "MODAL_IMAGE_ID": true, "MODAL_IS_REMOTE": true, "MODAL_ENVIRONMENT": true, '
        '"MODAL_REGION": true, "MODAL_CLOUD_PROVIDER": true, "remote": "1"}',
        "greeting hello bonjour hej",
    ]


def _has_a_t4() -> bool:
    from shoal.backends.gpus import detect

    return any(g.model == "T4" for g in detect()[0])


def test_a_gpu_function_on_a_machine_without_that_gpu_fails_at_once_naming_the_cpu_opt_in(control_plane) -> None:
    if _has_a_t4():
        pytest.skip("this machine has a T4: the call would run")
    proc = run_cli("run", str(APPS_DIR / "gpu_app.py"), timeout=180, cwd=APPS_DIR)
    assert proc.returncode != 0
    assert "gpu='T4' can never run here" in proc.stderr and "SHOAL_GPU_FALLBACK=cpu" in proc.stderr, proc.stderr


def test_with_the_cpu_fallback_a_gpu_function_runs_on_the_cpu(tmp_path) -> None:
    if _has_a_t4():
        pytest.skip("this machine has a T4: the fallback is not used")
    cp = ControlPlane(tmp_path / "home", env={"SHOAL_GPU_FALLBACK": "cpu"}).start()
    try:
        proc = run_cli("run", str(APPS_DIR / "gpu_app.py"), timeout=180, cwd=APPS_DIR,
                       env={"SHOAL_HOME": str(cp.home)})
        assert proc.returncode == 0, proc.stderr
        assert local_lines(proc.stdout) == ["ran, CUDA_VISIBLE_DEVICES=unset"]
        assert "running on the CPU (SHOAL_GPU_FALLBACK=cpu)" in proc.stdout + proc.stderr
    finally:
        cp.stop()


def test_server_sessions_pin_a_container_keep_it_and_end(control_plane) -> None:
    assert shoal_run("server_session_app.py") == [
        "credentials True True",
        "statuses [200]",
        "pinned 1",
        "without a token 401",
        "kept True",
        "unknown token 404",
        "terminated 410",
        "idle 410",
    ]


def test_a_failed_spawned_input_leaves_its_traceback_in_the_app_log(control_plane) -> None:
    proc = run_ok("spawn_fail_app.py")
    assert local_lines(proc.stdout) == ["status FAILURE"]
    output = proc.stdout + proc.stderr
    assert "Traceback (most recent call last)" in output and "RuntimeError: spawned and failed" in output, output


def test_experimental_spawn_map_results_by_index(control_plane) -> None:
    assert shoal_run("call_graph_app.py::spawned_map") == ["inputs 5", "index 3 6", "all [0, 2, 4, 6, 8]"]


def test_shoal_serve_prints_the_url_of_a_class_web_method(control_plane, tmp_path) -> None:
    import shutil

    shutil.copy(APPS_DIR / "web_cls_app.py", tmp_path / "web_cls_app.py")
    proc = run_cli("serve", "web_cls_app.py", "--timeout", "3", cwd=tmp_path, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^\s+Server\.files => http://\S+", proc.stdout + proc.stderr, re.M), proc.stdout + proc.stderr


def test_a_schedule_whose_containers_cannot_import_says_it_is_failing(control_plane) -> None:
    proc = run_ok("schedule_broken_app.py")
    output = proc.stdout + proc.stderr
    assert re.search(r"schedule of tick is failing: its last 1 run\(s\) ended with failure; last container start "
                     r"error: RuntimeError: this module is broken inside containers", output), output
