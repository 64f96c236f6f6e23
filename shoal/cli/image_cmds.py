"""`shoal image list | rm | prune`: the images built on the control plane's machine, and removing those no app
uses (docs/images.md, "Cleaning up")."""

from __future__ import annotations

import sys
from typing import Any

import click

from . import display


def _client() -> Any:
    from .._client.transport import get_client

    return get_client()


def _call(method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    """The control plane's answer, or its message as a CLI error (not a traceback)."""
    from ..exception import Error

    try:
        return _client().call(method, path, body)
    except Error as exc:
        raise click.ClickException(str(exc) or type(exc).__name__) from exc


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{int(n)} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


@click.group("image")
def image_group() -> None:
    """Images built on the control plane's machine."""


@image_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def image_list(as_json: bool) -> None:
    """List built images: id, kind (venv or oci), size, when built and last used, the running apps using it."""
    images = _call("GET", "/v1/images")["images"]
    if as_json:
        display.print_json(images)
        return
    if not images:
        click.echo("No images.")
        return
    from rich.table import Table

    table = Table(title_justify="left")
    table.add_column("Image ID", no_wrap=True)
    table.add_column("Kind")
    table.add_column("Size", justify="right")
    table.add_column("Created")
    table.add_column("Last used")
    table.add_column("Used by")
    table.add_column("Steps")
    for i in images:
        used = ", ".join(i.get("apps") or []) or i.get("busy") or "-"
        kind = i["kind"] + ("" if i.get("state") == "built" else f" ({i.get('state')})")
        table.add_row(i["image_id"], kind, _size(int(i.get("size") or 0)), display.timestamp(i.get("created")),
                      display.timestamp(i.get("last_used")), used, i.get("name") or "-")
    display.console().print(table)


@image_group.command("rm")
@click.argument("image_ids", nargs=-1, required=True)
@click.option("-y", "--yes", is_flag=True, help="Don't ask for confirmation (only asked on a terminal).")
def image_rm(image_ids: tuple[str, ...], yes: bool) -> None:
    """Remove images. An image a running app uses, or that is being built, is not removed."""
    if not yes and sys.stdin.isatty() and sys.stdout.isatty():
        click.confirm(f"Remove {len(image_ids)} image(s)?", default=True, abort=True)
    freed = 0
    for image_id in image_ids:
        freed += int(_call("DELETE", f"/v1/images/{image_id}").get("bytes_freed") or 0)
        click.echo(f"Removed {image_id}")
    click.echo(f"Freed {_size(freed)}.")


@image_group.command("prune")
@click.option("--grace", "grace_s", type=click.FloatRange(min=0), default=None,
              help="Remove images unused for this many seconds (default: the control plane's "
                   "SHOAL_IMAGE_GC_GRACE, one day unless set).")
@click.option("--dry-run", is_flag=True, help="Only list what would be removed.")
def image_prune(grace_s: float | None, dry_run: bool) -> None:
    """Remove the images no running app uses and none has used for the grace period."""
    body: dict[str, Any] = {"dry_run": dry_run}
    if grace_s is not None:
        body["grace_s"] = grace_s
    resp = _call("POST", "/v1/images/prune", body)
    for image_id in resp["removed"]:
        click.echo(f"{'Would remove' if dry_run else 'Removed'} {image_id}")
    if not resp["removed"]:
        click.echo(f"Nothing to remove: images stay while a running app uses them, while they are busy, and "
                   f"until unused for {display.duration(resp['grace_s'])}.")
    elif not dry_run:
        click.echo(f"Freed {_size(int(resp.get('bytes_freed') or 0))}.")
