"""Reading a request's idempotency key (`_spec/headers.py`), for the handlers of writes that must not be done
twice. The store keeps what each keyed write did (`store/idempotency.py`)."""

from __future__ import annotations

import re

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
