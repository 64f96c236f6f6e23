"""`Period` and `Cron` schedules (validated here; fired by the control plane for deployed apps)."""

from __future__ import annotations

from ._spec.definitions import CronSchedule, PeriodSchedule
from .exception import InvalidError


class Period:
    """Run every fixed interval, relative to the last deploy (relativedelta semantics)."""

    def __init__(self, *, years: int = 0, months: int = 0, weeks: int = 0, days: int = 0, hours: int = 0,
                 minutes: int = 0, seconds: float = 0) -> None:
        fields = {"years": years, "months": months, "weeks": weeks, "days": days, "hours": hours,
                  "minutes": minutes, "seconds": seconds}
        for k, v in fields.items():
            if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0:
                raise InvalidError(f"Period `{k}` must be a non-negative number, got {v!r}")
        if not any(fields.values()):
            raise InvalidError("Period must be positive: give at least one non-zero field")
        self.fields = fields

    def __repr__(self) -> str:
        return "Period(" + ", ".join(f"{k}={v}" for k, v in self.fields.items() if v) + ")"

    def to_wire(self) -> PeriodSchedule:
        return PeriodSchedule(**self.fields)


class Cron:
    """Run on a cron schedule, on the wall clock of `timezone` (an IANA name, UTC by default).

    Checked here without croniter: a module defining a schedule is imported in its containers too, whose image
    need not carry the control plane's dependencies; the control plane computes the fire times."""

    def __init__(self, cron_string: str, timezone: str = "UTC") -> None:
        problem = cron_problem(cron_string)
        if problem:
            raise InvalidError(f"invalid cron string {cron_string!r}: {problem}; expected 5 fields like "
                               "'0 */6 * * *'")
        if not isinstance(timezone, str):
            raise InvalidError(f"unknown time zone {timezone!r}")
        try:
            from zoneinfo import ZoneInfo

            ZoneInfo(timezone)
        except Exception as exc:
            raise InvalidError(f"unknown time zone {timezone!r}") from exc
        self.cron_string = cron_string
        self.timezone = timezone

    def __repr__(self) -> str:
        return f"Cron({self.cron_string!r}, timezone={self.timezone!r})"

    def to_wire(self) -> CronSchedule:
        return CronSchedule(self.cron_string, self.timezone)


# The five fields of a cron expression: name, lowest and highest value, names allowed in place of numbers.
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_FIELDS: tuple[tuple[str, int, int, tuple[str, ...]], ...] = (
    ("minute", 0, 59, ()), ("hour", 0, 23, ()), ("day of month", 1, 31, ()),
    ("month", 1, 12, _MONTHS), ("day of week", 0, 7, _DAYS))


def cron_problem(expr: object) -> str | None:
    """What is wrong with a standard 5-field cron expression (None when nothing is): each field a comma list of
    `*`, `N` or `N-M`, each optionally `/STEP`; months and weekdays may be named (`jan`, `mon`)."""
    if not isinstance(expr, str):
        return f"expected a string, got {type(expr).__name__}"
    fields = expr.split()
    if len(fields) != 5:
        return f"{len(fields)} fields"
    for text, (name, lo, hi, names) in zip(fields, _FIELDS, strict=True):
        for item in text.split(","):
            problem = _item_problem(item.lower(), lo, hi, names)
            if problem:
                return f"{name} field {text!r}: {problem}"
    return None


def _item_problem(item: str, lo: int, hi: int, names: tuple[str, ...]) -> str | None:
    base, slash, step = item.partition("/")
    if slash and not (step.isdigit() and int(step) > 0):
        return f"step {step!r} is not a positive number"
    if base == "*":
        return None
    first, dash, last = base.partition("-")
    for part in (first, last) if dash else (first,):
        value = lo + names.index(part) if part in names and names else int(part) if part.isdigit() else None
        if value is None:
            return f"{part!r} is not a number" + (f" or a name ({names[0]}..{names[-1]})" if names else "")
        if not lo <= value <= hi:
            return f"{value} is outside {lo}..{hi}"
    return None  # a range may wrap around (`fri-mon`), as croniter reads it
