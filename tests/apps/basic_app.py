"""Functions used by the core integration tests."""

import asyncio
import os
import time

import shoal as modal

app = modal.App("basic")


@app.function()
def hello(name: str) -> str:
    print(f"hello from the container, {name}")
    return f"Hello, {name}!"


@app.function()
def square(x: int) -> int:
    return x * x


@app.function()
def add(a: int, b: int, c: int = 0) -> int:
    return a + b + c


@app.function()
def sleep_then(x: float) -> float:
    time.sleep(x)
    return x


@app.function()
async def async_hello(name: str) -> str:
    await asyncio.sleep(0.01)
    return f"Hello, {name}!"


@app.function()
def count_to(n: int):
    yield from range(n)


@app.function()
def fail_on(x: int) -> int:
    if x % 3 == 0:
        raise ValueError(f"bad input {x}")
    return x


@app.function(timeout=2)
def too_slow(x: float) -> float:
    time.sleep(x)
    return x


@app.function()
def where() -> dict:
    return {"is_local": modal.is_local(), "input_id": modal.current_input_id(),
            "call_id": modal.current_function_call_id(), "pid": os.getpid(), "cwd": os.getcwd()}
