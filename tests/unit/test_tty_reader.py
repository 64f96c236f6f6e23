"""The reader of an exec's terminal (controlplane/core/sandbox_exec.py `_tty_reader`), on a real pseudo-terminal:
output that reaches the master after the command's exit was reported is still read, and a master numbered past
1023 (a control plane with many sandboxes) is read at all."""

from __future__ import annotations

import asyncio
import os
import resource
import threading

from shoal.controlplane.core.sandbox_exec import _tty_reader


async def read_all(reader: asyncio.StreamReader) -> bytes:
    out = b""
    while chunk := await asyncio.wait_for(reader.read(65536), 30):
        out += chunk
    return out


def test_output_arriving_after_the_exit_is_reported_is_read():
    async def main() -> bytes:
        master, slave = os.openpty()
        done = threading.Event()
        done.set()  # the exit status came first; the output is still on its way
        reader = _tty_reader(master, done)
        await asyncio.sleep(0.3)  # longer than one poll of the reader
        os.write(slave, b"late line\n")
        other = os.dup(slave)  # another holder (a background process): no hangup when this one closes
        os.close(slave)
        try:
            return await read_all(reader)
        finally:
            os.close(other)
            os.close(master)

    assert asyncio.run(main()).replace(b"\r", b"") == b"late line\n"


def test_a_master_numbered_past_1023_is_read():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2048:
        import pytest

        pytest.skip(f"the descriptor limit here is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 2048), hard))

    async def main() -> bytes:
        master, slave = os.openpty()
        high = os.dup2(master, 1500)
        os.close(master)
        reader = _tty_reader(high, threading.Event())
        os.write(slave, b"hello\n")
        os.close(slave)  # the hangup ends it
        try:
            return await read_all(reader)
        finally:
            os.close(high)

    try:
        assert asyncio.run(main()).replace(b"\r", b"") == b"hello\n"
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
