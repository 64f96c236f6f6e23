"""`ContainerProcess`: a command started in a running sandbox by `Sandbox.exec` (`modal.container_process`)."""

from __future__ import annotations

from ._client.aio import Plan, rpc
from ._spec.limits import MAX_WAIT_S
from .exception import InvalidError
from .io_streams import StreamReader, StreamWriter, print_stream
from .stream_type import StreamType

__all__ = ["ContainerProcess"]


class ContainerProcess:
    """`.stdout` / `.stderr` (StreamReader), `.stdin` (StreamWriter), `.wait()`, `.poll()`, `.returncode`."""

    def __init__(self, exec_id: str, *, text: bool = True, by_line: bool = False,
                 stdout: StreamType = StreamType.PIPE, stderr: StreamType = StreamType.PIPE) -> None:
        self._exec_id = exec_id
        base = f"/v1/execs/{exec_id}"
        self._base = base
        self._returncode: int | None = None
        self.stdout = StreamReader(base, "stdout", text=text, by_line=text or by_line, stream_type=stdout)
        self.stderr = StreamReader(base, "stderr", text=text, by_line=text or by_line, stream_type=stderr)
        self.stdin = StreamWriter(base)
        if stdout is StreamType.STDOUT:
            print_stream(self.stdout, "stdout")
        if stderr is StreamType.STDOUT:
            print_stream(self.stderr, "stderr")

    def __repr__(self) -> str:
        return f"ContainerProcess({self._exec_id})"

    def __reduce__(self) -> tuple:
        return (ContainerProcess, (self._exec_id,))

    @property
    def object_id(self) -> str:
        return self._exec_id

    @property
    def returncode(self) -> int | None:
        """The exit code once the process ended (after `wait()` or a `poll()` that saw it end), else None."""
        return self._returncode

    def _wait_once(self, wait: float) -> Plan:
        resp = yield ("GET", f"{self._base}/wait?timeout={wait:g}", None)
        if resp.get("returncode") is not None:
            code = int(resp["returncode"])
            self._returncode = 128 - code if code < 0 else code  # killed by signal N: 128 + N, as a shell says
        return self._returncode

    @rpc
    def poll(self) -> Plan:
        """The exit code if the process has ended, else None (does not wait)."""
        if self._returncode is None:
            yield from self._wait_once(0)
        return self._returncode

    @rpc
    def wait(self) -> Plan:
        """Wait for the process to end; its exit code."""
        while self._returncode is None:
            yield from self._wait_once(MAX_WAIT_S)
        return self._returncode

    def attach(self, *, pty: bool | None = None) -> None:
        raise InvalidError("ContainerProcess.attach() is not offered by shoal: read `.stdout` and write `.stdin`, "
                           "or use `shoal sandbox exec -t SANDBOX_ID CMD` for an interactive terminal")
