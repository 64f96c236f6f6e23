"""`shoal volume …`: manage Volumes and the files in them (the committed state)."""

from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from . import display


def _errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The control plane's message (or the local OS error), not a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from ..exception import Error

        try:
            return fn(*args, **kwargs)
        except (Error, OSError) as exc:
            raise click.ClickException(str(exc) or type(exc).__name__) from exc

    return wrapper


def _volume(name: str) -> Any:
    from ..volume import Volume

    return Volume.from_name(name)


def _type_name(t: Any) -> str:
    return t.name.lower()


@click.group("volume")
def volume_group() -> None:
    """Manage Volumes and their files."""


@volume_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_errors
def volume_list(as_json: bool) -> None:
    """List named Volumes."""
    from ..volume import Volume
    from .storage_cmds import _objects_table

    _objects_table("Volume", Volume.objects.list(), as_json)


@volume_group.command("create")
@click.argument("name")
@click.option("--version", type=click.IntRange(1, 2), default=None, help="Modal's volume version (accepted).")
@_errors
def volume_create(name: str, version: int | None) -> None:
    """Create a named Volume."""
    from ..volume import Volume

    Volume.objects.create(name, version=version)
    click.echo(f"Created Volume {name!r}.")


@volume_group.command("delete")
@click.argument("name")
@click.option("--allow-missing", is_flag=True, help="Succeed if it does not exist.")
@click.option("-y", "--yes", is_flag=True, help="Don't ask for confirmation.")
@_errors
def volume_delete(name: str, allow_missing: bool, yes: bool) -> None:
    """Delete a named Volume and every file in it."""
    from ..volume import Volume

    if not yes and not click.confirm(f"Delete Volume {name!r} and all its files?", default=False):
        raise click.Abort()
    Volume.objects.delete(name, allow_missing=allow_missing)
    click.echo(f"Deleted Volume {name!r}.")


@volume_group.command("rename")
@click.argument("old_name")
@click.argument("new_name")
@_errors
def volume_rename(old_name: str, new_name: str) -> None:
    """Rename a Volume."""
    from ..volume import Volume

    Volume.rename(old_name, new_name)
    click.echo(f"Renamed Volume {old_name!r} to {new_name!r}.")


@volume_group.command("ls")
@click.argument("name")
@click.argument("path", default="/")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_errors
def volume_ls(name: str, path: str, as_json: bool) -> None:
    """List the files and directories at PATH (default: the root)."""
    entries = _volume(name).listdir(path)
    if as_json:
        display.print_json([{"path": e.path, "type": _type_name(e.type), "mtime": e.mtime, "size": e.size}
                     for e in entries])
        return
    from rich.table import Table

    table = Table(title=f"{name}:{path}", title_justify="left")
    table.add_column("Filename")
    table.add_column("Type")
    table.add_column("Modified")
    table.add_column("Size", justify="right")
    for e in entries:
        shown = e.path + ("/" if _type_name(e.type) == "directory" else "")
        table.add_row(shown, _type_name(e.type), time.strftime("%Y-%m-%d %H:%M", time.localtime(e.mtime)),
                      _size(e.size))
    display.console().print(table)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


@volume_group.command("put")
@click.argument("name")
@click.argument("local_path", type=click.Path(exists=True, path_type=Path))
@click.argument("remote_path", default="/")
@click.option("-f", "--force", is_flag=True, help="Overwrite existing files.")
@_errors
def volume_put(name: str, local_path: Path, remote_path: str, force: bool) -> None:
    """Upload a file or a directory (its contents, recursively) to REMOTE_PATH (default: the root). A
    REMOTE_PATH ending in `/` receives the file under its own name."""
    vol = _volume(name)
    with vol.batch_upload(force=force) as batch:
        if local_path.is_dir():
            batch.put_directory(local_path, remote_path)
        else:
            if remote_path.endswith("/"):
                remote_path += local_path.name
            batch.put_file(local_path, remote_path)
    click.echo(f"Uploaded {local_path} to {name}:{remote_path}")


@volume_group.command("get")
@click.argument("name")
@click.argument("remote_path")
@click.argument("local_destination", default=".")
@click.option("--force", is_flag=True, help="Overwrite existing local files.")
@_errors
def volume_get(name: str, remote_path: str, local_destination: str, force: bool) -> None:
    """Download a file or a directory. LOCAL_DESTINATION `-` writes a file to standard output; a directory
    arrives under LOCAL_DESTINATION with its own name."""
    from ..types import FileEntryType

    vol = _volume(name)
    if local_destination == "-":
        for chunk in vol.read_file(remote_path):
            sys.stdout.buffer.write(chunk)
        sys.stdout.buffer.flush()
        return
    entries = vol.listdir(remote_path, recursive=True)
    norm = "/".join(p for p in remote_path.split("/") if p not in ("", "."))
    dest = Path(local_destination)
    if len(entries) == 1 and entries[0].path == norm and entries[0].type != FileEntryType.DIRECTORY:
        target = dest / Path(norm).name if dest.is_dir() or local_destination.endswith("/") else dest
        _download(vol, norm, target, force)
        return
    base = os.path.dirname(norm)  # `get vol data out` makes out/data/…

    def local(path: str) -> Path:
        return dest / (os.path.relpath(path, base) if base else path)

    (local(norm) if norm else dest).mkdir(parents=True, exist_ok=True)
    for e in entries:
        if e.type == FileEntryType.DIRECTORY:
            local(e.path).mkdir(parents=True, exist_ok=True)
        elif e.type == FileEntryType.FILE:
            _download(vol, e.path, local(e.path), force)


def _download(vol: Any, path: str, target: Path, force: bool) -> None:
    if target.exists() and not force:
        raise click.ClickException(f"{target} already exists (use --force to overwrite it)")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.shoal-partial")
    with open(tmp, "wb") as f:
        vol.read_file_into_fileobj(path, f)
    tmp.replace(target)
    click.echo(f"{path} -> {target}", err=True)


@volume_group.command("rm")
@click.argument("name")
@click.argument("remote_path")
@click.option("-r", "--recursive", is_flag=True, help="Remove a directory and everything in it.")
@_errors
def volume_rm(name: str, remote_path: str, recursive: bool) -> None:
    """Remove a file or directory."""
    _volume(name).remove_file(remote_path, recursive=recursive)
    click.echo(f"Removed {name}:{remote_path}")


@volume_group.command("cp")
@click.argument("name")
@click.argument("paths", nargs=-1, required=True)
@click.option("-r", "--recursive", is_flag=True, help="Copy directories.")
@_errors
def volume_cp(name: str, paths: tuple[str, ...], recursive: bool) -> None:
    """Copy files within a Volume: `cp VOL SRC... DST` (into DST when it is a directory)."""
    if len(paths) < 2:
        raise click.UsageError("give at least one source and a destination")
    *srcs, dst = paths
    _volume(name).copy_files(list(srcs), dst, recursive=recursive)
