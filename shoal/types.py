"""Return types of the API, as in `modal.types`."""

from __future__ import annotations

import enum
from dataclasses import dataclass


@dataclass(frozen=True)
class FunctionCurrentStats:
    backlog: int
    num_total_runners: int
    num_running_inputs: int = 0
    input_headroom: int = 0


@dataclass(frozen=True)
class FunctionAutoscalerSettings:
    """A function's autoscaler knobs as they apply now (decorator values, replaced by runtime updates)."""

    min_containers: int | None = None
    max_containers: int | None = None
    buffer_containers: int | None = None
    scaledown_window: int | None = None


class FileEntryType(enum.IntEnum):
    """The kind of an entry of a Volume (`Volume.listdir`)."""

    UNSPECIFIED = 0
    FILE = 1
    DIRECTORY = 2
    SYMLINK = 3
    FIFO = 4
    SOCKET = 5


@dataclass(frozen=True)
class FileEntry:
    """An entry of a Volume: its path relative to the volume's root, kind, modification time (Unix seconds)
    and size in bytes."""

    path: str
    type: FileEntryType
    mtime: int
    size: int
