"""Network namespaces with pasta already attached, made ahead of the containers that take them.

pasta needs ~20–40 ms to start (more on a loaded machine), longer than the rest of a sandbox's setup, so each
container taking one from here instead of starting its own saves that on every cold start. A namespace is fresh
for each container (taken once, never returned); the pool refills in the background. Root mode only: a rootless
supervisor cannot enter a namespace of the host's user namespace, and starts pasta itself (sandbox_init.Pasta).
When the pool is empty (a burst of starts) the container also starts its own.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from dataclasses import dataclass

from .netns import open_netns

log = logging.getLogger("shoal.sandbox")

# A process that makes a network namespace and waits; the pool keeps a descriptor of the namespace and lets it go.
_HOLDER = ("import ctypes, os, sys\n"
           "if ctypes.CDLL(None, use_errno=True).unshare(0x40000000) != 0: sys.exit(1)\n"
           "os.write(1, b'1'); sys.stdin.buffer.read()\n")


# After a take, the refill (an interpreter and a pasta starting: CPU) waits for the container's own start.
REFILL_DELAY_S = 0.3


@dataclass
class PooledNetns:
    fd: int  # the namespace (the supervisor enters it: `setns`)
    pasta: asyncio.subprocess.Process

    def release(self) -> None:
        """The container ended (or never started): pasta goes, and with it the namespace."""
        if self.pasta.returncode is None:
            try:
                self.pasta.kill()
            except ProcessLookupError:
                pass
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _pdeathsig() -> None:
    import ctypes

    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: pasta dies with the control plane
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # (Python ignores it; pasta takes that for an error)


class NetnsPool:
    def __init__(self, pasta_argv: list[str], size: int = 2) -> None:
        self.argv = pasta_argv
        self.size = size
        self.ready: list[PooledNetns] = []
        self._filling: asyncio.Task | None = None
        self._broken = False

    def prime(self) -> None:
        """Start filling now, where an event loop runs (else the first `take` does)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        self._refill()

    def take(self) -> PooledNetns | None:
        """A ready namespace, or None (the caller starts pasta itself); refills in the background."""
        while self.ready:
            item = self.ready.pop()
            if item.pasta.returncode is None:
                self._refill(REFILL_DELAY_S)
                return item
            item.release()
        self._refill()
        return None

    def _refill(self, delay: float = 0.0) -> None:
        if self._broken or (self._filling is not None and not self._filling.done()):
            return
        self._filling = asyncio.get_running_loop().create_task(self._fill(delay))

    async def _fill(self, delay: float) -> None:
        await asyncio.sleep(delay)
        while len(self.ready) < self.size:
            try:
                self.ready.append(await self._make())
            except (OSError, RuntimeError) as exc:
                self._broken = True  # containers start their own pasta, which says what is wrong
                log.warning("no pool of network namespaces (%s): each container starts its own pasta", exc)
                return

    async def _make(self) -> PooledNetns:
        holder = await asyncio.create_subprocess_exec(
            sys.executable, "-I", "-S", "-c", _HOLDER, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        try:
            assert holder.stdout is not None
            if await holder.stdout.read(1) != b"1":
                raise RuntimeError("could not make a network namespace")
            fd = open_netns(holder.pid)
        finally:
            holder.kill()
            await holder.wait()
        r, w = os.pipe()
        try:
            pasta = await asyncio.create_subprocess_exec(
                *self.argv, "--runas", "0", "-P", f"/proc/self/fd/{w}", "--netns", f"/proc/self/fd/{fd}",
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL, pass_fds=(fd, w), preexec_fn=_pdeathsig)
        except BaseException:
            os.close(fd)
            raise
        finally:
            os.close(w)
        try:
            ready = await asyncio.to_thread(os.read, r, 32)
        finally:
            os.close(r)
        item = PooledNetns(fd, pasta)
        if not ready.strip().isdigit():
            item.release()
            await pasta.wait()
            raise RuntimeError(f"pasta exited with status {pasta.returncode}")
        asyncio.get_running_loop().create_task(pasta.wait())  # reaped when it goes
        return item

    def close(self) -> None:
        if self._filling is not None:
            self._filling.cancel()
        for item in self.ready:
            item.release()
        self.ready.clear()
