"""SQL lives in the store: no module of the control plane outside `shoal/controlplane/store/` holds SQL text.

A schema change or a PostgreSQL difference is then a change to `store/` alone. The scan reads every string
literal (f-strings included, docstrings not) of every module and looks for SQL statements.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import shoal.controlplane

CONTROL_PLANE = Path(shoal.controlplane.__file__).parent
STORE = CONTROL_PLANE / "store"


# SQL as this project writes it: keywords in capitals.
SQL = re.compile(
    r"\bSELECT\b.+?\bFROM\b|\bSELECT\s+(?:EXISTS|COUNT|\d)|\bINSERT\s+(?:OR\s+\w+\s+)?INTO\b|\bREPLACE\s+INTO\b"
    r"|\bUPDATE\s+\w+\s+SET\b|\bDELETE\s+FROM\b|\b(?:CREATE|ALTER|DROP)\s+(?:UNIQUE\s+)?(?:TABLE|INDEX|SCHEMA)\b"
    r"|\bPRAGMA\s+\w+|\bON\s+CONFLICT\b|\bFOR\s+(?:UPDATE|SHARE)\b",
    re.S,
)
# SQL in any case, where its shape tells it from prose ("select a function from the list" is not SQL).
SQL_ANY_CASE = re.compile(
    r"\bselect\s+(?:(?!\bfrom\b)[\w.*,() ])+?\s+from\s+\w+(?:\s+\w+)?"
    r"(?:\s*$|\s+(?:where|order|group|limit|join|left)\b)"
    r"|\binsert\s+(?:or\s+\w+\s+)?into\s+\w+\s*\(|\bupdate\s+\w+\s+set\s+\w+\s*="
    r"|\bdelete\s+from\s+\w+(?:\s*$|\s+where\b)"
    r"|\bcreate\s+(?:unique\s+)?(?:table|index)\s+(?:if\s+not\s+exists\s+)?\w+",
    re.S | re.I,
)


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the nodes that are docstrings (of the module, a class or a function)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
                    and isinstance(first.value.value, str):
                found.add(id(first.value))
    return found


def sql_literals(source: str) -> list[tuple[int, str]]:
    """(line, text) of every string literal in `source` that holds SQL. An f-string is read whole, its
    replacement fields as `{}`."""
    tree = ast.parse(source)
    skip = _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            text = "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
            skip.update(id(v) for v in node.values)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            text = node.value
        else:
            continue
        if SQL.search(text) or SQL_ANY_CASE.search(text):
            found.append((node.lineno, text))
    return sorted(found)


def _modules_outside_the_store() -> list[Path]:
    return sorted(p for p in CONTROL_PLANE.rglob("*.py") if STORE not in p.parents)


def test_no_sql_outside_the_store() -> None:
    offences = [f"{path.relative_to(CONTROL_PLANE.parent.parent)}:{line}: {text[:70]!r}"
                for path in _modules_outside_the_store()
                for line, text in sql_literals(path.read_text())]
    assert not offences, "SQL outside shoal/controlplane/store/ (write a function in a store module):\n" + \
        "\n".join(offences)


def test_the_scan_finds_sql_in_literals_and_f_strings_but_not_in_docstrings_or_prose() -> None:
    source = '''
"""Module docstring: SELECT name FROM objects is how it used to be done."""
def f(store, action):
    """UPDATE apps SET state='stopped' (a docstring)."""
    # DELETE FROM calls (a comment)
    store.read("SELECT object_id FROM objects WHERE kind=?", ("dict",))
    store.write(f"INSERT INTO dict_entries (dict_id, key) VALUES (?,?) ON CONFLICT {action}", ())
    store.write("update leases set expires_at=? where key=?", (1.0, "k"))
    store.write("DELETE FROM "
                "secrets WHERE name=?", ("x",))
    rows = store.read("select name from secrets order by name")
    raise ValueError("select a function from the list, then update its settings, or delete from the app")
'''
    found = sql_literals(source)
    assert [line for line, _ in found] == [6, 7, 8, 9, 11]
    assert "ON CONFLICT {}" in found[1][1]


def test_every_store_repository_holds_sql() -> None:
    """The scan sees the SQL where it now lives (a scan that found nothing anywhere would pass vacuously)."""
    for name in ("dicts", "leases", "objects", "queues", "replicas", "schedules", "secrets", "tokens"):
        assert sql_literals((STORE / f"{name}.py").read_text()), name
