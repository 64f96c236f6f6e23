"""`shoal sandbox list | logs | exec | terminate`: sandboxes (`shoal.Sandbox`) from the command line, through the
same SDK calls a program makes. A sandbox is also one container: `shoal container list` shows it with its app."""

from __future__ import annotations

import sys
import threading
from typing import Any

import click

from . import display


def _sandbox(sandbox_id: str) -> Any:
    from ..exception import Error
    from ..sandbox import Sandbox

    try:
        return Sandbox.from_id(sandbox_id)
    except Error as exc:
        raise click.ClickException(str(exc)) from exc


@click.group(name="sandbox")
def sandbox_group() -> None:
    """Sandboxes: containers running a command, driven from outside (`shoal.Sandbox`)."""


@sandbox_group.command(name="list")
@click.option("--app-id", default=None, help="Only the sandboxes of this app.")
@click.option("--tag", "tags", multiple=True, metavar="KEY=VALUE", help="Only sandboxes with this tag (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def sandbox_list(app_id: str | None, tags: tuple[str, ...], as_json: bool) -> None:
    """List sandboxes: id, app, name, state, exit, tags, age."""
    import time

    from .._client.transport import get_client

    query = [f"app_id={app_id}"] if app_id else []
    for t in tags:
        if "=" not in t:
            raise click.UsageError(f"--tag {t!r}: expected KEY=VALUE")
        from urllib.parse import quote

        query.append(f"tag={quote(t, safe='')}")
    items = get_client().call("GET", "/v1/sandboxes" + ("?" + "&".join(query) if query else ""))["sandboxes"]
    if as_json:
        display.print_json(items)
        return
    if not items:
        click.echo("No sandboxes.")
        return
    from rich.table import Table

    table = Table(title_justify="left")
    for column in ("Sandbox ID", "App ID", "Name", "State", "Exit", "Tags", "Age", "Container ID"):
        table.add_column(column, no_wrap=column.endswith("ID"))
    now = time.time()
    for s in items:
        code = "-" if s.get("returncode") is None and not s.get("reason") else \
            f"{s.get('returncode', '-')} ({s.get('reason') or 'exited'})"
        tag_text = ", ".join(f"{k}={v}" for k, v in (s.get("tags") or {}).items()) or "-"
        table.add_row(s["sandbox_id"], s.get("app_id") or "-", s.get("name") or "-", s.get("state") or "-", code,
                      tag_text, display.duration(now - s["created_at"]) if s.get("created_at") else "-",
                      s.get("container_id") or "-")
    display.console().print(table)


def _pump(reader: Any, stream: Any) -> threading.Thread:
    def run() -> None:
        for chunk in reader:
            stream.buffer.write(chunk)
            stream.flush()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _now_output(sandbox_id: str, fd: str) -> bytes:
    """What the sandbox's `fd` holds now (no waiting)."""
    from .._client.transport import get_client

    client, offset, parts = get_client(), 0, []
    while True:
        resp = client.call("GET", f"/v1/sandboxes/{sandbox_id}/output?fd={fd}&offset={offset}&timeout=0")
        data = bytes(resp.get("data") or b"")
        parts.append(data)
        offset = resp["offset"]
        if not data or resp.get("eof"):
            return b"".join(parts)


@sandbox_group.command(name="logs")
@click.argument("sandbox_id")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new output until the sandbox ends.")
def sandbox_logs(sandbox_id: str, follow: bool) -> None:
    """Print a sandbox's stdout and stderr (kept after it ended), optionally following them."""
    from ..io_streams import StreamReader

    _sandbox(sandbox_id)  # a clear error for an unknown id
    if not follow:
        for fd, stream in (("stdout", sys.stdout), ("stderr", sys.stderr)):
            stream.buffer.write(_now_output(sandbox_id, fd))
            stream.flush()
        return
    base = f"/v1/sandboxes/{sandbox_id}"
    threads = [_pump(StreamReader(base, fd, text=False), stream)
               for fd, stream in (("stdout", sys.stdout), ("stderr", sys.stderr))]
    for t in threads:
        t.join()


@sandbox_group.command(name="exec", context_settings={"ignore_unknown_options": True})
@click.argument("sandbox_id")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option("-w", "--workdir", default=None, help="Working directory (absolute) of the command.")
@click.option("--timeout", type=int, default=None, help="Kill the command after this many seconds.")
def sandbox_exec(sandbox_id: str, command: tuple[str, ...], workdir: str | None, timeout: int | None) -> None:
    """Run COMMAND in a running sandbox: its output here, this terminal's stdin to it; exits with its code."""
    from ..exception import Error

    sb = _sandbox(sandbox_id)
    try:
        proc = sb.exec(*command, workdir=workdir, timeout=timeout, text=False)
    except Error as exc:
        raise click.ClickException(str(exc)) from exc
    threads = [_pump(proc.stdout, sys.stdout), _pump(proc.stderr, sys.stderr)]

    def feed() -> None:
        try:
            for line in iter(sys.stdin.buffer.readline, b""):
                proc.stdin.write(line)
                proc.stdin.drain()
            proc.stdin.write_eof()
            proc.stdin.drain()
        except Error:
            pass  # the command ended first

    threading.Thread(target=feed, daemon=True).start()
    code = proc.wait()
    for t in threads:
        t.join(timeout=5)
    sys.exit(code if 0 <= code < 256 else 1)


@sandbox_group.command(name="terminate")
@click.argument("sandbox_id")
@click.option("--wait/--no-wait", default=True, help="Return once it has ended (default).")
def sandbox_terminate(sandbox_id: str, wait: bool) -> None:
    """Terminate a sandbox (its processes are killed); its output and exit stay readable."""
    sb = _sandbox(sandbox_id)
    code = sb.terminate(wait=wait)
    click.echo(f"Terminated sandbox {sandbox_id}" + (f" (return code {code})." if wait else "."))
