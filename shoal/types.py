"""Return types of the API, as in `modal.types`."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FunctionCurrentStats:
    backlog: int
    num_total_runners: int
    num_running_inputs: int = 0
    input_headroom: int = 0
