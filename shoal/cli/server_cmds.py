"""`shoal server info | logs | requests | autoscaler settings | autoscaler update | deploy`: Servers
(`@app.server()`) of running and deployed apps, named `APP NAME` as in Modal's CLI.

(`shoal up | down | status` manage the control plane itself; they are in controlplane_cmds.py.)

`shoal server deploy --app-name NAME --cmd "CMD"` is the "direct" form: it deploys an app with one Server whose
`@modal.enter()` runs CMD in a shell; CMD must start a process listening on `0.0.0.0:PORT`.
"""

from __future__ import annotations

import datetime
from typing import Any
from urllib.parse import quote

import click

from .._spec.limits import SCALEDOWN_WINDOW_S
from . import display
from .deploy_cmds import STRATEGY, api_call, print_app_log


def _server(app_name: str, name: str) -> Any:
    """The Server `name` of the app `app_name`, resolved now (a CLI error if there is none)."""
    from ..exception import Error
    from ..servers import Server

    try:
        return Server.from_name(app_name, name).hydrate()
    except Error as exc:
        raise click.ClickException(str(exc)) from exc


@click.group(name="server")
def server_group() -> None:
    """Servers (`@app.server()`) of running and deployed apps."""


# -- info ----------------------------------------------------------------------------------------------------------
@server_group.command(name="info")
@click.argument("app_name")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def server_info(app_name: str, name: str, as_json: bool) -> None:
    """A Server's URL, port and request-handling settings."""
    import dataclasses

    from ..exception import Error

    server = _server(app_name, name)
    try:
        info = server.info()
    except Error as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        display.print_json(dataclasses.asdict(info))
        return
    labels = {"name": "Server", "app_name": "App", "object_id": "Server ID", "url": "URL", "port": "Port",
              "unauthenticated": "Unauthenticated", "target_concurrency": "Target concurrency",
              "max_concurrency": "Max concurrency", "routing_region": "Routing region"}
    for key, label in labels.items():
        value = getattr(info, key)
        click.echo(f"{label:19} {'-' if value is None else value}")


# -- logs ----------------------------------------------------------------------------------------------------------
@server_group.command(name="logs")
@click.argument("app_name")
@click.argument("name")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new entries until the app stops.")
def server_logs(app_name: str, name: str, follow: bool) -> None:
    """Print the output of a Server's containers (what its app's log still holds), optionally following it.

    Where the app has other functions, entries are those of the Server's containers that are still up (or were
    while this command ran)."""
    server = _server(app_name, name)
    function_id = server.object_id
    app_id = server._service._lookup_app_id
    info = api_call("GET", f"/v1/apps/{quote(app_id or app_name, safe='')}/info")
    if len(info.get("functions") or []) <= 1:  # the Server is all the app runs: no need to filter
        print_app_log(info["app_id"], follow)
        return
    mine: set[str] = set()

    def of_this_server(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if entries:
            containers = api_call("GET", "/v1/containers")["containers"]
            mine.update(c["container_id"] for c in containers if c.get("function_id") == function_id)
        return [e for e in entries if e.get("container_id") in mine]

    print_app_log(info["app_id"], follow, of_this_server)


# -- requests ------------------------------------------------------------------------------------------------------
def _clock(t: Any) -> str:
    if not isinstance(t, (int, float)):
        return "-" if t is None else str(t)
    return f"{datetime.datetime.fromtimestamp(t).astimezone():%Y-%m-%d %H:%M:%S.%f}"[:-3]


@server_group.command(name="requests")
@click.argument("app_name")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def server_requests(app_name: str, name: str, as_json: bool) -> None:
    """The recent requests a Server answered: when, method, path, status, duration and container."""
    from rich.table import Table

    server = _server(app_name, name)
    requests = api_call("GET", f"/v1/functions/{server.object_id}/requests").get("requests") or []
    if as_json:
        display.print_json(requests)
        return
    if not requests:
        click.echo("No requests.")
        return
    table = Table(title=f"{name} ({server.object_id})", title_justify="left")
    for col in ("Time", "Method", "Path", "Status", "Duration (ms)", "Container ID"):
        table.add_column(col, no_wrap=col in ("Time", "Container ID"),
                         justify="right" if col in ("Status", "Duration (ms)") else "left")
    for r in requests:
        duration = r.get("duration_ms")
        table.add_row(_clock(r.get("t")), str(r.get("method") or "-"), str(r.get("path") or "-"),
                      str(r.get("status") or "-"), "-" if duration is None else f"{float(duration):.1f}",
                      str(r.get("container_id") or "-"))
    display.console().print(table)


# -- autoscaler ----------------------------------------------------------------------------------------------------
@server_group.group(name="autoscaler")
def server_autoscaler_group() -> None:
    """A Server's autoscaler settings (runtime overrides last until the app is redeployed)."""


SETTINGS = ("target_concurrency", "min_containers", "max_containers", "buffer_containers", "scaleup_window",
            "scaledown_window")


def _print_settings(resp: dict[str, Any], as_json: bool) -> None:
    if as_json:
        display.print_json(resp)
        return
    settings = resp["settings"]
    overridden = resp.get("overrides") or {}
    for name in SETTINGS:
        value = settings.get(name)
        mark = " (runtime override)" if name in overridden else ""
        shown = "- (no autoscaling)" if name == "target_concurrency" and not value else (
            "-" if value is None else value)
        click.echo(f"{name:18} {shown}{mark}")
    d = resp.get("last_decision")
    if d:
        click.echo(f"{'last decision':18} desired {d['desired']} (current {d['current']}"
                   f"{', panic' if d.get('panic') else ''}): {d['reason']}")
    if resp.get("backoff_reason"):
        click.echo(f"{'backing off':18} {resp['backoff_s']:.0f}s after failed starts: {resp['backoff_reason']}")


@server_autoscaler_group.command(name="settings")
@click.argument("app_name")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (with the last decision and its inputs).")
def server_autoscaler_settings(app_name: str, name: str, as_json: bool) -> None:
    """Show the autoscaler settings in force and the last decision."""
    server = _server(app_name, name)
    _print_settings(api_call("GET", f"/v1/functions/{server.object_id}/autoscaler"), as_json)


@server_autoscaler_group.command(name="update")
@click.argument("app_name")
@click.argument("name")
@click.option("--target-concurrency", type=float, default=None, help="Requests per container; 0 turns it off.")
@click.option("--min-containers", type=int, default=None)
@click.option("--max-containers", type=int, default=None)
@click.option("--buffer-containers", type=int, default=None)
@click.option("--scaleup-window", type=float, default=None, help="Seconds of sustained demand before scaling up.")
@click.option("--scaledown-window", type=int, default=None,
              help=f"Seconds, {SCALEDOWN_WINDOW_S[0]} to {SCALEDOWN_WINDOW_S[1]}.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def server_autoscaler_update(app_name: str, name: str, target_concurrency: float | None,
                             min_containers: int | None, max_containers: int | None,
                             buffer_containers: int | None, scaleup_window: float | None,
                             scaledown_window: int | None, as_json: bool) -> None:
    """Override some autoscaler settings now, until the app is redeployed."""
    values = {"target_concurrency": target_concurrency, "min_containers": min_containers,
              "max_containers": max_containers, "buffer_containers": buffer_containers,
              "scaleup_window": scaleup_window, "scaledown_window": scaledown_window}
    body = {k: v for k, v in values.items() if v is not None}
    if not body:
        raise click.UsageError("give at least one of " + ", ".join(f"--{k.replace('_', '-')}" for k in SETTINGS))
    server = _server(app_name, name)
    _print_settings(api_call("POST", f"/v1/functions/{server.object_id}/autoscaler", body), as_json)


# -- deploy (the direct form) ----------------------------------------------------------------------------------------
def _direct_server_class(command: str) -> type:
    """A Server class whose @enter runs `command` in a shell. Defined in a local scope, so it (and `command`)
    travels by value in the definition (`serialized=True`): the container needs nothing of this machine."""
    from .._partial import enter

    class Server:
        @enter()
        def start(self) -> None:
            import subprocess

            self.process = subprocess.Popen(command, shell=True)

    Server.__doc__ = f"Runs `{command}`."
    return Server


def build_direct_app(*, app_name: str, command: str, name: str = "Server", port: int = 8000,
                     image_pip: tuple[str, ...] = (), env_vars: tuple[str, ...] = (), secrets: tuple[str, ...] = (),
                     **server_kwargs: Any) -> tuple[Any, Any]:
    """The App `shoal server deploy` deploys, and its one Server; `server_kwargs` go to `@app.server()`."""
    from ..app import App
    from ..image import Image
    from ..secret import Secret

    if not command.strip():
        raise click.UsageError("--cmd must be a shell command that starts the server process")
    env: dict[str, str | None] = {}
    for item in env_vars:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.UsageError(f"--env-var takes KEY=VALUE, got {item!r}")
        env[key] = value
    image = Image.debian_slim().pip_install(*image_pip) if image_pip else None
    app = App(app_name)
    server = app.server(image=image, env=env or None, secrets=[Secret.from_name(s) for s in secrets],
                        serialized=True, name=name, port=port,
                        **{k: v for k, v in server_kwargs.items() if v is not None})(_direct_server_class(command))
    return app, server


@server_group.command(name="deploy")
@click.option("--app-name", required=True, help="The app to deploy (or update, if deployed already).")
@click.option("--cmd", "command", required=True,
              help="Shell command that starts the server process; it must listen on 0.0.0.0:PORT.")
@click.option("--name", default="Server", show_default=True, help="The Server's name in the app.")
@click.option("--port", type=int, default=8000, show_default=True, help="The port the process listens on.")
@click.option("--image-pip", "image_pip", multiple=True, metavar="PKG",
              help="A package to pip install into the image (repeat for more).")
@click.option("--env-var", "env_vars", multiple=True, metavar="KEY=VALUE", help="An environment variable (repeat).")
@click.option("--secret", "secrets", multiple=True, metavar="NAME", help="A named secret to mount (repeat).")
@click.option("--unauthenticated", is_flag=True, help="Accept requests without Modal-Key/Modal-Secret headers.")
@click.option("--target-concurrency", type=float, default=None, help="Requests per container to autoscale to.")
@click.option("--max-concurrency", type=int, default=None, help="Requests per container above which 429.")
@click.option("--min-containers", type=int, default=None)
@click.option("--max-containers", type=int, default=None)
@click.option("--buffer-containers", type=int, default=None)
@click.option("--scaleup-window", type=float, default=None)
@click.option("--scaledown-window", type=int, default=None)
@click.option("--startup-timeout", type=float, default=30, show_default=True,
              help="Seconds for the process to listen on the port.")
@click.option("--exit-grace-period", type=float, default=0, show_default=True,
              help="Seconds for in-flight requests when a container scales down.")
@click.option("--cpu", type=float, default=None)
@click.option("--memory", type=int, default=None, help="MiB.")
@click.option("--gpu", default=None, help="e.g. T4, A100:2.")
@click.option("--strategy", type=STRATEGY, default="rolling", show_default=True,
              help="rolling: old containers serve until new ones are ready, then drain; recreate: stop them now.")
def server_deploy(app_name: str, command: str, name: str, port: int, image_pip: tuple[str, ...],
                  env_vars: tuple[str, ...], secrets: tuple[str, ...], unauthenticated: bool,
                  target_concurrency: float | None, max_concurrency: int | None, min_containers: int | None,
                  max_containers: int | None, buffer_containers: int | None, scaleup_window: float | None,
                  scaledown_window: int | None, startup_timeout: float, exit_grace_period: float,
                  cpu: float | None, memory: int | None, gpu: str | None, strategy: str) -> None:
    """Deploy an app with one Server that runs CMD, without writing Python.

    \b
    e.g.  shoal server deploy --app-name files --unauthenticated \\
              --cmd "python -m http.server -d / 8000"
    """
    from .. import enable_output
    from ..exception import Error

    try:
        app, server = build_direct_app(
            app_name=app_name, command=command, name=name, port=port, image_pip=image_pip, env_vars=env_vars,
            secrets=secrets, unauthenticated=unauthenticated, target_concurrency=target_concurrency,
            max_concurrency=max_concurrency, min_containers=min_containers, max_containers=max_containers,
            buffer_containers=buffer_containers, scaleup_window=scaleup_window, scaledown_window=scaledown_window,
            startup_timeout=startup_timeout, exit_grace_period=exit_grace_period, cpu=cpu, memory=memory, gpu=gpu)
        with enable_output():
            app.deploy(name=app_name, strategy=strategy)
        url = server.get_url()
    except Error as exc:
        raise click.ClickException(f"{type(exc).__name__}: {exc}") from exc
    click.echo(f"Deployed app {app_name!r} version {app._deployed_version} ({app.app_id}).")
    click.echo(f"  {name} => {url or '(no URL)'}")
