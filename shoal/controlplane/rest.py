"""What every HTTP route of the control plane shares: msgpack bodies in and out, errors as `ApiError` (a 4xx/5xx
with a message and the SDK exception type to raise), query parameters checked."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import msgpack
import msgspec
from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "InvalidError") -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind


_encode = msgspec.msgpack.Encoder().encode  # maps as msgpack encodes them; Structs (`_spec`) as their maps


def reply(payload: dict[str, Any], status: int = 200) -> web.Response:
    return web.Response(body=_encode(payload), status=status, content_type="application/msgpack")


async def body_of(request: web.Request, *required: str) -> dict[str, Any]:
    raw = await request.read()
    try:
        body = msgpack.unpackb(raw, raw=False) if raw else {}
    except Exception as exc:
        raise ApiError(400, f"request body is not valid msgpack: {exc}") from exc
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a msgpack map")
    missing = [k for k in required if k not in body]
    if missing:
        raise ApiError(400, f"missing field(s): {', '.join(missing)}")
    nul = [k for k, v in body.items() if isinstance(v, str) and "\x00" in v]
    if nul:  # names, tags, partition keys: the store's text columns cannot hold NUL in PostgreSQL
        raise ApiError(400, f"field(s) {', '.join(map(str, nul))} must not contain NUL characters")
    return body


def query_float(request: web.Request, name: str, default: float) -> float:
    try:
        return float(request.query.get(name, default))
    except ValueError as exc:
        raise ApiError(400, f"query parameter {name!r} must be a number") from exc


def query_int(request: web.Request, name: str, default: int) -> int:
    try:
        return int(request.query.get(name, default))
    except ValueError as exc:
        raise ApiError(400, f"query parameter {name!r} must be an integer") from exc
