"""Turn a function's signature into `shoal run` flags, as `modal run` does.

Each parameter becomes an option `--name` (underscores may also be written as dashes: `--my-arg` and
`--my_arg` both work). Supported annotations: `str`, `int`, `float`, `bool` (`--flag/--no-flag`),
`datetime.datetime` (ISO 8601), `typing.Literal` of all-str or all-int values, and `Optional[...]` of any of
these. Unannotated (or `typing.Any`) parameters receive the string as typed. A parameter without a default is
required. A function taking `*args` gets the raw remaining command-line strings instead, with no flag parsing.

Pure: depends on click and the standard library only.
"""

from __future__ import annotations

import datetime
import inspect
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import click

SUPPORTED = "str, int, float, bool, datetime.datetime, typing.Literal of all-str or all-int values"


class EntrypointArgsError(Exception):
    """The function's signature cannot be turned into command-line flags."""


class PassThrough(click.ParamType):
    """Unannotated parameters: the command-line string, and the Python default untouched."""

    name = "text"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        return value


class IsoDateTime(click.ParamType):
    """`datetime.datetime` from ISO 8601: `2024-01-02`, `2024-01-02T03:04:05`, `2024-01-02 03:04:05.123+02:00`,
    `...Z`. A superset of the formats `click.DateTime()` (what Modal uses) accepts."""

    name = "datetime"

    def get_metavar(self, *args: Any, **kwargs: Any) -> str:  # signature differs across click versions
        return "[ISO 8601 DATETIME]"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, datetime.datetime):
            return value
        text = str(value).strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            return datetime.datetime.fromisoformat(text)
        except ValueError:
            pass
        for fmt in ("%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"):
            try:
                return datetime.datetime.strptime(text, fmt)
            except ValueError:
                continue
        self.fail(f"{value!r} is not an ISO 8601 date/time (e.g. 2024-01-31 or 2024-01-31T12:00:00)", param, ctx)


class LiteralChoice(click.Choice):
    """`typing.Literal[...]` of strings or of ints: a choice among their string forms, converted back to the
    literal's own value (so `Literal[1, 2]` gives the int 2 for `--size 2`)."""

    def __init__(self, values: tuple[Any, ...]) -> None:
        self.values = values
        self._by_str = {str(v): v for v in values}
        super().__init__([str(v) for v in values])

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        for v in self.values:
            if type(value) is type(v) and value == v:
                return v
        chosen = super().convert(value if isinstance(value, str) else str(value), param, ctx)
        return self._by_str[str(chosen)]


@dataclass
class CliSignature:
    """The options for a function, and how to call it with their parsed values."""

    params: list[click.Parameter] = field(default_factory=list)
    var_args: bool = False
    positional_only: list[str] = field(default_factory=list)

    def call_args(self, values: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """(args, kwargs) for the function, from the values click parsed (positional-only ones by position)."""
        kwargs = dict(values)
        args = tuple(kwargs.pop(name) for name in self.positional_only)
        return args, kwargs


def _unwrap_optional(hint: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin is typing.Union or (hasattr(types, "UnionType") and origin is types.UnionType):
        rest = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(rest) == 1 and len(rest) < len(typing.get_args(hint)):
            return rest[0]
    return hint


def _describe(annotation: Any) -> str:
    if isinstance(annotation, type):
        return annotation.__qualname__
    return str(annotation).replace("typing.", "")


def param_type(name: str, hint: Any, annotation: Any = None) -> click.ParamType | None:
    """The click type for one parameter's (evaluated) annotation; None means a `bool` flag. Raises
    EntrypointArgsError for an annotation the CLI cannot parse."""
    hint = _unwrap_optional(hint)
    if hint is inspect.Parameter.empty or hint is typing.Any:
        return PassThrough()
    if hint is bool:
        return None
    simple = {str: click.STRING, int: click.INT, float: click.FLOAT}
    if hint in simple:
        return simple[hint]
    if hint is datetime.datetime:
        return IsoDateTime()
    if typing.get_origin(hint) is typing.Literal:
        values = typing.get_args(hint)
        if values and all(isinstance(v, str) for v in values):
            return LiteralChoice(values)
        if values and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            return LiteralChoice(values)
        raise EntrypointArgsError(
            f"parameter {name!r} has annotation {_describe(annotation if annotation is not None else hint)}: "
            "a Literal must have only str values or only int values")
    shown = annotation if annotation is not None and annotation is not inspect.Parameter.empty else hint
    raise EntrypointArgsError(
        f"parameter {name!r} has an annotation the command line cannot parse: {_describe(shown)} "
        f"(supported: {SUPPORTED})")


def _option_decls(name: str, is_flag: bool) -> list[str]:
    """`--my-arg` and `--my_arg` (flags: `--my-arg/--no-my-arg` and `--my_arg/--no_my_arg`), then the name."""
    spellings = [(name, "_" if "_" in name else "-")]
    dashed = name.replace("_", "-")
    if dashed != name and not dashed.startswith("-"):
        spellings.insert(0, (dashed, "-"))
    if is_flag:
        decls = [f"--{s}/--no{sep}{s}" for s, sep in spellings]
    else:
        decls = [f"--{s}" for s, _ in spellings]
    return [*decls, name]


def _type_hints(func: Callable[..., Any]) -> dict[str, Any]:
    try:
        return typing.get_type_hints(func)
    except Exception as exc:  # noqa: BLE001 - any failure to evaluate the user's annotations
        raise EntrypointArgsError(
            f"cannot evaluate the type annotations of {getattr(func, '__qualname__', func)!r}: {exc}") from exc


def cli_signature(func: Callable[..., Any]) -> CliSignature:
    """The click options for `func`'s parameters (or raw-argv mode for `*args`)."""
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError) as exc:
        raise EntrypointArgsError(f"cannot read the signature of {func!r}: {exc}") from exc
    hints = _type_hints(func)
    out = CliSignature()
    others = []
    for p in sig.parameters.values():
        if p.kind is p.VAR_POSITIONAL:
            out.var_args = True
        elif p.kind is not p.VAR_KEYWORD:
            others.append(p)
    if out.var_args:
        if others:
            names = ", ".join(p.name for p in others)
            raise EntrypointArgsError(
                f"a function with variable-length positional arguments (*args) cannot have other parameters "
                f"when run from the command line (it has: {names})")
        return out
    for p in others:
        hint = hints.get(p.name, p.annotation)
        ptype = param_type(p.name, hint, p.annotation)
        kwargs: dict[str, Any] = {"show_default": True}
        if ptype is not None:
            kwargs["type"] = ptype
        if p.default is p.empty:
            kwargs["required"] = True
        else:
            kwargs["default"] = p.default
            if ptype is None and p.default is None:
                kwargs["show_default"] = False
        out.params.append(click.Option(_option_decls(p.name, ptype is None), **kwargs))
        if p.kind is p.POSITIONAL_ONLY:
            out.positional_only.append(p.name)
    return out


def make_command(
    func: Callable[..., Any],
    invoke: Callable[[tuple[Any, ...], dict[str, Any]], Any],
    *,
    name: str | None = None,
    help: str | None = None,  # noqa: A002 - click's name
) -> click.Command:
    """A click command whose options are `func`'s parameters; running it calls `invoke(args, kwargs)` with
    the parsed values (or, for `*args` functions, the raw remaining strings as args)."""
    signature = cli_signature(func)

    def callback(**values: Any) -> Any:
        if signature.var_args:
            return invoke(tuple(click.get_current_context().args), {})
        return invoke(*signature.call_args(values))

    settings: dict[str, Any] = {}
    if signature.var_args:
        settings = {"ignore_unknown_options": True, "allow_extra_args": True}
    doc = help if help is not None else inspect.getdoc(func)
    return click.Command(name or getattr(func, "__name__", "entrypoint"), params=list(signature.params),
                         callback=callback, context_settings=settings, help=doc)
