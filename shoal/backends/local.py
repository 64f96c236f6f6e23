"""Local backend: each container is a process on this machine running `python -m shoal.runtime`.

(Namespaces, cgroups and images arrive with the sandbox; this backend already owns the process lifecycle and
captures output so both can be added behind the same calls.)
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from ..config import home
from .base import ContainerSpec, OutputSink

# The only variables a container inherits from the control plane's environment; everything else it gets
# comes from its function's secrets and env.
INHERITED_ENV = {"PATH", "HOME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "USER", "LOGNAME", "TERM"}


class LocalContainer:
    def __init__(self, proc: asyncio.subprocess.Process, pumps: list[asyncio.Task]) -> None:
        self.proc = proc
        self._pumps = pumps

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def wait(self) -> int:
        code = await self.proc.wait()
        await asyncio.gather(*self._pumps, return_exceptions=True)
        return code

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def _signal(self, sig: int) -> None:
        if self.proc.returncode is None:
            try:
                os.killpg(self.proc.pid, sig)  # the whole process group: user code may have started children
            except ProcessLookupError:
                pass


class LocalBackend:
    name = "local"

    def __init__(self, python: str | None = None, max_containers: int | None = None) -> None:
        # The resolved interpreter, never a shim on PATH: a pyenv shim costs ~130 ms per start.
        self.python = python or sys.executable
        default_cap = max(4, 4 * (os.cpu_count() or 1))
        self.max_containers = max_containers or int(os.environ.get("SHOAL_LOCAL_MAX_CONTAINERS", default_cap))

    def capacity(self) -> int:
        return self.max_containers

    async def start(self, spec: ContainerSpec, on_output: OutputSink | None) -> LocalContainer:
        container_id = spec.container_id
        source_dir = spec.source_dir
        full_env = {k: v for k, v in os.environ.items() if k in INHERITED_ENV or k.startswith("LC_")}
        full_env.update(spec.env)
        full_env["SHOAL_IMAGE_ID"] = spec.image.image_id if spec.image else "im-host"
        full_env["PYTHONUNBUFFERED"] = "1"
        full_env["SHOAL_HOME"] = str(home())
        if source_dir:
            full_env["PYTHONPATH"] = source_dir + os.pathsep + full_env.get("PYTHONPATH", "")
        python = spec.image.python if spec.image else self.python
        proc = await asyncio.create_subprocess_exec(
            python, "-m", "shoal.runtime",
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env=full_env, cwd=source_dir or None, start_new_session=True,
        )
        pumps = [
            asyncio.create_task(_pump(proc.stdout, container_id, "stdout", on_output)),
            asyncio.create_task(_pump(proc.stderr, container_id, "stderr", on_output)),
        ]
        return LocalContainer(proc, pumps)


async def _pump(stream: asyncio.StreamReader | None, container_id: str, fd: str, sink: OutputSink | None) -> None:
    """Forward output as it is written (not line-buffered), so `print()` shows up at once."""
    if stream is None:
        return
    while True:
        chunk = await stream.read(65536)
        if not chunk:
            return
        if sink is not None:
            sink(container_id, fd, chunk.decode("utf-8", "replace"))
