"""`shoal secret create | list | delete`. Values are read, never printed."""

from __future__ import annotations

import json
from pathlib import Path

import click

from . import display


@click.group("secret")
def secret_group() -> None:
    """Manage named secrets (stored encrypted by the control plane)."""


@secret_group.command("create")
@click.argument("name")
@click.argument("pairs", nargs=-1, metavar="[KEY=VALUE]...")
@click.option("--from-dotenv", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Read KEY=VALUE lines from a .env file.")
@click.option("--from-json", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Read a JSON object of string values.")
@click.option("--force", is_flag=True, help="Overwrite an existing secret of that name.")
def secret_create(name: str, pairs: tuple[str, ...], from_dotenv: Path | None, from_json: Path | None,
                  force: bool) -> None:
    """Create a secret from KEY=VALUE pairs, a .env file or a JSON file. Use `-` as VALUE to read it from
    standard input (keeps it out of shell history)."""
    from .._client.transport import get_client
    from ..secret import _parse_dotenv

    env: dict[str, str] = {}
    if from_dotenv:
        env.update({k: v for k, v in _parse_dotenv(from_dotenv.read_text()).items() if v is not None})
    if from_json:
        data = json.loads(from_json.read_text())
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            raise click.UsageError("--from-json needs a JSON object whose values are strings")
        env.update(data)
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.UsageError(f"expected KEY=VALUE, got {pair.split('=')[0]!r}=…" if sep else
                                   f"expected KEY=VALUE, got {pair!r}")
        env[key] = click.get_text_stream("stdin").read().rstrip("\n") if value == "-" else value
    if not env:
        raise click.UsageError("give at least one KEY=VALUE (or --from-dotenv / --from-json)")
    try:
        get_client().call("POST", "/v1/secrets", {"name": name, "env": env, "overwrite": force})
    except Exception as exc:  # noqa: BLE001 - show the control plane's message, not a traceback
        raise click.ClickException(str(exc)) from exc
    click.echo(f"Created secret {name!r} with keys: {', '.join(sorted(env))}")


@secret_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def secret_list(as_json: bool) -> None:
    """List secrets by name (never their values)."""
    from .._client.transport import get_client

    rows = get_client().call("GET", "/v1/secrets")["secrets"]
    if as_json:
        display.print_json(rows)
        return
    from rich.table import Table

    table = Table(title="Secrets", title_justify="left")
    table.add_column("Name")
    table.add_column("Created")
    table.add_column("Updated")
    for r in rows:
        table.add_row(r["name"], display.timestamp(r["created_at"]), display.timestamp(r["updated_at"]))
    display.console().print(table)


@secret_group.command("delete")
@click.argument("name")
@click.option("--allow-missing", is_flag=True, help="Succeed if it does not exist.")
@click.option("-y", "--yes", is_flag=True, help="Don't ask for confirmation.")
def secret_delete(name: str, allow_missing: bool, yes: bool) -> None:
    """Delete a secret."""
    from ..secret import Secret

    if not yes and not click.confirm(f"Delete secret {name!r}?", default=False):
        raise click.Abort()
    try:
        Secret.objects.delete(name, allow_missing=allow_missing)
    except Exception as exc:  # noqa: BLE001
        raise click.ClickException(str(exc)) from exc
