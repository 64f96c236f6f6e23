"""Progress on a terminal: a live line for maps (done/total, rate, failures), a live status while an app starts or
deploys (its phase, each image build's step); nothing of it when output goes to a pipe, where the build's lines
are printed as they are. The terminal is a real pseudo-terminal (pty)."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import textwrap
import time
import uuid
from pathlib import Path

from tests.conftest import APPS_DIR, PYTHON, run_cli

SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, {apps!r})
    import observe_app
    import shoal as modal

    with modal.enable_output(), observe_app.app.run():
        print("results", sum(observe_app.square.map(range(25))), flush=True)
        print("failed", sum(isinstance(r, Exception) for r in
              observe_app.fail_on_negative.map([-1, 2, -3], return_exceptions=True)), flush=True)
        observe_app.square.spawn_map(range(4))
""")


def write_script(tmp_path: Path) -> Path:
    path = tmp_path / "progress_script.py"
    path.write_text(SCRIPT.format(apps=str(APPS_DIR)))
    return path


def run_in_pty(path: Path, timeout: float = 180, args: tuple[str, ...] | None = None) -> str:
    """Run the script (or `python ARGS`) with stdout and stderr on a pseudo-terminal; everything it drew, as
    text."""
    leader, follower = pty.openpty()
    env = {**os.environ, "COLUMNS": "160", "TERM": "xterm"}
    proc = subprocess.Popen([PYTHON, *(args or (str(path),))], stdin=follower, stdout=follower, stderr=follower,
                            env=env, close_fds=True, cwd=path.parent)
    os.close(follower)
    chunks = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 0.5)
            if ready:
                try:
                    data = os.read(leader, 65536)
                except OSError:  # the follower side closed: the process is done
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
    finally:
        proc.wait(timeout=30)
        os.close(leader)
    out = b"".join(chunks).decode(errors="replace")
    assert proc.returncode == 0, out
    return out


def test_map_progress_is_drawn_on_a_terminal(control_plane, tmp_path):
    out = run_in_pty(write_script(tmp_path))
    assert "results 4900" in out
    assert "square.map" in out
    assert "25/25" in out  # done/total once the map ended
    assert "done/s" in out  # the rate
    plain = re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", out)  # without rich's colours
    assert re.search(r"square\.map .* \d+ containers? ", plain)  # the containers the function runs in
    assert "fail_on_negative.map" in out and "2 failed" in out
    assert "square.spawn_map" in out and "4/4" in out


def test_no_progress_when_output_is_not_a_terminal(control_plane, tmp_path):
    proc = subprocess.run([PYTHON, str(write_script(tmp_path))], capture_output=True, text=True, timeout=180,
                          env=os.environ)
    assert proc.returncode == 0, proc.stderr
    assert "results 4900" in proc.stdout
    assert "square.map" not in proc.stderr + proc.stdout
    assert "25/25" not in proc.stderr + proc.stdout


# -- app start and deploy: phases and image builds -----------------------------------------------------------------
BUILD_APP = textwrap.dedent("""
    import shoal as modal

    # The mark makes the image new to the control plane: it is built while the app starts.
    image = modal.Image.debian_slim().pip_install({package!r}).env({{"PROGRESS_MARK": {mark!r}}})
    app = modal.App({name!r})


    @app.function(image=image)
    def plus_one(x: int) -> int:
        return x + 1
    {web}

    @app.local_entrypoint()
    def main():
        print("result", plus_one.remote(41))
""")

WEB_FUNCTION = textwrap.dedent("""
    @app.function(image=image)
    @modal.fastapi_endpoint()
    def hello():
        return "hello"
""")


def write_build_app(tmp_path: Path, web: bool = False) -> tuple[Path, str]:
    """An app whose image no control plane has built (pip_install then env); with `web`, also a web function (its
    image needs fastapi)."""
    mark = uuid.uuid4().hex[:12]
    name = f"progress-{mark}"
    path = tmp_path / f"build_app_{mark}.py"
    path.write_text(BUILD_APP.format(package="fastapi[standard]" if web else "six", mark=mark, name=name,
                                     web=WEB_FUNCTION if web else ""))
    return path, name


def without_escapes(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", text)


def test_run_shows_the_image_build_live_on_a_terminal(control_plane, tmp_path):
    path, _ = write_build_app(tmp_path)
    out = without_escapes(run_in_pty(path, args=("-m", "shoal.cli", "run", str(path))))
    assert "result 42" in out
    assert "Creating objects..." in out  # the phase, with a spinner
    image_id = re.search(r"Building image (im-[0-9a-f]+): step", out).group(1)  # the live line, per image
    assert "step 0/2: debian_slim(" in out
    assert "step 1/2: pip_install('six')" in out
    assert "step 2/2: env({'PROGRESS_MARK':" in out
    # The build's own lines stay, printed above the live status, marked with the image.
    assert f"[{image_id[:9]}] => Step 1: pip_install('six')" in out
    assert "✓ Created objects." in out and "Created function plus_one." in out
    assert re.search(r"Initialized app ap-\w+\. View it at http://\S+/dashboard/apps/ap-", out)


def test_deploy_shows_its_phases_and_the_build_on_a_terminal(control_plane, tmp_path):
    path, name = write_build_app(tmp_path, web=True)
    try:
        out = without_escapes(run_in_pty(path, args=("-m", "shoal.cli", "deploy", str(path))))
    finally:
        run_cli("app", "stop", name)
    assert "Uploading sources and image files..." in out
    assert "Building images and registering functions..." in out
    assert "step 1/2: pip_install('fastapi[standard]')" in out
    assert "=> Step 1: pip_install('fastapi[standard]')" in out  # the build's lines, as they came
    assert "✓ Created objects." in out
    assert re.search(r"Created web function hello => http://\S+", out)  # with its URL
    assert "Created function plus_one." in out
    assert re.search(r"✓ App deployed in [0-9.]+s! 🎉", out)
    assert re.search(r"View Deployment: http://\S+/dashboard/apps/ap-", out)
    assert f"Deployed app '{name}' version 1" in out


def test_app_start_and_deploy_through_a_pipe_print_plain_lines(control_plane, tmp_path):
    path, name = write_build_app(tmp_path)
    run = run_cli("run", str(path), cwd=tmp_path, timeout=180)
    assert run.returncode == 0, run.stderr
    assert "result 42" in run.stdout
    assert "=> Step 1: pip_install('six')" in run.stderr  # the build's lines, as today
    for out in (run.stdout, run.stderr):
        assert "\x1b[" not in out  # no redraws, no colours
        assert "step 1/2" not in out and "Creating objects..." not in out
    assert "✓ Created objects." in run.stderr

    deploy_path, name = write_build_app(tmp_path)
    try:
        deploy = run_cli("deploy", str(deploy_path), cwd=tmp_path, timeout=180)
    finally:
        run_cli("app", "stop", name)
    assert deploy.returncode == 0, deploy.stderr
    assert "=> Step 1: pip_install('six')" in deploy.stderr  # a deploy prints its build too
    for out in (deploy.stdout, deploy.stderr):
        assert "\x1b[" not in out
        assert "step 1/2" not in out and "Building images and registering functions..." not in out
    assert "App deployed in" in deploy.stderr and f"Deployed app '{name}' version 1" in deploy.stdout
