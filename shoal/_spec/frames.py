"""Length-prefixed msgpack frames: the stream between the control plane and container runtimes.

A frame is a 4-byte big-endian length followed by a msgpack map whose `t` key names its type. Each type is a
msgspec Struct tagged on `t` (the same map as the dicts they replaced, byte for byte), decoded by one typed
decoder per direction: measured on 50-input frames, encoding is ~3x faster than msgpack's and decoding as fast.

Control plane → runtime (`ToRuntime`): `warm` (a warm-pool container: import these), `init` (the function to
run), `inputs`, `stop`. Runtime → control plane (`FromRuntime`): `hello`, `warm_ready`, `ready`, `init_failed`,
`modules`, `out`, `item`. An input travels as a 5-tuple and its output as a 4-tuple (`InputItem`, `OutputItem`),
arrays rather than maps because they are the hot path.
"""

# No `from __future__ import annotations`, as in `definitions` (a faster container start).
import struct
from typing import TYPE_CHECKING, Any, Literal

import msgspec
from msgspec import Struct

from .definitions import FunctionDefinition, Port

if TYPE_CHECKING:
    import asyncio

HEADER = struct.Struct("!I")
MAX_FRAME = 256 * 1024 * 1024

# (key, input id, call id, pickled (args, kwargs), class method or None)
InputItem = tuple[int, str, str, bytes, str | None]
# (key, "ok" | "err", pickled result or exception, seconds it ran)
OutputItem = tuple[int, Literal["ok", "err"], bytes, float]


# -- control plane → runtime ---------------------------------------------------------------------------------------
class Assignment(Struct):
    """A warm container's function: its source (linked in) and its secrets as environment."""

    source: str
    env: dict[str, str] = {}
    sandboxed: bool = False


class Warm(Struct, tag_field="t", tag="warm"):
    """Wait in the warm pool, after importing what this image's functions imported before."""

    imports: list[str] = []


class Init(Struct, tag_field="t", tag="init"):
    """Become the container of this function."""

    function_id: str
    definition: FunctionDefinition
    app_functions: dict[str, str] = {}  # tag → function id, to hydrate the app for nested calls
    app_id: str | None = None
    assign: Assignment | None = None  # a warm container's assignment


class Inputs(Struct, tag_field="t", tag="inputs"):
    items: list[InputItem]


class Stop(Struct, tag_field="t", tag="stop"):
    """Finish the inputs in hand and exit (the @exit hooks run)."""


ToRuntime = Warm | Init | Inputs | Stop


# -- runtime → control plane ---------------------------------------------------------------------------------------
class Hello(Struct, tag_field="t", tag="hello"):
    container_id: str
    token: str = ""
    pid: int = 0


class WarmReady(Struct, tag_field="t", tag="warm_ready"):
    """A warm container has imported ahead and waits for its `init`."""


class Ready(Struct, tag_field="t", tag="ready"):
    """The function is loaded (and its @enter hooks and web server are up)."""

    timings: dict[str, Any] = {}  # phase → seconds, wall-clock marks (`t_*`), `warm`
    web: dict[str, Port] = {}  # web target ("" or a method name) → local port


class InitFailed(Struct, tag_field="t", tag="init_failed"):
    exc: bytes  # `errors.dumps_exception`
    summary: str = "container initialisation failed"


class Modules(Struct, tag_field="t", tag="modules"):
    """Top-level packages the function imported: what a warm container of this image imports ahead."""

    names: list[str] = []


class Out(Struct, tag_field="t", tag="out"):
    items: list[OutputItem]


class Item(Struct, tag_field="t", tag="item"):
    """One value a generator yielded."""

    key: int
    data: bytes


FromRuntime = Hello | WarmReady | Ready | InitFailed | Modules | Out | Item

_encoder = msgspec.msgpack.Encoder()
to_runtime = msgspec.msgpack.Decoder(ToRuntime)
from_runtime = msgspec.msgpack.Decoder(FromRuntime)


def encode(msg: Struct) -> bytes:
    body = _encoder.encode(msg)
    return HEADER.pack(len(body)) + body


async def read_frame(reader: "asyncio.StreamReader", decoder: msgspec.msgpack.Decoder = from_runtime) -> Any:
    """Next frame (from a runtime unless `decoder` says otherwise), or None at end of stream. msgspec.DecodeError
    (a ValidationError among them) for bytes that are no frame of ours, an oversized one included."""
    import asyncio

    try:
        header = await reader.readexactly(HEADER.size)
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    (length,) = HEADER.unpack(header)
    if length > MAX_FRAME:
        raise msgspec.DecodeError(f"frame of {length} bytes exceeds the {MAX_FRAME} byte limit")
    try:
        body = await reader.readexactly(length)
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    return decoder.decode(body)
