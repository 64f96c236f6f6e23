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
    """Run on a cron schedule, on the wall clock of `timezone` (an IANA name, UTC by default)."""

    def __init__(self, cron_string: str, timezone: str = "UTC") -> None:
        from croniter import croniter

        if not isinstance(cron_string, str) or len(cron_string.split()) != 5 or not croniter.is_valid(cron_string):
            raise InvalidError(f"invalid cron string {cron_string!r}: expected 5 fields like '0 */6 * * *'")
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
