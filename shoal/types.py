"""Return types of the API, as in `modal.types`."""

from __future__ import annotations

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
