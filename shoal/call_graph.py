"""`modal.call_graph`: what `FunctionCall.get_call_graph()` returns, in Modal's shapes."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class InputStatus(enum.IntEnum):
    """Where an input stands: PENDING while queued or running, else how it ended."""

    PENDING = 0
    SUCCESS = 1
    FAILURE = 2
    INIT_FAILURE = 3
    TERMINATED = 4
    TIMEOUT = 5

    @classmethod
    def _from_wire(cls, status: str) -> InputStatus:
        return {"pending": cls.PENDING, "success": cls.SUCCESS, "failure": cls.FAILURE,
                "init_failure": cls.INIT_FAILURE, "terminated": cls.TERMINATED,
                "timeout": cls.TIMEOUT}.get(status, cls.FAILURE)


@dataclass
class InputInfo:
    """One input of a call: its container (`task_id`, empty until it runs), its status, and the inputs of the
    calls made while it ran (`children`). `job_id` is the call's id: shoal has no separate job."""

    object_id: str
    job_id: str
    function_call_id: str
    task_id: str
    status: InputStatus
    function_name: str
    module_name: str
    children: list[InputInfo] = field(default_factory=list)

    @classmethod
    def _from_wire(cls, node: dict[str, Any]) -> InputInfo:
        return cls(object_id=node["input_id"], job_id=node["function_call_id"],
                   function_call_id=node["function_call_id"], task_id=node["task_id"],
                   status=InputStatus._from_wire(node["status"]), function_name=node["function_name"],
                   module_name=node["module_name"], children=[cls._from_wire(c) for c in node["children"]])
