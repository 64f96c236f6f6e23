"""`shoal container exec CONTAINER_ID CMD [ARGS...]` and `shoal shell [REF]`: a command, or a shell, inside a
container's sandbox.

Both run on the control plane's machine only, for now: the command enters the container's namespaces there
(shoal/backends/local_exec.py). `GET /v1/containers/{id}` says which process to enter; `shoal shell` first asks
`POST /v1/functions/{id}/shell` for a container of the function that runs nothing, inside an ephemeral run of its
app (`app.run()`), so the container ends with the shell, with Ctrl-C, and with this process, however it ends
(the app loses its client session).
"""

from __future__ import annotations

import fcntl
import os
import select
import signal
import subprocess
import sys
import termios
import time
from typing import Any

import click

START_TIMEOUT_S = 120.0
DEFAULT_SHELL = "if [ -x /bin/bash ]; then exec /bin/bash; fi; exec /bin/sh"


def _client() -> Any:
    from .._client.transport import get_client

    return get_client()


class _Terminated(Exception):  # noqa: N818 - a signal, not a failure
    """SIGTERM or SIGHUP: unwind (restoring the terminal, stopping the app), then exit."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


_signalled: list[int] = []  # SIGTERM/SIGHUP received by `shoal shell`


def _raise_terminated(signum: int, _frame: Any) -> None:
    _signalled.append(signum)
    raise _Terminated(signum)


def _raise_if_signalled() -> None:
    """The exception a signal handler raises can be lost: raised while Popen forks, inside an at-fork hook
    (logging's), Python prints and ignores it. So the loops that wait for the command look here too."""
    if _signalled:
        raise _Terminated(_signalled[0])


def _exit_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


# -- finding the container ---------------------------------------------------------------------------------------
def container_info(container_id: str) -> dict[str, Any]:
    """The control plane's description of a container, checked to be on this machine."""
    from ..backends.local_exec import machine_id
    from ..exception import NotFoundError

    client = _client()
    try:
        info = client.call("GET", f"/v1/containers/{container_id}")
    except NotFoundError as exc:
        raise click.ClickException(str(exc)) from exc
    if info.get("backend") != "local" or info.get("machine") != machine_id():
        where = "is on another machine" if info.get("backend") == "local" else \
            f"runs its containers elsewhere (backend {info.get('backend')!r})"
        raise click.ClickException(f"`shoal container exec` and `shoal shell` work on the control plane's own "
                                   f"machine only, for now: the control plane at {client.info.url} {where}")
    return info


# -- running the command -----------------------------------------------------------------------------------------
def run_in_container(info: dict[str, Any], cmd: list[str], pty: bool, replace: bool = False) -> int:
    """Run `cmd` in the container `info` describes, with this process's stdin/stdout/stderr (through a
    pseudo-terminal with `pty`); returns its exit code. `replace`: without a pty, become the command (exec)."""
    from ..backends.local_exec import ExecError, command_argv, find_target

    try:
        target = find_target(info)
        argv = command_argv(target, cmd, pty)
    except ExecError as exc:
        raise click.ClickException(str(exc)) from exc
    env = dict(target.env)
    if pty and os.environ.get("TERM"):
        env["TERM"] = os.environ["TERM"]  # the terminal is the user's
    if not target.sandboxed:
        click.echo(f"shoal: container {target.container_id} is not sandboxed (the control plane runs with "
                   f"isolation=process): the command runs on this machine as {_user()}, with the container's "
                   f"environment, in {target.cwd or os.getcwd()}", err=True)
    if pty:
        return _run_with_pty(target, argv, env)
    if replace:
        _exec(target, argv, env)
    return _run_plain(target, argv, env)


def _user() -> str:
    import pwd

    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return f"uid {os.getuid()}"


def _preexec(target: Any, pty: bool) -> Any:
    from ..backends.local_exec import become_session_leader_of_stdin, prepare_process

    if target.sandboxed:
        return lambda: prepare_process(target)
    return become_session_leader_of_stdin if pty else None


def _not_found(cmd: str) -> int:
    click.echo(f"shoal: {cmd}: command not found", err=True)
    return 127


def _exec(target: Any, argv: list[str], env: dict[str, str]) -> None:
    """Become the command: its exit status and signals are this process's."""
    from ..backends.local_exec import prepare_process

    sys.stdout.flush()
    sys.stderr.flush()
    if target.sandboxed:
        prepare_process(target)
    elif target.cwd:
        try:
            os.chdir(target.cwd)
        except OSError:
            pass
    try:
        os.execvpe(argv[0], argv, env)
    except FileNotFoundError:
        sys.exit(_not_found(argv[0]))
    except OSError as exc:
        raise click.ClickException(f"cannot run {argv[0]}: {exc}") from exc


def _run_plain(target: Any, argv: list[str], env: dict[str, str]) -> int:
    try:
        proc = subprocess.Popen(argv, env=env, cwd=None if target.sandboxed else target.cwd,
                                preexec_fn=_preexec(target, pty=False))
    except FileNotFoundError:
        return _not_found(argv[0])
    while True:
        try:
            return _exit_code(proc.wait(timeout=0.5))
        except subprocess.TimeoutExpired:
            _raise_if_signalled()
        except KeyboardInterrupt:
            continue  # Ctrl-C reached the command too (one process group): it decides


def _run_with_pty(target: Any, argv: list[str], env: dict[str, str]) -> int:
    from ..backends.local_exec import ExecError, open_pty

    try:
        master, slave = open_pty(target)
    except ExecError as exc:
        raise click.ClickException(str(exc)) from exc
    try:
        proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env,
                                cwd=None if target.sandboxed else target.cwd,
                                start_new_session=not target.sandboxed, preexec_fn=_preexec(target, pty=True))
    except FileNotFoundError:
        os.close(master)
        return _not_found(argv[0])
    finally:
        os.close(slave)
    try:
        relay(master, proc)
    finally:
        os.close(master)  # the command's session gets SIGHUP if it still runs
    return _exit_code(proc.wait())


def _winsize(fd: int) -> bytes | None:
    try:
        return fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8)
    except OSError:
        return None


def relay(master: int, proc: subprocess.Popen) -> None:
    """Copy this process's stdin to the pseudo-terminal and its output to stdout until the command is done. A
    terminal on stdin is put in raw mode meanwhile (keys, Ctrl-C included, go to the command) and its size
    follows the user's window."""
    try:
        os.fstat(0)
        readers = [master, 0]
    except OSError:
        readers = [master]
    tty_in = 0 in readers and os.isatty(0)
    size_from = 0 if tty_in else (1 if os.isatty(1) else None)
    saved = termios.tcgetattr(0) if tty_in else None
    previous_winch = None

    def resize(*_: Any) -> None:
        size = _winsize(size_from) if size_from is not None else None
        try:
            fcntl.ioctl(master, termios.TIOCSWINSZ, size or struct_winsize(24, 80))
        except OSError:
            pass

    resize()
    if size_from is not None:
        previous_winch = signal.signal(signal.SIGWINCH, resize)
    if tty_in:
        import tty

        tty.setraw(0)
    os.set_blocking(master, False)
    pending = b""  # input the terminal has not taken yet
    last_input = b"\n"
    try:
        while True:
            _raise_if_signalled()
            wanted = [fd for fd in readers if fd != 0 or len(pending) < 65536]
            ready, writable, _ = select.select(wanted, [master] if pending else [], [], 0.2)
            if master in writable:
                try:
                    pending = pending[os.write(master, pending[:4096]):]
                except BlockingIOError:
                    pass
                except OSError:  # the terminal is gone
                    pending = b""
            if master in ready:
                try:
                    data = os.read(master, 65536)
                except BlockingIOError:
                    continue
                except OSError:  # EIO: every process of the command closed the terminal
                    data = b""
                if not data:
                    return
                _write_all(1, data)
            if 0 in ready:
                data = os.read(0, 65536)
                if data:
                    pending += data
                    last_input = data
                else:
                    readers.remove(0)
                    # End of input (a pipe): end of file for the command reading the terminal; a second ^D
                    # ends a last line without a newline.
                    pending += b"\x04" if last_input.endswith(b"\n") else b"\x04\x04"
            if not ready and not writable and proc.poll() is not None:
                return  # it exited; what it left running keeps the terminal open, not us
    finally:
        if saved is not None:
            termios.tcsetattr(0, termios.TCSADRAIN, saved)
        if previous_winch is not None:
            signal.signal(signal.SIGWINCH, previous_winch)


def struct_winsize(rows: int, cols: int) -> bytes:
    import struct

    return struct.pack("HHHH", rows, cols, 0, 0)


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data):]


def _want_pty(pty: bool | None) -> bool:
    return sys.stdin.isatty() and sys.stdout.isatty() if pty is None else pty


# -- shoal container exec ----------------------------------------------------------------------------------------
@click.command(name="exec", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("--pty/--no-pty", default=None,
              help="Run the command in a pseudo-terminal (default: when stdin and stdout are terminals).")
@click.argument("container_id")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def container_exec(pty: bool | None, container_id: str, command: tuple[str, ...]) -> None:
    """Run COMMAND inside a running container: in its sandbox (namespaces, files, as its root), with its
    environment, in its working directory. stdin, stdout and stderr are this terminal's; the exit code is the
    command's. Runs on the control plane's machine only (for now).

    \b
    shoal container exec ta-123 ls /root
    shoal container exec ta-123 -- sh -c 'echo $HOME'
    """
    cmd = list(command[1:] if command[:1] == ("--",) else command)
    if not cmd:
        raise click.UsageError("give a command to run")
    info = container_info(container_id)
    sys.exit(run_in_container(info, cmd, _want_pty(pty), replace=True))


# -- shoal shell -------------------------------------------------------------------------------------------------
def _idle() -> None:
    """The function of `shoal shell` without a REF: never called (its containers run nothing)."""


def _function_of(ref: str, module_mode: bool) -> Any:
    """The shoal Function (or class) `ref` names, as `shoal run` finds it, local entrypoints left out."""
    from ..app import App
    from .run import APP_FUNCTION, Runnable, filter_runnables, import_file_or_module, list_runnables, parse_func_ref

    iref = parse_func_ref(ref, module_mode)
    module = import_file_or_module(iref)
    found = [r for r in list_runnables(vars(module)) if not r.is_entrypoint]
    for var, value in vars(module).items():  # classes: their service function (tag "Cls.*")
        if isinstance(value, App):
            for tag, fn in value.registered_functions.items():
                if fn._cls_info is not None and tag.endswith(".*"):
                    found.append(Runnable(fn, [tag[:-2], f"{var}.{tag[:-2]}"], APP_FUNCTION))
    candidates = filter_runnables(found, iref.object_path)
    if len(candidates) == 1:
        return candidates[0].obj
    listing = "\n".join(f"  {' / '.join(r.names)}" for r in found)
    if not found:
        raise click.ClickException(f"{iref.file_or_module!r} has no shoal functions (no shoal.App found)")
    if not candidates:
        raise click.ClickException(f"no function named {iref.object_path!r} in {iref.file_or_module!r}. It has:\n"
                                   f"{listing}")
    raise click.ClickException(f"{iref.file_or_module!r} has several functions: say which one, e.g. "
                               f"`shoal shell {iref.file_or_module}::NAME`. Choices:\n{listing}")


def _default_function(secrets: tuple[str, ...]) -> Any:
    from .. import App, Image, Secret

    app = App("shell")
    return app.function(image=Image.debian_slim(), secrets=[Secret.from_name(s) for s in secrets],
                        serialized=True, name="shell")(_idle)


def _wait_started(container_id: str) -> dict[str, Any]:
    """The shell's container once it has a process (or why it has none)."""
    from ..exception import NotFoundError

    client = _client()
    deadline = time.monotonic() + START_TIMEOUT_S
    said = None
    while True:
        try:
            info = container_info(container_id)
        except click.ClickException as exc:
            if "not found" not in exc.message:
                raise
            try:
                logs = client.call("GET", f"/v1/containers/{container_id}/logs?after=-1&timeout=0")["entries"]
            except NotFoundError:
                logs = []
            detail = "".join(e["data"] for e in logs).strip()
            raise click.ClickException(f"the shell's container {container_id} ended before it started"
                                       + (f":\n{detail}" if detail else "")) from exc
        if info.get("pid"):
            return info
        if info.get("pending_reason") and info["pending_reason"] != said:
            said = info["pending_reason"]
            click.echo(f"shoal: waiting: {said}", err=True)
        if time.monotonic() > deadline:
            raise click.ClickException(f"the shell's container {container_id} did not start within "
                                       f"{START_TIMEOUT_S:g}s")
        time.sleep(0.05)


@click.command(name="shell")
@click.argument("ref", required=False)
@click.option("-c", "--cmd", default=None,
              help="Run this command (with /bin/sh -c) instead of an interactive shell (/bin/bash).")
@click.option("--pty/--no-pty", default=None,
              help="Run it in a pseudo-terminal (default: when stdin and stdout are terminals).")
@click.option("-m", "module_mode", is_flag=True, help="Read REF as a Python module path (pkg.mod), not a file.")
@click.option("--secret", "secrets", multiple=True,
              help="Without REF: a named secret (shoal secret create) to set in the shell's environment.")
@click.option("-e", "--env", default=None, hidden=True, help="Accepted for Modal compatibility; ignored.")
def shell(ref: str | None, cmd: str | None, pty: bool | None, module_mode: bool, secrets: tuple[str, ...],
          env: str | None) -> None:
    """A shell inside a new container of a function: its image, sandbox, secrets and environment, its app's
    source in /root. The container runs nothing else and ends with the shell (or when this command is
    interrupted or killed). Runs on the control plane's machine only (for now).

    \b
    REF is one of
      file.py::name       a function (or class) of an app
      file.py             the app's only function
      -m pkg.mod::name    a module instead of a file
      (none)              the default image, Image.debian_slim()

    \b
    shoal shell app.py::train
    shoal shell app.py::train --cmd 'pip list'
    """
    from .. import enable_output
    from ..exception import Error

    if ref is not None and secrets:
        raise click.UsageError("--secret is for a shell without REF (a function's shell has its secrets)")
    fn = _function_of(ref, module_mode) if ref else _default_function(secrets)
    argv = ["/bin/sh", "-c", cmd if cmd is not None else DEFAULT_SHELL]
    use_pty = _want_pty(pty)
    previous = {s: signal.signal(s, _raise_terminated) for s in (signal.SIGTERM, signal.SIGHUP)}
    code = 1
    try:
        with enable_output(show_progress=True), fn.app.run():
            container_id = _client().call("POST", f"/v1/functions/{fn.object_id}/shell", {})["container_id"]
            info = _wait_started(container_id)
            code = run_in_container(info, argv, use_pty)
    except _Terminated as exc:
        code = 128 + exc.signum
    except KeyboardInterrupt:
        code = 130
    except Error as exc:
        raise click.ClickException(f"{type(exc).__name__}: {exc}") from exc
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    sys.exit(code)
