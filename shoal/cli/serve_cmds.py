"""`shoal serve APP_REF`: run an app ephemerally and reload it whenever its source changes, as `modal serve` does.

APP_REF is resolved as `shoal deploy` resolves it (`file.py`, `file.py::app_var`, `-m pkg.mod[::app_var]`). The
app runs like `shoal run`'s (its log is followed, and the follower's poll keeps it alive) until Ctrl-C, SIGTERM
or `--timeout`. Its definitions carry `"serve": true` (web URLs get Modal's `-dev` suffix).

Reloading: the app's source (the script, or its top-level package) and the local directories its images add are
watched with watchfiles (inotify, debounced); editors' temporary files are ignored. A change re-imports the code
in a *new process* (a changed module cannot be reliably re-imported in place), which posts the new definitions
to the running app with `strategy: recreate`: the control plane treats that as a redeploy of the app (pools keep
their ids, their containers are replaced at once, functions gone from the code stop). The app itself is never
stopped between reloads; a reload whose import fails prints the error and the previous version keeps serving.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import click

from .run import UserCodeError, import_file_or_module, parse_func_ref

DEBOUNCE_MS = 300  # changes within this window (an editor's save: write, rename, chmod) make one reload
WATCH_TICK_MS = 200  # the watcher thread wakes this often without changes (to see `stop`, and to say it watches)
WATCH_READY_S = 30.0  # at most this long to set the watches up before serving goes on regardless
POLL_S = 0.25  # how often the main loop looks at the deadline and at the app's log follower
# Files editors write next to the real one while saving (vim's swap files and its `4913` probe, emacs's lock
# and backup files, generic temporaries): changes to them never reload.
IGNORED_NAMES = ("*.swp", "*.swx", "*.swo", "*~", ".#*", "#*#", "4913", "*.tmp", "*.pyc", "*.pyo", ".DS_Store")
IGNORED_DIRS = frozenset({"__pycache__", ".git", ".hg", ".svn", ".venv", "venv", "node_modules", ".mypy_cache",
                          ".pytest_cache", ".ruff_cache", ".idea"})
_SHOAL_ROOT = str(Path(__file__).resolve().parents[2])
# The reload child: imports the app reference afresh and registers its definitions on the running app.
_CHILD_CODE = (f"import sys; sys.path.append({_SHOAL_ROOT!r})\n"
               "from shoal.cli.serve_cmds import reload_main\n"
               "sys.exit(reload_main(sys.argv[1:]))")


class _Stop(BaseException):
    """Raised by the SIGTERM handler: leave the serve loop (stopping the app) as Ctrl-C would, but exit 0."""


# -- what to watch -----------------------------------------------------------------------------------------------
class WatchSet:
    """The files and directories whose changes reload the app, and the filter that picks those changes out of
    what the watched directories report."""

    def __init__(self) -> None:
        self.files: set[Path] = set()
        self.dirs: dict[Path, bool] = {}  # directory -> only .py files count (sources) or all (add_local_dir)

    def add_file(self, path: Path) -> None:
        if path.is_file():
            self.files.add(path.resolve())

    def add_dir(self, path: Path, py_only: bool) -> None:
        if path.is_dir():
            path = path.resolve()
            self.dirs[path] = self.dirs.get(path, True) and py_only

    def groups(self) -> list[tuple[list[Path], bool]]:
        """(directories, recursive) to watch: a file's directory alone (a file's own watch would be lost when
        an editor saves by renaming a new file over it), and each source directory with its subdirectories."""
        out = []
        parents = sorted({f.parent for f in self.files} - set(self.dirs))
        if parents:
            out.append((parents, False))
        if self.dirs:
            out.append((sorted(self.dirs), True))
        return out

    def relevant(self, path: str) -> bool:
        p = Path(path)
        if any(fnmatch.fnmatch(p.name, pat) for pat in IGNORED_NAMES):
            return False
        if p in self.files:
            return True
        for root, py_only in self.dirs.items():
            try:
                rel = p.relative_to(root)
            except ValueError:
                continue
            if any(part in IGNORED_DIRS for part in rel.parts[:-1]):
                return False
            if not py_only or p.suffix == ".py" or (p.is_dir() and p.name not in IGNORED_DIRS):
                return True  # a directory's move or removal also changes the .py files in it
        return False

    def describe(self) -> str:
        return ", ".join(_shown(p) for p in sorted([*self.files, *self.dirs]))


def _source_target(module_name: str, watch: WatchSet) -> None:
    """What `shoal._client.source` ships for this module: its file, or its whole top-level package."""
    module = sys.modules.get(module_name)
    path = getattr(module, "__file__", None) if module is not None else None
    if not path:
        return
    top = module_name.split(".")[0]
    if top == module_name and Path(path).name != "__init__.py":
        watch.add_file(Path(path))
        return
    top_module = sys.modules.get(top)
    root = getattr(top_module, "__file__", None) or next(iter(getattr(top_module, "__path__", [])), None)
    if root:
        root_path = Path(root)
        watch.add_dir(root_path.parent if root_path.is_file() else root_path, py_only=True)


def _image_targets(image: Any, watch: WatchSet) -> None:
    """The local files and directories an Image adds (add_local_file/dir, add_local_python_source)."""
    for local in getattr(image, "_local", ()) or ():
        if not isinstance(local, dict):
            continue
        if "file" in local:
            watch.add_file(Path(local["file"]))
        elif "dir" in local:
            watch.add_dir(Path(local["dir"]), py_only=False)
        for name in local.get("modules") or ():
            try:
                spec = importlib.util.find_spec(name)
            except (ImportError, ValueError):
                continue
            if spec is None:
                continue
            if spec.submodule_search_locations:
                for location in spec.submodule_search_locations:
                    watch.add_dir(Path(location), py_only=True)
            elif spec.origin and spec.origin.endswith(".py"):
                watch.add_file(Path(spec.origin))


def watch_set_for(app: Any, module: Any) -> WatchSet:
    watch = WatchSet()
    _source_target(module.__name__, watch)
    images = [app._image]
    for fn in app.registered_functions.values():
        images.append(getattr(fn, "_image", None))
        raw = getattr(fn, "_raw_f", None)
        mod = getattr(raw, "__module__", None)
        if mod and mod != module.__name__ and not fn._options.serialized:
            _source_target(mod, watch)
    for image in {id(i): i for i in images if i is not None}.values():
        _image_targets(image, watch)
    return watch


def _shown(path: Path | str) -> str:
    """A path as the user would type it: relative to the working directory when it is under it."""
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _watch_thread(paths: list[Path], recursive: bool, watch: WatchSet, out: queue.Queue,
                  stop: threading.Event, ready: threading.Event) -> None:
    import watchfiles

    try:
        # yield_on_timeout: the first (empty) batch comes once the watches are in place, which is when
        # "Watching for changes" may be said; empty batches after it are skipped.
        for changes in watchfiles.watch(*paths, watch_filter=lambda _change, path: watch.relevant(path),
                                        debounce=DEBOUNCE_MS, stop_event=stop, recursive=recursive,
                                        raise_interrupt=False, rust_timeout=WATCH_TICK_MS, yield_on_timeout=True):
            ready.set()
            if changes:
                out.put(changes)
    except Exception as exc:  # noqa: BLE001 - e.g. inotify's watch limit: say so, keep serving without it
        out.put(exc)
    finally:
        ready.set()


def start_watching(watch: WatchSet, stop: threading.Event) -> queue.Queue:
    """Watcher threads that put each debounced batch of relevant changes (set of (Change, path)) on a queue;
    returns once they watch (an edit right after this is seen)."""
    changes: queue.Queue = queue.Queue()
    ready = []
    for paths, recursive in watch.groups():
        ready.append(threading.Event())
        threading.Thread(target=_watch_thread, args=(paths, recursive, watch, changes, stop, ready[-1]),
                         name="shoal-serve-watch", daemon=True).start()
    for event in ready:
        event.wait(WATCH_READY_S)
    return changes


def _describe_changes(changes: Iterable[tuple[Any, str]]) -> str:
    seen: dict[str, str] = {}
    for change, path in sorted(changes, key=lambda c: c[1]):
        seen[_shown(path)] = getattr(change, "name", str(change))
    items = [f"{path} ({what})" for path, what in seen.items()]
    return ", ".join(items[:5]) + (f" and {len(items) - 5} more" if len(items) > 5 else "")


# -- the reload child --------------------------------------------------------------------------------------------
def reload_main(argv: list[str]) -> int:
    """In the reload child: `APP_ID MODULE_MODE APP_REF`. Import the code afresh and make its definitions the
    running app's next version (recreate). Exit 1, with the error printed, when that fails."""
    from ..exception import Error
    from .deploy_cmds import find_app

    app_id, module_mode, app_ref = argv
    try:
        ref = parse_func_ref(app_ref, module_mode == "1")
        module = import_file_or_module(ref)
        app = find_app(vars(module), ref.object_path, ref.file_or_module)
    except click.ClickException as exc:  # a UserCodeError among them: its traceback
        exc.show()
        return 1
    from .._client.transport import get_client

    app._serve = True
    try:
        resp = get_client().call("POST", f"/v1/apps/{app_id}/functions", app._functions_body())
    except Error as exc:
        click.echo(f"{type(exc).__name__}: {exc}", err=True)
        return 1
    except Exception as exc:  # noqa: BLE001 - building the definitions ran the user's code (images, volumes)
        UserCodeError(exc, "registering the app failed").show()
        return 1
    for tag, fn in app.registered_functions.items():
        if tag in resp["functions"]:
            fn._hydrate(resp["functions"][tag])
    version = f" version {resp['version']}" if resp.get("version") else ""
    click.echo(f"Reloaded app {app_id}{version}: {', '.join(app.registered_functions) or 'no functions'}")
    for line in _web_url_lines(app):
        click.echo(line)
    return 0


def _web_url_lines(app: Any) -> Iterator[str]:
    """`tag => URL` for each web function and each web method of a class (`Cls.method => URL`)."""
    for fn in app.registered_functions.values():
        try:
            urls = fn._web_urls()
        except Exception:  # noqa: BLE001 - a URL we cannot get is not worth stopping the app for
            continue
        for tag, url in urls.items():
            yield f"  {tag} => {url}"


def _run_reload(app_id: str, app_ref: str, module_mode: bool) -> bool:
    """Run the reload child, relaying its output; True when the new version was registered."""
    proc = subprocess.Popen([sys.executable, "-c", _CHILD_CODE, app_id, "1" if module_mode else "0", app_ref],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    try:
        out, err = proc.communicate()
    finally:
        if proc.poll() is None:  # interrupted (Ctrl-C, SIGTERM) while it ran
            proc.kill()
            proc.wait()
    if out:
        sys.stdout.write(out if out.endswith("\n") else out + "\n")
        sys.stdout.flush()
    if err:
        sys.stderr.write(err if err.endswith("\n") else err + "\n")
        sys.stderr.flush()
    return proc.returncode == 0


# -- the command -------------------------------------------------------------------------------------------------
@click.command()
@click.argument("app_ref")
@click.option("--name", default=None, help="Name of the app run (default: the App's name).")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Stop the app and exit (0) after serving this many seconds.")
@click.option("-m", "module_mode", is_flag=True, help="Read APP_REF as a Python module path (pkg.mod), not a file.")
@click.option("-e", "--env", default=None, hidden=True, help="Accepted for Modal compatibility; ignored.")
def serve(app_ref: str, name: str | None, timeout: float | None, module_mode: bool, env: str | None) -> None:
    """Run an app ephemerally, reloading it when its source files change, until Ctrl-C (or --timeout).

    \b
    APP_REF is one of
      file.py               the module's App
      file.py::app_var      the App in that variable
      -m pkg.mod[::var]     a module instead of a file

    The script (or its top-level package) and the local directories its images add are watched; each change
    re-imports the code in a new process and replaces the app's running containers with the new version.
    """
    from .. import enable_output
    from ..exception import Error
    from .deploy_cmds import find_app

    ref = parse_func_ref(app_ref, module_mode)
    module = import_file_or_module(ref)
    app = find_app(vars(module), ref.object_path, ref.file_or_module)
    app._serve = True
    watch = watch_set_for(app, module)
    stop = threading.Event()
    outcome = "interrupted"

    def on_sigterm(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one stop at a time: let it finish
        raise _Stop()

    previous_handler = signal.signal(signal.SIGTERM, on_sigterm)
    app_id: str | None = None
    try:
        with enable_output():
            ctx = app.run(name=name)
            try:
                with ctx:
                    app_id = app.app_id
                    changes = start_watching(watch, stop)
                    click.echo(f"Serving app {name or app.name or app_id!r} ({app_id}); Ctrl-C stops it.")
                    for line in _web_url_lines(app):
                        click.echo(line)
                    click.echo(f"Watching for changes: {watch.describe() or 'nothing'}")
                    deadline = time.monotonic() + timeout if timeout else None  # counted from when it serves
                    outcome = _serve_loop(ctx, app_id, app_ref, module_mode, changes, deadline)
            except Error as exc:
                raise click.ClickException(f"{type(exc).__name__}: {exc}") from exc
            except Exception as exc:  # building the definitions runs the user's code (images, volumes)
                raise UserCodeError(exc, "serving the app failed") from exc
    except KeyboardInterrupt:
        outcome = "interrupted"
    except _Stop:
        outcome = "terminated"
    finally:
        stop.set()
        signal.signal(signal.SIGTERM, previous_handler)
    if outcome == "app stopped":
        raise click.ClickException(f"app {app_id} was stopped (or the control plane went away)")
    if app_id:
        what = f"Timed out after {timeout:g}s" if outcome == "timeout" and timeout else outcome.capitalize()
        click.echo(f"{what}: stopped app {app_id}.", err=True)
    if outcome == "interrupted":
        sys.exit(130)


def _serve_loop(ctx: Any, app_id: str, app_ref: str, module_mode: bool, changes: queue.Queue,
                deadline: float | None) -> str:
    """Reload on each batch of changes until the deadline or the app stops; returns why it ended."""
    follower = getattr(ctx, "_follower", None)
    while True:
        if deadline is not None and time.monotonic() >= deadline:
            return "timeout"
        if follower is not None and not follower.is_alive():
            return "app stopped"  # `shoal app stop`, or the control plane is gone
        wait = POLL_S if deadline is None else max(0.0, min(POLL_S, deadline - time.monotonic()))
        try:
            batch = changes.get(timeout=wait)
        except queue.Empty:
            continue
        pending = [batch]
        while not changes.empty():  # changes that arrived while the last reload ran make one reload
            pending.append(changes.get_nowait())
        found: set[tuple[Any, str]] = set()
        for item in pending:
            if isinstance(item, BaseException):
                click.echo(f"Watching for changes failed ({type(item).__name__}: {item}); reloading stops, the "
                           "app keeps serving.", err=True)
            else:
                found |= item
        if not found:
            continue
        click.echo(f"Change detected: {_describe_changes(found)}; reloading app {app_id}.")
        if not _run_reload(app_id, app_ref, module_mode):
            click.echo("Reload failed: the previous version keeps serving.", err=True)
