"""A sandbox's or an exec's standard streams (`modal.io_streams`): `StreamReader` for stdout/stderr and
`StreamWriter` for stdin.

Output is kept by the control plane (readable after the process ended); a reader long-polls it from a byte offset,
so a lost response is simply read again. Stdin writes are buffered and sent by `drain()`, each chunk with its byte
offset in the stream: a chunk sent twice (a retry after a lost response) is written once.
"""

from __future__ import annotations

import codecs
import sys
import threading
from collections.abc import AsyncIterator, Generator, Iterator
from typing import Any

from ._client.aio import Emit, Plan, Request, aiter_plan, iter_plan, rpc
from ._spec.limits import MAX_WAIT_S
from .exception import ExecutionError, InvalidError
from .stream_type import StreamType

__all__ = ["StreamReader", "StreamWriter"]

STDIN_CHUNK = 1 << 20  # bytes per stdin request (request bodies are bounded by the control plane)
_FDS = {"stdout": 1, "stderr": 2}


class StreamReader:
    """stdout or stderr of a sandbox or exec. `read()` returns everything up to the end of the stream; iterating
    (`for line in r`, `async for line in r`) yields the output as it is written: lines when the stream is text
    (or opened line-buffered, `bufsize=1`), else chunks of bytes as they arrive. A reader remembers its place:
    what iteration delivered is not returned again by `read()`."""

    def __init__(self, base: str, fd: str, *, text: bool = True, by_line: bool | None = None,
                 stream_type: StreamType = StreamType.PIPE) -> None:
        self._path = f"{base}/output?fd={fd}"
        self._fd = fd
        self._text = text
        self._by_line = text if by_line is None else by_line
        self._stream_type = stream_type
        self._offset = 0
        self._eof = stream_type is not StreamType.PIPE  # nothing to read here: DEVNULL, or printed (STDOUT)
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace") if text else None
        self._pending: Any = "" if text else b""

    def __repr__(self) -> str:
        return f"StreamReader({self._fd})"

    @property
    def file_descriptor(self) -> int:
        return _FDS[self._fd]

    def _request(self, wait: float) -> Request:
        return ("GET", f"{self._path}&offset={self._offset}&timeout={wait:g}", None)

    def _take(self, resp: dict[str, Any]) -> Any:
        """Consume a response: advance the offset, decode the new bytes."""
        data = bytes(resp.get("data") or b"")
        self._offset = int(resp.get("offset", self._offset + len(data)))
        if resp.get("eof"):
            self._eof = True
        if self._decoder is None:
            return data
        return self._decoder.decode(data, final=self._eof)

    @rpc
    def read(self) -> Plan:
        """Everything from here to the end of the stream (waits until the process closes it)."""
        parts = [self._pending]
        self._pending = self._pending[:0]
        while not self._eof:
            parts.append(self._take((yield self._request(MAX_WAIT_S))))
        return parts[0][:0].join(parts)

    def _items(self) -> Generator[Any, Any, None]:
        while True:
            if self._by_line:
                lines = self._pending.splitlines(keepends=True)
                newline = "\n" if isinstance(self._pending, str) else b"\n"
                complete = lines if (self._eof or not lines or lines[-1].endswith(newline)) else lines[:-1]
                if complete:
                    self._pending = self._pending[sum(len(x) for x in complete):]
                    yield Emit(complete)
            elif self._pending:
                chunk, self._pending = self._pending, self._pending[:0]
                yield Emit([chunk])
            if self._eof:
                if self._pending:
                    chunk, self._pending = self._pending, self._pending[:0]
                    yield Emit([chunk])
                return
            resp = yield self._request(MAX_WAIT_S)
            self._pending = self._pending + self._take(resp)

    def __iter__(self) -> Iterator[Any]:
        return iter_plan(self._items())

    def __aiter__(self) -> AsyncIterator[Any]:
        return aiter_plan(self._items())

    def _print_to(self, stream: Any) -> None:
        """StreamType.STDOUT: copy the output to this process's `stream` in a thread, as it arrives."""
        self._eof = False

        def pump() -> None:
            for item in self:
                if isinstance(item, bytes):
                    stream.buffer.write(item)
                else:
                    stream.write(item)
                stream.flush()
            self._eof = True

        threading.Thread(target=pump, name=f"shoal-{self._fd}", daemon=True).start()


class StreamWriter:
    """stdin of a sandbox or exec: `write()` buffers, `drain()` sends (`await w.drain.aio()` in async code),
    `write_eof()` closes it once the buffer is sent by the next `drain()`."""

    def __init__(self, base: str) -> None:
        self._path = f"{base}/stdin"
        self._buffer = bytearray()
        self._offset = 0  # bytes of the stream the control plane has
        self._eof = False
        self._eof_sent = False

    def __repr__(self) -> str:
        return "StreamWriter(stdin)"

    def write(self, data: bytes | bytearray | memoryview | str) -> None:
        """Buffer `data` (str is sent as UTF-8); nothing is sent before `drain()`."""
        if self._eof:
            raise ValueError("Stdin is closed. Cannot write to it.")
        if isinstance(data, str):
            data = data.encode("utf-8")
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data argument must be a bytes-like object or str, not {type(data).__name__}")
        self._buffer += data

    def write_eof(self) -> None:
        """Close stdin after the buffered data (sent by the next `drain()`)."""
        self._eof = True

    @rpc
    def drain(self) -> Plan:
        """Send what was written, chunk by chunk, each with its offset in the stream."""
        while self._buffer or (self._eof and not self._eof_sent):
            chunk = bytes(self._buffer[:STDIN_CHUNK])
            eof = self._eof and len(chunk) == len(self._buffer)
            resp = yield ("POST", self._path, {"offset": self._offset, "data": chunk, "eof": eof})
            acked = int(resp.get("offset", self._offset + len(chunk)))
            taken = acked - self._offset
            if taken < 0 or taken > len(chunk) or (chunk and not taken):
                raise ExecutionError(f"stdin: the control plane holds {acked} bytes, this writer sent "
                                     f"{self._offset + len(chunk)}")
            del self._buffer[:taken]
            self._offset = acked
            if eof and taken == len(chunk):
                self._eof_sent = True


def check_stream_type(value: Any, name: str) -> StreamType:
    if not isinstance(value, StreamType):
        raise InvalidError(f"`{name}` must be a modal.stream_type.StreamType (PIPE, STDOUT or DEVNULL), "
                           f"got {value!r}")
    return value


def print_stream(reader: StreamReader, fd: str) -> None:
    reader._print_to(sys.stdout if fd == "stdout" else sys.stderr)
