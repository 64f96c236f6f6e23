"""Classes whose containers are stopped or outlive a control-plane restart (tests/integration/test_cls.py)."""

import os
import time

import shoal as modal

app = modal.App("cls-lifecycle")


def container_id() -> str:
    """Which container runs this (process ids repeat across sandboxed containers)."""
    return os.environ["SHOAL_CONTAINER_ID"]


@app.cls()
class Recorder:
    path: str = modal.parameter()

    @modal.enter()
    def start(self) -> None:
        self.write("enter")

    @modal.method()
    def container(self) -> str:
        self.write("method")
        return container_id()

    @modal.method()
    def slow(self, x: str, seconds: float) -> str:
        time.sleep(seconds)
        return f"{x} from {self.path}"

    @modal.exit()
    def first_exit(self) -> None:
        self.write("exit1")

    @modal.exit()
    async def second_exit(self) -> None:
        self.write("exit2")

    def write(self, event: str) -> None:
        with open(self.path, "a") as f:
            f.write(f"{event}:{container_id()}\n")
