"""`shoal workspace proxy-tokens create | list | delete | allow | revoke` (Modal's grammar) and `shoal token info`.

A token's secret is printed once, by `create`; the control plane keeps only its hash.
"""

from __future__ import annotations

import click

from . import display
from .deploy_cmds import api_call


def _scope_text(scope: list[str]) -> str:
    return ", ".join(scope) if scope else "every app"


@click.group("workspace")
def workspace_group() -> None:
    """Workspace-wide settings."""


@workspace_group.group("proxy-tokens")
def proxy_tokens_group() -> None:
    """Manage proxy auth tokens: the Modal-Key / Modal-Secret pairs that web functions with
    `requires_proxy_auth=True` ask for."""


@proxy_tokens_group.command("create")
@click.option("--app", "apps", multiple=True, metavar="NAME",
              help="Limit the token to this app (repeatable). Default: every app.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def proxy_tokens_create(apps: tuple[str, ...], as_json: bool) -> None:
    """Create a token and print its id and secret. The secret is shown only this once."""
    out = api_call("POST", "/v1/proxy-tokens", {"scope": list(apps)})
    token_id, secret = out["token_id"], out["token_secret"]
    if as_json:
        display.print_json({"token_id": token_id, "token_secret": secret, "scope": list(apps)})
        return
    click.echo(f"Created proxy token for {_scope_text(list(apps))}.")
    click.echo(f"Token ID:     {token_id}")
    click.echo(f"Token secret: {secret}")
    click.echo("The secret is shown only now; store it safely. Send both with each request:")
    click.echo(f'  curl -H "Modal-Key: {token_id}" -H "Modal-Secret: {secret}" <web function URL>')


@proxy_tokens_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def proxy_tokens_list(as_json: bool) -> None:
    """List tokens with their scope (never their secrets)."""
    rows = api_call("GET", "/v1/proxy-tokens")["tokens"]
    if as_json:
        display.print_json(rows)
        return
    from rich.table import Table

    table = Table(title="Proxy tokens", title_justify="left")
    table.add_column("Token ID", no_wrap=True)
    table.add_column("Apps")
    table.add_column("Created")
    for r in rows:
        table.add_row(r["token_id"], _scope_text(r["scope"]), display.timestamp(r["created_at"]))
    display.console().print(table)


@proxy_tokens_group.command("delete")
@click.argument("token_id")
@click.option("-y", "--yes", is_flag=True, help="Don't ask for confirmation.")
def proxy_tokens_delete(token_id: str, yes: bool) -> None:
    """Delete a token: requests carrying it are refused from now on."""
    if not yes and not click.confirm(f"Delete proxy token {token_id}?", default=False):
        raise click.Abort()
    api_call("DELETE", f"/v1/proxy-tokens/{token_id}")
    click.echo(f"Deleted proxy token {token_id}")


def _change_scope(token_id: str, action: str, app: str) -> None:
    out = api_call("POST", f"/v1/proxy-tokens/{token_id}/{action}", {"app": app})
    click.echo(f"Token {token_id} may access: {_scope_text(out['scope'])}")


@proxy_tokens_group.command("allow")
@click.argument("token_id")
@click.argument("app")
def proxy_tokens_allow(token_id: str, app: str) -> None:
    """Let a scoped token reach one more app."""
    _change_scope(token_id, "allow", app)


@proxy_tokens_group.command("revoke")
@click.argument("token_id")
@click.argument("app")
def proxy_tokens_revoke(token_id: str, app: str) -> None:
    """Stop a scoped token from reaching an app."""
    _change_scope(token_id, "revoke", app)


@click.group("token")
def token_group() -> None:
    """The credentials this client uses to talk to the control plane."""


@token_group.command("info")
def token_info() -> None:
    """Show which control plane you talk to and where its API token comes from (never the token itself)."""
    import os

    from .._client.server_process import _healthy, read_server_info
    from .._spec.config import home

    info = read_server_info()
    if info is None:
        click.echo(f"No control plane recorded in {home()} (one starts on first use, or with `shoal up`).")
        return
    state = "answering" if _healthy(info.url) else "not answering"
    source = "SHOAL_TOKEN" if os.environ.get("SHOAL_TOKEN") else str(home() / "token")
    click.echo(f"Control plane: {info.url} ({state})")
    click.echo(f"API token:     {source if info.token else 'none found'}")
