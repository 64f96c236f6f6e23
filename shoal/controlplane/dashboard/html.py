"""The dashboard's HTML: plain Python string building with every value escaped (`esc`), one layout, tables.

Why no template engine: the pages are tables and a few figures; f-strings over `html.escape` need no dependency,
no build step and no template directory to ship, and a page renders in well under a millisecond of Python.
"""

from __future__ import annotations

import html
import io
import pickle
import time
from collections.abc import Iterable, Sequence
from typing import Any

CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#1c2430;background:#f6f7f9}
header{background:#14324a;color:#fff;padding:10px 20px;display:flex;gap:18px;align-items:center}
header a{color:#cfe3f5;text-decoration:none}header b{margin-right:12px}
main{padding:16px 20px;max-width:1300px}
table{border-collapse:collapse;background:#fff;margin:8px 0 18px;width:100%}
th,td{border-bottom:1px solid #e3e6ea;padding:5px 8px;text-align:left;vertical-align:top}
th{background:#eef1f4;font-weight:600}
pre{background:#101820;color:#e6edf3;padding:10px;overflow:auto;max-height:420px;white-space:pre-wrap}
.ok{color:#1a7f37}.bad{color:#c62828}.dim{color:#6b7785}
.cards{display:flex;gap:12px;flex-wrap:wrap}.card{background:#fff;border:1px solid #e3e6ea;padding:8px 14px}
.card b{display:block;font-size:20px}.bar{background:#4a90d9;height:10px;display:inline-block}
.barf{background:#c62828;height:10px;display:inline-block}
button{cursor:pointer}
"""


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def page(title: str, body: str, script: str = "") -> str:
    nav = "".join(f'<a href="/dashboard/{href}">{label}</a>' for href, label in (
        ("", "Apps"), ("containers", "Containers"), ("web", "Web endpoints"), ("storage", "Storage")))
    js = f"<script>{script}</script>" if script else ""
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)} · shoal</title>"
            f"<style>{CSS}</style></head><body><header><b>shoal</b>{nav}</header><main><h1>{esc(title)}</h1>"
            f"{body}</main>{js}</body></html>")


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], table_id: str = "") -> str:
    """`rows` hold HTML already (escape values with `esc`, or build links with `link`)."""
    tid = f' id="{esc(table_id)}"' if table_id else ""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table{tid}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def link(href: str, text: Any) -> str:
    return f'<a href="{esc(href)}">{esc(text)}</a>'


def cards(items: Iterable[tuple[str, Any]]) -> str:
    return '<div class="cards">' + "".join(
        f'<div class="card"><span class="dim">{esc(k)}</span><b>{esc(v)}</b></div>' for k, v in items) + "</div>"


def when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else ""


def ms(seconds: float | None) -> str:
    return "" if seconds is None else f"{seconds * 1000:.1f} ms"


def status_cell(status: str | None) -> str:
    if status is None:
        return '<span class="dim">pending</span>'
    cls = "ok" if status in ("success", "complete", "running", "ready") else "bad"
    return f'<span class="{cls}">{esc(status)}</span>'


class _NoClasses(pickle.Unpickler):
    """Unpickles plain data only: an error's envelope comes from a container, so nothing it names is imported
    or called here (a crafted pickle cannot run code in the control plane)."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refused: {module}.{name}")


def error_text(data: bytes | None) -> str:
    """The traceback text of a stored failure (shoal/_spec/errors.py's envelope), read without running it."""
    if not data:
        return ""
    try:
        info = _NoClasses(io.BytesIO(data)).load()
    except Exception:  # noqa: BLE001 - not an envelope we can read safely
        return "(error details unavailable)"
    if not isinstance(info, dict):
        return "(error details unavailable)"
    text = info.get("tb_text") or f"{info.get('type', 'Error')}: {info.get('str', '')}"
    return str(text)


def percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
