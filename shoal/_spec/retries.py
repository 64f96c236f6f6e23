"""The retry rule both sides agree on: the SDK's `Retries` is the policy (`definitions.RetryPolicy` on the wire),
the control plane waits."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .definitions import RetryPolicy


def retry_delay(policy: RetryPolicy, attempt: int) -> float:
    """Seconds to wait before retry number `attempt` (1-based): `initial_delay * backoff_coefficient ** (n - 1)`,
    capped at `max_delay`."""
    delay = policy.initial_delay * policy.backoff_coefficient ** max(attempt - 1, 0)
    return min(delay, policy.max_delay)
