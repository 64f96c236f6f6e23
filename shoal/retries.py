"""`Retries`: Modal's retry policy object. The delay rule the control plane applies is `shoal._spec.retries`."""

from __future__ import annotations

from ._spec.limits import RETRIES, RETRY_BACKOFF, RETRY_INITIAL_DELAY_S, RETRY_MAX_DELAY_S
from .exception import InvalidError


class Retries:
    """How often and how patiently a failed input is re-run.

    `delay(n) = initial_delay * backoff_coefficient ** (n - 1)`, capped at `max_delay`.
    """

    def __init__(
        self,
        *,
        max_retries: int,
        backoff_coefficient: float = 2.0,
        initial_delay: float = 1.0,
        max_delay: float = 60.0,
    ) -> None:
        if not isinstance(max_retries, int) or isinstance(max_retries, bool) or max_retries < 0:
            raise InvalidError(f"Invalid retries number: {max_retries!r}. Must be a non-negative integer.")
        if max_retries > RETRIES[1]:
            raise InvalidError(f"Invalid retries number: {max_retries}. Function retries must be between "
                               f"{RETRIES[0]} and {RETRIES[1]}.")
        if not RETRY_BACKOFF[0] <= backoff_coefficient <= RETRY_BACKOFF[1]:
            raise InvalidError(f"Invalid backoff_coefficient: {backoff_coefficient}. Must be between "
                               f"{RETRY_BACKOFF[0]} and {RETRY_BACKOFF[1]} inclusive.")
        if not RETRY_INITIAL_DELAY_S[0] <= initial_delay <= RETRY_INITIAL_DELAY_S[1]:
            raise InvalidError(f"Invalid initial_delay: {initial_delay}. Must be between "
                               f"{RETRY_INITIAL_DELAY_S[0]:g} and {RETRY_INITIAL_DELAY_S[1]:g} seconds.")
        if not RETRY_MAX_DELAY_S[0] <= max_delay <= RETRY_MAX_DELAY_S[1]:
            raise InvalidError(f"Invalid max_delay: {max_delay}. Must be between {RETRY_MAX_DELAY_S[0]:g} and "
                               f"{RETRY_MAX_DELAY_S[1]:g} seconds.")
        self.max_retries = max_retries
        self.backoff_coefficient = float(backoff_coefficient)
        self.initial_delay = float(initial_delay)
        self.max_delay = float(max_delay)

    def __repr__(self) -> str:
        return (
            f"Retries(max_retries={self.max_retries}, backoff_coefficient={self.backoff_coefficient}, "
            f"initial_delay={self.initial_delay}, max_delay={self.max_delay})"
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Retries) and self.to_dict() == other.to_dict()

    def to_dict(self) -> dict:
        return {
            "max_retries": self.max_retries,
            "backoff_coefficient": self.backoff_coefficient,
            "initial_delay": self.initial_delay,
            "max_delay": self.max_delay,
        }


def parse_retries(retries: int | Retries | None) -> Retries | None:
    """`retries=n` means n retries with a fixed 1 s delay, as in Modal."""
    if retries is None:
        return None
    if isinstance(retries, Retries):
        return retries
    if isinstance(retries, int) and not isinstance(retries, bool):
        if not RETRIES[0] <= retries <= RETRIES[1]:
            raise InvalidError(f"Invalid retries number: {retries}. Function retries must be between {RETRIES[0]} "
                               f"and {RETRIES[1]}.")
        return Retries(max_retries=retries, initial_delay=1.0, backoff_coefficient=1.0)
    raise InvalidError(f"retries must be an int or a modal.Retries object, got {type(retries).__name__}")
