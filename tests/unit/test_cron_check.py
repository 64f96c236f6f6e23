"""The SDK's cron check (no croniter in containers) agrees with croniter, which the control plane fires with."""

from __future__ import annotations

import subprocess
import sys

import pytest
from croniter import croniter

import shoal
from shoal.exception import InvalidError
from shoal.schedule import cron_problem

VALID = ["* * * * *", "0 */6 * * *", "5,10-20/5 0-23 1-31 1-12 0-7", "0 9 * jan-mar mon-fri", "30 2 1 * SUN",
         "0 0 29 feb *", "*/15 * * * 1,3,5", "0 12 * * 7", "59 23 31 12 6", "0 0 1 */2 *",
         "10-10 * * * *", "0 0 * * fri-mon"]
INVALID = ["", "* * * *", "* * * * * *", "60 * * * *", "* 24 * * *", "* * 0 * *", "* * * 13 *", "* * * * 8",
           "*/0 * * * *", "a * * * *", "* * * foo *", "1,,2 * * * *", "-1 * * * *", "*/x * * * *"]


@pytest.mark.parametrize("expr", VALID)
def test_valid_expressions_pass_both_checks(expr: str) -> None:
    assert croniter.is_valid(expr)
    assert cron_problem(expr) is None
    assert shoal.Cron(expr).cron_string == expr


@pytest.mark.parametrize("expr", INVALID)
def test_invalid_expressions_fail_both_checks_naming_the_field(expr: str) -> None:
    assert not croniter.is_valid(expr) or len(expr.split()) != 5
    with pytest.raises(InvalidError, match="invalid cron string"):
        shoal.Cron(expr)


def test_the_problem_names_the_field() -> None:
    assert "hour" in cron_problem("0 25 * * *")
    assert "day of week" in cron_problem("0 0 * * funday")


def test_defining_a_cron_schedule_needs_no_croniter() -> None:
    """A container's image has shoal but not the control plane's packages: importing croniter there fails."""
    code = ("import sys; sys.modules['croniter'] = None\n"
            "import shoal as modal\n"
            "print(modal.Cron('*/5 * * * *', timezone='Europe/Paris'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "Cron('*/5 * * * *'" in out.stdout
