"""The shared contract (shoal/_spec): what both sides of a process boundary rely on."""

from __future__ import annotations

import pickle

import pytest

import shoal as modal
from shoal._spec import frames
from shoal._spec.errors import dumps_exception, loads_exception
from shoal._spec.limits import AUTOSCALER_BOUNDS, SCALEDOWN_WINDOW_S
from shoal._spec.params import pack_params, unpack_params
from shoal.controlplane.core.autoscaler import validate_update


def test_exceptions_made_by_the_control_plane_are_caught_as_modals():
    exc = loads_exception(dumps_exception(modal.exception.FunctionTimeoutError("timed out after 1s")))
    assert type(exc) is modal.exception.FunctionTimeoutError
    assert str(exc) == "timed out after 1s"


def test_pickles_name_the_public_module():
    # Stored results name the class by its path: it must stay `shoal.exception`, where users' imports find it.
    assert b"shoal.exception" in pickle.dumps(modal.exception.ExecutionError("x"))


def test_an_exception_that_cannot_be_rebuilt_arrives_as_execution_error():
    class UnrebuildableError(Exception):
        def __reduce__(self):  # pickles, but cannot be rebuilt
            return (_fail, ())

    exc = loads_exception(dumps_exception(UnrebuildableError("boom")))
    assert type(exc) is modal.exception.ExecutionError
    assert "boom" in str(exc)


def _fail():
    raise RuntimeError("cannot rebuild")


def test_frame_is_length_prefixed_msgpack():
    data = frames.encode(frames.Ready())
    (length,) = frames.HEADER.unpack(data[:frames.HEADER.size])
    assert length == len(data) - frames.HEADER.size


def test_params_pack_the_same_whatever_the_order():
    assert pack_params({"b": 1, "a": "x"}) == pack_params({"a": "x", "b": 1})
    assert unpack_params(pack_params({"a": b"\x00", "b": True})) == {"a": b"\x00", "b": True}
    assert unpack_params(None) == {}


@pytest.mark.parametrize("value", [SCALEDOWN_WINDOW_S[0] - 1, SCALEDOWN_WINDOW_S[1] + 1])
def test_scaledown_window_bounds_are_the_same_everywhere(value: int):
    with pytest.raises(modal.exception.InvalidError, match="scaledown_window"):
        modal.App("a").function(scaledown_window=value)(lambda: None)
    with pytest.raises(ValueError, match="scaledown_window"):
        validate_update({}, {"scaledown_window": value})
    assert AUTOSCALER_BOUNDS["scaledown_window"] == SCALEDOWN_WINDOW_S


def test_a_container_frame_too_large_or_out_of_shape_is_a_decode_error():
    """What a container sends is checked: the control plane closes a stream that breaks the contract."""
    import asyncio

    import msgspec

    async def read(data: bytes):
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        reader.feed_eof()
        return await frames.read_frame(reader)

    with pytest.raises(msgspec.DecodeError, match="exceeds"):
        asyncio.run(read(frames.HEADER.pack(frames.MAX_FRAME + 1)))
    with pytest.raises(msgspec.ValidationError):
        asyncio.run(read(_frame({"t": "ready", "web": {"": 70000}})))  # no such port


def _frame(msg: dict) -> bytes:
    import msgspec

    body = msgspec.msgpack.encode(msg)
    return frames.HEADER.pack(len(body)) + body
