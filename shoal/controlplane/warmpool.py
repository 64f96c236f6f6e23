"""Warm pool: per image, a few sandboxed runtimes already started, with the image's heavy packages imported,
waiting to be given a function. Taking one costs linking the source in and importing the user's module, not a
sandbox, an interpreter and the package imports.

Which packages to import ahead is learned: each container reports the top-level modules its function's module
pulled in, and later warm containers of that image import those. Warm containers hold no secrets (they get
them at assignment) and serve only functions with default resources, no GPU and no volumes, whose limits they
were started with.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .model import Container, Pool

if TYPE_CHECKING:
    from .dispatch import Dispatcher

WARM_SOURCE_MOUNT = "/run/shoal-src"  # where a sandboxed warm container sees its (later) source
IDLE_EXPIRY_S = 600.0


def eligible(pool: Pool) -> bool:
    """Functions a warm container can serve: started with default limits, no GPU, no volumes."""
    opts = pool.options
    extra = opts.get("extra") or {}
    return bool(pool.definition.get("image_built")) and not any(
        (opts.get("cpu"), opts.get("memory"), opts.get("gpu"), extra.get("volumes"), pool.definition.get("volumes")))


def link_tree(src: str, dst: str) -> None:
    """Hard-link a source tree into a directory (copy where links are not possible)."""
    def link(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    shutil.copytree(src, dst, copy_function=link, dirs_exist_ok=True)


class WarmPool:
    def __init__(self, dispatcher: Dispatcher, size: int | None = None) -> None:
        self.d = dispatcher
        self.size = int(os.environ.get("SHOAL_WARM_POOL", "1")) if size is None else size
        self.pools: dict[str, Pool] = {}  # image_id -> pseudo pool holding that image's warm containers
        self.imports: dict[str, list[str]] = {}  # image_id -> modules to import ahead
        self.last_used: dict[str, float] = {}

    def source_dir(self, c: Container) -> Path:
        return self.d.state_dir / "warm" / c.id

    # -- keeping it filled -----------------------------------------------------------------------------------
    def want(self, pool: Pool) -> None:
        """`pool` is in use: keep warm containers for its image (up to `size`)."""
        if self.size <= 0 or not eligible(pool):
            return
        image = pool.definition["image_built"]
        image_id = image["image_id"]
        self.last_used[image_id] = time.monotonic()
        warm = self.pools.get(image_id)
        if warm is None:
            warm = Pool(f"warm:{image_id}", "", {"tag": "(warm)", "image_built": image, "options": {}})
            self.pools[image_id] = warm
        missing = self.size - len(warm.live())
        for _ in range(max(0, min(missing, self.d.backend.capacity() - len(self.d.containers)))):
            c = self.d._start_container(warm, warm=True)
            self.source_dir(c).mkdir(parents=True, exist_ok=True)

    def learn(self, pool: Pool, modules: list[str]) -> None:
        image = pool.definition.get("image_built")
        if image:
            known = self.imports.setdefault(image["image_id"], [])
            known.extend(m for m in modules if m not in known)

    def imports_for(self, c: Container) -> list[str]:
        return list(self.imports.get(c.pool.definition["image_built"]["image_id"], []))

    # -- using it --------------------------------------------------------------------------------------------
    def take(self, pool: Pool) -> Container | None:
        """A warm container for `pool`'s image, moved into `pool`, or None."""
        if not eligible(pool):
            return None
        warm = self.pools.get(pool.definition["image_built"]["image_id"])
        if warm is None:
            return None
        for c in list(warm.containers.values()):
            if c.state == "warm":
                del warm.containers[c.id]
                c.pool = pool
                pool.containers[c.id] = c
                c.state = "starting"
                c.t_requested = time.time()
                c.created_at = time.monotonic()
                link_tree(pool.definition["source_dir"], str(self.source_dir(c))) if pool.definition.get(
                    "source_dir") else None
                return c
        return None

    def assignment(self, c: Container, env: dict[str, str]) -> dict[str, Any]:
        sandboxed = getattr(self.d.backend, "isolation", "process") == "sandbox"
        return {"source": WARM_SOURCE_MOUNT if sandboxed else str(self.source_dir(c)), "env": env,
                "sandboxed": sandboxed}

    # -- emptying it -----------------------------------------------------------------------------------------
    def trim(self, now: float) -> None:
        """Stop warm containers of images no running function uses, or unused for IDLE_EXPIRY_S."""
        in_use = {p.definition["image_built"]["image_id"] for p in self.d.pools.values()
                  if p.definition.get("image_built") and not p.stopped}
        for image_id, warm in list(self.pools.items()):
            if image_id not in in_use or now - self.last_used.get(image_id, 0) > IDLE_EXPIRY_S:
                for c in list(warm.containers.values()):
                    self.d._stop_container(c, "warm pool trimmed")

    def evict(self, count: int) -> int:
        """Give machine slots back (another function needs them); returns how many were stopped."""
        stopped = 0
        for warm in self.pools.values():
            for c in list(warm.containers.values()):
                if stopped < count and c.state in ("warm", "starting"):
                    self.d._stop_container(c, "warm pool gave its slot away")
                    stopped += 1
        return stopped

    def forget(self, c: Container) -> None:
        shutil.rmtree(self.source_dir(c), ignore_errors=True)
