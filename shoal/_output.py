"""Printing container output in the caller's terminal, each line marked with its container, and live progress
on a terminal: a line for maps (`map_progress`), a status while an app starts or deploys with one line per image
being built (`start_progress`)."""

from __future__ import annotations

import re
import sys
import threading
import time
from collections.abc import Callable
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


def output_enabled() -> bool:
    return _enabled


def status(message: str, mark: str = "✓ ") -> None:
    if _enabled:
        print(f"{mark}{message}", file=sys.stderr, flush=True)


def created_objects(names: list[str], web_urls: Callable[[], dict[str, str]]) -> None:
    """`✓ Created objects.` and a tree of the functions, with their web URLs, as Modal prints it. `web_urls` asks
    the control plane (only when output is shown)."""
    if not _enabled:
        return
    urls = web_urls()
    lines = ["✓ Created objects."]
    for i, name in enumerate(names):
        last = i == len(names) - 1
        if name in urls:
            lines.append(f"{'└──' if last else '├──'} 🔨 Created web function {name} => {urls[name]}")
        else:
            lines.append(f"{'└──' if last else '├──'} 🔨 Created function {name}.")
        methods = [(tag, url) for tag, url in urls.items() if tag.startswith(name + ".")]  # a class's web methods
        for j, (tag, url) in enumerate(methods):
            lines.append(f"{'    ' if last else '│   '}{'└──' if j == len(methods) - 1 else '├──'} {tag} => {url}")
    print("\n".join(lines), file=sys.stderr, flush=True)


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


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
        self.watcher: StartProgress | None = None  # told each line of an image build (`im-` entries)

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
                if at_start and self.watcher is not None and cid.startswith("im-"):
                    self.watcher.build_line(cid, line)
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
            console=Console(file=sys.stderr), transient=False, refresh_per_second=8, redirect_stdout=False,
            redirect_stderr=False)
        self._task = self._progress.add_task(label, total=None, rate="", failures="", containers="")
        self._sent_only = sent_only
        self._progress.start()
        self._restore = print_above(self._progress.console)

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
        self._restore()
        self._progress.stop()


def map_progress(label: str, sent_only: bool = False) -> _NoProgress:
    """A progress line for a map under `shoal run` or `enable_output()` when stderr is a terminal; otherwise
    one that shows nothing (output piped to a file or a CI log stays free of redraws)."""
    if not _enabled or not _stderr_is_terminal():
        return _NoProgress()
    return MapProgress(label, sent_only)


# -- live status while an app starts or deploys --------------------------------------------------------------
class _ConsoleLines:
    """Where whole lines go while a live display is drawn: printed above it, as written (rich's own redirect
    would read `[im-…]` as markup and drop it)."""

    def __init__(self, console: Any) -> None:
        self._console = console

    def write(self, text: str) -> int:
        from rich.text import Text

        for line in text.splitlines():
            self._console.print(Text.from_ansi(line), soft_wrap=True, highlight=False)
        return len(text)

    def flush(self) -> None:
        self._console.file.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._console.file, name)


def print_above(console: Any) -> Callable[[], None]:
    """Send what is printed to stderr (and to stdout when it is a terminal too: a redirected stdout keeps its
    file) above `console`'s live display, whole line by whole line; returns what undoes it."""
    saved = sys.stdout, sys.stderr
    lines = LineSafeStream(_ConsoleLines(console))
    sys.stderr = lines
    try:
        stdout_tty = saved[0].isatty()
    except (AttributeError, ValueError):
        stdout_tty = False
    if stdout_tty:
        sys.stdout = lines

    def restore() -> None:
        for name, before in zip(("stdout", "stderr"), saved, strict=True):
            if getattr(sys, name) is lines:
                lines.flush()
                setattr(sys, name, before)

    return restore


_BUILD_START = re.compile(r"Building image (im-\S+)(?: \(steps 0 to (\d+)\))?")
_BUILD_STEP = re.compile(r"=> Step (\d+): (.*)")
_BUILD_END = re.compile(r"Built image (im-\S+)")


class _ImageRow:
    def __init__(self, image_id: str, last_step: str) -> None:
        self.image_id = image_id
        self.last_step = last_step
        self.step = ""
        self.started = time.monotonic()


class StartProgress:
    """What an app reports to while it starts (`app.run()`) or deploys: its phase, and each image build's current
    step as the control plane's build log names it. This one shows nothing; `LiveStartProgress` draws it."""

    def phase(self, text: str) -> None: ...
    def build_line(self, log_id: str, line: str) -> None: ...
    def close(self) -> None: ...


class LiveStartProgress(StartProgress):
    """A rich live status on the terminal's stderr: a spinner with the phase and elapsed time, and under it a
    spinner per image being built with its step (`step 2/4: pip_install(...)`) and time. Output printed meanwhile
    (the build's own lines among it) goes above it; it disappears when closed, the lines stay."""

    def __init__(self, phase: str) -> None:
        from rich.console import Console
        from rich.live import Live

        self._lock = threading.Lock()
        self._phase = phase
        self._started = time.monotonic()
        self._images: dict[str, _ImageRow] = {}  # by the id the build log is marked with
        self._live = Live(console=Console(file=sys.stderr), get_renderable=self._render, transient=True,
                          refresh_per_second=8, redirect_stdout=False, redirect_stderr=False)
        self._live.start(refresh=True)
        self._restore = print_above(self._live.console)

    def _render(self) -> Any:
        from rich.spinner import Spinner
        from rich.table import Table

        now = time.monotonic()
        grid = Table.grid(padding=(0, 1))
        grid.add_column(no_wrap=True, overflow="ellipsis")  # one line each, however narrow the terminal
        with self._lock:
            grid.add_row(Spinner("dots", f"{_escape(self._phase)}... [dim]{_elapsed(now - self._started)}[/dim]"))
            for row in self._images.values():
                step = f": step {row.step}" if row.step else ""
                grid.add_row(Spinner("dots", f"  Building image {row.image_id[:15]}{_escape(step)} "
                                             f"[dim]{_elapsed(now - row.started)}[/dim]"))
        return grid

    def phase(self, text: str) -> None:
        with self._lock:
            self._phase = text
        self._live.refresh()

    def build_line(self, log_id: str, line: str) -> None:
        """A line of the build log marked `log_id`: a build starting, its next step, or its end, else nothing."""
        line = line.rstrip("\n")
        with self._lock:
            if m := _BUILD_START.match(line):
                self._images[log_id] = _ImageRow(m.group(1), m.group(2) or "?")
            elif (m := _BUILD_STEP.match(line)) and log_id in self._images:
                row = self._images[log_id]
                row.step = f"{m.group(1)}/{row.last_step}: {m.group(2)}"
            elif _BUILD_END.match(line):
                self._images.pop(log_id, None)
            else:
                return
        self._live.refresh()  # each step is drawn at least once, however quick

    def close(self) -> None:
        self._restore()
        self._live.stop()


def _elapsed(seconds: float) -> str:
    return f"{seconds:.1f}s" if seconds < 60 else f"{int(seconds) // 60}m{int(seconds) % 60:02d}s"


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def start_progress(phase: str) -> StartProgress:
    """A live status for an app starting or deploying under `shoal run`, `shoal deploy` or `enable_output()`
    when stderr is a terminal; otherwise one that shows nothing (the build's lines are printed as they are)."""
    if not _enabled or not _stderr_is_terminal():
        return StartProgress()
    return LiveStartProgress(phase)
