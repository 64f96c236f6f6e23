"""A Modal program that follows a spawned call through its call graph (`shoal run call_graph_app.py`)."""

import time

import shoal as modal
from shoal.call_graph import InputInfo, InputStatus

app = modal.App("call-graph")


@app.function()
def leaf(x: int) -> int:
    return x * 2


@app.function()
def fails() -> None:
    raise ValueError("expected failure")


@app.function()
def middle(n: int) -> int:
    total = sum(leaf.map(range(n)))
    try:
        fails.remote()
    except ValueError:
        pass
    return total + leaf.remote(100)


def show(node: InputInfo, depth: int = 0) -> None:
    assert node.object_id.startswith("in-") and node.function_call_id.startswith("fc-")
    assert node.task_id.startswith("ta-") or node.task_id == "", node.task_id
    print("  " * depth + f"{node.function_name} {node.status.name} module={node.module_name}")
    for child in sorted(node.children, key=lambda c: (c.function_name, c.object_id)):
        show(child, depth + 1)


@app.local_entrypoint()
def main() -> None:
    fc = middle.spawn(3)
    while True:  # poll the call's status through its graph, as Modal programs do
        graph = fc.get_call_graph()
        if graph and graph[0].status != InputStatus.PENDING:
            break
        time.sleep(0.2)
    print("result", fc.get())
    print("roots", len(graph), graph[0].task_id.startswith("ta-"))
    show(graph[0])


@app.local_entrypoint()
def spawned_map() -> None:
    call = leaf.experimental_spawn_map(range(5))
    print("inputs", call.num_inputs())
    print("index 3", call.get(index=3))
    print("all", list(call.iter()))
