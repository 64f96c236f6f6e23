"""A first shoal app: `shoal run examples/hello.py`."""

import shoal as modal

app = modal.App("hello")


@app.function()
def hello(name: str) -> str:
    print(f"running in a container for {name}")
    return f"Hello, {name}!"


@app.function()
def square(x: int) -> int:
    return x * x


@app.local_entrypoint()
def main(name: str = "World") -> None:
    print(hello.remote(name))
    print("squares:", list(square.map(range(10))))
    call = hello.spawn("later")
    print("spawned", call.object_id, "->", call.get())
