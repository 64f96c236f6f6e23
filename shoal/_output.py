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


def status(message: str) -> None:
    if _enabled:
        print(f"✓ {message}", file=sys.stderr, flush=True)


class LineSafeStream:
    """Wraps stdout/stderr while an app runs so that lines from different threads never mix: each thread's
    unfinished line is held until its newline (or an explicit flush). `print(x)` is two writes, and a
    container line must not land between them."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self._lock = threading.Lock()
        self._partial: dict[int, str] = {}

    def write(self, text: str) -> int:
        tid = threading.get_ident()
        with self._lock:
            head, sep, tail = (self._partial.pop(tid, "") + text).rpartition("\n")
            if sep:
                self._inner.write(head + sep)
            if tail:
                self._partial[tid] = tail
        return len(text)

    def flush(self) -> None:
        with self._lock:
            rest = self._partial.pop(threading.get_ident(), "")
            if rest:
                self._inner.write(rest)
            self._inner.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class line_safe_output:  # noqa: N801 - used as a context manager
    """Install LineSafeStream on sys.stdout and sys.stderr for the duration of a `with` block."""

    def __enter__(self) -> None:
        self._saved = (sys.stdout, sys.stderr)
        if not isinstance(sys.stdout, LineSafeStream):
            sys.stdout = LineSafeStream(sys.stdout)
        if not isinstance(sys.stderr, LineSafeStream):
            sys.stderr = LineSafeStream(sys.stderr)

    def __exit__(self, *exc: Any) -> None:
        for name, saved in zip(("stdout", "stderr"), self._saved, strict=True):
            current = getattr(sys, name)
            if current is not saved and isinstance(current, LineSafeStream):  # only undo our own wrapping
                current.flush()
                setattr(sys, name, saved)


class LogPrinter:
    """Writes log chunks as they arrive; the container mark goes at the start of each line."""

    def __init__(self) -> None:
        self._at_line_start: dict[tuple[str, str], bool] = {}
        self._lock = threading.Lock()

    def write(self, entry: dict[str, Any]) -> None:
        fd, cid, data = entry["fd"], entry["container_id"], entry["data"]
        if fd == "info" and not _enabled:
            return  # start-up timings and similar: shown with enable_output(), in `shoal app/container logs`
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
