"""Classes for tests/integration/test_cls.py: lifecycle hooks, parameters, pools per parameter set, options."""

import asyncio
import os
import signal
import threading
import time

import shoal as modal

app = modal.App("cls-app")


def container_id() -> str:
    """Which container runs this (process ids repeat across sandboxed containers)."""
    return os.environ["SHOAL_CONTAINER_ID"]


def record(path: str, line: str) -> None:
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")


class Base:
    events_dir: str = modal.parameter(default="")

    @modal.enter()
    def base_enter(self) -> None:
        self.events.append("base_enter")

    @modal.exit()
    def base_exit(self) -> None:
        record(self.events_dir, f"base_exit:{container_id()}")


@app.cls()
class Hooks(Base):
    label: str = modal.parameter(default="x")

    @modal.enter(snap=True)
    def snap_enter(self) -> None:
        self.events = ["snap_enter"]

    @modal.enter()
    async def own_enter(self) -> None:
        await asyncio.sleep(0)
        self.events.append("own_enter_async")

    @modal.method()
    def events_so_far(self) -> list:
        self.events.append("method")
        return list(self.events)

    @modal.method()
    def container(self) -> str:
        return container_id()

    @modal.method()
    def terminate_soon(self) -> str:
        """SIGTERM this container shortly after answering (as an operator or a preemption would)."""
        threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM)).start()
        return container_id()

    @modal.method()
    def count(self, n: int):
        yield from range(n)

    @modal.method()
    async def double(self, x: int) -> int:
        await asyncio.sleep(0)
        return 2 * x

    @modal.exit()
    def own_exit(self) -> None:
        record(self.events_dir, f"own_exit:{self.label}:{container_id()}")


class ParamBase:
    inherited: int = modal.parameter(default=7)


@app.cls()
class Params(ParamBase):
    n: int = modal.parameter()
    s: str = modal.parameter(default="s")
    b: bytes = modal.parameter(default=b"b")
    flag: bool = modal.parameter(default=False)
    scratch: str = modal.parameter(init=False)

    @modal.enter()
    def setup(self) -> None:
        self.scratch = f"{self.n}-{self.s}"

    @modal.method()
    def values(self) -> dict:
        return {"n": self.n, "s": self.s, "b": self.b, "flag": self.flag, "inherited": self.inherited,
                "scratch": self.scratch, "container": container_id()}


@app.cls()
class BrokenEnter:
    @modal.enter()
    def boom(self) -> None:
        raise ValueError("enter exploded")

    @modal.method()
    def f(self) -> int:
        return 1


@app.cls(max_containers=1)
@modal.concurrent(max_inputs=3)
class Concurrent:
    @modal.method()
    def sleep(self, seconds: float) -> tuple:
        start = time.monotonic()
        time.sleep(seconds)
        return (container_id(), start, time.monotonic())

    @modal.method()
    async def asleep(self, seconds: float) -> tuple:
        start = time.monotonic()
        await asyncio.sleep(seconds)
        return (container_id(), start, time.monotonic())


@app.cls(max_containers=1)
class Sequential:
    @modal.method()
    def sleep(self, seconds: float) -> tuple:
        start = time.monotonic()
        time.sleep(seconds)
        return (container_id(), start, time.monotonic())


@app.function(env={"GREETING": "hi"})
def environment(name: str) -> str | None:
    return os.environ.get(name)


@app.function()
def sleeper(seconds: float) -> str:
    time.sleep(seconds)
    return container_id()


@app.function()
def span(seconds: float) -> tuple:
    start = time.monotonic()
    time.sleep(seconds)
    return (container_id(), start, time.monotonic())
