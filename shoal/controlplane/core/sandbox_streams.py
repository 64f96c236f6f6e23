"""A sandbox's (or an exec's) process streams: output appended to files under SHOAL_HOME as it is written, so
readers long-poll by byte offset and the output outlives the process and the control plane; stdin written at a
byte offset, so a resent chunk is written once."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from .logs import wait_woken, wake_all

READ_MAX = 1 << 20  # bytes one read returns at most
OUTPUT_MAX_ENV = "SHOAL_SANDBOX_OUTPUT_MAX"  # bytes one stream keeps (default 1 GiB): a sandbox cannot fill the disk
OUTPUT_MAX = 1 << 30


def output_max() -> int:
    raw = os.environ.get(OUTPUT_MAX_ENV, "")
    return int(raw) if raw.isdigit() and int(raw) > 0 else OUTPUT_MAX


class OutputFile:
    """One fd's output: appended to `path`; `size` bytes so far; `eof` once the process is gone. Past `limit`
    bytes the rest is dropped (the process's pipe is still read, so it never blocks), with a line saying so."""

    def __init__(self, path: Path, limit: int | None = None) -> None:
        self.path = path
        self.limit = limit or output_max()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self.size = os.fstat(self._fd).st_size
        self.dropped = self.size > self.limit  # (a file written before a restart ends with its note already)
        self.eof = False
        self._waiters: list[asyncio.Future] = []

    def append(self, data: bytes) -> None:
        if self._fd < 0 or self.dropped or not data:
            return
        if self.size + len(data) > self.limit:  # (also the first chunk after one that filled it exactly)
            data = data[:max(0, self.limit - self.size)]
            data += f"\n[shoal: output past {self.limit} bytes dropped]\n".encode()
            self.dropped = True
        os.write(self._fd, data)
        self.size += len(data)
        wake_all(self._waiters)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self.eof = True
        wake_all(self._waiters)

    async def read(self, offset: int, timeout: float) -> tuple[bytes, int, bool]:
        """(bytes past `offset`, the next offset, eof): at once when there are bytes or the stream ended, else
        after waiting up to `timeout` seconds for some."""
        deadline = time.monotonic() + timeout
        while self.size <= offset and not self.eof:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            await wait_woken(self._waiters, left)
        return read_file(self.path, offset, self.eof)


def read_file(path: Path, offset: int, ended: bool) -> tuple[bytes, int, bool]:
    """What a stored output file holds past `offset` (a stream no process writes to any more: `ended`)."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read(READ_MAX)
            more = bool(f.read(1))
    except FileNotFoundError:
        data, more = b"", False
    return data, offset + len(data), ended and not more


class StdinPipe:
    """A process's stdin, written at byte offsets: bytes before `offset` were written already (a resend), a gap
    past it is refused."""

    def __init__(self, writer: asyncio.StreamWriter | None, eof_data: bytes = b"") -> None:
        self.writer = writer
        self.eof_data = eof_data  # a terminal's end of input (^D) is a byte, not a closed pipe
        self.offset = 0
        self.closed = writer is None
        self.lock = asyncio.Lock()

    async def write(self, offset: int, data: bytes, eof: bool) -> int:
        async with self.lock:
            if offset > self.offset:
                raise ValueError(f"stdin offset {offset} is past the {self.offset} bytes written so far")
            new = data[self.offset - offset:]
            if new and self.closed:
                raise ValueError("stdin is closed (write_eof was called, or the process ended)")
            if new:
                assert self.writer is not None
                try:
                    self.writer.write(new)
                    await self.writer.drain()
                except (ConnectionError, RuntimeError):
                    self.closed = True  # the process closed its stdin, or ended: nothing more reaches it
                self.offset += len(new)
            if eof and not self.closed:
                if self.eof_data and self.writer is not None:
                    try:
                        self.writer.write(self.eof_data)
                        await self.writer.drain()
                    except (ConnectionError, RuntimeError):
                        pass
                self.close()
            return self.offset

    def close(self) -> None:
        self.closed = True
        if self.writer is not None:
            try:
                self.writer.close()
            except (ConnectionError, RuntimeError):
                pass
