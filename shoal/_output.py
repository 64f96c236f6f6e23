"""Printing container output in the caller's terminal, each line marked with its container."""

from __future__ import annotations

import sys
import threading
from typing import Any

_enabled = False


class enable_output:  # noqa: N801 - Modal's name; usable as `with modal.enable_output():`
    """Also print progress lines (app created, app stopped) from `app.run()`."""

    def __init__(self, show_progress: bool = True) -> None:
        self.show_progress = show_progress
        self._previous = False

    def __enter__(self) -> enable_output:
        global _enabled
        self._previous, _enabled = _enabled, self.show_progress
        return self

    def __exit__(self, *exc: Any) -> None:
        global _enabled
        _enabled = self._previous


def progress_enabled() -> bool:
    return _enabled


def status(message: str) -> None:
    if _enabled:
        print(f"✓ {message}", file=sys.stderr, flush=True)


class LogPrinter:
    """Writes log chunks as they arrive; the container mark goes at the start of each line."""

    def __init__(self) -> None:
        self._at_line_start: dict[tuple[str, str], bool] = {}
        self._lock = threading.Lock()

    def write(self, entry: dict[str, Any]) -> None:
        fd, cid, data = entry["fd"], entry["container_id"], entry["data"]
        stream = sys.stdout if fd == "stdout" else sys.stderr
        mark = f"[{cid[:9]}] " if cid else "[shoal] "
        key = (cid, fd)
        out = []
        with self._lock:
            at_start = self._at_line_start.get(key, True)
            for line in data.splitlines(keepends=True):
                out.append((mark if at_start else "") + line)
                at_start = line.endswith("\n")
            self._at_line_start[key] = at_start
        stream.write("".join(out))
        stream.flush()
