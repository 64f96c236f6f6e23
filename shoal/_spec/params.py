"""Class parameters (`modal.parameter()`): binding `Cls(...)`'s arguments, and the packed form that names a
parameter set.

The SDK binds and packs them when an instance is made; the web proxy does the same for parameters given in a
request's query string, so both reach the same pool; the container unpacks them to build the instance.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..exception import InvalidError

if TYPE_CHECKING:
    from .definitions import ClsInfo

PARAM_TYPES: dict[str, type] = {"int": int, "str": str, "bytes": bytes, "bool": bool}
INT64 = (-(2**63), 2**63 - 1)  # ints travel as msgpack integers


def check_value(cls_name: str, pname: str, type_name: str, value: Any) -> None:
    """InvalidError unless `value` has the parameter's type (a bool is not an int here)."""
    expected = PARAM_TYPES[type_name]
    ok = type(value) is bool if expected is bool else (
        isinstance(value, int) and not isinstance(value, bool) if expected is int else isinstance(value, expected))
    if not ok:
        raise InvalidError(f"{cls_name}: parameter {pname!r} must be of type {type_name}, got "
                           f"{type(value).__name__} {value!r}")
    if expected is int and not INT64[0] <= value <= INT64[1]:
        raise InvalidError(f"{cls_name}: parameter {pname!r} is out of range for a 64-bit integer: {value}")


def bind_params(info: ClsInfo, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Parameter values for `Cls(*args, **kwargs)`: positional in declaration order, defaults applied, keys
    sorted. InvalidError for a missing, unknown or mistyped parameter."""
    cls_name = info.name
    specs = {p.name: p for p in info.params}
    names = list(specs)
    if info.custom_init and (args or kwargs):
        raise InvalidError(f"{cls_name}() takes no arguments (its custom __init__ is called without any)")
    if len(args) > len(names):
        raise InvalidError(f"{cls_name}() takes {len(names)} parameter(s) but {len(args)} positional "
                           "argument(s) were given")
    values = dict(zip(names, args, strict=False))
    for key, value in kwargs.items():
        if key not in specs:
            known = f"; its parameters are: {', '.join(names)}" if names else "; it has no parameters"
            raise InvalidError(f"{cls_name}() got an unexpected parameter {key!r}{known}")
        if key in values:
            raise InvalidError(f"{cls_name}() got multiple values for parameter {key!r}")
        values[key] = value
    missing = [n for n in names if n not in values and not specs[n].has_default]
    if missing:
        raise InvalidError(f"{cls_name}() missing required parameter(s): {', '.join(missing)}")
    for n in names:
        if n not in values:
            values[n] = specs[n].default
        check_value(cls_name, n, specs[n].type, values[n])
    return dict(sorted(values.items()))


def pack_params(values: dict[str, Any]) -> bytes:
    """msgpack with sorted keys: the same values always pack to the same bytes, which name the parameter set."""
    import msgspec

    return msgspec.msgpack.encode(dict(sorted(values.items())))


def unpack_params(data: bytes | None) -> dict[str, Any]:
    import msgspec

    return dict(msgspec.msgpack.decode(data)) if data else {}
