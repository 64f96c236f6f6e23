"""A small app for deploy tests: looked up by name from other processes."""

import os

import shoal as modal

app = modal.App("deploy-basic")


@app.function()
def square(x: int) -> int:
    print(f"squaring {x}")
    return x * x


@app.function()
def count_to(n: int):
    yield from range(n)


@app.function()
def pid() -> int:
    return os.getpid()


@app.cls()
class Adder:
    base: int = modal.parameter(default=0)

    @modal.method()
    def add(self, x: int) -> int:
        return self.base + x
