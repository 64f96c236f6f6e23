"""Dynamically batched functions and classes for tests/integration/test_batching.py."""

import os

import shoal as modal

app = modal.App("batch-app")


def container_id() -> str:
    """Which container runs this (process ids repeat across sandboxed containers)."""
    return os.environ["SHOAL_CONTAINER_ID"]


@app.function(max_containers=1)
@modal.batched(max_batch_size=4, wait_ms=300)
def sizes(xs: list[int]) -> list[tuple[int, int]]:
    """Each caller gets (its x doubled, the size of the batch it ran in)."""
    return [(x * 2, len(xs)) for x in xs]


@app.function(max_containers=1)
@modal.batched(max_batch_size=3, wait_ms=100)
async def add(xs: list[int], ys: list[int]) -> list[int]:
    return [x + y for x, y in zip(xs, ys, strict=True)]


@app.function(max_containers=1)
@modal.batched(max_batch_size=4, wait_ms=200)
def wrong_length(xs: list[int]) -> list[int]:
    return xs[1:]


@app.function(max_containers=1)
@modal.batched(max_batch_size=4, wait_ms=200)
def fails(xs: list[int]) -> list[int]:
    raise RuntimeError(f"batch of {len(xs)} failed")


@app.cls(max_containers=1)
class Batcher:
    offset: int = modal.parameter(default=0)

    @modal.batched(max_batch_size=5, wait_ms=200)
    def run(self, xs: list[int]) -> list[tuple[int, int, int]]:
        return [(x + self.offset, len(xs), container_id()) for x in xs]


@app.function(max_containers=1)
def plain(xs: list[int]) -> list[int]:
    """Not batched by its decorator; `plain.with_batching(...)` makes it so."""
    return [len(xs)] * len(xs) if isinstance(xs, list) else [-1]
