"""Per-app log buffer: container output and system messages, readable by cursor and followed live."""

from __future__ import annotations

import asyncio
import collections
import time
from typing import Any

MAX_ENTRIES = 5000


def wake_all(waiters: list[asyncio.Future]) -> None:
    for fut in waiters:
        if not fut.done():
            fut.set_result(None)


async def wait_woken(waiters: list[asyncio.Future], timeout: float) -> None:
    """Wait until `wake_all(waiters)` or `timeout` seconds, whichever comes first."""
    fut = asyncio.get_running_loop().create_future()
    waiters.append(fut)
    try:
        await asyncio.wait_for(fut, timeout)
    except asyncio.TimeoutError:
        pass
    finally:  # woken ones too: a stream read by many long polls would keep every one of them
        if fut in waiters:
            waiters.remove(fut)


class AppLogs:
    """A bounded ring of log entries; `seq` keeps increasing so readers can resume where they stopped."""

    def __init__(self) -> None:
        self.entries: collections.deque[dict[str, Any]] = collections.deque(maxlen=MAX_ENTRIES)
        self.next_seq = 0
        self._waiters: list[asyncio.Future] = []

    def append(self, container_id: str, fd: str, data: str) -> None:
        self.entries.append({"seq": self.next_seq, "ts": time.time(), "container_id": container_id, "fd": fd,
                             "data": data})
        self.next_seq += 1
        waiters, self._waiters = self._waiters, []
        wake_all(waiters)

    def since(self, after: int) -> list[dict[str, Any]]:
        if not self.entries or self.entries[-1]["seq"] <= after:
            return []
        return [e for e in self.entries if e["seq"] > after]

    async def wait(self, after: int, timeout: float) -> list[dict[str, Any]]:
        entries = self.since(after)
        if entries or timeout <= 0:
            return entries
        await wait_woken(self._waiters, timeout)
        return self.since(after)

    def wake(self) -> None:
        """Release followers, e.g. because the app stopped."""
        self.append("", "system", "")
