"""Pure decisions for the web ingress: request rate limiting, proxy-auth checks, and which budget a request spends.

No I/O, no asyncio, no clock of its own: callers pass `now` and a token lookup, so every outcome is testable
with plain values (like `policy.py`).
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

# Modal's default workspace limit: 200 web requests per second, with a 5 s burst [doc: Web endpoints].
DEFAULT_RATE = 200.0
DEFAULT_BURST_S = 5.0
# Refused requests (missing, invalid or out-of-scope credentials) spend a budget of their client address alone:
# 20 a second with a 5 s burst, for at most MAX_CLIENTS addresses at once (the least recently refused go first).
REJECTED_RATE = 20.0
REJECTED_BURST_S = 5.0
MAX_CLIENTS = 10_000

MISSING_CREDENTIALS = "modal-http: missing credentials for proxy authorization"  # Modal's exact body
INVALID_CREDENTIALS = "modal-http: invalid credentials for proxy authorization"
RATE_LIMITED = "shoal: too many requests (workspace rate limit)"
REJECTED_LIMITED = "shoal: too many refused requests from this address (proxy auth)"
_EPS = 1e-9  # float rounding: 0.1 s at 10/s must buy a whole token, not 0.9999999


class TokenBucket:
    """`rate` requests a second on average, up to `rate * burst_s` at once; starts full.

    Refilled continuously (not per tick), so a client pacing itself at exactly `rate` never gets refused.
    """

    def __init__(self, rate: float = DEFAULT_RATE, burst_s: float = DEFAULT_BURST_S) -> None:
        if rate <= 0 or burst_s <= 0:
            raise ValueError("rate and burst_s must be positive")
        self.rate = rate
        # At least one token, else a small rate with a short burst would refuse everything forever.
        self.capacity = max(1.0, rate * burst_s)
        self.tokens = self.capacity
        self.last: float | None = None

    def _refill(self, now: float) -> None:
        if self.last is not None and now > self.last:  # a clock that steps back refills nothing
            self.tokens = min(self.capacity, self.tokens + (now - self.last) * self.rate)
        if self.last is None or now > self.last:
            self.last = now

    def take(self, now: float) -> bool:
        """Spend one token if there is one: True means the request may pass."""
        self._refill(now)
        if self.tokens >= 1.0 - _EPS:
            self.tokens = max(0.0, self.tokens - 1.0)
            return True
        return False

    def retry_after(self, now: float) -> float:
        """Seconds until one token is available (0.0 if one is now): the `Retry-After` of a 429."""
        self._refill(now)
        if self.tokens >= 1.0 - _EPS:
            return 0.0
        return (1.0 - self.tokens) / self.rate


@dataclass(frozen=True)
class TokenRecord:
    """A proxy auth token as the ingress sees it. `scope` lists app names; empty means every app.

    Never mutated: an edit replaces the record, so a request holding one sees a consistent token.
    """

    token_id: str
    secret_hash: str
    scope: list[str]
    created_at: float


def hash_secret(secret: str) -> str:
    """sha256 hex of a token secret.

    A fast hash is right here (no salt, no key stretching): secrets are 32+ random bytes made by the control
    plane, so there is nothing to brute-force, and the proxy hashes on every request.
    """
    # surrogatepass: a header with undecodable bytes must give a wrong hash, not an exception.
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def check_proxy_auth(key: str | None, secret: str | None, lookup: Callable[[str], TokenRecord | None],
                     app_name: str | None) -> tuple[int, str] | None:
    """None when `Modal-Key`/`Modal-Secret` allow this request to `app_name`, else (status, body).

    A scoped token never reaches an app without a name (`app_name` None): there is nothing to match.
    """
    if not key or not secret:
        return 401, MISSING_CREDENTIALS
    record = lookup(key)
    if record is None or not hmac.compare_digest(hash_secret(secret), record.secret_hash):
        return 401, INVALID_CREDENTIALS
    if record.scope and (app_name is None or app_name not in record.scope):
        shown = app_name if app_name is not None else "(unnamed)"
        return 403, f"modal-http: token is not allowed to access app '{shown}'"
    return None


@dataclass(frozen=True)
class Refusal:
    """The proxy's answer to a request it does not forward."""

    status: int
    body: str
    retry_after: int | None = None  # whole seconds, for a 429's `Retry-After`


class Admission:
    """Which budget a request spends, decided after proxy auth.

    Admitted requests spend the workspace's bucket (`rate` a second, None: no limit), as Modal's rate limit does.
    Refused ones never touch it: each client address has a bucket of its own for them, so a client without
    credentials can slow down only itself, never the authenticated traffic of others.
    """

    def __init__(self, rate: float | None = DEFAULT_RATE, burst_s: float = DEFAULT_BURST_S,
                 rejected_rate: float = REJECTED_RATE, rejected_burst_s: float = REJECTED_BURST_S,
                 max_clients: int = MAX_CLIENTS) -> None:
        self.shared = TokenBucket(rate, burst_s) if rate else None
        self.rejected_rate, self.rejected_burst_s = rejected_rate, rejected_burst_s
        self.max_clients = max_clients
        self.rejected: OrderedDict[str, TokenBucket] = OrderedDict()

    def decide(self, denied: tuple[int, str] | None, client: str, now: float) -> Refusal | None:
        """None to forward the request; else the answer. `denied` is `check_proxy_auth`'s verdict (None for an
        endpoint without proxy auth), `client` the peer's address."""
        if denied is not None:
            bucket = self._client_bucket(client)
            if not bucket.take(now):
                return Refusal(429, REJECTED_LIMITED, _whole_seconds(bucket.retry_after(now)))
            return Refusal(denied[0], denied[1])
        if self.shared is None or self.shared.take(now):
            return None
        return Refusal(429, RATE_LIMITED, _whole_seconds(self.shared.retry_after(now)))

    def _client_bucket(self, client: str) -> TokenBucket:
        bucket = self.rejected.get(client)
        if bucket is None:
            bucket = self.rejected[client] = TokenBucket(self.rejected_rate, self.rejected_burst_s)
            if len(self.rejected) > self.max_clients:
                self.rejected.popitem(last=False)
        else:
            self.rejected.move_to_end(client)
        return bucket


def _whole_seconds(seconds: float) -> int:
    return max(1, math.ceil(seconds - _EPS))
