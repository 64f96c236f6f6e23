"""Entrypoint parameters as command-line flags (shoal/cli/entrypoint_args.py): pure, no control plane."""

from __future__ import annotations

import datetime
import typing
from typing import Any, Literal, Optional

import click
import pytest

from shoal.cli.entrypoint_args import EntrypointArgsError, cli_signature, make_command


def parse(func: Any, argv: list[str]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Run the command built for `func` on `argv` and return the (args, kwargs) it would call `func` with."""
    seen: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
    cmd = make_command(func, lambda args, kwargs: seen.append((args, kwargs)), name="cmd")
    cmd.main(argv, standalone_mode=False)
    assert len(seen) == 1
    return seen[0]


def kwargs_of(func: Any, argv: list[str]) -> dict[str, Any]:
    args, kwargs = parse(func, argv)
    assert args == ()
    return kwargs


def typed(name: str, count: int, ratio: float, loud: bool, when: datetime.datetime) -> None: ...


def test_basic_types_are_converted() -> None:
    kw = kwargs_of(typed, ["--name", "Ann", "--count", "3", "--ratio", "1.5", "--loud", "--when", "2024-01-02"])
    assert kw == {"name": "Ann", "count": 3, "ratio": 1.5, "loud": True, "when": datetime.datetime(2024, 1, 2)}
    assert type(kw["count"]) is int and type(kw["ratio"]) is float and type(kw["loud"]) is bool


def test_bad_values_are_rejected() -> None:
    with pytest.raises(click.BadParameter, match="three"):
        parse(typed, ["--name", "a", "--count", "three", "--ratio", "1", "--loud", "--when", "2024-01-02"])
    with pytest.raises(click.BadParameter, match="ISO 8601"):
        parse(typed, ["--name", "a", "--count", "3", "--ratio", "1", "--loud", "--when", "yesterday"])


def test_parameters_without_default_are_required() -> None:
    with pytest.raises(click.MissingParameter, match="name"):
        parse(typed, ["--count", "3", "--ratio", "1", "--loud", "--when", "2024-01-02"])


def defaults(name: str = "world", count: int = 2, ratio: float = 0.25, loud: bool = False,
             when: Optional[datetime.datetime] = None) -> None: ...


def test_defaults_are_kept_when_flags_are_absent() -> None:
    assert kwargs_of(defaults, []) == {"name": "world", "count": 2, "ratio": 0.25, "loud": False, "when": None}


def test_bool_flags_have_a_negative_form() -> None:
    def f(loud: bool = True) -> None: ...

    assert kwargs_of(f, []) == {"loud": True}
    assert kwargs_of(f, ["--no-loud"]) == {"loud": False}
    assert kwargs_of(f, ["--loud"]) == {"loud": True}


def test_underscores_may_be_written_as_dashes_or_underscores() -> None:
    def f(max_items: int = 1, dry_run: bool = False) -> None: ...

    assert kwargs_of(f, ["--max-items", "7", "--dry-run"]) == {"max_items": 7, "dry_run": True}
    assert kwargs_of(f, ["--max_items", "8", "--dry_run"]) == {"max_items": 8, "dry_run": True}
    assert kwargs_of(f, ["--dry-run", "--no_dry_run"]) == {"max_items": 1, "dry_run": False}


@pytest.mark.parametrize("text,expected", [
    ("2024-01-02", datetime.datetime(2024, 1, 2)),
    ("2024-01-02T03:04:05", datetime.datetime(2024, 1, 2, 3, 4, 5)),
    ("2024-01-02 03:04:05", datetime.datetime(2024, 1, 2, 3, 4, 5)),
    ("2024-01-02T03:04:05.250000", datetime.datetime(2024, 1, 2, 3, 4, 5, 250000)),
    ("2024-01-02T03:04:05+02:00",
     datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone(datetime.timedelta(hours=2)))),
    ("2024-01-02T03:04:05Z", datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)),
])
def test_datetime_accepts_iso_formats(text: str, expected: datetime.datetime) -> None:
    def f(when: datetime.datetime) -> None: ...

    assert kwargs_of(f, ["--when", text]) == {"when": expected}


def test_str_literal_is_a_choice() -> None:
    def f(color: Literal["red", "blue"] = "red") -> None: ...

    assert kwargs_of(f, []) == {"color": "red"}
    assert kwargs_of(f, ["--color", "blue"]) == {"color": "blue"}
    with pytest.raises(click.BadParameter, match="green"):
        parse(f, ["--color", "green"])


def test_int_literal_converts_back_to_int() -> None:
    def f(size: Literal[1, 2, 3] = 1) -> None: ...

    kw = kwargs_of(f, ["--size", "2"])
    assert kw == {"size": 2} and type(kw["size"]) is int
    assert kwargs_of(f, []) == {"size": 1}
    with pytest.raises(click.BadParameter):
        parse(f, ["--size", "4"])


def test_mixed_literal_is_rejected_naming_the_parameter() -> None:
    def f(mode: Literal["a", 1] = "a") -> None: ...

    with pytest.raises(EntrypointArgsError, match="'mode'"):
        cli_signature(f)


def test_unannotated_parameters_receive_the_string() -> None:
    def f(thing, other=5) -> None: ...  # noqa: ANN001

    assert kwargs_of(f, ["--thing", "12"]) == {"thing": "12", "other": 5}
    assert kwargs_of(f, ["--thing", "x", "--other", "7"]) == {"thing": "x", "other": "7"}


def test_any_annotation_receives_the_string() -> None:
    def f(thing: typing.Any) -> None: ...

    assert kwargs_of(f, ["--thing", "12"]) == {"thing": "12"}


@pytest.mark.parametrize("annotation", [list, dict, bytes, typing.List[int], typing.Union[int, str]])  # noqa: UP006
def test_unsupported_annotation_names_the_parameter(annotation: Any) -> None:
    def f(payload) -> None: ...  # noqa: ANN001

    f.__annotations__ = {"payload": annotation}
    with pytest.raises(EntrypointArgsError, match="'payload'"):
        cli_signature(f)


def test_optional_unwraps_in_both_spellings() -> None:
    def f(a: Optional[int] = None, b: int | None = None) -> None: ...

    assert kwargs_of(f, ["--a", "1", "--b", "2"]) == {"a": 1, "b": 2}
    assert kwargs_of(f, []) == {"a": None, "b": None}


def test_string_annotations_are_evaluated() -> None:
    # this module uses `from __future__ import annotations`, so every annotation here is a string
    def f(count: int) -> None: ...

    assert isinstance(f.__annotations__["count"], str)
    assert kwargs_of(f, ["--count", "4"]) == {"count": 4}


def test_unresolvable_annotation_is_a_clear_error() -> None:
    def f(x: NoSuchType) -> None: ...  # noqa: F821

    with pytest.raises(EntrypointArgsError, match="annotations"):
        cli_signature(f)


def test_var_args_get_the_raw_strings() -> None:
    def f(*args: str) -> None: ...

    args, kwargs = parse(f, ["a", "--b", "c", "-x", "--count=3"])
    assert args == ("a", "--b", "c", "-x", "--count=3") and kwargs == {}
    assert parse(f, []) == ((), {})


def test_var_args_with_other_parameters_is_an_error() -> None:
    def f(name: str, *args: str) -> None: ...

    with pytest.raises(EntrypointArgsError, match="name"):
        cli_signature(f)


def test_positional_only_parameters_are_passed_by_position() -> None:
    def f(a: int, /, b: int = 0) -> None: ...

    assert parse(f, ["--a", "1", "--b", "2"]) == ((1,), {"b": 2})


def test_var_keyword_is_ignored() -> None:
    def f(a: int = 0, **extra: Any) -> None: ...

    assert kwargs_of(f, ["--a", "3"]) == {"a": 3}


def test_unknown_flag_is_a_usage_error() -> None:
    def f(a: int = 0) -> None: ...

    with pytest.raises(click.UsageError, match="--nope"):
        parse(f, ["--nope", "1"])


def test_help_shows_the_docstring_and_options() -> None:
    def f(max_items: int = 3, color: Literal["red", "blue"] = "red") -> None:
        """Does a thing."""

    cmd = make_command(f, lambda args, kwargs: None, name="cmd")
    text = cmd.get_help(click.Context(cmd, info_name="cmd"))
    assert "Does a thing." in text
    assert "--max-items" in text and "[red|blue]" in text and "default: 3" in text
