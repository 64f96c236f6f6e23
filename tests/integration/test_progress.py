"""Progress of maps: a live line (done/total, rate, failures) when stderr is a terminal under `enable_output()`,
nothing when output goes to a pipe. The terminal is a real pseudo-terminal (pty)."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import textwrap
import time
from pathlib import Path

from tests.conftest import APPS_DIR, PYTHON

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


def run_in_pty(path: Path, timeout: float = 180) -> str:
    """Run the script with stdout and stderr on a pseudo-terminal; everything it drew, as text."""
    leader, follower = pty.openpty()
    env = {**os.environ, "COLUMNS": "120", "TERM": "xterm"}
    proc = subprocess.Popen([PYTHON, str(path)], stdin=follower, stdout=follower, stderr=follower, env=env,
                            close_fds=True)
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
