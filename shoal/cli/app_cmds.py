"""`shoal app list | stop` (`info`, `history`, `rollback` and `logs` are in deploy_cmds.py)."""

from __future__ import annotations

import sys
from typing import Any

import click

from . import display


@click.group(name="app")
def app_group() -> None:
    """Apps on the control plane."""


def list_apps() -> list[dict[str, Any]]:
    from .._client.transport import get_client

    return list(get_client().call("GET", "/v1/apps")["apps"])


@app_group.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def app_list(as_json: bool) -> None:
    """List apps, newest first (running and recently stopped)."""
    apps = list_apps()
    if as_json:
        display.print_json(apps)
    elif not apps:
        click.echo("No apps.")
    else:
        display.console().print(display.apps_table(apps))


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

    app = resolve_app(list_apps(), app_id_or_name)
    label = app["app_id"] + (f" ({app['name']})" if app.get("name") else "")
    if app.get("state") != "running":
        click.echo(f"App {label} is already {app.get('state')}.")
        return
    if not yes and sys.stdin.isatty() and sys.stdout.isatty():
        click.confirm(f"Stop app {label}? Its running inputs are cancelled.", default=True, abort=True)
    get_client().call("POST", f"/v1/apps/{app['app_id']}/stop", {})
    click.echo(f"Stopped app {label}.")
