"""next_fire: Period (calendar arithmetic from the anchor) and Cron (wall clock in an IANA zone)."""

from __future__ import annotations

import datetime as dt

import pytest

import shoal
from shoal.controlplane.scheduler import next_fire
from shoal.exception import InvalidError

UTC = dt.timezone.utc


def ts(*args: int, tz: dt.tzinfo = UTC) -> float:
    return dt.datetime(*args, tzinfo=tz).timestamp()


def test_period_seconds_counts_from_the_anchor() -> None:
    spec = shoal.Period(seconds=2).to_wire()
    anchor = 1000.0
    assert next_fire(spec, anchor, anchor) == 1002.0
    assert next_fire(spec, anchor, 1002.0) == 1004.0  # strictly after
    assert next_fire(spec, anchor, 1003.9) == 1004.0
    assert next_fire(spec, anchor, 1_000_001.0) == 1_000_002.0


def test_period_months_use_calendar_arithmetic() -> None:
    spec = shoal.Period(months=1).to_wire()
    anchor = ts(2025, 1, 31, 12, 0)
    assert next_fire(spec, anchor, anchor) == ts(2025, 2, 28, 12, 0)
    assert next_fire(spec, anchor, ts(2025, 3, 1)) == ts(2025, 3, 31, 12, 0)


def test_period_days_and_hours_combined() -> None:
    spec = shoal.Period(days=1, hours=6).to_wire()
    anchor = ts(2025, 6, 1)
    assert next_fire(spec, anchor, anchor) == ts(2025, 6, 2, 6)
    assert next_fire(spec, anchor, ts(2025, 6, 2, 7)) == ts(2025, 6, 3, 12)


def test_cron_in_utc() -> None:
    spec = shoal.Cron("0 */6 * * *").to_wire()
    assert next_fire(spec, 0, ts(2025, 6, 1, 7, 30)) == ts(2025, 6, 1, 12, 0)


def test_cron_follows_the_wall_clock_of_its_time_zone_across_dst() -> None:
    spec = shoal.Cron("0 9 * * *", timezone="America/New_York").to_wire()
    # Winter: 09:00 EST is 14:00 UTC; summer: 09:00 EDT is 13:00 UTC.
    assert next_fire(spec, 0, ts(2025, 1, 15, 15, 0)) == ts(2025, 1, 16, 14, 0)
    assert next_fire(spec, 0, ts(2025, 7, 15, 15, 0)) == ts(2025, 7, 16, 13, 0)
    # The day DST starts (2025-03-09) still fires at 09:00 local time.
    assert next_fire(spec, 0, ts(2025, 3, 8, 15, 0)) == ts(2025, 3, 9, 13, 0)


def test_schedule_validation() -> None:
    with pytest.raises(InvalidError):
        shoal.Cron("not a cron")
    with pytest.raises(InvalidError):
        shoal.Cron("0 9 * * *", timezone="Mars/Olympus")
    with pytest.raises(InvalidError):
        shoal.Period()
    with pytest.raises(InvalidError, match="no arguments"):
        shoal.App().function(schedule=shoal.Period(seconds=1), serialized=True)(lambda x: x)
