"""`StreamType`: where a sandbox process's output goes (`modal.stream_type.StreamType`)."""

from __future__ import annotations

import enum


class StreamType(enum.Enum):
    """PIPE: read it through `.stdout` / `.stderr`; STDOUT: printed on this process's stdout (stderr) as it
    arrives; DEVNULL: not read (the control plane still keeps it, `shoal sandbox logs` shows it)."""

    DEVNULL = -1
    PIPE = -2
    STDOUT = -3

    def __repr__(self) -> str:
        return f"{type(self).__name__}.{self.name}"
