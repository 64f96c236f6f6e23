"""`Retries` validation and the pure retry-delay computation (shoal/retries.py)."""

from __future__ import annotations

import pytest

import shoal as modal
from shoal._spec.definitions import RetryPolicy
from shoal._spec.retries import retry_delay
from shoal.exception import InvalidError
from shoal.retries import Retries, parse_retries


def test_exported():
    assert modal.Retries is Retries


def test_defaults():
    r = Retries(max_retries=3)
    assert r.to_dict() == {"max_retries": 3, "backoff_coefficient": 2.0, "initial_delay": 1.0, "max_delay": 60.0}


def test_keyword_only():
    with pytest.raises(TypeError):
        Retries(3)  # type: ignore[misc]


@pytest.mark.parametrize("value", [-1, 11, 1.0, "3", True, None])
def test_bad_max_retries(value):
    with pytest.raises(InvalidError, match="retries"):
        Retries(max_retries=value)


@pytest.mark.parametrize("value", [0, 10])
def test_max_retries_bounds(value):
    assert Retries(max_retries=value).max_retries == value


@pytest.mark.parametrize("value", [0.99, 10.01, 0.0, -2.0])
def test_bad_backoff(value):
    with pytest.raises(InvalidError, match="backoff_coefficient"):
        Retries(max_retries=1, backoff_coefficient=value)


@pytest.mark.parametrize("value", [1.0, 10.0, 3])
def test_backoff_bounds(value):
    assert Retries(max_retries=1, backoff_coefficient=value).backoff_coefficient == float(value)


@pytest.mark.parametrize("value", [-0.1, 60.1])
def test_bad_initial_delay(value):
    with pytest.raises(InvalidError, match="initial_delay"):
        Retries(max_retries=1, initial_delay=value)


@pytest.mark.parametrize("value", [0.0, 0, 60.0])
def test_initial_delay_bounds(value):
    assert Retries(max_retries=1, initial_delay=value).initial_delay == float(value)


@pytest.mark.parametrize("value", [0.5, 0.0, 60.5])
def test_bad_max_delay(value):
    with pytest.raises(InvalidError, match="max_delay"):
        Retries(max_retries=1, max_delay=value)


@pytest.mark.parametrize("value", [1.0, 60.0])
def test_max_delay_bounds(value):
    assert Retries(max_retries=1, max_delay=value).max_delay == value


def test_equality_and_repr():
    a = Retries(max_retries=2, initial_delay=0.5)
    assert a == Retries(max_retries=2, initial_delay=0.5)
    assert a != Retries(max_retries=3, initial_delay=0.5)
    assert a != "Retries"
    assert "max_retries=2" in repr(a) and "initial_delay=0.5" in repr(a)


# -- parse_retries -------------------------------------------------------------------------------------------


def test_parse_none():
    assert parse_retries(None) is None


def test_parse_int_is_fixed_one_second_delay():
    r = parse_retries(3)
    assert r == Retries(max_retries=3, initial_delay=1.0, backoff_coefficient=1.0)
    assert [retry_delay(wire(r), n) for n in range(1, 4)] == [1.0, 1.0, 1.0]


def test_parse_zero():
    assert parse_retries(0).max_retries == 0


def test_parse_object_passthrough():
    r = Retries(max_retries=5, backoff_coefficient=3.0)
    assert parse_retries(r) is r


@pytest.mark.parametrize("value", [-1, 11])
def test_parse_int_out_of_range(value):
    with pytest.raises(InvalidError, match="retries"):
        parse_retries(value)


@pytest.mark.parametrize("value", ["3", 2.0, True, [1]])
def test_parse_wrong_type(value):
    with pytest.raises(InvalidError, match="retries"):
        parse_retries(value)


# -- retry_delay ---------------------------------------------------------------------------------------------
def wire(r: Retries) -> RetryPolicy:
    return RetryPolicy(**r.to_dict())



def test_exponential_backoff():
    policy = wire(Retries(max_retries=5, initial_delay=1.0, backoff_coefficient=2.0))
    assert [retry_delay(policy, n) for n in range(1, 6)] == [1.0, 2.0, 4.0, 8.0, 16.0]


def test_backoff_capped_at_max_delay():
    policy = wire(Retries(max_retries=10, initial_delay=5.0, backoff_coefficient=3.0, max_delay=30.0))
    assert [retry_delay(policy, n) for n in range(1, 5)] == [5.0, 15.0, 30.0, 30.0]
    policy = wire(Retries(max_retries=10, initial_delay=1.0, backoff_coefficient=10.0))
    assert retry_delay(policy, 10) == 60.0


def test_zero_initial_delay_retries_at_once():
    policy = wire(Retries(max_retries=3, initial_delay=0.0))
    assert [retry_delay(policy, n) for n in range(1, 4)] == [0.0, 0.0, 0.0]


def test_attempt_zero_treated_as_first():
    policy = wire(Retries(max_retries=3, initial_delay=2.0))
    assert retry_delay(policy, 0) == 2.0
