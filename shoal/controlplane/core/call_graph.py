"""A call's graph for `FunctionCall.get_call_graph()`: its inputs, each with the calls made from it, in Modal's
`InputInfo` shape. Built from what the control plane keeps in memory for running and recently finished calls
(`Call.parent`/`children`/`tasks`/`final_status`): a call evicted from memory, or recovered after a restart, shows
its inputs without children."""

from __future__ import annotations

from typing import Any

from .model import GRAPH_INPUTS, Call, input_id_of

STORED_INPUTS = 100  # inputs of a call no longer in memory whose status is read from the store


def function_name(call: Call) -> str:
    """Modal's `function_name`: the function's name, `Cls.method` for a method of a class."""
    tag = call.pool.tag  # a variant's is its base function's
    if call.method:
        return f"{tag.split('.')[0]}.{call.method}"
    return tag


def input_status(call: Call, idx: int) -> str:
    """`pending` (queued or running) or the input's final status (`success`, `failure`, `timeout`, …)."""
    return call.final_status.get(idx, "pending")


def graph(call: Call) -> list[dict[str, Any]]:
    """One node per input of `call` (at most GRAPH_INPUTS), each with the graphs of the calls made from it."""
    count = call.total if call.total is not None else (max(call.received, default=-1) + 1 if call.received else 0)
    children: dict[int, list[Call]] = {}
    for child in call.children:
        assert child.parent is not None
        children.setdefault(child.parent[1], []).append(child)
    module = call.pool.definition.module or ""
    nodes = []
    for idx in range(min(count, GRAPH_INPUTS)):
        nodes.append({
            "input_id": input_id_of(call.id, idx), "function_call_id": call.id, "task_id": call.tasks.get(idx, ""),
            "status": input_status(call, idx), "function_name": function_name(call), "module_name": module,
            "children": [node for child in children.get(idx, []) for node in graph(child)],
        })
    return nodes


def stored_node(call_id: str, idx: int, status: str) -> dict[str, Any]:
    """An input of a call no longer in memory: its status from the store, nothing else known."""
    return {"input_id": input_id_of(call_id, idx), "function_call_id": call_id, "task_id": "", "status": status,
            "function_name": "", "module_name": "", "children": []}
