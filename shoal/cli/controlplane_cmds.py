"""`shoal up | down | status`: the local control plane itself (`shoal app …` is in app_cmds.py, `shoal
container …` in container_cmds.py).

`down` and `status` never start a control plane; `app` and `container` commands start one if none runs, as
any SDK call does.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import click

from . import display

DOWN_WAIT_S = 15.0


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
    from .._spec.config import home

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
    from ..controlplane.main import run as run_server

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
    from .._spec.config import home

    info = _running_server()
    if info is None:
        if as_json:
            display.print_json({"running": False, "state_dir": str(home())})
        else:
            click.echo(f"shoal control plane: not running (state dir {home()})")
        sys.exit(1)
    client = _client_for(info)
    health = client.call("GET", "/v1/health")
    apps = [a for a in client.call("GET", "/v1/apps")["apps"] if a.get("state") == "running"]
    containers = client.call("GET", "/v1/containers")["containers"]
    pid = health.get("pid", info.pid)
    if as_json:
        display.print_json({"running": True, "url": info.url, "pid": pid, "state_dir": str(home()),
                     "uptime_s": health.get("uptime_s"), "apps": apps, "containers": containers})
        return
    click.echo("shoal control plane: running")
    click.echo(f"  URL        {info.url}")
    click.echo(f"  PID        {pid}")
    click.echo(f"  State dir  {home()}")
    click.echo(f"  Uptime     {display.duration(health.get('uptime_s'))}")
    console = display.console()
    click.echo()
    if apps:
        console.print(display.apps_table(apps, title="Running apps"))
    else:
        click.echo("No running apps.")
    if containers:
        console.print(display.containers_table(containers, title="Containers"))
    else:
        click.echo("No containers.")
