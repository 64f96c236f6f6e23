"""`shoal serve`: an ephemeral app that reloads when its source changes (a redeploy of the running app, from a
fresh import in a new process), ignores editors' temporary files, keeps the previous version serving when an
edit does not import, and stops on SIGTERM or `--timeout`. The app file is copied to a temporary directory
before it is edited."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

import shoal
from shoal._client.transport import get_client
from shoal.cli.serve_cmds import WatchSet
from shoal.exception import NotFoundError

from ..conftest import APPS_DIR, PYTHON, run_cli, wait_for

pytestmark = pytest.mark.usefixtures("control_plane")

STARTUP_S = 120.0  # a first image build can be slow; a deadline, not a timing
RELOAD_LINE = "Change detected: "

V2 = '''
import shoal as modal

app = modal.App("serve-app")


@app.function()
def f() -> str:
    return "v2"


@app.function()
def g() -> str:
    return "g"
'''

V3 = '''
import shoal as modal

app = modal.App("serve-app")


@app.function()
def f() -> str:
    return "v3"
'''


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class Served:
    """A `shoal serve` process whose combined output is collected by a thread, so tests can wait on it."""

    def __init__(self, *args: str, cwd: Path) -> None:
        self.proc = subprocess.Popen([PYTHON, "-m", "shoal.cli", "serve", *args], cwd=cwd, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=dict(os.environ))
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def reloads(self) -> list[str]:
        return [line for line in list(self.lines) if line.startswith(RELOAD_LINE)]

    def wait_output(self, text: str, timeout: float = STARTUP_S) -> None:
        assert wait_for(lambda: text in self.output or self.proc.poll() is not None, timeout), self.output
        assert text in self.output, f"exit {self.proc.poll()}; output:\n{self.output}"

    def finish(self, timeout: float = 60) -> int:
        rc = self.proc.wait(timeout)
        self._reader.join(10)
        return rc

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def apps_named(name: str) -> list[dict[str, Any]]:
    return [a for a in get_client().call("GET", "/v1/apps")["apps"] if a["name"] == name]


def call(app_name: str, tag: str = "f") -> Any:
    return shoal.Function.from_name(app_name, tag).remote()


def function_id(app_name: str, tag: str) -> str:
    return get_client().call("GET", f"/v1/functions/lookup?app_name={app_name}&tag={tag}")["function_id"]


def save_by_rename(path: Path, text: str) -> None:
    """Save as many editors do: write a temporary file, then rename it over the original."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def test_serve_reloads_ignores_temp_files_and_survives_a_broken_edit(tmp_path: Path) -> None:
    src = tmp_path / "serve_app.py"
    shutil.copy(APPS_DIR / "serve_app.py", src)
    name = unique("serve")
    served = Served("serve_app.py", "--name", name, cwd=tmp_path)
    try:
        served.wait_output("Serving app")
        app_id = apps_named(name)[0]["app_id"]
        assert app_id in served.output
        assert "serve_app.py" in served.output.split("Watching for changes:", 1)[1]
        assert call(name) == "v1"
        fid = function_id(name, "f")

        # An edit reloads from a fresh import: the same function (pool) now runs the new code, and a function
        # the edit adds is there too.
        save_by_rename(src, V2)
        assert wait_for(lambda: call(name) == "v2", STARTUP_S), served.output
        assert call(name, "g") == "g"
        assert function_id(name, "f") == fid
        assert [app_id] == [a["app_id"] for a in apps_named(name) if a["state"] == "running"]
        reloads = served.reloads()
        assert len(reloads) == 1 and "serve_app.py" in reloads[0], served.output

        # Editors' temporary files in the same directory do not reload; an edit that does not import is
        # reported, and the previous version keeps serving.
        for temp in (".#serve_app.py", "serve_app.py.swp", "serve_app.py~", "4913"):
            (tmp_path / temp).write_text("junk")
        src.write_text(V2 + "\ndef broken(:\n")
        served.wait_output("Reload failed")
        assert "SyntaxError" in served.output
        reloads = served.reloads()
        assert len(reloads) == 2, served.output
        assert not re.search(r"\.#serve_app|\.swp|~|4913", reloads[1]), reloads[1]
        assert call(name) == "v2"

        # A function the code no longer has stops.
        save_by_rename(src, V3)
        assert wait_for(lambda: call(name) == "v3", STARTUP_S), served.output
        with pytest.raises(NotFoundError):
            call(name, "g")

        served.proc.send_signal(signal.SIGTERM)
        assert served.finish() == 0, served.output
    finally:
        served.kill()
    assert "Terminated: stopped app" in served.output
    assert apps_named(name)[0]["state"] == "stopped"


def test_serve_timeout_exits_0_and_stops_the_app(tmp_path: Path) -> None:
    shutil.copy(APPS_DIR / "serve_app.py", tmp_path / "serve_app.py")
    name = unique("serve-timeout")
    proc = run_cli("serve", "serve_app.py::app", "--name", name, "--timeout", "3", cwd=tmp_path,
                   timeout=STARTUP_S + 60)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "Timed out after 3s: stopped app" in proc.stderr
    assert apps_named(name)[0]["state"] == "stopped"


def test_watch_filter_ignores_editor_files(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text("")
    pkg = tmp_path / "pkg"
    (pkg / "__pycache__").mkdir(parents=True)
    data = tmp_path / "data"
    data.mkdir()
    watch = WatchSet()
    watch.add_file(tmp_path / "app.py")
    watch.add_dir(pkg, py_only=True)
    watch.add_dir(data, py_only=False)
    assert watch.relevant(str((tmp_path / "app.py").resolve()))
    root = tmp_path.resolve()
    for ignored in (".#app.py", "app.py.swp", "app.py.swx", "app.py~", "4913", "app.py.tmp", "other.py"):
        assert not watch.relevant(str(root / ignored)), ignored
    assert watch.relevant(str(root / "pkg" / "mod.py"))
    assert not watch.relevant(str(root / "pkg" / "notes.txt"))
    assert not watch.relevant(str(root / "pkg" / "__pycache__" / "mod.cpython-311.pyc"))
    assert watch.relevant(str(root / "data" / "notes.txt"))
    assert not watch.relevant(str(root / "data" / ".#notes.txt"))
    assert watch.groups() == [([root], False), ([root / "data", root / "pkg"], True)]
