"""Every name of Modal 1.6.4's `__all__` (API.md §1) is in shoal, or using it says clearly that shoal does not
offer it and what to use instead."""

from __future__ import annotations

import subprocess
import sys

import pytest

import shoal
from shoal._unsupported import UnsupportedFeatureError

MODAL_ALL = (
    "App Client enable_output interact is_local current_function_call_id current_input_id Function FunctionCall Cls "
    "Server Sandbox SandboxSnapshot Cluster Probe Image FilePatternMatcher Secret Retries Period Cron "
    "SchedulerPlacement Proxy CloudBucketMount Volume NetworkFileSystem Dict Queue forward Tunnel Workspace "
    "Environment billing method parameter enter exit concurrent batched clustered sessioned fastapi_endpoint "
    "asgi_app wsgi_app web_server web_endpoint Error experimental __version__"
).split()


@pytest.mark.parametrize("name", MODAL_ALL)
def test_each_modal_name_exists_or_says_what_to_use(name: str) -> None:
    try:
        getattr(shoal, name)
    except UnsupportedFeatureError as exc:
        assert str(exc).startswith(f"modal.{name}: ") and len(str(exc)) > len(name) + 30
        assert isinstance(exc, NotImplementedError) and isinstance(exc, shoal.Error)


def test_other_names_are_plain_attribute_errors() -> None:
    assert not hasattr(shoal, "no_such_name")
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        _ = shoal.no_such_name  # type: ignore[attr-defined]


def test_from_import_of_an_unsupported_name_keeps_the_message() -> None:
    out = subprocess.run([sys.executable, "-c", "from shoal import Cluster"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 1 and "modal.Cluster: shoal does not run multi-container clusters" in out.stderr
