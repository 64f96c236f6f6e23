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
from typing import TYPE_CHECKING

from ..._spec import frames
from ..._spec.definitions import FunctionDefinition
from .containers import stop
from .model import Container, Pool

if TYPE_CHECKING:
    from ...backends.base import Backend
    from .registry import Registry

WARM_SOURCE_MOUNT = "/run/shoal-src"  # where a sandboxed warm container sees its (later) source
IDLE_EXPIRY_S = 600.0


def eligible(pool: Pool) -> bool:
    """Functions a warm container can serve: started with default limits, no GPU, no volumes, the default
    network (`block_network` needs a container started without one), and not an OCI image whose USER is not root
    (a warm runtime links its later source into /root, which only root may)."""
    opts = pool.options
    image = pool.definition.image_built
    return image is not None and (image.user or "root").partition(":")[0] in ("root", "0") and not any(
        (opts.cpu, opts.memory, opts.gpu, pool.definition.volumes, opts.extra.get("block_network")))


def link_tree(src: str, dst: str) -> None:
    """Hard-link a source tree into a directory (copy where links are not possible)."""
    def link(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    shutil.copytree(src, dst, copy_function=link, dirs_exist_ok=True)


class WarmPool:
    """Keeps warm containers per image; `Queues` starts the ones `wanted` asks for and takes them (`take`)."""

    def __init__(self, state_dir: Path, backend: Backend, registry: Registry, size: int | None = None) -> None:
        self.state_dir = state_dir
        self.backend = backend
        self.registry = registry
        self.size = int(os.environ.get("SHOAL_WARM_POOL", "1")) if size is None else size
        self.pools: dict[str, Pool] = {}  # image_id -> pseudo pool holding that image's warm containers
        self.imports: dict[str, list[str]] = {}  # image_id -> modules to import ahead
        self.last_used: dict[str, float] = {}

    def source_dir(self, c: Container) -> Path:
        return self.state_dir / "warm" / c.id

    def binds(self, c: Container) -> list[tuple[str, str, bool]]:
        """What a warm container mounts: its (still empty) source directory, where its function's source goes."""
        return [(str(self.source_dir(c)), WARM_SOURCE_MOUNT, False)]

    # -- keeping it filled -----------------------------------------------------------------------------------
    def wanted(self, pool: Pool) -> tuple[Pool, int]:
        """`pool` is in use: its image's warm pseudo pool, and how many warm containers to start for it now (up
        to `size`, as far as the machine has room)."""
        if self.size <= 0 or not eligible(pool):
            return pool, 0
        image = pool.definition.image_built
        assert image is not None
        image_id = image.image_id
        self.last_used[image_id] = time.monotonic()
        warm = self.pools.get(image_id)
        if warm is None:
            warm = Pool(f"warm:{image_id}", "", FunctionDefinition(tag="(warm)", image_built=image))
            self.pools[image_id] = warm
        missing = self.size - len(warm.live())
        return warm, max(0, min(missing, self.backend.capacity() - len(self.registry.containers)))

    def started(self, c: Container) -> None:
        """A warm container was started: its source directory waits for a function."""
        self.source_dir(c).mkdir(parents=True, exist_ok=True)

    def learn(self, pool: Pool, modules: list[str]) -> None:
        image = pool.definition.image_built
        if image is not None:
            known = self.imports.setdefault(image.image_id, [])
            known.extend(m for m in modules if m not in known)

    def imports_for(self, c: Container) -> list[str]:
        image = c.pool.definition.image_built
        return list(self.imports.get(image.image_id, [])) if image is not None else []

    # -- using it --------------------------------------------------------------------------------------------
    def take(self, pool: Pool) -> Container | None:
        """A warm container for `pool`'s image, moved into `pool`, or None."""
        if not eligible(pool):
            return None
        image = pool.definition.image_built
        warm = self.pools.get(image.image_id) if image is not None else None
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
                if pool.definition.source_dir:
                    link_tree(pool.definition.source_dir, str(self.source_dir(c)))
                return c
        return None

    def assignment(self, c: Container, env: dict[str, str]) -> frames.Assignment:
        sandboxed = self.backend.isolation == "sandbox"
        return frames.Assignment(source=WARM_SOURCE_MOUNT if sandboxed else str(self.source_dir(c)), env=env,
                                 sandboxed=sandboxed)

    # -- emptying it -----------------------------------------------------------------------------------------
    def trim(self, now: float) -> None:
        """Stop warm containers of images no running function uses, or unused for IDLE_EXPIRY_S."""
        in_use = {p.definition.image_built.image_id for p in self.registry.pools.values()
                  if p.definition.image_built is not None and not p.stopped}
        for image_id, warm in list(self.pools.items()):
            if image_id not in in_use or now - self.last_used.get(image_id, 0) > IDLE_EXPIRY_S:
                for c in list(warm.containers.values()):
                    stop(c, "warm pool trimmed")

    def evict(self, count: int) -> int:
        """Give machine slots back (another function needs them); returns how many were stopped."""
        stopped = 0
        for warm in self.pools.values():
            for c in list(warm.containers.values()):
                if stopped < count and c.state in ("warm", "starting"):
                    stop(c, "warm pool gave its slot away")
                    stopped += 1
        return stopped

    def forget(self, c: Container) -> None:
        shutil.rmtree(self.source_dir(c), ignore_errors=True)
