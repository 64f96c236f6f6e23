"""`shoal container list | logs | stop` (what runs on the control plane) and `shoal function autoscaler
settings | update`.

`shoal container exec` and `shoal shell` are in exec_cmds.py.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from .._spec.limits import SCALEDOWN_WINDOW_S
from . import display
from .app_cmds import list_apps

FOLLOW_POLL_S = 25.0


def _client() -> Any:
    from .._client.transport import get_client

    return get_client()


# -- container ---------------------------------------------------------------------------------------------------
@click.group(name="container")
def container_group() -> None:
    """Containers on the control plane."""


@container_group.command(name="list")
@click.option("--app-id", default=None, help="Only the containers of this app.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def container_list(app_id: str | None, as_json: bool) -> None:
    """List live containers: id, app, function, state, running inputs, age, start-up timings."""
    containers = _client().call("GET", "/v1/containers")["containers"]
    if app_id:
        containers = [c for c in containers if c.get("app_id") == app_id]
    if as_json:
        display.print_json(containers)
    elif not containers:
        click.echo("No containers.")
    else:
        display.console().print(display.containers_table(containers))


def _echo_entries(entries: list[dict[str, Any]]) -> None:
    for e in entries:
        stream = sys.stdout if e.get("fd") == "stdout" else sys.stderr
        stream.write(e["data"])
        stream.flush()


@container_group.command(name="logs")
@click.argument("container_id")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new output until the container stops.")
def container_logs(container_id: str, follow: bool) -> None:
    """Print a container's output (what its app's log still holds), optionally following it."""
    from ..exception import NotFoundError

    client = _client()
    after, wait = -1, 0.0  # the first read returns what is there at once
    while True:
        try:
            resp = client.call("GET", f"/v1/containers/{container_id}/logs?after={after}&timeout={wait}")
        except NotFoundError as exc:
            if after >= 0 or wait:
                return  # it was there: it ended, leaving no more output
            raise click.ClickException(str(exc)) from exc
        _echo_entries(resp["entries"])
        after, wait = max(after, resp["last"]), FOLLOW_POLL_S
        if not follow or (resp["state"] != "running" and not resp["entries"]):
            return


@container_group.command(name="stop")
@click.argument("container_id")
@click.option("--graceful", is_flag=True, help="Let it finish the inputs it runs (it takes no new ones).")
@click.option("-y", "--yes", is_flag=True, help="Don't ask for confirmation (only asked on a terminal).")
def container_stop(container_id: str, graceful: bool, yes: bool) -> None:
    """Stop a container. Its running inputs go back to the queue and run in another container, unless
    --graceful lets it finish them first."""
    from ..exception import NotFoundError

    if not yes and sys.stdin.isatty() and sys.stdout.isatty():
        click.confirm(f"Stop container {container_id}?", default=True, abort=True)
    try:
        _client().call("POST", f"/v1/containers/{container_id}/stop", {"graceful": graceful})
    except NotFoundError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"Stopped container {container_id}" + (" (draining its inputs)." if graceful else "."))


# -- function autoscaler -------------------------------------------------------------------------------------------
def resolve_function(ref: str) -> str:
    """A function id from `fu-…`, `APP/FUNCTION` or `APP.FUNCTION` (APP: a running app's id or name)."""
    if ref.startswith("fu-"):
        return ref
    apps = [a for a in list_apps() if a.get("state") == "running"]
    splits = [tuple(ref.split("/", 1))] if "/" in ref else [
        (ref[:i], ref[i + 1:]) for i, ch in enumerate(ref) if ch == "."]
    for app_ref, tag in splits:
        for a in sorted(apps, key=lambda a: -(a.get("created_at") or 0)):
            if app_ref in (a["app_id"], a.get("name")) and tag in (a.get("functions") or {}):
                return str(a["functions"][tag])
    raise click.ClickException(f"no function {ref!r} in a running app (use fu-ID, APP/FUNCTION or APP.FUNCTION)")


@click.group(name="function")
def function_group() -> None:
    """Functions of running apps."""


@function_group.group(name="autoscaler")
def autoscaler_group() -> None:
    """A function's autoscaler settings (runtime overrides last until the app is redeployed)."""


def _print_settings(resp: dict[str, Any], as_json: bool) -> None:
    if as_json:
        display.print_json(resp)
        return
    settings = resp["settings"]
    overridden = resp.get("overrides") or {}
    for name in ("min_containers", "max_containers", "buffer_containers", "scaledown_window"):
        value = settings.get(name)
        mark = " (runtime override)" if name in overridden else ""
        click.echo(f"{name:18} {'-' if value is None else value}{mark}")
    d = resp.get("last_decision")
    if d:
        click.echo(f"{'last decision':18} desired {d['desired']} (current {d['current']}"
                   f"{', panic' if d['panic'] else ''}): {d['reason']}")
    if resp.get("backoff_reason"):
        click.echo(f"{'backing off':18} {resp['backoff_s']:.0f}s after failed starts: {resp['backoff_reason']}")


@autoscaler_group.command(name="settings")
@click.argument("function_ref")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (with the last decision and its inputs).")
def autoscaler_settings(function_ref: str, as_json: bool) -> None:
    """Show the autoscaler settings in force and the last decision."""
    resp = _client().call("GET", f"/v1/functions/{resolve_function(function_ref)}/autoscaler")
    _print_settings(resp, as_json)


@autoscaler_group.command(name="update")
@click.argument("function_ref")
@click.option("--min-containers", type=int, default=None)
@click.option("--max-containers", type=int, default=None)
@click.option("--buffer-containers", type=int, default=None)
@click.option("--scaledown-window", type=int, default=None,
              help=f"Seconds, {SCALEDOWN_WINDOW_S[0]} to {SCALEDOWN_WINDOW_S[1]}.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def autoscaler_update(function_ref: str, min_containers: int | None, max_containers: int | None,
                      buffer_containers: int | None, scaledown_window: int | None, as_json: bool) -> None:
    """Override some autoscaler settings now, until the app is redeployed."""
    from ..exception import InvalidError

    values = {"min_containers": min_containers, "max_containers": max_containers,
              "buffer_containers": buffer_containers, "scaledown_window": scaledown_window}
    body = {k: v for k, v in values.items() if v is not None}
    if not body:
        raise click.UsageError("give at least one of --min-containers, --max-containers, --buffer-containers, "
                               "--scaledown-window")
    try:
        resp = _client().call("POST", f"/v1/functions/{resolve_function(function_ref)}/autoscaler", body)
    except InvalidError as exc:
        raise click.ClickException(str(exc)) from exc
    _print_settings(resp, as_json)
