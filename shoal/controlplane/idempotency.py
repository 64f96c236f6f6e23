"""Reading a request's idempotency key (`_spec/headers.py`), for the handlers of writes that must not be done
twice. The store keeps what each keyed write did (`store/idempotency.py`); `Recent` keeps it for writes whose
effect lives in memory only."""

from __future__ import annotations

import collections
import re
import time
from typing import Any

from aiohttp import web

from .._spec.headers import IDEMPOTENCY_KEY, MAX_IDEMPOTENCY_KEY, RETRY
from .rest import ApiError

_KEY = re.compile(rf"[A-Za-z0-9_-]{{1,{MAX_IDEMPOTENCY_KEY}}}")


def request_key(request: web.Request) -> str | None:
    """The request's idempotency key, scoped to its route and object (a key sent to another route or object is
    another key); None when it sent none (a client without retries, curl)."""
    raw = request.headers.get(IDEMPOTENCY_KEY)
    if raw is None:
        return None
    if not _KEY.fullmatch(raw):
        raise ApiError(400, f"the {IDEMPOTENCY_KEY} header must be 1 to {MAX_IDEMPOTENCY_KEY} letters, digits, "
                            "'-' or '_'")
    return f"{request.method} {request.path} {raw}"


def is_retry(request: web.Request) -> bool:
    """The client sent this request before (its reply was lost): it may have been done already."""
    return RETRY in request.headers


class Recent:
    """What keyed writes did whose effect lives in this process only (a Server session, a shell container, an
    upload batch): it ends with the control plane, so the key need not outlive it either. A result is kept
    `ttl` seconds, at most `cap` of them (the oldest go first)."""

    def __init__(self, ttl: float = 3600.0, cap: int = 10_000) -> None:
        self.ttl = ttl
        self.cap = cap
        self._done: collections.OrderedDict[str, tuple[float, Any]] = collections.OrderedDict()

    def get(self, key: str | None) -> Any:
        """The result kept under `key`, else None."""
        if key is None:
            return None
        now = time.monotonic()
        while self._done and next(iter(self._done.values()))[0] < now - self.ttl:
            self._done.popitem(last=False)
        got = self._done.get(key)
        return got[1] if got is not None else None

    def put(self, key: str | None, result: Any) -> Any:
        """Keep `result` under `key` (no-op without one); returns `result`."""
        if key is not None:
            self._done.pop(key, None)  # (kept in the order they were done: the oldest expire first)
            self._done[key] = (time.monotonic(), result)
            while len(self._done) > self.cap:
                self._done.popitem(last=False)
        return result
