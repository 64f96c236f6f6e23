"""SHOAL_LOG_FORMAT=json: the control plane logs one JSON object a line, with the ids of what a line is about."""

from __future__ import annotations

import json
import os

import observe_app

from tests.conftest import ControlPlane, _use_home


def test_control_plane_logs_json_lines_with_ids(tmp_path):
    previous = os.environ.get("SHOAL_HOME")
    cp = ControlPlane(tmp_path / "home", env={"SHOAL_LOG_FORMAT": "json", "SHOAL_LOGLEVEL": "INFO"}).start()
    _use_home(cp.home)
    try:
        with observe_app.app.run() as app:
            assert observe_app.square.remote(4) == 16
            function_id = observe_app.square.object_id
    finally:
        cp.stop()
        if previous:
            _use_home(type(cp.home)(previous))
    records = []
    for line in cp.log_path.read_text().splitlines():
        if line.startswith("{"):
            records.append(json.loads(line))  # every log line is JSON (the banner lines are plain prints)
    assert records, cp.log_path.read_text()
    assert all({"ts", "level", "logger", "message"} <= r.keys() for r in records)
    # The autoscaler's decision for the function names it.
    assert any(r.get("function_id") == function_id and r["logger"] == "shoal.autoscaler" for r in records)
    assert app.app_id
