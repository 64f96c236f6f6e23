"""Printing container output in the caller's terminal, each line marked with its container, and a live progress
line for maps (`map_progress`)."""

from __future__ import annotations

import sys
import threading
import time
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


class _NoProgress:
    """What a map reports to when no progress is shown: every method does nothing."""

    active = False  # whether anything is drawn (a map asks for its container count only then)

    def input_done(self, ok: bool) -> None: ...
    def inputs_sent(self, n: int) -> None: ...
    def set_total(self, n: int) -> None: ...
    def set_containers(self, n: int) -> None: ...
    def close(self) -> None: ...


class MapProgress(_NoProgress):
    """A live progress line for a map (done/total, rate, failures, containers), drawn by rich on the terminal's
    stderr."""

    active = True

    def __init__(self, label: str, sent_only: bool = False) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._failures = 0
        self._started = time.monotonic()
        self._done = 0
        self._progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"), TextColumn("{task.fields[failures]}"),
            TextColumn("{task.fields[containers]}"), TimeElapsedColumn(),
            console=Console(file=sys.stderr), transient=False, refresh_per_second=8)
        self._task = self._progress.add_task(label, total=None, rate="", failures="", containers="")
        self._sent_only = sent_only
        self._progress.start()

    def _update(self) -> None:
        elapsed = max(time.monotonic() - self._started, 1e-6)
        verb = "sent" if self._sent_only else "done"
        self._progress.update(self._task, completed=self._done, rate=f"{self._done / elapsed:.1f} {verb}/s",
                              failures=f"[red]{self._failures} failed[/red]" if self._failures else "")

    def input_done(self, ok: bool) -> None:
        self._done += 1
        if not ok:
            self._failures += 1
        self._update()

    def inputs_sent(self, n: int) -> None:
        self._done += n
        self._update()

    def set_total(self, n: int) -> None:
        self._progress.update(self._task, total=n)

    def set_containers(self, n: int) -> None:
        self._progress.update(self._task, containers=f"{n} container{'s' if n != 1 else ''}")

    def close(self) -> None:
        self._update()
        self._progress.stop()


def map_progress(label: str, sent_only: bool = False) -> _NoProgress:
    """A progress line for a map under `shoal run` or `enable_output()` when stderr is a terminal; otherwise
    one that shows nothing (output piped to a file or a CI log stays free of redraws)."""
    if not _enabled:
        return _NoProgress()
    try:
        tty = sys.stderr.isatty()
    except (AttributeError, ValueError):
        tty = False
    return MapProgress(label, sent_only) if tty else _NoProgress()
