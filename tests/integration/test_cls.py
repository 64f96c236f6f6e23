"""Classes in real containers: lifecycle hooks, parameters, one pool per parameter set, options variants."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import shoal
from shoal._client.transport import get_client
from shoal.exception import FunctionTimeoutError, InvalidError, NotFoundError

from ..conftest import ControlPlane, wait_for


@pytest.fixture(scope="module")
def cls_app(control_plane):
    import cls_app

    with cls_app.app.run(quiet=True):
        yield cls_app


def containers() -> list[dict]:
    return get_client().call("GET", "/v1/containers")["containers"]




def overlapped(spans: list[tuple]) -> bool:
    """Every span started before the earliest one ended."""
    first_end = min(end for _, _, end in spans)
    return all(start < first_end for _, start, _ in spans)


# -- lifecycle hooks -------------------------------------------------------------------------------------------
def test_enter_hooks_run_once_in_modal_order(cls_app) -> None:
    obj = cls_app.Hooks(label="order")
    # snap=True hooks first, then the others; base classes first; an async hook awaited like a sync one.
    assert obj.events_so_far.remote() == ["snap_enter", "base_enter", "own_enter_async", "method"]
    # Same container, object kept: @enter did not run again.
    assert obj.events_so_far.remote() == ["snap_enter", "base_enter", "own_enter_async", "method", "method"]


def test_methods_share_the_pool_and_all_call_styles_work(cls_app) -> None:
    obj = cls_app.Hooks(label="styles")
    cid = obj.container.remote()
    assert obj.double.remote(21) == 42  # async method
    assert list(obj.count.remote_gen(3)) == [0, 1, 2]  # generator method
    assert obj.double.spawn(5).get(timeout=30) == 10
    assert obj.container.remote() == cid  # one warm container served every method
    assert list(obj.double.map([1, 2, 3])) == [2, 4, 6]
    pool = obj._service_function()._fid()
    assert {c["function"] for c in containers() if c["function_id"] == pool} == {"Hooks.*"}


def test_enter_failure_reaches_the_caller(cls_app) -> None:
    with pytest.raises(ValueError, match="enter exploded"):
        cls_app.BrokenEnter().f.remote()


def test_local_method_builds_the_object_once_and_runs_enter_once(cls_app) -> None:
    obj = cls_app.Hooks(label="local")
    assert obj.events_so_far.local() == ["snap_enter", "base_enter", "own_enter_async", "method"]
    assert obj.events_so_far.local()[-2:] == ["method", "method"]


def test_uninstantiated_class_method_says_to_instantiate(cls_app) -> None:
    with pytest.raises(AttributeError, match="instantiate the class first"):
        cls_app.Params.values.remote()


# -- parameters ------------------------------------------------------------------------------------------------
def test_parameters_all_types_defaults_init_false_and_inheritance(cls_app) -> None:
    got = cls_app.Params(n=1).values.remote()
    assert {k: got[k] for k in ("n", "s", "b", "flag", "inherited", "scratch")} == {
        "n": 1, "s": "s", "b": b"b", "flag": False, "inherited": 7, "scratch": "1-s"}
    got = cls_app.Params(n=-5, s="two", b=b"\x00\xff", flag=True, inherited=8).values.remote()
    assert {k: got[k] for k in ("n", "s", "b", "flag", "inherited", "scratch")} == {
        "n": -5, "s": "two", "b": b"\x00\xff", "flag": True, "inherited": 8, "scratch": "-5-two"}
    # Positional arguments bind in declaration order (base class parameters first).
    assert cls_app.Params(3, 4).values.remote()["inherited"] == 3


def test_bad_parameters_raise_invalid_error_at_construction(cls_app) -> None:
    with pytest.raises(InvalidError, match="missing required parameter.*n"):
        cls_app.Params()
    with pytest.raises(InvalidError, match="unexpected parameter 'bogus'"):
        cls_app.Params(n=1, bogus=2)
    with pytest.raises(InvalidError, match="must be of type int"):
        cls_app.Params(n="1")
    with pytest.raises(InvalidError, match="must be of type bool"):
        cls_app.Params(n=1, flag=1)
    with pytest.raises(InvalidError, match="must be of type bytes"):
        cls_app.Params(n=1, b="text")


def test_each_parameter_set_gets_its_own_pool(cls_app) -> None:
    one = cls_app.Params(n=101).values.remote()["container"]
    two = cls_app.Params(n=102).values.remote()["container"]
    assert one != two, "two parameter sets shared a container"
    # The same values (defaults spelled out or not) name the same pool: its warm container answers.
    assert cls_app.Params(n=101, s="s", flag=False).values.remote()["container"] == one
    pools = {c["container_id"]: c["function_id"] for c in containers() if c["function"] == "Params.*"}
    assert one in pools and two in pools and pools[one] != pools[two], pools


def test_update_autoscaler_of_one_parameter_set(cls_app) -> None:
    obj = cls_app.Params(n=303)
    obj.update_autoscaler(min_containers=1)
    pool = obj._service_function()._fid()
    assert wait_for(lambda: any(c["function_id"] == pool for c in containers())), "no warm container"
    obj.update_autoscaler(min_containers=0)


# -- options, concurrency ----------------------------------------------------------------------------------------
def test_cls_with_options_is_a_separate_pool_with_its_options(cls_app) -> None:
    base_cid = cls_app.Sequential().sleep.remote(0)[0]
    slow = cls_app.Sequential.with_options(timeout=30)
    assert slow().sleep.remote(0)[0] != base_cid
    with pytest.raises(FunctionTimeoutError):
        cls_app.Sequential.with_options(timeout=2)().sleep.remote(30)
    assert cls_app.Sequential().sleep.remote(0)[0] == base_cid  # the original pool is untouched


def test_cls_with_concurrency_overlaps_inputs_in_one_container(cls_app) -> None:
    conc = cls_app.Sequential.with_concurrency(max_inputs=3)()
    calls = [conc.sleep.spawn(1.0) for _ in range(3)]
    spans = [c.get(timeout=60) for c in calls]
    assert len({cid for cid, _, _ in spans}) == 1  # max_containers=1 is kept
    assert overlapped(spans)


def test_concurrent_class_shares_the_limit_across_sync_and_async_methods(cls_app) -> None:
    obj = cls_app.Concurrent()
    spans = [c.get(timeout=60) for c in [obj.sleep.spawn(1.0) for _ in range(3)]]
    assert len({cid for cid, _, _ in spans}) == 1 and overlapped(spans)
    spans = [c.get(timeout=60) for c in [obj.asleep.spawn(1.0) for _ in range(3)]]
    assert len({cid for cid, _, _ in spans}) == 1 and overlapped(spans)


def test_function_with_options_replaces_env_and_has_its_own_pool(cls_app) -> None:
    assert cls_app.environment.remote("GREETING") == "hi"
    other = cls_app.environment.with_options(env={"OTHER": "o"})
    assert other.remote("GREETING") is None  # env/secrets are replaced, not merged
    assert other.remote("OTHER") == "o"
    assert cls_app.environment.remote("GREETING") == "hi"


def test_function_with_options_timeout_and_rejects_min_containers(cls_app) -> None:
    base_cid = cls_app.sleeper.remote(0)
    quick = cls_app.sleeper.with_options(timeout=2)
    with pytest.raises(FunctionTimeoutError):
        quick.remote(30)
    assert cls_app.sleeper.remote(0) == base_cid
    with pytest.raises(TypeError):
        cls_app.sleeper.with_options(min_containers=1)


def test_function_with_concurrency_stacked_on_with_options(cls_app) -> None:
    fn = cls_app.span.with_options(max_containers=1).with_concurrency(max_inputs=3)
    spans = [c.get(timeout=60) for c in [fn.spawn(1.0) for _ in range(3)]]
    assert len({cid for cid, _, _ in spans}) == 1 and overlapped(spans)


# -- lookups -----------------------------------------------------------------------------------------------------
def test_cls_from_name_resolves_a_running_app(cls_app) -> None:
    Remote = shoal.Cls.from_name("cls-app", "Params")  # noqa: N806 - a class
    got = Remote(n=55).values.remote()
    assert got["n"] == 55 and got["s"] == "s"
    assert got["container"] == cls_app.Params(n=55).values.remote()["container"]  # the app's own pool
    with pytest.raises(InvalidError, match="missing required"):
        Remote().values.remote()
    with pytest.raises(NotFoundError, match="no method"):
        Remote(n=1).nope.remote()


def test_cls_from_name_of_unknown_app_raises_not_found_on_use(cls_app) -> None:
    ref = shoal.Cls.from_name("no-such-app", "Model")  # lazy: no error yet
    with pytest.raises(NotFoundError, match="shoal deploy"):
        ref().predict.remote(1)


# -- exit hooks --------------------------------------------------------------------------------------------------
def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_exit_hooks_run_when_the_app_stops(control_plane, tmp_path: Path) -> None:
    import cls_lifecycle_app

    events = tmp_path / "events.txt"
    with cls_lifecycle_app.app.run(quiet=True):
        cid = cls_lifecycle_app.Recorder(path=str(events)).container.remote()
    assert wait_for(lambda: len(_lines(events)) >= 4, timeout=15), _lines(events)
    assert _lines(events) == [f"enter:{cid}", f"method:{cid}", f"exit1:{cid}", f"exit2:{cid}"]


def test_exit_hooks_run_on_sigterm(cls_app, tmp_path: Path) -> None:
    path = tmp_path / "exits.txt"
    cid = cls_app.Hooks(events_dir=str(path), label="term").terminate_soon.remote()
    assert wait_for(lambda: len(_lines(path)) >= 2, timeout=15), _lines(path)
    assert _lines(path) == [f"base_exit:{cid}", f"own_exit:term:{cid}"]
    assert wait_for(lambda: cid not in {c["container_id"] for c in containers()}), "the container did not exit"


def test_method_call_of_a_parameter_set_survives_control_plane_restart(
        private_control_plane: ControlPlane, tmp_path: Path) -> None:
    import cls_lifecycle_app

    path = str(tmp_path / "r.txt")
    with cls_lifecycle_app.app.run(quiet=True):
        call = cls_lifecycle_app.Recorder(path=path).slow.spawn("a", 1.5)
        time.sleep(0.8)  # running in a container now
        private_control_plane.kill()
        private_control_plane.start()
        assert shoal.FunctionCall.from_id(call.object_id).get(timeout=60) == f"a from {path}"
