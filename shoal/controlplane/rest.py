"""What every HTTP route of the control plane shares: msgpack bodies in and out, errors as `ApiError` (a 4xx/5xx
with a message and the SDK exception type to raise), bodies and queries decoded into the typed requests of
`shoal/_spec/requests.py` at the edge, once: a body or query that does not fit is a 400 naming the field, a
body over its route's bound a 413 (refused from its declared Content-Length before it is read)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec
from aiohttp import web

from .._spec.limits import BODY_MAX, NAME_PATTERN, NO_NUL

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
T = TypeVar("T")


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "InvalidError") -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind


_encode = msgspec.msgpack.Encoder().encode  # maps as msgpack encodes them; Structs (`_spec`) as their maps
_decoders: dict[Any, msgspec.msgpack.Decoder] = {}


def reply(payload: dict[str, Any], status: int = 200) -> web.Response:
    return web.Response(body=_encode(payload), status=status, content_type="application/msgpack")


def too_large(limit: int) -> ApiError:
    return ApiError(413, f"request body larger than {limit} bytes", "RequestSizeError")


def check_length(request: web.Request, limit: int) -> None:
    """Refuse a body whose declared length is over `limit` before reading any of it."""
    if request.content_length is not None and request.content_length > limit:
        raise too_large(limit)


async def read_bounded(request: web.Request, limit: int = BODY_MAX) -> bytes:
    """The whole body, at most `limit` bytes. A body without a declared length is read up to the application's
    `client_max_size` (aiohttp answers 413 past it), then held to `limit`. (`request.read()` keeps the body, so
    a middleware that read it first, the replicas' forwarding, leaves it readable here.)"""
    check_length(request, limit)
    raw = await request.read()
    if len(raw) > limit:
        raise too_large(limit)
    return raw


def invalid(exc: msgspec.DecodeError, what: str = "request") -> ApiError:
    """A 400 naming the field msgspec's error points at (`- at `$.options.min_containers``)."""
    message = (str(exc).replace(f"matching regex {NO_NUL!r}", "without NUL characters")
               .replace(f"matching regex {NAME_PATTERN!r}", "of letters, digits, '-', '_' and '.' (a name)")
               .replace("`$.", "`"))
    return ApiError(400, f"invalid {what}: {message}")


def decode(raw: bytes, kind: type[T], what: str = "request") -> T:
    """msgpack bytes into the typed request `kind` (an empty body is an empty map)."""
    decoder = _decoders.get(kind)
    if decoder is None:
        decoder = _decoders[kind] = msgspec.msgpack.Decoder(kind)
    try:
        return decoder.decode(raw or b"\x80")
    except msgspec.ValidationError as exc:
        raise invalid(exc, what) from exc
    except msgspec.DecodeError as exc:
        raise ApiError(400, f"request body is not valid msgpack: {exc}") from exc


async def body_of(request: web.Request, kind: type[T], limit: int = BODY_MAX, what: str = "request") -> T:
    """The request's body as `kind`, read up to `limit` bytes."""
    return decode(await read_bounded(request, limit), kind, what)


def query_of(request: web.Request, kind: type[T]) -> T:
    """The query string as `kind` (its values converted from their text: `?after=3` is an int)."""
    return _convert(dict(request.query), kind, "query")


def path_of(request: web.Request, kind: type[T]) -> T:
    """The URL path's variables (`/v1/secrets/{name}`) as `kind`, converted from their text as a query is."""
    return _convert(dict(request.match_info), kind, "path")


def _convert(values: dict[str, str], kind: type[T], what: str) -> T:
    try:
        return msgspec.convert(values, kind, strict=False)
    except msgspec.ValidationError as exc:
        raise invalid(exc, what) from exc
