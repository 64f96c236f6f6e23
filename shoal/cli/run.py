"""`shoal run FUNC_REF [ARGS...]`: run a local entrypoint or a function of an app, as `modal run` does.

FUNC_REF is `file.py`, `file.py::name`, `file.py::app_var.name`, `file.py::app_var`, or with `-m` a module path
(`-m pkg.mod[::name]`). The file is imported as a module named after its stem, so its
`if __name__ == "__main__":` block does not run. The target is chosen as Modal chooses it: a name in the ref
picks it; otherwise the single local entrypoint, else the single function.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import importlib.util
import inspect
import os
import sys
import traceback
from pathlib import Path
from typing import Any

import click

from .entrypoint_args import EntrypointArgsError, make_command

_CLI_DIR = str(Path(__file__).resolve().parent)
_IMPORTLIB_DIR = str(Path(importlib.__file__).parent)

# Lower runs first when nothing names the target (Modal's AutoRunPriority).
MODULE_LOCAL_ENTRYPOINT, MODULE_FUNCTION, APP_LOCAL_ENTRYPOINT, APP_FUNCTION = range(4)


class UserCodeError(click.ClickException):
    """The user's code raised: print its traceback (without the CLI's own frames) and exit 1."""

    def __init__(self, exc: BaseException, what: str) -> None:
        super().__init__(f"{what}: {type(exc).__name__}: {exc}")
        self.exc = exc

    def show(self, file: Any = None) -> None:
        exc = self.exc
        tb = exc.__traceback__
        while tb is not None and _is_internal_frame(tb.tb_frame.f_code.co_filename):
            tb = tb.tb_next
        lines = traceback.format_exception(type(exc), exc, tb)
        stream = file or sys.stderr
        stream.write("".join(lines))
        stream.flush()


def _is_internal_frame(filename: str) -> bool:
    """Frames of the CLI and of the import machinery, left out of the user's traceback."""
    return filename.startswith((_CLI_DIR, _IMPORTLIB_DIR, "<frozen importlib"))


# -- finding the target ------------------------------------------------------------------------------------------
@dataclasses.dataclass
class ImportRef:
    file_or_module: str
    object_path: str
    module_mode: bool


def parse_func_ref(ref: str, module_mode: bool) -> ImportRef:
    if "::" in ref:
        file_or_module, object_path = ref.split("::", 1)
    else:
        file_or_module, object_path = ref, ""
        if ":" in ref and not os.path.exists(ref):
            raise click.ClickException(f"invalid function reference {ref!r}: did you mean '::' instead of ':'?")
    if not file_or_module:
        raise click.ClickException(f"invalid function reference {ref!r}: no file or module before '::'")
    if module_mode and file_or_module.endswith(".py"):
        raise click.ClickException(f"-m takes a module path (pkg.mod), not a file: {file_or_module!r}")
    if not module_mode and not file_or_module.endswith(".py") and not os.path.isfile(file_or_module):
        module_mode = True  # `shoal run pkg.mod`, as Modal still accepts
    return ImportRef(file_or_module, object_path, module_mode)


def import_file_or_module(ref: ImportRef) -> Any:
    if ref.module_mode:
        cwd = os.getcwd()
        if cwd not in sys.path and "" not in sys.path:
            sys.path.insert(0, cwd)
        try:
            return importlib.import_module(ref.file_or_module)
        except ModuleNotFoundError as exc:
            missing = exc.name or ""
            if missing and (ref.file_or_module == missing or ref.file_or_module.startswith(missing + ".")):
                raise click.ClickException(f"no module named {ref.file_or_module!r} (looked in {cwd})") from exc
            raise UserCodeError(exc, f"importing {ref.file_or_module} failed") from exc
        except Exception as exc:
            raise UserCodeError(exc, f"importing {ref.file_or_module} failed") from exc
    path = Path(ref.file_or_module)
    if not path.is_file():
        raise click.ClickException(f"no such file: {ref.file_or_module}")
    full = path.resolve()
    stem = full.name[: -len(".py")] if full.name.endswith(".py") else full.name
    if "." in stem or not stem.isidentifier():
        raise click.ClickException(
            f"cannot import {full.name!r} as a module: the file name (without .py) must be a valid Python "
            "identifier, with no extra periods")
    sys.path.insert(0, str(full.parent))
    spec = importlib.util.spec_from_file_location(stem, str(full))
    if spec is None or spec.loader is None:
        raise click.ClickException(f"cannot import {full}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[stem] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(stem, None)
        raise UserCodeError(exc, f"importing {full} failed") from exc
    return module


@dataclasses.dataclass
class Runnable:
    obj: Any  # a shoal Function or LocalEntrypoint
    names: list[str]
    priority: int

    @property
    def is_entrypoint(self) -> bool:
        from ..app import LocalEntrypoint

        return isinstance(self.obj, LocalEntrypoint)

    @property
    def app(self) -> Any:
        return self.obj.app


def list_runnables(members: dict[str, Any]) -> list[Runnable]:
    """Every function and local entrypoint reachable from a module's globals, with the names that refer to it:
    `app_var.tag` through each App, and the module-level name first when there is one."""
    from ..app import App, LocalEntrypoint
    from ..functions import Function

    found: dict[int, Runnable] = {}
    for var, value in members.items():
        if not isinstance(value, App):
            continue
        for name, ep in value.registered_entrypoints.items():
            r = found.setdefault(id(ep), Runnable(ep, [], APP_LOCAL_ENTRYPOINT))
            r.names.append(f"{var}.{name}")
        for tag, fn in value.registered_functions.items():
            if fn._cls_info is not None:
                continue  # a class's service function: its methods are what runs
            r = found.setdefault(id(fn), Runnable(fn, [], APP_FUNCTION))
            r.names.append(f"{var}.{tag}")
    for var, value in members.items():
        if isinstance(value, LocalEntrypoint):
            r = found.setdefault(id(value), Runnable(value, [], MODULE_LOCAL_ENTRYPOINT))
            r.priority = MODULE_LOCAL_ENTRYPOINT
        elif isinstance(value, Function) and value.app is not None and value._raw_f is not None:
            r = found.setdefault(id(value), Runnable(value, [], MODULE_FUNCTION))
            r.priority = MODULE_FUNCTION
        else:
            continue
        if var not in r.names:
            r.names.insert(0, var)
    return list(found.values())


def filter_runnables(runnables: list[Runnable], object_path: str) -> list[Runnable]:
    if not object_path:
        return list(runnables)
    exact = [r for r in runnables if object_path in r.names]
    if exact:
        return exact
    return [r for r in runnables if any(n.startswith(object_path + ".") for n in r.names)]


def infer_runnable(candidates: list[Runnable]) -> Runnable | None:
    """The single candidate of the best priority: a local entrypoint before a function."""
    if not candidates:
        return None
    best = min(r.priority for r in candidates)
    top = [r for r in candidates if r.priority == best]
    return top[0] if len(top) == 1 else None


def _choices(runnables: list[Runnable]) -> str:
    lines = []
    for r in runnables:
        kind = "local entrypoint" if r.is_entrypoint else "function"
        lines.append(f"  {' / '.join(r.names)}  ({kind})")
    return "\n".join(lines)


def find_runnable(ref: ImportRef, module: Any) -> Runnable:
    runnables = list_runnables(vars(module))
    candidates = filter_runnables(runnables, ref.object_path)
    chosen = infer_runnable(candidates)
    if chosen is not None:
        return chosen
    src = ref.file_or_module
    example = f"shoal run {'-m ' if ref.module_mode else ''}{src}::NAME [ARGS...]"
    if not runnables:
        raise click.ClickException(f"{src!r} has no shoal functions or local entrypoints (no shoal.App found)")
    if not candidates:
        raise click.ClickException(
            f"no function or local entrypoint named {ref.object_path!r} in {src!r}. It has:\n"
            f"{_choices(runnables)}")
    what = f"{ref.object_path!r} in {src!r}" if ref.object_path else repr(src)
    raise click.ClickException(
        f"{what} has several functions or local entrypoints, so say which one to run, e.g.\n"
        f"  {example}\nChoices:\n{_choices(candidates)}")


# -- running it --------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class RunSettings:
    detach: bool = False
    quiet: bool = False
    name: str | None = None
    write_result: str | None = None


def _write_result(path: str, value: Any) -> None:
    if isinstance(value, (bytes, bytearray)):
        Path(path).write_bytes(bytes(value))
    else:
        Path(path).write_text(str(value))


def _print_result(value: Any) -> None:
    if value is None:
        return
    if isinstance(value, (bytes, bytearray)):
        sys.stdout.flush()
        sys.stdout.buffer.write(bytes(value) + b"\n")
        sys.stdout.buffer.flush()
    else:
        print(value, flush=True)


def execute(runnable: Runnable, settings: RunSettings, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Run the app for the duration of the call, then print or write the result."""
    from .. import enable_output
    from ..exception import Error

    app = runnable.app
    obj = runnable.obj
    state: dict[str, Any] = {}
    is_gen = not runnable.is_entrypoint and bool(obj._is_generator)

    def call() -> Any:
        if runnable.is_entrypoint:
            raw = obj.raw_f
            if inspect.iscoroutinefunction(raw):
                return asyncio.run(raw(*args, **kwargs))
            return raw(*args, **kwargs)
        if is_gen:
            items = []
            for item in obj.remote_gen(*args, **kwargs):
                _print_result(item)  # as they arrive
                items.append(item)
            return items
        return obj.remote(*args, **kwargs)

    interrupted = False
    with enable_output(show_progress=not settings.quiet):
        try:
            with app.run(name=settings.name, detach=settings.detach, quiet=settings.quiet):
                state["app_id"] = app.app_id
                try:
                    state["result"] = call()
                except Exception as exc:  # noqa: BLE001 - the user's code failed: report it after stopping
                    state["error"] = exc
        except KeyboardInterrupt:
            interrupted = True
        except Error as exc:
            raise click.ClickException(f"{type(exc).__name__}: {exc}") from exc

    app_id = state.get("app_id")
    if settings.detach and app_id:
        click.echo(f"App {app_id} keeps running (--detach); stop it with `shoal app stop {app_id}`.", err=True)
    if interrupted:
        if not settings.detach and app_id:
            click.echo(f"Interrupted: stopped app {app_id}.", err=True)
        else:
            click.echo("Interrupted.", err=True)
        sys.exit(130)
    if "error" in state:
        where = "local entrypoint" if runnable.is_entrypoint else "function"
        raise UserCodeError(state["error"], f"{where} {runnable.names[0]} failed")
    result = state.get("result")
    if is_gen:
        if settings.write_result:
            _write_result(settings.write_result, "\n".join(str(x) for x in result or []))
        return
    if not runnable.is_entrypoint:
        _print_result(result)
    if settings.write_result:
        _write_result(settings.write_result, result)


def command_for(runnable: Runnable, settings: RunSettings, ref_text: str) -> click.Command:
    obj = runnable.obj
    raw = obj.raw_f if runnable.is_entrypoint else obj.get_raw_f()

    def invoke(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        execute(runnable, settings, args, kwargs)

    try:
        return make_command(raw, invoke, name=ref_text)
    except EntrypointArgsError as exc:
        raise click.ClickException(f"cannot run {runnable.names[0]} from the command line: {exc}") from exc


class RunGroup(click.Group):
    """`shoal run [OPTIONS] FUNC_REF [ARGS...]`: FUNC_REF is imported and becomes the subcommand, whose options
    are the target's parameters."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return []

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        ref = parse_func_ref(cmd_name, bool(ctx.params.get("module_mode")))
        module = import_file_or_module(ref)
        runnable = find_runnable(ref, module)
        settings = RunSettings(
            detach=bool(ctx.params.get("detach")), quiet=bool(ctx.params.get("quiet")),
            name=ctx.params.get("name"), write_result=ctx.params.get("write_result"),
        )
        return command_for(runnable, settings, cmd_name)


@click.group(cls=RunGroup, subcommand_metavar="FUNC_REF [ARGS]...")
@click.option("-w", "--write-result", type=click.Path(dir_okay=False),
              help="Write the return value (str(value), or bytes as they are) to this local file.")
@click.option("-q", "--quiet", is_flag=True, help="Don't show progress or container output.")
@click.option("-d", "--detach", is_flag=True, help="Don't stop the app when this command exits or is interrupted.")
@click.option("-n", "--name", default=None, help="Name of the app run (default: the App's name).")
@click.option("-m", "module_mode", is_flag=True, help="Read FUNC_REF as a Python module path (pkg.mod), not a file.")
@click.option("-e", "--env", default=None, hidden=True, help="Accepted for Modal compatibility; ignored.")
def run(write_result: str | None, quiet: bool, detach: bool, name: str | None, module_mode: bool,
        env: str | None) -> None:
    """Run a local entrypoint or a function of an app.

    \b
    FUNC_REF is one of
      file.py                  the single local entrypoint (else the single function)
      file.py::name            a function or local entrypoint by name
      file.py::app_var.name    the same, through the App variable
      -m pkg.mod[::name]       a module instead of a file

    The target's parameters become options: `shoal run app.py --count 3 --fast`. A function
    taking *args gets the remaining arguments as strings. A function's result is printed.
    """
