"""The backends declare every member of the `Backend` and `ContainerHandle` Protocols (shoal/backends/base.py),
which is all the control plane uses of them. Read from the source, so the Ray backend is checked without Ray."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from shoal.backends import base

BACKENDS = Path(base.__file__).parent


def protocol_members(protocol: type) -> set[str]:
    names = set(protocol.__annotations__)
    names |= {n for n, v in vars(protocol).items() if inspect.isfunction(v) and not n.startswith("_")}
    return names


def declared(module: str, cls: str) -> set[str]:
    """What a class of a backend module declares: class attributes, methods, properties and the attributes its
    `__init__` sets."""
    tree = ast.parse((BACKENDS / f"{module}.py").read_text())
    node = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls)
    names: set[str] = set()
    for item in node.body:
        if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names.add(item.name)
            if item.name == "__init__":
                for sub in ast.walk(item):
                    target = sub.target if isinstance(sub, ast.AnnAssign) else None
                    targets = sub.targets if isinstance(sub, ast.Assign) else [target] if target else []
                    for t in targets:
                        if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self":
                            names.add(t.attr)
        elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
            names.add(item.target.id)
        elif isinstance(item, ast.Assign):
            names |= {t.id for t in item.targets if isinstance(t, ast.Name)}
    return names


@pytest.mark.parametrize(("module", "cls"), [("local", "LocalBackend"), ("ray", "RayBackend")])
def test_backends_declare_the_backend_protocol(module: str, cls: str) -> None:
    assert protocol_members(base.Backend) - declared(module, cls) == set()


@pytest.mark.parametrize(("module", "cls"), [("local", "LocalContainer"), ("ray", "RayContainer")])
def test_handles_declare_the_container_handle_protocol(module: str, cls: str) -> None:
    assert protocol_members(base.ContainerHandle) - declared(module, cls) == set()
