"""Decoration-time validation of `@app.function(...)` options (shoal/_options.py and App.function)."""

from __future__ import annotations

import warnings
from typing import Any

import msgspec
import pytest

import shoal as modal
from shoal import _options
from shoal._options import FunctionOptions, build_options, parse_gpu, reject_deprecated
from shoal.exception import DeprecationError, InvalidError, NotImplementedWarning
from shoal.retries import Retries

DEFAULTS: dict[str, Any] = dict(
    timeout=300, startup_timeout=None, retries=None, min_containers=None, max_containers=None,
    buffer_containers=None, scaledown_window=None, cpu=None, memory=None, gpu=None, single_use_containers=False,
    max_inputs=None, serialized=False, include_source=None, region=None, is_generator=False,
)


def build(**overrides: Any) -> FunctionOptions:
    return build_options(**{**DEFAULTS, **overrides})


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch):
    """Not-yet-enforced options warn once per process; start each test with a clean slate."""
    monkeypatch.setattr(_options, "_warned", set())


def module_level(x: int) -> int:
    return x


def module_level_gen(n: int):
    yield from range(n)


def decorate(**kwargs: Any) -> modal.Function:
    return modal.App("options-test").function(**kwargs)(module_level)


# -- defaults ------------------------------------------------------------------------------------------------


def test_defaults():
    opts = build()
    assert opts.timeout == 300
    assert opts.retries is None
    assert opts.gpu is None and opts.region is None
    assert opts.single_use_containers is False


def test_decorator_defaults_and_result():
    fn = decorate()
    assert isinstance(fn, modal.Function)
    assert fn._options.timeout == 300
    assert fn.tag == "module_level"
    assert fn.local(3) == 3


# -- timeout -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [None, 0, -1, 24 * 3600 + 1, "300", 1.5, True])
def test_bad_timeout_names_the_parameter(value):
    with pytest.raises(InvalidError, match="timeout"):
        build(timeout=value)


@pytest.mark.parametrize("value", [None, 0])
def test_bad_timeout_in_decorator(value):
    with pytest.raises(InvalidError, match="`timeout`"):
        decorate(timeout=value)


@pytest.mark.parametrize("value", [1, 600, 24 * 3600])
def test_timeout_bounds_accepted(value):
    assert build(timeout=value).timeout == value


@pytest.mark.parametrize("value", [0, 24 * 3600 + 1, "10"])
def test_bad_startup_timeout(value):
    with pytest.raises(InvalidError, match="startup_timeout"):
        build(startup_timeout=value)


def test_startup_timeout_accepted():
    assert build(timeout=600, startup_timeout=120).startup_timeout == 120


# -- containers ----------------------------------------------------------------------------------------------


def test_min_greater_than_max():
    with pytest.raises(InvalidError, match="min_containers"):
        build(min_containers=3, max_containers=2)
    with pytest.raises(InvalidError, match="min_containers"):
        decorate(min_containers=5, max_containers=1)


def test_min_equal_max_ok():
    opts = build(min_containers=2, max_containers=2, buffer_containers=1, scaledown_window=300)
    assert (opts.min_containers, opts.max_containers, opts.buffer_containers, opts.scaledown_window) == (2, 2, 1, 300)


@pytest.mark.parametrize("name,value", [
    ("min_containers", -1), ("max_containers", 0), ("buffer_containers", -1), ("min_containers", 1.0),
    ("max_containers", True),
])
def test_bad_container_counts(name, value):
    with pytest.raises(InvalidError, match=name):
        build(**{name: value})


@pytest.mark.parametrize("value", [1, 0, 3601, -5])
def test_scaledown_window_out_of_range(value):
    with pytest.raises(InvalidError, match="scaledown_window"):
        build(scaledown_window=value)


def test_scaledown_window_in_decorator():
    with pytest.raises(InvalidError, match="scaledown_window"):
        decorate(scaledown_window=1)


@pytest.mark.parametrize("value", [2, 3600])
def test_scaledown_window_bounds_accepted(value):
    assert build(scaledown_window=value).scaledown_window == value


# -- cpu and memory ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [(2, 1), (2.0, 1.5)])
def test_cpu_limit_below_request(value):
    with pytest.raises(InvalidError, match="cpu"):
        build(cpu=value)
    with pytest.raises(InvalidError, match="cpu"):
        decorate(cpu=value)


@pytest.mark.parametrize("value", [0, -1.0, (0, 1), "2", (1, 2, 3), True, ()])
def test_bad_cpu(value):
    with pytest.raises(InvalidError, match="cpu"):
        build(cpu=value)


@pytest.mark.parametrize("value", [0, -1, 1.5, (4096, 2048), (0, 10), "4096", (1, 2, 3)])
def test_bad_memory(value):
    with pytest.raises(InvalidError, match="memory"):
        build(memory=value)


def test_memory_zero_in_decorator():
    with pytest.raises(InvalidError, match="memory"):
        decorate(memory=0)


@pytest.mark.filterwarnings("ignore::shoal.exception.NotImplementedWarning")
def test_resources_accepted():
    opts = build(cpu=2.0, memory=8192)
    assert (opts.cpu, opts.memory) == (2.0, 8192)
    opts = build(cpu=(2.0, 4.0), memory=(4096, 8192))
    assert (opts.cpu, opts.memory) == ((2.0, 4.0), (4096, 8192))
    assert build(cpu=1).cpu == 1
    assert build(cpu=(2, 2), memory=(1024, 1024)).memory == (1024, 1024)


# -- gpu -----------------------------------------------------------------------------------------------------


def test_parse_gpu():
    assert parse_gpu(None) is None
    assert parse_gpu("a100") == ["A100"]
    assert parse_gpu("A100-80GB:2") == ["A100-80GB:2"]
    assert parse_gpu("h100:8") == ["H100:8"]
    assert parse_gpu("any") == ["ANY"]
    assert parse_gpu(["H100", "a100", "T4"]) == ["H100", "A100", "T4"]
    assert parse_gpu(("L4",)) == ["L4"]


@pytest.mark.parametrize("value", ["X1", "A100:0", "A100:9", "A100:two", [], ["T4", 3], ["T4", "nope"], 5])
def test_bad_gpu(value):
    with pytest.raises(InvalidError, match="gpu"):
        parse_gpu(value)


@pytest.mark.filterwarnings("ignore::shoal.exception.NotImplementedWarning")
def test_bad_gpu_in_decorator():
    with pytest.raises(InvalidError, match="gpu"):
        decorate(gpu="X1")


def test_gpu_accepted_without_a_not_enforced_warning():
    # The local backend assigns GPUs (shoal/backends/gpus.py): gpu= is enforced, so no warning.
    with warnings.catch_warnings():
        warnings.simplefilter("error", NotImplementedWarning)
        opts = build(gpu="t4")
    assert opts.gpu == ["T4"]


# -- retries -------------------------------------------------------------------------------------------------


def test_retries_int_becomes_fixed_delay_policy():
    opts = build(retries=3)
    assert opts.retries == Retries(max_retries=3, initial_delay=1.0, backoff_coefficient=1.0)


def test_retries_object_kept():
    r = Retries(max_retries=5, initial_delay=1.0, backoff_coefficient=2.0)
    assert build(retries=r).retries is r


def test_retries_on_generator_rejected():
    with pytest.raises(InvalidError, match="retries"):
        build(retries=2, is_generator=True)
    with pytest.raises(InvalidError, match="retries"):
        modal.App("options-test").function(retries=2)(module_level_gen)
    with pytest.raises(InvalidError, match="retries"):
        modal.App("options-test").function(retries=Retries(max_retries=1))(module_level_gen)


def test_retries_on_explicit_is_generator_rejected():
    with pytest.raises(InvalidError, match="retries"):
        modal.App("options-test").function(retries=1, is_generator=True)(module_level)


def test_zero_retries_on_generator_allowed():
    assert build(retries=0, is_generator=True).retries.max_retries == 0


def test_retries_on_web_rejected():
    with pytest.raises(InvalidError, match="retries"):
        build(retries=1, is_web=True)


@pytest.mark.parametrize("value", [-1, 11, "3", 1.5])
def test_bad_retries(value):
    with pytest.raises(InvalidError, match="(?i)retries"):
        build(retries=value)


# -- max_inputs / single_use_containers ----------------------------------------------------------------------


def test_max_inputs_one_warns_and_means_single_use():
    with pytest.warns(DeprecationWarning, match="single_use_containers"):
        opts = build(max_inputs=1)
    assert opts.single_use_containers is True


def test_max_inputs_other_than_one_rejected():
    with pytest.raises(InvalidError, match="max_inputs"):
        build(max_inputs=2)


def test_single_use_containers():
    assert build(single_use_containers=True).single_use_containers is True


# -- region --------------------------------------------------------------------------------------------------


def test_region_string_becomes_list_and_warns():
    with pytest.warns(NotImplementedWarning, match="region"):
        opts = build(region="us-east-1")
    assert opts.region == ["us-east-1"]


def test_region_list():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotImplementedWarning)
        assert build(region=("us-east-1", "eu-west-1")).region == ["us-east-1", "eu-west-1"]


def test_bad_region():
    with pytest.raises(InvalidError, match="region"):
        build(region=["us-east-1", 5])


def test_not_enforced_warning_only_once_per_option():
    with pytest.warns(NotImplementedWarning):
        build(region="us-east-1")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build(region="eu-west-1")


def test_extra_not_enforced_options_warn():
    with pytest.warns(NotImplementedWarning, match="i6pn"):
        build(extra={"i6pn": True})


def test_decorator_region_warns():
    with pytest.warns(NotImplementedWarning, match="region"):
        fn = decorate(region="us-east-1")
    assert fn._options.region == ["us-east-1"]


# -- deprecated aliases --------------------------------------------------------------------------------------


@pytest.mark.parametrize("old,new", [
    ("keep_warm", "min_containers"),
    ("concurrency_limit", "max_containers"),
    ("container_idle_timeout", "scaledown_window"),
    ("allow_concurrent_inputs", "concurrent"),
])
def test_deprecated_alias_raises(old, new):
    with pytest.raises(DeprecationError, match=old) as info:
        decorate(**{old: 1})
    assert new in str(info.value)
    with pytest.raises(DeprecationError, match=old):
        reject_deprecated({old: 2})


def test_reject_deprecated_ignores_none_and_current_names():
    reject_deprecated({"keep_warm": None, "min_containers": 1, "timeout": 3})


def test_deprecation_error_is_raised_not_warned():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(DeprecationError):
            decorate(keep_warm=1)


# -- decorator misuse ----------------------------------------------------------------------------------------


def test_decorator_without_parentheses():
    app = modal.App("options-test")
    with pytest.raises(InvalidError, match=r"parentheses"):
        app.function(module_level)


def test_local_scope_function_needs_serialized():
    app = modal.App("options-test")

    def inner(x):
        return x

    with pytest.raises(InvalidError, match="serialized=True"):
        app.function()(inner)
    fn = app.function(serialized=True)(inner)
    assert fn._options.serialized is True
    assert fn.local(5) == 5


def test_unknown_keyword_is_type_error_naming_it():
    app = modal.App("options-test")
    with pytest.raises(TypeError, match="bogus_option"):
        app.function(bogus_option=1)


def test_decorating_twice_rejected():
    app = modal.App("options-test")
    fn = app.function()(module_level)
    with pytest.raises(InvalidError):
        app.function(name="other")(fn)


def test_name_overrides_tag():
    app = modal.App("options-test")
    fn = app.function(name="custom")(module_level)
    assert fn.tag == "custom"
    assert "custom" in app.registered_functions


def test_generator_detected():
    app = modal.App("options-test")
    assert app.function()(module_level_gen)._is_generator is True
    assert app.function()(module_level)._is_generator is False


# -- wire form -----------------------------------------------------------------------------------------------


def test_to_wire():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotImplementedWarning)
        opts = build(cpu=(1.0, 2.0), memory=(512, 1024), retries=2,
                     extra={"cloud": "aws", "volumes": {"/x": modal.Volume.from_name("v")}})
    wire = msgspec.to_builtins(opts.to_wire())
    assert wire["cpu"] == [1.0, 2.0]
    assert wire["memory"] == [512, 1024]
    assert wire["retries"] == {"max_retries": 2, "backoff_coefficient": 1.0, "initial_delay": 1.0, "max_delay": 60.0}
    assert wire["extra"] == {"cloud": "aws"}
    assert wire["timeout"] == 300
    assert build().to_wire().retries is None


def test_not_enforced_warning_points_at_the_decorated_function():
    app = modal.App("options-test")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        app.function(region="us-east-1")(module_level)
    hits = [w for w in caught if issubclass(w.category, NotImplementedWarning)]
    assert hits, [str(w.message) for w in caught]
    assert hits[0].filename == __file__, f"warning attributed to {hits[0].filename}:{hits[0].lineno}"
