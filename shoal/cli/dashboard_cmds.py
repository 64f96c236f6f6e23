"""`shoal dashboard`: open the control plane's dashboard in a browser, logged in with a one-time link.

The link carries a login token the control plane issues for the API token (it works once, for a few minutes);
the page exchanges it for a session cookie. `--no-browser` prints it instead, as the last line (scripts use it).
"""

from __future__ import annotations

import click

from .deploy_cmds import _client, api_call


@click.command(name="dashboard")
@click.option("--no-browser", is_flag=True, help="Print the login URL instead of opening a browser.")
def dashboard(no_browser: bool) -> None:
    """Open the dashboard: apps, functions, calls, containers with live logs, web endpoints, storage."""
    path = api_call("POST", "/v1/dashboard/login")["path"]
    url = _client().info.url.rstrip("/") + path
    if not no_browser:
        import webbrowser

        try:
            opened = webbrowser.open(url)
        except webbrowser.Error:
            opened = False
        if opened:
            click.echo("The dashboard is open in your browser; its login link works once:")
        else:
            click.echo("No browser here: open this link (it works once, for 5 minutes):")
    click.echo(url)
