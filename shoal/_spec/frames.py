"""Length-prefixed msgpack frames: the stream between the control plane and container runtimes.

A frame is a 4-byte big-endian length followed by a msgpack map with a `t` (type) key.
Kept dependency-light because every container imports it on its cold-start path.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any

import msgpack

if TYPE_CHECKING:
    import asyncio

HEADER = struct.Struct("!I")
MAX_FRAME = 256 * 1024 * 1024


def encode(msg: dict[str, Any]) -> bytes:
    body = msgpack.packb(msg, use_bin_type=True)
    return HEADER.pack(len(body)) + body


async def read_frame(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    """Next frame, or None at end of stream."""
    import asyncio

    try:
        header = await reader.readexactly(HEADER.size)
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    (length,) = HEADER.unpack(header)
    if length > MAX_FRAME:
        raise ValueError(f"frame of {length} bytes exceeds the {MAX_FRAME} byte limit")
    try:
        body = await reader.readexactly(length)
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    return msgpack.unpackb(body, raw=False)
