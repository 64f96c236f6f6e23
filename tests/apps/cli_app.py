"""An app for the `shoal run` tests (tests/integration/test_cli.py)."""

from __future__ import annotations

import datetime
import time
from typing import Literal, Optional

import shoal as modal

app = modal.App("cli-app")


@app.function()
def greet(name: str = "world", times: int = 1) -> str:
    print(f"greeting {name}")
    return " ".join([f"hello {name}"] * times)


@app.function()
def describe(name: str, count: int, ratio: float, loud: bool, color: str, size: int, when: Optional[str],
             max_items: int) -> str:
    print(f"describing {name}")
    return f"{name!r} {count!r} {ratio!r} {loud!r} {color!r} {size!r} {when!r} {max_items!r}"


@app.function()
def count_up(n: int = 3):
    for i in range(n):
        yield f"item-{i}"


@app.function()
def fail(message: str = "boom") -> None:
    raise ValueError(f"cli_app failed: {message}")


@app.function()
def nothing() -> None:
    print("nothing to return")


@app.function()
def sleeper(seconds: float = 300.0) -> float:
    print("sleeping now", flush=True)
    time.sleep(seconds)
    return seconds


@app.local_entrypoint()
def main(name: str, count: int = 2, ratio: float = 0.5, loud: bool = False,
         color: Literal["red", "blue"] = "red", size: Literal[1, 2, 3] = 1,
         when: Optional[datetime.datetime] = None, max_items: int = 5) -> str:
    assert isinstance(count, int) and isinstance(ratio, float) and isinstance(loud, bool)
    assert isinstance(size, int)
    assert when is None or isinstance(when, datetime.datetime)
    result = describe.remote(name, count, ratio, loud, color, size, when.isoformat() if when else None, max_items)
    print(f"RESULT {result}")
    return result


@app.local_entrypoint()
def raw(*args: str) -> None:
    print(f"ARGS {list(args)!r}")


@app.local_entrypoint()
async def amain(x: int = 1) -> None:
    value = await greet.remote.aio(name=f"async-{x}")
    print(f"ASYNC {value}")


@app.local_entrypoint()
def crash() -> None:
    fail.remote("from the entrypoint")


@app.local_entrypoint()
def slow() -> None:
    sleeper.remote(300.0)


if __name__ == "__main__":
    raise SystemExit("cli_app.py's __main__ block must not run under `shoal run`")
