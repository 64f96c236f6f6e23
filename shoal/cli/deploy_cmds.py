"""`shoal deploy APP_REF` and the commands on deployed apps: `shoal app info | history | logs | rollback`
(`app list` and `app stop` are in controlplane_cmds.py).

APP_REF is `file.py`, `file.py::app_var`, or with `-m` a module path (`-m pkg.mod[::app_var]`); the file is
imported as `shoal run` imports it. Without a variable name the module's only App is deployed (or, among
several, the one named `app`).
"""

from __future__ import annotations

import datetime
import sys
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import click

from . import display
from .app_cmds import app_group
from .run import UserCodeError, import_file_or_module, parse_func_ref

FOLLOW_POLL_S = 25.0
STRATEGY = click.Choice(["rolling", "recreate"])


def _client() -> Any:
    from .._client.transport import get_client

    return get_client()


def api_call(method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    """A control-plane request whose errors (no such app, bad version) are CLI errors, not tracebacks."""
    from ..exception import Error

    try:
        return _client().call(method, path, body)
    except Error as exc:
        raise click.ClickException(str(exc)) from exc


def find_app(members: dict[str, Any], object_path: str, src: str) -> Any:
    """The App a module defines: the one named by `object_path`, else its only one, else the one called `app`."""
    from ..app import App

    apps = {var: value for var, value in members.items() if isinstance(value, App)}
    if object_path:
        value = members.get(object_path)
        if isinstance(value, App):
            return value
        have = f"; it has: {', '.join(apps)}" if apps else "; it defines no shoal.App"
        raise click.ClickException(f"{object_path!r} in {src!r} is not a shoal.App{have}")
    distinct = {id(a): a for a in apps.values()}
    if len(distinct) == 1:
        return next(iter(distinct.values()))
    if "app" in apps:
        return apps["app"]
    if not apps:
        raise click.ClickException(f"{src!r} defines no shoal.App to deploy")
    raise click.ClickException(f"{src!r} defines several apps ({', '.join(apps)}): say which one, e.g. "
                               f"`shoal deploy {src}::{next(iter(apps))}`")


@click.command()
@click.argument("app_ref")
@click.option("--name", default=None, help="Name to deploy the app as (default: the App's name).")
@click.option("--strategy", type=STRATEGY, default="rolling", show_default=True,
              help="rolling: old containers serve until new ones are ready, then drain; recreate: stop them now.")
@click.option("--tag", default="", help="A label recorded with this version (shown by `shoal app history`).")
@click.option("-m", "module_mode", is_flag=True, help="Read APP_REF as a Python module path (pkg.mod), not a file.")
@click.option("-e", "--env", default=None, hidden=True, help="Accepted for Modal compatibility; ignored.")
def deploy(app_ref: str, name: str | None, strategy: str, tag: str, module_mode: bool, env: str | None) -> None:
    """Deploy an app: it keeps running under its name, with its schedules, until `shoal app stop`.

    \b
    APP_REF is one of
      file.py               the module's App
      file.py::app_var      the App in that variable
      -m pkg.mod[::var]     a module instead of a file

    Deploying an app that is already deployed updates it in place as its next version.
    """
    from .. import enable_output
    from ..exception import Error

    ref = parse_func_ref(app_ref, module_mode)
    module = import_file_or_module(ref)
    app = find_app(vars(module), ref.object_path, ref.file_or_module)
    with enable_output():
        try:
            app.deploy(name=name, strategy=strategy, tag=tag)
        except Error as exc:
            raise click.ClickException(f"{type(exc).__name__}: {exc}") from exc
        except Exception as exc:
            raise UserCodeError(exc, "deploying failed") from exc
    click.echo(f"Deployed app {name or app.name!r} version {app._deployed_version} ({app.app_id}).")


# -- shoal app info | history | rollback | logs --------------------------------------------------------------------
def _when(epoch: float | None) -> str:
    if not epoch:
        return "-"
    return f"{datetime.datetime.fromtimestamp(epoch).astimezone():%Y-%m-%d %H:%M:%S}"


@app_group.command(name="info")
@click.argument("app_ref")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def app_info(app_ref: str, as_json: bool) -> None:
    """An app's version, functions (containers, next scheduled run) and containers. APP_REF: a name (the
    deployed app, else the newest running app of that name) or an app id."""
    from rich.table import Table

    info = api_call("GET", f"/v1/apps/{quote(app_ref, safe='')}/info")
    if as_json:
        display.print_json(info)
        return
    click.echo(f"App        {info['app_id']}" + (f" ({info['name']})" if info.get("name") else ""))
    click.echo(f"Mode       {info.get('mode')}")
    click.echo(f"State      {info.get('state')}")
    if info.get("version"):
        click.echo(f"Version    {info['version']} (deployed {display.timestamp(info.get('deployed_at'))}, "
                   f"{info.get('strategy')})")
    click.echo(f"Created    {display.timestamp(info.get('created_at'))}")
    if info.get("stopped_at"):
        click.echo(f"Stopped    {display.timestamp(info.get('stopped_at'))}")
    console = display.console()
    if info["functions"]:
        table = Table(title="Functions", title_justify="left")
        for col in ("Function", "Function ID", "Version", "Containers", "Queued", "Next scheduled run"):
            table.add_column(col, no_wrap=col.endswith("ID"))
        for f in info["functions"]:
            table.add_row(f["tag"], f["function_id"], str(f.get("version") or "-"), str(f["containers"]),
                          str(f["queued"]), _when(f.get("next_run")))
        console.print(table)
    else:
        click.echo("No functions.")
    if info["containers"]:
        table = Table(title="Containers", title_justify="left")
        for col in ("Container ID", "Function", "State", "Running inputs"):
            table.add_column(col, no_wrap=col.endswith("ID"))
        for c in info["containers"]:
            state = c["state"] + (" (old version)" if c.get("superseded") else "")
            table.add_row(c["container_id"], c["function"], state, str(c["running_inputs"]))
        console.print(table)
    else:
        click.echo("No containers.")


@app_group.command(name="history")
@click.argument("app_ref")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def app_history(app_ref: str, as_json: bool) -> None:
    """The versions of a deployed app: when, how (strategy) and with which functions."""
    from rich.table import Table

    info = api_call("GET", f"/v1/apps/{quote(app_ref, safe='')}/history")
    if as_json:
        display.print_json(info)
        return
    if not info["versions"]:
        click.echo(f"App {info['app_id']} has no deployed versions.")
        return
    table = Table(title=f"{info.get('name') or info['app_id']} ({info['app_id']})", title_justify="left")
    for col in ("Version", "Deployed", "Strategy", "Tag", "Functions"):
        table.add_column(col)
    for v in reversed(info["versions"]):
        label = str(v["version"]) + (" (current)" if v["version"] == info.get("version") else "")
        tag = v.get("tag") or ""
        if v.get("rollback_of") and not tag:
            tag = f"rollback to v{v['rollback_of']}"
        table.add_row(label, _when(v["created_at"]), v["strategy"], tag or "-", ", ".join(v["functions"]) or "-")
    display.console().print(table)


@app_group.command(name="rollback")
@click.argument("app_ref")
@click.argument("version", type=int, required=False)
@click.option("--strategy", type=STRATEGY, default="rolling", show_default=True,
              help="How the running containers are replaced (as for `shoal deploy`).")
def app_rollback(app_ref: str, version: int | None, strategy: str) -> None:
    """Deploy an earlier VERSION of a deployed app again, as its next version (default: the previous one)."""
    body: dict[str, Any] = {"strategy": strategy}
    if version is not None:
        body["version"] = version
    resp = api_call("POST", f"/v1/apps/{quote(app_ref, safe='')}/rollback", body)
    click.echo(f"Rolled back app {resp.get('name') or resp['app_id']!r} to version {resp['rolled_back_to']}: "
               f"now version {resp['version']}.")


@app_group.command(name="logs")
@click.argument("app_ref")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new entries until the app stops.")
def app_logs(app_ref: str, follow: bool) -> None:
    """Print an app's log (container output and system messages it still holds), optionally following it."""
    print_app_log(api_call("GET", f"/v1/apps/{quote(app_ref, safe='')}/info")["app_id"], follow)


Entries = list[dict[str, Any]]


def print_app_log(app_id: str, follow: bool, keep: Callable[[Entries], Entries] | None = None) -> None:
    """Print the entries of an app's log it still holds (those `keep` keeps) and, with `follow`, new ones until
    the app stops. No `session=1`: reading an app's log must not make its liveness depend on this process."""
    from .. import enable_output
    from .._output import LogPrinter

    printer = LogPrinter()
    after, wait = -1, 0.0  # the first read returns what is there at once
    with enable_output():  # also the start-up timings ("info" entries)
        while True:
            resp = api_call("GET", f"/v1/apps/{app_id}/logs?after={after}&timeout={wait}")
            for entry in keep(resp["entries"]) if keep is not None else resp["entries"]:
                printer.write(entry)
            after, wait = max(after, resp.get("last", after)), FOLLOW_POLL_S
            if resp["state"] == "stopped" and after < 0:
                click.echo(f"App {app_id} is stopped; its log is no longer kept.", err=True)
            if not follow or resp["state"] == "stopped":
                return
            sys.stdout.flush()
