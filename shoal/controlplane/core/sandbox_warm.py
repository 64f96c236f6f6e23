"""Warm sandboxes: containers of an image started ahead, idle, with their exec agent up, so a `Sandbox.create`
that fits one (its image, default resources and network, no volumes) only has to start its command through the
agent (`SHOAL_SANDBOX_WARM_POOL` per image, default 0: off). A warm container holds no secret and no credential;
what a sandbox adds (its environment, secrets, working directory) goes to each command it runs."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..._spec.definitions import FunctionDefinition, Options
from ...backends import local_exec
from ...backends.base import Backend, ContainerHandle, ContainerImage, ContainerSpec
from .containers import modal_environment
from .model import new_id
from .sandbox_exec import Agent, agent_python

log = logging.getLogger("shoal.sandbox")
WARM_ENV = "SHOAL_SANDBOX_WARM_POOL"
REFILL_DELAY_S = 0.1


def warm_size() -> int:
    raw = os.environ.get(WARM_ENV, "")
    return min(int(raw), 16) if raw.isdigit() else 0


@dataclass
class Warm:
    container_id: str
    handle: ContainerHandle
    image: ContainerImage | None
    target: local_exec.ExecTarget
    agent: Agent
    rootfs_dir: Path | None = None  # on an OCI image: its writable layer on the host (the sandbox's once taken)


def fits(body: Any) -> bool:
    """A creation a warm container can serve: nothing that its start would have had to set differently."""
    return (body.cpu is None and body.memory is None and body.gpu is None and not body.block_network
            and body.outbound_cidr_allowlist is None and not body.volumes)


class WarmSandboxes:
    def __init__(self, backend: Backend, pids_max: int, layers_dir: Path) -> None:
        self.backend = backend
        self.layers_dir = layers_dir  # warm containers' writable layers on OCI images: <dir>/<ta-id>
        self.pids_max = pids_max
        self.size = warm_size()
        self.ready: dict[str, list[Warm]] = {}
        self.starting: dict[str, int] = {}
        self._tasks: set[asyncio.Task] = set()

    def take(self, image: ContainerImage | None) -> Warm | None:
        """A warm container of `image`, if one is ready (and start another in its place)."""
        if self.size <= 0:
            return None
        key = image.image_id if image is not None else "im-host"
        pool = self.ready.get(key) or []
        got = None
        while pool and got is None:
            w = pool.pop()
            if w.agent.alive and w.handle.pid and os.path.isdir(f"/proc/{w.target.pid}"):
                got = w
            else:
                w.handle.kill()
        # Its replacement starts a little later: starting a container holds the event loop for milliseconds,
        # which the creation served now should not wait behind.
        asyncio.get_running_loop().call_later(REFILL_DELAY_S, self.fill, image)
        return got

    def fill(self, image: ContainerImage | None) -> None:
        key = image.image_id if image is not None else "im-host"
        missing = self.size - len(self.ready.get(key, [])) - self.starting.get(key, 0)
        for _ in range(max(0, missing)):
            self.starting[key] = self.starting.get(key, 0) + 1
            task = asyncio.get_running_loop().create_task(self._start(key, image))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _start(self, key: str, image: ContainerImage | None) -> None:
        cid = new_id("ta")
        handle = None
        rootfs_dir = self.layers_dir / cid if image is not None and image.layers is not None else None
        try:
            spec = ContainerSpec(
                container_id=cid, function_id="warm-sandbox", app_id="", env=modal_environment(cid, image),
                definition=FunctionDefinition(tag="warm-sandbox", options=Options(extra={"pids_max": self.pids_max})),
                image=image, idle=True, raw_output=lambda fd, data: None,
                rootfs_dir=str(rootfs_dir) if rootfs_dir is not None else None)
            handle = await self.backend.start(spec, on_output=None)
            info = {"container_id": cid, "pid": handle.pid, "sandboxed": handle.sandboxed,
                    "cgroups": list(handle.cgroup.dirs) if handle.cgroup is not None else []}
            target = await asyncio.to_thread(local_exec.find_target, info)
            python = agent_python(self.backend, image)
            if not python:
                raise OSError("the image has no Python for the exec agent")
            agent = await Agent.start(target, python)
            w = Warm(cid, handle, image, target, agent, rootfs_dir)
            self.ready.setdefault(key, []).append(w)
            watch = asyncio.get_running_loop().create_task(self._reap(key, w))
            self._tasks.add(watch)
            watch.add_done_callback(self._tasks.discard)
        except Exception as exc:  # noqa: BLE001 - no warm container: creations start their own
            log.warning("could not start a warm sandbox of %s: %s", key, exc)
            if handle is not None:
                handle.kill()
            if rootfs_dir is not None:
                shutil.rmtree(rootfs_dir, ignore_errors=True)  # (a container killed here leaves no mount behind)
        finally:
            self.starting[key] -= 1

    async def _reap(self, key: str, w: Warm) -> None:
        """Wait for the container's end (its cgroup is removed then), taken or not; gone while warm: forget it."""
        await w.handle.wait()
        pool = self.ready.get(key) or []
        if w in pool:
            pool.remove(w)
            w.agent.close()
            if w.rootfs_dir is not None:
                await asyncio.to_thread(shutil.rmtree, w.rootfs_dir, True)

    def images(self) -> set[str]:
        """The ids of the images warm containers run on (ready or starting)."""
        return {k for k, pool in self.ready.items() if pool} | {k for k, n in self.starting.items() if n > 0}

    def shutdown(self) -> None:
        for pool in self.ready.values():
            for w in pool:
                w.agent.close()
                w.handle.kill()
        self.ready.clear()
