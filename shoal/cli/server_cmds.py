"""`shoal up | down | status` (the local control plane) and `shoal app …` (what runs on it; `shoal container …`
is in container_cmds.py).

`down` and `status` never start a control plane; `app` and `container` commands start one if none runs, as
any SDK call does.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
import time
from typing import Any

import click

DOWN_WAIT_S = 15.0


# -- helpers -----------------------------------------------------------------------------------------------------
def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m}m {s}s"
    h, m = divmod(m, 60)
    if h < 24:
        return f"{h}h {m}m"
    d, h = divmod(h, 24)
    return f"{d}d {h}h"


def _timestamp(epoch: float | None) -> str:
    if not epoch:
        return "-"
    when = datetime.datetime.fromtimestamp(epoch).astimezone()
    return f"{when:%Y-%m-%d %H:%M:%S} ({_duration(time.time() - epoch)} ago)"


def _console() -> Any:
    from rich.console import Console

    # Not a terminal (a pipe, a test): don't cut ids to 80 columns.
    return Console(width=None if sys.stdout.isatty() else 200)


def _print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True, default=str))


def _apps_table(apps: list[dict[str, Any]], title: str | None = None) -> Any:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    table.add_column("App ID", no_wrap=True)
    table.add_column("Name")
    table.add_column("Mode")
    table.add_column("Version", justify="right")
    table.add_column("State")
    table.add_column("Functions")
    table.add_column("Containers", justify="right")
    table.add_column("Created")
    table.add_column("Stopped")
    table.add_column("Next scheduled runs")
    for a in apps:
        functions = list(a.get("functions") or {})
        shown = ", ".join(functions[:4]) + (f" +{len(functions) - 4} more" if len(functions) > 4 else "")
        runs = ", ".join(f"{tag} at {datetime.datetime.fromtimestamp(ts).astimezone():%Y-%m-%d %H:%M:%S}"
                         for tag, ts in (a.get("next_runs") or {}).items() if ts)
        table.add_row(a["app_id"], a.get("name") or "-", a.get("mode") or "-",
                      f"v{a['version']}" if a.get("version") else "-", a.get("state") or "-",
                      shown or "-", str(a.get("containers", 0)), _timestamp(a.get("created_at")),
                      _timestamp(a.get("stopped_at")), runs or "-")
    return table


def _timings(timings: dict[str, Any] | None) -> str:
    if not timings:
        return "-"
    parts = []
    for phase, seconds in timings.items():
        label = phase[:-2] if phase.endswith("_s") else phase
        try:
            parts.append(f"{label}={float(seconds):.3f}s")
        except (TypeError, ValueError):
            parts.append(f"{label}={seconds}")
    return " ".join(parts)


def _containers_table(containers: list[dict[str, Any]], title: str | None = None) -> Any:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    table.add_column("Container ID", no_wrap=True)
    table.add_column("App ID", no_wrap=True)
    table.add_column("Function")
    table.add_column("State")
    table.add_column("Running inputs", justify="right")
    table.add_column("Age")
    table.add_column("Timings")
    for c in containers:
        table.add_row(c["container_id"], c.get("app_id") or "-", c.get("function") or "-", c.get("state") or "-",
                      str(c.get("running_inputs", 0)), _duration(c.get("age_s")), _timings(c.get("timings")))
    return table


def _running_server() -> Any:
    """The control plane that answers for this state directory, or None; never starts one."""
    from .._client.server_process import find_server

    return find_server()


def _client_for(info: Any) -> Any:
    from .._client.transport import Client

    return Client(info)


def _pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:  # a zombie (exited, not yet reaped by its parent) is gone for our purposes
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


# -- up / down / status ------------------------------------------------------------------------------------------
@click.command()
@click.option("--port", type=int, default=lambda: int(os.environ.get("SHOAL_PORT", "0")),
              help="Port for the HTTP API (default: SHOAL_PORT, else any free port).", show_default="any free port")
@click.option("--host", default=lambda: os.environ.get("SHOAL_HOST", "127.0.0.1"),
              help="Address to listen on (default: SHOAL_HOST, else 127.0.0.1).", show_default="127.0.0.1")
@click.option("-d", "--background", is_flag=True, help="Start it in the background and return once it answers.")
@click.option("--backend", type=click.Choice(["local", "ray"]),
              default=lambda: os.environ.get("SHOAL_BACKEND") or "local",
              help="Where containers run: this machine, or actors on a Ray cluster (default: SHOAL_BACKEND, else "
                   "local).", show_default="local")
@click.option("--ray-address", default=lambda: os.environ.get("SHOAL_RAY_ADDRESS"),
              help="The Ray cluster for --backend ray, e.g. 10.0.0.5:6379 (default: SHOAL_RAY_ADDRESS, else 'auto': "
                   "the cluster this machine belongs to).")
def up(port: int, host: str, background: bool, backend: str, ray_address: str | None) -> None:
    """Start the shoal control plane for this state directory (SHOAL_HOME, default ~/.shoal)."""
    from ..config import home

    if ray_address and backend != "ray":
        raise click.UsageError("--ray-address needs --backend ray")
    if backend == "ray":
        try:
            import ray  # noqa: F401
        except ImportError as exc:
            raise click.ClickException("--backend ray needs ray: pip install 'shoal[ray]'") from exc
    # The control plane (here, or the background process) reads them from its environment.
    os.environ["SHOAL_BACKEND"] = backend
    if ray_address:
        os.environ["SHOAL_RAY_ADDRESS"] = ray_address
    info = _running_server()
    if info is not None:
        pid = f" (pid {info.pid})" if info.pid else ""
        click.echo(f"A shoal control plane is already running at {info.url}{pid}.")
        return
    if background:
        from .._client.server_process import start_server_background

        try:
            info = start_server_background(port=port, host=host)
        except Exception as exc:  # noqa: BLE001 - report why it did not start
            raise click.ClickException(str(exc)) from exc
        pid = f" (pid {info.pid})" if info.pid else ""
        click.echo(f"shoal control plane running at {info.url}{pid}; state in {home()}, log in "
                   f"{home() / 'server.log'}. Stop it with `shoal down`.")
        return
    from ..server.main import run as run_server

    sys.exit(run_server(host=host, port=port))


@click.command()
def down() -> None:
    """Stop the running shoal control plane (and its containers)."""
    info = _running_server()
    if info is None:
        click.echo("No shoal control plane is running.")
        return
    try:
        _client_for(info).call("POST", "/v1/shutdown", {})
    except Exception as exc:  # noqa: BLE001 - report and give up
        raise click.ClickException(f"could not ask the control plane at {info.url} to stop: {exc}") from exc
    deadline = time.monotonic() + DOWN_WAIT_S
    while time.monotonic() < deadline:
        if info.pid is not None and _pid_gone(info.pid):
            break
        if info.pid is None and _running_server() is None:
            break
        time.sleep(0.05)
    else:
        raise click.ClickException(
            f"the control plane at {info.url} (pid {info.pid}) is still running after {DOWN_WAIT_S:.0f}s")
    click.echo(f"Stopped the shoal control plane at {info.url}.")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status(as_json: bool) -> None:
    """Whether the shoal control plane runs, and its running apps and containers. Exit code 1 if it does not
    run."""
    from ..config import home

    info = _running_server()
    if info is None:
        if as_json:
            _print_json({"running": False, "state_dir": str(home())})
        else:
            click.echo(f"shoal control plane: not running (state dir {home()})")
        sys.exit(1)
    client = _client_for(info)
    health = client.call("GET", "/v1/health")
    apps = [a for a in client.call("GET", "/v1/apps")["apps"] if a.get("state") == "running"]
    containers = client.call("GET", "/v1/containers")["containers"]
    pid = health.get("pid", info.pid)
    if as_json:
        _print_json({"running": True, "url": info.url, "pid": pid, "state_dir": str(home()),
                     "uptime_s": health.get("uptime_s"), "apps": apps, "containers": containers})
        return
    click.echo("shoal control plane: running")
    click.echo(f"  URL        {info.url}")
    click.echo(f"  PID        {pid}")
    click.echo(f"  State dir  {home()}")
    click.echo(f"  Uptime     {_duration(health.get('uptime_s'))}")
    console = _console()
    click.echo()
    if apps:
        console.print(_apps_table(apps, title="Running apps"))
    else:
        click.echo("No running apps.")
    if containers:
        console.print(_containers_table(containers, title="Containers"))
    else:
        click.echo("No containers.")


# -- app ---------------------------------------------------------------------------------------------------------
@click.group(name="app")
def app_group() -> None:
    """Apps on the control plane."""


def _list_apps() -> list[dict[str, Any]]:
    from .._client.transport import get_client

    return list(get_client().call("GET", "/v1/apps")["apps"])


@app_group.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def app_list(as_json: bool) -> None:
    """List apps, newest first (running and recently stopped)."""
    apps = _list_apps()
    if as_json:
        _print_json(apps)
    elif not apps:
        click.echo("No apps.")
    else:
        _console().print(_apps_table(apps))


def resolve_app(apps: list[dict[str, Any]], id_or_name: str) -> dict[str, Any]:
    """An app by id, else the running deployed app with that name, else the newest running one."""
    for a in apps:
        if a["app_id"] == id_or_name:
            return a
    named = [a for a in apps if a.get("name") == id_or_name and a.get("state") == "running"]
    if named:
        return max(named, key=lambda a: (a.get("mode") == "deployed", a.get("created_at") or 0))
    if any(a.get("name") == id_or_name for a in apps):
        raise click.ClickException(f"no running app named {id_or_name!r}")
    raise click.ClickException(f"no app with id or name {id_or_name!r}")


@app_group.command(name="stop")
@click.argument("app_id_or_name")
@click.option("-y", "--yes", is_flag=True, help="Don't ask for confirmation (only asked on a terminal).")
def app_stop(app_id_or_name: str, yes: bool) -> None:
    """Stop a running app, by id or by name (the deployed app of that name, else the newest running one).
    Stopping a deployed app is final: deploying it again starts a new app at version 1."""
    from .._client.transport import get_client

    app = resolve_app(_list_apps(), app_id_or_name)
    label = app["app_id"] + (f" ({app['name']})" if app.get("name") else "")
    if app.get("state") != "running":
        click.echo(f"App {label} is already {app.get('state')}.")
        return
    if not yes and sys.stdin.isatty() and sys.stdout.isatty():
        click.confirm(f"Stop app {label}? Its running inputs are cancelled.", default=True, abort=True)
    get_client().call("POST", f"/v1/apps/{app['app_id']}/stop", {})
    click.echo(f"Stopped app {label}.")
