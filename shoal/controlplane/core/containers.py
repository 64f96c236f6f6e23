"""Container lifecycle: start a container for a pool (secrets, volumes, a spec for the backend), wait while the
backend has no room for it, stop it, and report its exit.

What a container *runs* is not decided here: `Queues` assigns inputs, `RuntimeLink` speaks the frame protocol
with the runtime inside. Whoever launches a container says what happens when it exits (`on_exit`): the inputs
it held go back to their queue there.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import signal
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ..._spec import frames
from ..._spec.definitions import BuiltImage
from ...backends.base import Backend, ContainerHandle, ContainerImage, ContainerSpec, Unschedulable
from ..credentials import container_credential
from ..metrics import METRICS
from .model import AppState, Container, Pool, new_id

if TYPE_CHECKING:
    from .registry import Registry

log = logging.getLogger("shoal.dispatch")
PENDING_RETRY_S = 0.25  # how often a container waiting for resources (a GPU) tries again
STOP_KILL_AFTER_S = 30.0  # a container told to stop (its `@exit` hooks run) is killed after this


@dataclass(frozen=True)
class Exit:
    """How a container ended."""

    returncode: int | None  # None: it never started
    reason: str  # the exit described for people ("killed by SIGKILL (out of memory?)")
    was_ready: bool  # it had become ready (else its exit is a failed start)
    prev_state: str  # its state before: "stopping" when the control plane ended it
    failed_start: bool  # it could not be started at all (the backend, its secrets)


OnExit = Callable[[Container, Exit], None]


class SecretResolver(Protocol):
    async def resolve(self, names: list[str]) -> dict[str, str]: ...


class VolumeMounts(Protocol):
    async def prepare(self, c: Container) -> list[list]: ...
    async def release(self, container_id: str) -> None: ...


class WarmSources(Protocol):
    """What a warm container's start and end need of the warm pool (controlplane/core/warmpool.py)."""

    def binds(self, c: Container) -> list[tuple[str, str, bool]]: ...
    def assignment(self, c: Container, env: dict[str, str]) -> frames.Assignment: ...
    def forget(self, c: Container) -> None: ...


@dataclass(frozen=True)
class ControlPlaneAddress:
    """Where a container's runtime finds the control plane: its container stream and its HTTP API."""

    control: str  # "unix:/path" or "tcp://host:port": the container stream (RuntimeLink)
    url: str  # the HTTP API, for the SDK inside containers (with the container's own credential)


class Containers:
    def __init__(self, registry: Registry, backend: Backend, secrets: SecretResolver, volumes: VolumeMounts,
                 warm: WarmSources, address: ControlPlaneAddress) -> None:
        self.registry = registry
        self.backend = backend
        self.secrets = secrets
        self.volumes = volumes
        self.warm = warm
        self.address = address
        self._tasks: set[asyncio.Task] = set()

    # -- starting --------------------------------------------------------------------------------------------
    def launch(self, pool: Pool, on_exit: OnExit, *, warm: bool = False, shell: bool = False) -> Container:
        """A new container of `pool`, starting now. `warm`: for the warm pool (no function until assigned);
        `shell`: `shoal shell`'s, which runs nothing, takes no inputs and is never counted by the autoscaler."""
        c = Container(id=new_id("ta"), pool=pool, token=secrets.token_hex(16), warm=warm,
                      exited=asyncio.get_running_loop().create_future())
        if shell:
            c.state, c.shell, c.ready_at = "shell", True, time.monotonic()
        pool.containers[c.id] = c
        self.registry.containers[c.id] = c
        self.spawn(self._run(c, on_exit))
        return c

    def adopt(self, c: Container) -> None:
        """A warm container was taken for its pool (`WarmPool.take`): give it its function."""
        self.spawn(self._assign_warm(c))

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _assign_warm(self, c: Container) -> None:
        """Source linked in, secrets as its environment, then `init`."""
        try:
            secret_env = await self.secrets.resolve(c.pool.definition.secrets)
        except Exception as exc:  # noqa: BLE001 - e.g. the secret was deleted since registration
            c.pool.last_start_error = f"cannot resolve secrets: {exc}"
            stop(c, c.pool.last_start_error, kill=True, failed_start=True)
            return
        self.send_init(c, assign=self.warm.assignment(c, secret_env))

    def send_init(self, c: Container, assign: frames.Assignment | None = None) -> None:
        pool = c.pool
        app = self.registry.apps.get(pool.app_id)
        assert c.writer is not None
        c.writer.write(frames.encode(frames.Init(
            function_id=pool.function_id, definition=pool.definition,
            app_functions=dict(app.functions) if app else {}, app_id=pool.app_id, assign=assign)))

    def route_output(self, container_id: str, fd: str, text: str) -> None:
        """Container output goes to the log of the app its container serves now (a warm one changes apps)."""
        c = self.registry.containers.get(container_id)
        app = self.registry.apps.get(c.pool.app_id) if c is not None else None
        if app is not None:
            app.logs.append(container_id, fd, text)

    async def _run(self, c: Container, on_exit: OnExit) -> None:
        address = self.address
        env = {
            "SHOAL_CONTAINER_ID": c.id,
            "SHOAL_CONTAINER_TOKEN": c.token,
            "SHOAL_CONTROL": address.control,
            "SHOAL_SERVER_URL": address.url,
            # Its own API credential, never the admin token: what it may do is access.py's decision.
            "SHOAL_TOKEN": container_credential(c.id, c.token),
        }
        app = self.registry.apps.get(c.pool.app_id)
        definition = c.pool.definition
        try:
            secret_env = {} if c.warm else await self.secrets.resolve(definition.secrets)
        except Exception as exc:  # noqa: BLE001 - e.g. the secret was deleted since registration
            c.pool.last_start_error = f"cannot resolve secrets: {exc}"
            self._exited(c, None, on_exit, failed_start=True)
            return
        spec = ContainerSpec(
            container_id=c.id, function_id=c.pool.function_id, app_id=c.pool.app_id, definition=definition,
            env={**secret_env, **env}, source_dir=None if c.warm else definition.source_dir,
            image=container_image(definition.image_built),
            binds=self.warm.binds(c) if c.warm else [],
            idle=c.shell,
        )
        spec.env.update(modal_environment(c.id, spec.image))
        try:
            if not c.warm:
                spec.volumes = await self.volumes.prepare(c)  # each at its current version
            c.handle = await self._start_when_schedulable(c, spec, app)
        except Exception as exc:  # the backend could not even start it
            log.exception("container %s failed to start", c.id)
            c.pool.last_start_error = f"{type(exc).__name__}: {exc}"
            await self.volumes.release(c.id)
            self._exited(c, None, on_exit, failed_start=True)
            return
        if c.handle is None:  # it waited for resources until it was no longer wanted
            await self.volumes.release(c.id)
            self._exited(c, None, on_exit)
            return
        if c.state == "dead" or (c.shell and c.state == "stopping"):  # stopped while starting
            c.handle.kill()
        returncode = await c.handle.wait()
        await self.volumes.release(c.id)  # its uncommitted volume changes are committed before it counts as gone
        self._exited(c, returncode, on_exit)

    async def _start_when_schedulable(self, c: Container, spec: ContainerSpec,
                                      app: AppState | None) -> ContainerHandle | None:
        """Start the container; while the backend cannot yet (`Unschedulable`: no free GPU of the model asked
        for), it stays pending with the reason shown (containers list, app logs) and tries again. Returns None
        once it is no longer wanted (stopped, or nothing left queued for it: a cancelled call)."""
        while True:
            try:
                c.t_launch = time.time()
                handle = await self.backend.start(spec, on_output=self.route_output)
            except Unschedulable as exc:
                if c.pending_reason != str(exc):
                    c.pending_reason = str(exc)
                    log.info("container %s of %s is pending: %s", c.id, c.pool.tag, exc)
                    if app is not None:
                        app.logs.append(c.id, "system", f"container {c.id} is pending: {exc}\n")
                await asyncio.sleep(PENDING_RETRY_S)
                pool = c.pool
                if c.state != "starting" or pool.stopped:
                    return None
                if not pool.queue and len(pool.live()) > (pool.options.min_containers or 0):
                    c.state = "stopping"
                    c.stop_reason = "no longer needed while pending"
                    return None
                continue
            if c.pending_reason is not None:
                c.pending_reason = None
                c.created_at = time.monotonic()  # the startup timeout counts from the real start
            return handle

    # -- ending ----------------------------------------------------------------------------------------------
    def _exited(self, c: Container, returncode: int | None, on_exit: OnExit, failed_start: bool = False) -> None:
        ended = Exit(returncode, describe_exit(returncode), was_ready=c.ready_at is not None, prev_state=c.state,
                     failed_start=failed_start)
        c.state = "dead"
        if not c.exited.done():  # type: ignore[union-attr]
            c.exited.set_result(returncode)  # type: ignore[union-attr]
        c.pool.containers.pop(c.id, None)
        self.registry.containers.pop(c.id, None)
        if c.writer is not None:
            c.writer.close()
        if c.warm:
            self.warm.forget(c)
        if c.handle is not None:  # the backend may know better (an OOM kill)
            better = c.handle.exit_reason()
            if better:
                ended = Exit(returncode, better, ended.was_ready, ended.prev_state, failed_start)
        METRICS.container_exited(c, ended)
        on_exit(c, ended)


def stop(c: Container, reason: str, kill: bool = False, failed_start: bool = False) -> bool:
    """Stop a container: told to stop (its `@exit` hooks run, then it is killed after STOP_KILL_AFTER_S), or
    killed at once. True when the inputs it runs are to go back to their queue now (`Queues.stop_container`
    does that), not when the process is gone; False when it was already stopping, or had not started yet (it
    is killed once started)."""
    if c.state in ("stopping", "dead"):
        return False
    c.stop_reason = reason
    c.state = "stopping"
    if failed_start:
        c.pool.start_failures += 1
    if c.handle is None:
        return False
    if kill or c.writer is None:
        c.handle.kill()
    else:
        c.writer.write(frames.encode(frames.Stop()))
        asyncio.get_running_loop().call_later(STOP_KILL_AFTER_S, c.handle.kill)
    return True


def container_image(built: BuiltImage | None) -> ContainerImage | None:
    """A built image as the backends take it."""
    if built is None:
        return None
    return ContainerImage(image_id=built.image_id, python=built.python, root=built.root, env=dict(built.env),
                          workdir=built.workdir, layers=list(built.layers) if built.layers is not None else None,
                          runtime_dir=built.runtime_dir, user=built.user)


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "could not be started"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = str(-returncode)
        hint = " (out of memory?)" if name == "SIGKILL" else ""
        return f"killed by {name}{hint}"
    return f"exited with code {returncode}"


def phase_timings(t_requested: float, t_launch: float, reported: dict[str, float]) -> dict[str, float]:
    """Where a container's cold start went, in seconds: waiting to be scheduled, building the sandbox and
    starting the process, the interpreter (with shoal's own import), the user's imports, `@enter`. The image is
    built when the app is registered, so it costs containers nothing here."""
    if reported.get("warm"):  # a warm container: sandbox and interpreter were ready before it was asked for
        t_launch = reported.get("t_assigned", t_launch)
        reported = {**reported, "t_exec": t_launch, "t_main": t_launch}
    t_exec = reported.get("t_exec", t_launch)
    t_main = reported.get("t_main", t_exec)
    phases = {
        "schedule": max(0.0, t_launch - t_requested),
        "sandbox": max(0.0, t_exec - t_launch),
        "interpreter": max(0.0, t_main - t_exec),
        "imports": reported.get("imports_s", 0.0),
        "enter": reported.get("enter_s", 0.0),
    }
    phases["total"] = max(0.0, reported.get("t_ready", t_main) - t_requested)
    return phases


def format_timings(t: dict[str, float]) -> str:
    parts = ", ".join(f"{k} {t[k] * 1000:.0f}" for k in ("schedule", "sandbox", "interpreter", "imports", "enter"))
    return f"{t['total'] * 1000:.0f} ms ({parts})"


def modal_environment(container_id: str, image: ContainerImage | None) -> dict[str, str]:
    """The `MODAL_*` variables Modal's containers carry, which programs read, with shoal's values: this
    control plane has one environment (`main`) and no cloud regions."""
    return {"MODAL_TASK_ID": container_id, "MODAL_IMAGE_ID": image.image_id if image else "im-host",
            "MODAL_IS_REMOTE": "1", "MODAL_ENVIRONMENT": "main", "MODAL_REGION": "local",
            "MODAL_CLOUD_PROVIDER": "local"}
