"""The control plane's log format: text (the default) or, with SHOAL_LOG_FORMAT=json, one JSON object a line
with the ids the message names (app, function, container, call, input) as fields of their own, so a log store
can filter by them.

Why ids are read from the message: the control plane already names what a line is about in its text
(`container ta-… of fu-… is pending`), by ids whose prefix says their kind; a log call may also pass them as
`extra={"app_id": …}`, which wins.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time

TEXT_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"
ID_FIELDS = {"ap": "app_id", "fu": "function_id", "ta": "container_id", "fc": "call_id", "in": "input_id"}
_ID = re.compile(r"\b(ap|fu|ta|fc|in)-[0-9a-f]{8,}(?:-\d+)?\b")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        out: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(), "logger": record.name, "message": message,
        }
        for m in _ID.finditer(message):
            out.setdefault(ID_FIELDS[m.group(1)], m.group(0))
        for field in ID_FIELDS.values():
            value = getattr(record, field, None)
            if value is not None:
                out[field] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure_logging() -> None:
    """Logging for `python -m shoal.controlplane`: level from SHOAL_LOGLEVEL (default WARNING, the autoscaler's
    decisions at INFO), format from SHOAL_LOG_FORMAT (`text` or `json`)."""
    fmt = os.environ.get("SHOAL_LOG_FORMAT", "text").strip().lower()
    if fmt not in ("text", "json"):
        raise ValueError(f"SHOAL_LOG_FORMAT must be 'text' or 'json', not {fmt!r}")
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=os.environ.get("SHOAL_LOGLEVEL", "WARNING"), handlers=[handler])
    if "SHOAL_LOGLEVEL" not in os.environ:
        logging.getLogger("shoal.autoscaler").setLevel(logging.INFO)  # its decisions, with their inputs
