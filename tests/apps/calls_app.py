"""Functions used by tests/integration/test_calls.py (calling conventions, failures, retries, timeouts)."""

import asyncio
import os
import threading
import time
from pathlib import Path

import shoal as modal

app = modal.App("calls")


class CustomError(Exception):
    """A user-defined exception: must come back to the caller with its own class."""


def _bump(path: str) -> int:
    """Count one more attempt in `path` (a file holding an integer); returns the new count."""
    p = Path(path)
    n = int(p.read_text()) + 1 if p.exists() else 1
    p.write_text(str(n))
    return n


@app.function()
def hello(name: str) -> str:
    return f"Hello, {name}!"


@app.function()
def add(a: int, b: int, c: int = 0) -> int:
    return a + b + c


@app.function()
def square(x: int) -> int:
    return x * x


@app.function()
def echo_args(*args, **kwargs) -> tuple:
    return args, kwargs


@app.function()
def sleep_then(x: float) -> float:
    time.sleep(x)
    return x


@app.function()
def wait_for_peers(directory: str, x: int) -> int:
    """Input 0 waits until every other input has finished (or 30 s pass); the others finish at once.

    So input 0 is always the last to complete when inputs run in parallel containers.
    """
    d = Path(directory)
    if x == 0:
        deadline = time.monotonic() + 30
        while len(list(d.glob("done-*"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    else:
        (d / f"done-{x}").write_text("1")
    return x


@app.function()
def sleep_then_ordered(x: float) -> float:
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
def gen_then_fail(n: int):
    yield from range(n)
    raise CustomError(f"gave {n} items then failed")


@app.function()
def fail_on(x: int) -> int:
    if x % 3 == 0:
        raise ValueError(f"bad input {x}")
    return x


@app.function()
def raise_custom(message: str) -> None:
    raise CustomError(message)


@app.function()
def return_lock() -> object:
    return threading.Lock()


@app.function(retries=modal.Retries(max_retries=3, initial_delay=0.0, max_delay=1.0))
def flaky(path: str, fail_times: int) -> int:
    """Fails its first `fail_times` attempts; returns the attempt number that succeeded."""
    n = _bump(path)
    if n <= fail_times:
        raise CustomError(f"attempt {n} failed")
    return n


@app.function(retries=1)
def flaky_int_retries(path: str, fail_times: int) -> int:
    n = _bump(path)
    if n <= fail_times:
        raise CustomError(f"attempt {n} failed")
    return n


@app.function()
def flaky_no_retries(path: str, fail_times: int) -> int:
    n = _bump(path)
    if n <= fail_times:
        raise CustomError(f"attempt {n} failed")
    return n


@app.function(retries=modal.Retries(max_retries=2, initial_delay=0.0, max_delay=1.0))
def flaky_odd(directory: str, x: int) -> int:
    """Odd inputs fail their first attempt; attempts are counted per input."""
    n = _bump(os.path.join(directory, f"attempts-{x}"))
    if x % 2 == 1 and n == 1:
        raise CustomError(f"input {x} attempt {n} failed")
    return x * 10


@app.function(timeout=1)
def too_slow(x: float) -> float:
    time.sleep(x)
    return x


@app.function()
def touch(directory: str, x: int) -> None:
    Path(directory, f"touched-{x}").write_text(str(x))


@app.function()
def where() -> dict:
    return {"is_local": modal.is_local(), "input_id": modal.current_input_id(),
            "call_id": modal.current_function_call_id(), "pid": os.getpid()}


@app.function()
def shout(marker: str) -> str:
    print(f"printed-by-container {marker}")
    return marker


@app.function()
async def async_count(n: int):
    for i in range(n):
        await asyncio.sleep(0)
        yield i


@app.function(timeout=1, retries=modal.Retries(max_retries=1, initial_delay=0.0, max_delay=1.0))
def too_slow_retried(path: str) -> None:
    _bump(path)
    time.sleep(30)
