"""`shoal dict …` and `shoal queue …`: inspect and manage named Dicts and Queues."""

from __future__ import annotations

import json
from typing import Any

import click

from . import display


def _objects_table(kind: str, rows: list[Any], as_json: bool) -> None:
    data = [{"name": o.name, "object_id": o.object_id} for o in rows]
    if as_json:
        display.print_json(data)
        return
    from rich.table import Table

    table = Table(title=f"{kind}s", title_justify="left")
    table.add_column("Name")
    table.add_column("ID", no_wrap=True)
    for row in data:
        table.add_row(row["name"], row["object_id"])
    display.console().print(table)


def _show(value: Any, use_repr: bool) -> str:
    if use_repr:
        return repr(value)
    try:
        return json.dumps(value, default=repr)
    except (TypeError, ValueError):
        return repr(value)


@click.group("dict")
def dict_group() -> None:
    """Manage named Dicts."""


@dict_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def dict_list(as_json: bool) -> None:
    """List named Dicts."""
    from ..dict import Dict

    _objects_table("Dict", Dict.objects.list(), as_json)


@dict_group.command("create")
@click.argument("name")
def dict_create(name: str) -> None:
    """Create a named Dict."""
    from ..dict import Dict

    Dict.objects.create(name)
    click.echo(f"Created Dict {name!r}.")


@dict_group.command("delete")
@click.argument("name")
@click.option("--allow-missing", is_flag=True, help="Succeed if it does not exist.")
@click.option("-y", "--yes", is_flag=True, help="Don't ask for confirmation.")
def dict_delete(name: str, allow_missing: bool, yes: bool) -> None:
    """Delete a named Dict and its entries."""
    from ..dict import Dict

    if not yes and not click.confirm(f"Delete Dict {name!r} and all its entries?", default=False):
        raise click.Abort()
    Dict.objects.delete(name, allow_missing=allow_missing)


@dict_group.command("clear")
@click.argument("name")
@click.option("-y", "--yes", is_flag=True, help="Don't ask for confirmation.")
def dict_clear(name: str, yes: bool) -> None:
    """Remove every entry of a Dict."""
    from ..dict import Dict

    if not yes and not click.confirm(f"Clear Dict {name!r}?", default=False):
        raise click.Abort()
    Dict.from_name(name).clear()


@dict_group.command("get")
@click.argument("name")
@click.argument("key")
@click.option("-r", "--repr", "use_repr", is_flag=True, help="Print repr() instead of JSON.")
def dict_get(name: str, key: str, use_repr: bool) -> None:
    """Print the value stored under a string KEY."""
    from ..dict import Dict

    missing = object()
    value = Dict.from_name(name).get(key, missing)
    if value is missing:
        raise click.ClickException(f"key {key!r} not found in Dict {name!r}")
    click.echo(_show(value, use_repr))


@dict_group.command("items")
@click.argument("name")
@click.argument("n", type=int, default=20)
@click.option("-a", "--all", "show_all", is_flag=True, help="Print every entry.")
@click.option("-r", "--repr", "use_repr", is_flag=True, help="Print repr() instead of JSON.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
def dict_items(name: str, n: int, show_all: bool, use_repr: bool, as_json: bool) -> None:
    """Print the first N entries (key order)."""
    from ..dict import Dict

    for i, (k, v) in enumerate(Dict.from_name(name).items()):
        if i >= n and not show_all:
            break
        if as_json:
            click.echo(json.dumps({"key": k, "value": v}, default=repr))
        else:
            click.echo(f"{_show(k, use_repr)}: {_show(v, use_repr)}")


@click.group("queue")
def queue_group() -> None:
    """Manage named Queues."""


@queue_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def queue_list(as_json: bool) -> None:
    """List named Queues."""
    from ..queue import Queue

    _objects_table("Queue", Queue.objects.list(), as_json)


@queue_group.command("create")
@click.argument("name")
def queue_create(name: str) -> None:
    """Create a named Queue."""
    from ..queue import Queue

    Queue.objects.create(name)
    click.echo(f"Created Queue {name!r}.")


@queue_group.command("delete")
@click.argument("name")
@click.option("--allow-missing", is_flag=True, help="Succeed if it does not exist.")
@click.option("-y", "--yes", is_flag=True, help="Don't ask for confirmation.")
def queue_delete(name: str, allow_missing: bool, yes: bool) -> None:
    """Delete a named Queue and its items."""
    from ..queue import Queue

    if not yes and not click.confirm(f"Delete Queue {name!r} and all its items?", default=False):
        raise click.Abort()
    Queue.objects.delete(name, allow_missing=allow_missing)


@queue_group.command("clear")
@click.argument("name")
@click.option("-p", "--partition", default=None, help="Only this partition.")
@click.option("-a", "--all", "clear_all", is_flag=True, help="Every partition.")
@click.option("-y", "--yes", is_flag=True, help="Don't ask for confirmation.")
def queue_clear(name: str, partition: str | None, clear_all: bool, yes: bool) -> None:
    """Remove items from a Queue (the default partition unless -p or -a)."""
    from ..queue import Queue

    if not yes and not click.confirm(f"Clear Queue {name!r}?", default=False):
        raise click.Abort()
    Queue.from_name(name).clear(partition=partition, all=clear_all)


@queue_group.command("peek")
@click.argument("name")
@click.argument("n", type=int, default=1)
@click.option("-p", "--partition", default=None, help="Partition to look at.")
def queue_peek(name: str, n: int, partition: str | None) -> None:
    """Print the next N items without removing them."""
    from ..queue import Queue

    for item in Queue.from_name(name).peek(n, partition=partition):
        click.echo(_show(item, False))


@queue_group.command("len")
@click.argument("name")
@click.option("-p", "--partition", default=None, help="Partition to count.")
@click.option("-t", "--total", is_flag=True, help="Count every partition.")
def queue_len(name: str, partition: str | None, total: bool) -> None:
    """Print the number of items."""
    from ..queue import Queue

    click.echo(Queue.from_name(name).len(partition=partition, total=total))


