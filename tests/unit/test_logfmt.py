"""The control plane's JSON log lines: ids named in a message become fields; `extra` ids win."""

from __future__ import annotations

import json
import logging

import pytest

from shoal.controlplane.logfmt import JsonFormatter, configure_logging


def record(msg: str, *args: object, **extra: object) -> logging.LogRecord:
    r = logging.LogRecord("shoal.dispatch", logging.WARNING, __file__, 1, msg, args, None)
    for k, v in extra.items():
        setattr(r, k, v)
    return r


def test_ids_in_the_message_become_fields():
    line = JsonFormatter().format(record("container %s of %s (%s) is pending for %s", "ta-0123456789abcdef0123",
                                         "square", "fu-abcdefabcdef01234567", "fc-00112233445566778899"))
    out = json.loads(line)
    assert out["container_id"] == "ta-0123456789abcdef0123"
    assert out["function_id"] == "fu-abcdefabcdef01234567"
    assert out["call_id"] == "fc-00112233445566778899"
    assert "app_id" not in out
    assert out["level"] == "warning" and out["logger"] == "shoal.dispatch"
    assert out["message"].startswith("container ta-0123456789abcdef0123 of square")


def test_extra_ids_win_and_exceptions_are_kept():
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        import sys

        r = record("app %s stopped", "ap-11111111111111111111", app_id="ap-22222222222222222222")
        r.exc_info = sys.exc_info()
    out = json.loads(JsonFormatter().format(r))
    assert out["app_id"] == "ap-22222222222222222222"
    assert "RuntimeError: boom" in out["exception"]


def test_an_unknown_format_is_refused(monkeypatch):
    monkeypatch.setenv("SHOAL_LOG_FORMAT", "xml")
    with pytest.raises(ValueError, match="SHOAL_LOG_FORMAT"):
        configure_logging()
