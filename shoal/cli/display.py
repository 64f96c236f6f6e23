"""How the CLI shows things: times, durations, JSON and rich tables (imported lazily, so `shoal --help` stays
cheap)."""

from __future__ import annotations

import datetime
import json
import sys
import time
from typing import Any

import click


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m}m {s}s"
    h, m = divmod(m, 60)
    if h < 24:
        return f"{h}h {m}m"
    d, h = divmod(h, 24)
    return f"{d}d {h}h"


def timestamp(epoch: float | None) -> str:
    if not epoch:
        return "-"
    when = datetime.datetime.fromtimestamp(epoch).astimezone()
    return f"{when:%Y-%m-%d %H:%M:%S} ({duration(time.time() - epoch)} ago)"


def console() -> Any:
    from rich.console import Console

    # Not a terminal (a pipe, a test): don't cut ids to 80 columns.
    return Console(width=None if sys.stdout.isatty() else 200)


def print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True, default=str))


def apps_table(apps: list[dict[str, Any]], title: str | None = None) -> Any:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    table.add_column("App ID", no_wrap=True)
    table.add_column("Name")
    table.add_column("Mode")
    table.add_column("Version", justify="right")
    table.add_column("State")
    table.add_column("Functions")
    table.add_column("Containers", justify="right")
    table.add_column("Created")
    table.add_column("Stopped")
    table.add_column("Next scheduled runs")
    for a in apps:
        functions = list(a.get("functions") or {})
        shown = ", ".join(functions[:4]) + (f" +{len(functions) - 4} more" if len(functions) > 4 else "")
        runs = ", ".join(f"{tag} at {datetime.datetime.fromtimestamp(ts).astimezone():%Y-%m-%d %H:%M:%S}"
                         for tag, ts in (a.get("next_runs") or {}).items() if ts)
        table.add_row(a["app_id"], a.get("name") or "-", a.get("mode") or "-",
                      f"v{a['version']}" if a.get("version") else "-", a.get("state") or "-",
                      shown or "-", str(a.get("containers", 0)), timestamp(a.get("created_at")),
                      timestamp(a.get("stopped_at")), runs or "-")
    return table


def timings(timings: dict[str, Any] | None) -> str:
    if not timings:
        return "-"
    parts = []
    for phase, seconds in timings.items():
        label = phase[:-2] if phase.endswith("_s") else phase
        try:
            parts.append(f"{label}={float(seconds):.3f}s")
        except (TypeError, ValueError):
            parts.append(f"{label}={seconds}")
    return " ".join(parts)


def containers_table(containers: list[dict[str, Any]], title: str | None = None) -> Any:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    table.add_column("Container ID", no_wrap=True)
    table.add_column("App ID", no_wrap=True)
    table.add_column("Function")
    table.add_column("State")
    table.add_column("Running inputs", justify="right")
    table.add_column("Age")
    table.add_column("Timings")
    for c in containers:
        table.add_row(c["container_id"], c.get("app_id") or "-", c.get("function") or "-", c.get("state") or "-",
                      str(c.get("running_inputs", 0)), duration(c.get("age_s")), timings(c.get("timings")))
    return table
