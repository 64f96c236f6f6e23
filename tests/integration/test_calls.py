"""Calling conventions against a real control plane and real containers: remote, local, async, map family,
spawn and FunctionCall, generators, exceptions, serialization errors, retries, timeouts and container context."""

from __future__ import annotations

import asyncio
import itertools
import os
import textwrap
import threading
import time

import calls_app
import pytest
from calls_app import (
    CustomError,
    add,
    app,
    async_count,
    async_hello,
    count_to,
    echo_args,
    fail_on,
    flaky,
    flaky_int_retries,
    flaky_no_retries,
    flaky_odd,
    gen_then_fail,
    hello,
    raise_custom,
    return_lock,
    shout,
    sleep_then,
    sleep_then_ordered,
    square,
    too_slow,
    too_slow_retried,
    touch,
    wait_for_peers,
    where,
)

import shoal as modal
from shoal.exception import (
    ExecutionError,
    FunctionTimeoutError,
    InputCancellation,
    InvalidError,
    SerializationError,
)
from shoal.exception import TimeoutError as ShoalTimeoutError
from tests.conftest import ControlPlane, run_script


@pytest.fixture(scope="module", autouse=True)
def running(control_plane):
    with app.run():
        yield app


def wait_until(predicate, timeout: float = 30.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


# -- .remote / .local / async --------------------------------------------------------------------------------


def test_remote_with_args_and_kwargs():
    assert hello.remote("World") == "Hello, World!"
    assert add.remote(1, 2) == 3
    assert add.remote(1, b=2, c=3) == 6
    assert echo_args.remote(1, "two", x=[3], y={"z": 4}) == ((1, "two"), {"x": [3], "y": {"z": 4}})


def test_local_runs_in_this_process():
    assert hello.local("Local") == "Hello, Local!"
    info = where.local()
    assert info["is_local"] is True
    assert info["pid"] == os.getpid()
    assert info["input_id"] is None and info["call_id"] is None


def test_calling_function_directly_is_refused():
    with pytest.raises(InvalidError):
        hello("x")


def test_async_function_via_blocking_remote():
    assert async_hello.remote("Async") == "Hello, Async!"


def test_async_function_via_remote_aio():
    async def main():
        return await async_hello.remote.aio("Aio")

    assert asyncio.run(main()) == "Hello, Aio!"


def test_sync_function_via_remote_aio():
    async def main():
        return await asyncio.gather(square.remote.aio(3), add.remote.aio(1, 2, c=3))

    assert asyncio.run(main()) == [9, 6]


# -- .map and friends ----------------------------------------------------------------------------------------


def test_map_single_iterable():
    assert list(square.map(range(6))) == [0, 1, 4, 9, 16, 25]


def test_map_several_iterables_and_kwargs():
    assert list(add.map([1, 2, 3], [10, 20, 30])) == [11, 22, 33]
    assert list(add.map([1, 2, 3], [10, 20, 30], kwargs={"c": 100})) == [111, 122, 133]


def test_map_stops_at_shortest_iterable():
    assert list(add.map([1, 2, 3], [10, 20])) == [11, 22]


def test_map_empty_input_returns_empty():
    assert list(square.map([])) == []
    assert list(square.map(iter(()))) == []


def test_map_lazy_generator_input():
    pulled = []

    def numbers():
        for i in range(5):
            pulled.append(i)
            yield i

    assert list(square.map(numbers())) == [0, 1, 4, 9, 16]
    assert pulled == [0, 1, 2, 3, 4]
    # An infinite iterable zipped with a finite one only works if inputs are read lazily.
    assert list(add.map(range(3), itertools.count(100))) == [100, 102, 104]


def test_map_preserves_input_order_when_inputs_finish_out_of_order():
    sleeps = [1.2, 0.8, 0.4, 0.0]
    assert list(sleep_then_ordered.map(sleeps)) == sleeps


def test_map_preserves_order_when_first_input_finishes_last(tmp_path):
    # Input 0 waits for the others, so it completes last; order_outputs=True still yields it first.
    ordered_dir = tmp_path / "ordered"
    ordered_dir.mkdir()
    assert list(wait_for_peers.map(itertools.repeat(str(ordered_dir)), [0, 1, 2])) == [0, 1, 2]


def test_map_unordered_yields_completed_inputs_first(tmp_path):
    d = tmp_path / "unordered"
    d.mkdir()
    out = list(wait_for_peers.map(itertools.repeat(str(d)), [0, 1, 2], order_outputs=False))
    assert sorted(out) == [0, 1, 2]
    assert out[-1] == 0, f"input 0 finished last but was yielded at position {out.index(0)}: {out}"


def test_map_more_inputs_than_the_in_flight_window():
    n = 2500  # more than one request batch and more than the 1000 inputs a map keeps in flight
    assert list(square.map(range(n))) == [x * x for x in range(n)]


def test_map_unordered_with_return_exceptions():
    out = list(fail_on.map(range(6), order_outputs=False, return_exceptions=True))
    values = sorted(v for v in out if not isinstance(v, BaseException))
    errors = sorted(str(v) for v in out if isinstance(v, BaseException))
    assert values == [1, 2, 4, 5]
    assert errors == ["bad input 0", "bad input 3"]
    assert all(type(v) is ValueError for v in out if isinstance(v, BaseException))


def test_map_return_exceptions_returns_them_in_place():
    out = list(fail_on.map(range(7), return_exceptions=True))
    assert len(out) == 7
    for i, value in enumerate(out):
        if i % 3 == 0:
            assert type(value) is ValueError, value
            assert str(value) == f"bad input {i}"
        else:
            assert value == i


def test_map_raises_first_exception_without_return_exceptions():
    with pytest.raises(ValueError, match=r"bad input \d+"):
        list(fail_on.map([1, 2, 3, 4]))
    results = []
    with pytest.raises(ValueError, match="bad input 3"):
        for r in fail_on.map([1, 2, 3, 4, 5]):
            results.append(r)
    assert results == [1, 2][: len(results)]


def test_starmap():
    assert list(add.starmap([(1, 2), (3, 4), (5, 6, 7)])) == [3, 7, 18]
    assert list(add.starmap([(1, 2), (3, 4)], kwargs={"c": 10})) == [13, 17]
    assert list(add.starmap([])) == []


def test_for_each(tmp_path):
    assert touch.for_each(itertools.repeat(str(tmp_path)), range(4)) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"touched-{i}" for i in range(4)]


def test_for_each_exceptions():
    with pytest.raises(ValueError, match="bad input"):
        fail_on.for_each([1, 2, 3])
    assert fail_on.for_each([1, 2, 3, 6], ignore_exceptions=True) is None


def test_map_on_generator_function_raises_invalid_error():
    with pytest.raises(InvalidError):
        list(count_to.map([1, 2]))


def test_blocking_map_inside_event_loop_raises_invalid_error():
    async def main():
        square.map([1, 2, 3])

    with pytest.raises(InvalidError, match=r"\.map\.aio"):
        asyncio.run(main())


def test_async_for_over_map_aio():
    async def main():
        out = []
        async for r in square.map.aio([1, 2, 3, 4]):
            out.append(r)
        return out

    assert asyncio.run(main()) == [1, 4, 9, 16]


def test_async_for_over_map_aio_with_async_iterable_input():
    async def numbers():
        for i in range(4):
            yield i

    async def main():
        return [r async for r in square.map.aio(numbers())]

    assert asyncio.run(main()) == [0, 1, 4, 9]


# -- spawn and FunctionCall -----------------------------------------------------------------------------------


def test_spawn_then_get():
    call = add.spawn(2, 3, c=4)
    assert isinstance(call, modal.FunctionCall)
    assert call.object_id.startswith("fc-")
    assert call.get() == 9
    assert call.get(timeout=0) == 9  # a finished call answers a poll at once
    assert call.num_inputs() == 1


def test_get_timeout_zero_on_running_call_raises_builtin_timeout_error():
    call = sleep_then.spawn(20)
    try:
        with pytest.raises(TimeoutError) as info:
            call.get(timeout=0)
        assert not isinstance(info.value, ShoalTimeoutError)
        with pytest.raises(TimeoutError):
            call.get(timeout=0.2)
    finally:
        call.cancel()


def test_function_call_from_id_in_another_process(tmp_path):
    call = hello.spawn("Elsewhere")
    script = tmp_path / "get_call.py"
    script.write_text(textwrap.dedent("""
        import sys

        import shoal as modal

        fc = modal.FunctionCall.from_id(sys.argv[1])
        print("RESULT:", fc.get(timeout=60))
        print("NUM_INPUTS:", fc.num_inputs())
    """))
    proc = run_script(script, call.object_id, timeout=90)
    assert proc.returncode == 0, proc.stderr
    assert "RESULT: Hello, Elsewhere!" in proc.stdout.splitlines()
    assert "NUM_INPUTS: 1" in proc.stdout.splitlines()


def test_function_call_from_id_rejects_bad_id():
    with pytest.raises(InvalidError):
        modal.FunctionCall.from_id("not-a-call-id")


def test_function_call_from_id_same_process():
    call = square.spawn(12)
    assert modal.FunctionCall.from_id(call.object_id).get(timeout=60) == 144


def test_gather():
    calls = [square.spawn(i) for i in range(4)]
    assert modal.FunctionCall.gather(*calls) == [0, 1, 4, 9]


def test_gather_raises_first_failure():
    calls = [fail_on.spawn(1), fail_on.spawn(3), fail_on.spawn(2)]
    with pytest.raises(ValueError, match="bad input 3"):
        modal.FunctionCall.gather(*calls)


def test_cancel_makes_get_raise_input_cancellation():
    call = sleep_then.spawn(30)
    call.cancel()
    with pytest.raises(InputCancellation):
        call.get(timeout=30)


def test_spawn_map_runs_every_input(tmp_path):
    assert touch.spawn_map(itertools.repeat(str(tmp_path)), range(5)) is None
    expected = {f"touched-{i}" for i in range(5)}
    assert wait_until(lambda: {p.name for p in tmp_path.iterdir()} == expected), list(tmp_path.iterdir())


# -- generators ------------------------------------------------------------------------------------------------


def test_remote_gen_streams_items():
    assert list(count_to.remote_gen(10)) == list(range(10))
    assert list(count_to.remote_gen(0)) == []


def test_remote_gen_exception_arrives_after_items():
    got = []
    with pytest.raises(CustomError, match="gave 3 items then failed"):
        for item in gen_then_fail.remote_gen(3):
            got.append(item)
    assert got == [0, 1, 2]


def test_remote_gen_aio():
    async def main():
        return [i async for i in count_to.remote_gen.aio(4)]

    assert asyncio.run(main()) == [0, 1, 2, 3]


def test_async_generator_remote_gen():
    assert list(async_count.remote_gen(5)) == [0, 1, 2, 3, 4]


def test_remote_gen_early_break_leaves_function_usable():
    for item in count_to.remote_gen(10_000):
        if item == 2:
            break
    assert list(count_to.remote_gen(3)) == [0, 1, 2]


def test_generator_local_returns_generator():
    assert list(count_to.local(4)) == [0, 1, 2, 3]


def test_remote_on_generator_raises_invalid_error():
    with pytest.raises(InvalidError):
        count_to.remote(3)


def test_spawn_on_generator_raises_invalid_error():
    with pytest.raises(InvalidError):
        count_to.spawn(3)


def test_remote_gen_on_plain_function_raises_invalid_error():
    with pytest.raises(InvalidError):
        list(square.remote_gen(3))


# -- exceptions and serialization ---------------------------------------------------------------------------


def test_remote_exception_keeps_class_message_and_traceback(control_plane):
    with pytest.raises(CustomError) as info:
        raise_custom.remote("something specific went wrong")
    exc = info.value
    assert type(exc) is CustomError
    assert str(exc) == "something specific went wrong"
    frames = []
    tb = exc.__traceback__
    while tb is not None:
        frames.append((tb.tb_frame.f_code.co_filename, tb.tb_frame.f_code.co_name))
        tb = tb.tb_next
    sources = str(control_plane.home / "sources")
    # A sandboxed container sees its source at /root (as Modal's do); an unsandboxed one, in the state dir.
    remote_frames = [(f, n) for f, n in frames if f.startswith((sources, "/root/"))]
    assert remote_frames, f"no frame from the container-side source under {sources}: {frames}"
    assert ("raise_custom" in {n for _, n in remote_frames}), remote_frames
    assert any(f.endswith("calls_app.py") for f, _ in remote_frames)


def test_remote_builtin_exception_class():
    with pytest.raises(ValueError, match="bad input 3"):
        fail_on.remote(3)


def test_large_argument_and_result_round_trip():
    blob = os.urandom(8 * 1024 * 1024)
    args, kwargs = echo_args.remote(blob, key=blob[:10])
    assert args == (blob,) and kwargs == {"key": blob[:10]}


def test_calling_a_function_of_an_app_that_is_not_running():
    other = modal.App("not-running")

    @other.function(serialized=True)
    def lonely() -> int:
        return 1

    with pytest.raises(ExecutionError, match="not been hydrated|not running"):
        lonely.remote()
    assert lonely.local() == 1


def test_unpicklable_argument_raises_serialization_error_naming_it():
    with pytest.raises(SerializationError, match="argument 1"):
        echo_args.remote(1, threading.Lock())
    with pytest.raises(SerializationError, match="lock_kw"):
        echo_args.remote(1, lock_kw=threading.Lock())


def test_unpicklable_return_value_raises_serialization_error():
    with pytest.raises(SerializationError, match="return value"):
        return_lock.remote()


# -- retries -------------------------------------------------------------------------------------------------


def test_retries_succeed_when_failures_fit_the_budget(tmp_path):
    path = tmp_path / "attempts"
    assert flaky.remote(str(path), 3) == 4
    assert path.read_text() == "4"


def test_retries_exhausted_raise_the_last_error(tmp_path):
    path = tmp_path / "attempts"
    with pytest.raises(CustomError, match="attempt 4 failed"):
        flaky.remote(str(path), 4)
    assert path.read_text() == "4"  # 1 attempt + 3 retries, no more


def test_int_retries(tmp_path):
    path = tmp_path / "attempts"
    assert flaky_int_retries.remote(str(path), 1) == 2
    path2 = tmp_path / "attempts2"
    with pytest.raises(CustomError, match="attempt 2 failed"):
        flaky_int_retries.remote(str(path2), 2)
    assert path2.read_text() == "2"


def test_no_retries_by_default(tmp_path):
    path = tmp_path / "attempts"
    with pytest.raises(CustomError, match="attempt 1 failed"):
        flaky_no_retries.remote(str(path), 1)
    assert path.read_text() == "1"


def test_map_retries_each_failing_input_independently(tmp_path):
    inputs = list(range(6))
    assert list(flaky_odd.map(itertools.repeat(str(tmp_path)), inputs)) == [x * 10 for x in inputs]
    attempts = {x: int((tmp_path / f"attempts-{x}").read_text()) for x in inputs}
    assert attempts == {x: (2 if x % 2 else 1) for x in inputs}


# -- timeouts ------------------------------------------------------------------------------------------------


def test_timeout_raises_function_timeout_error():
    with pytest.raises(FunctionTimeoutError):
        too_slow.remote(30)
    assert issubclass(FunctionTimeoutError, ShoalTimeoutError)
    # The pool recovers: a fast input still works after the container was killed.
    assert too_slow.remote(0) == 0


def test_timeouts_are_retried(tmp_path):
    path = tmp_path / "attempts"
    with pytest.raises(FunctionTimeoutError):
        too_slow_retried.remote(str(path))
    assert path.read_text() == "2"  # the first attempt and one retry both timed out


# -- container context and output ----------------------------------------------------------------------------


def test_is_local_and_current_ids():
    assert modal.is_local() is True
    assert modal.current_input_id() is None
    assert modal.current_function_call_id() is None
    info = where.remote()
    assert info["is_local"] is False
    assert info["pid"] != os.getpid()
    assert isinstance(info["input_id"], str) and info["input_id"]
    assert isinstance(info["call_id"], str) and info["call_id"].startswith("fc-")


def test_current_ids_differ_per_input_and_match_spawned_call():
    call = where.spawn()
    info = call.get(timeout=60)
    assert info["call_id"] == call.object_id
    infos = list(where.starmap([(), ()]))
    assert len({i["input_id"] for i in infos}) == 2
    assert len({i["call_id"] for i in infos}) == 1


def test_print_in_container_reaches_caller_stdout(capfd):
    marker = f"marker-{os.getpid()}-{time.monotonic_ns()}"
    assert shout.remote(marker) == marker
    seen = []

    def arrived() -> bool:
        seen.append(capfd.readouterr().out)
        return f"printed-by-container {marker}" in "".join(seen)

    assert wait_until(arrived, timeout=15), "".join(seen)


def test_module_functions_are_hydrated():
    assert all(f.object_id and f.object_id.startswith("fu-") for f in app.registered_functions.values())
    assert "hello" in app.registered_functions
    assert calls_app.hello is hello



# -- capacity ------------------------------------------------------------------------------------------------

STARVE_SCRIPT = """
import shoal as modal

app = modal.App("starve")


@app.function()
def f1():
    return 1


@app.function()
def f2():
    return 2


@app.function()
def f3():
    return 3


if __name__ == "__main__":
    with app.run():
        print("F1", f1.remote(), flush=True)
        print("F2", f2.remote(), flush=True)
        # f1's and f2's containers now sit idle (default 60 s window) and fill the machine (2 containers).
        try:
            print("F3", f3.spawn().get(timeout=30), flush=True)
        except TimeoutError:
            print("F3 STARVED", flush=True)
"""


def test_idle_containers_of_other_pools_do_not_starve_a_new_pool(tmp_path, monkeypatch):
    """With the machine full of idle containers of other functions, a call to a function with no container
    must still run (by stopping an idle container, or at the latest once one scales down)."""
    monkeypatch.setenv("SHOAL_LOCAL_MAX_CONTAINERS", "2")
    cp = ControlPlane(tmp_path / "home").start()
    monkeypatch.delenv("SHOAL_LOCAL_MAX_CONTAINERS")
    try:
        script = tmp_path / "starve_app.py"
        script.write_text(STARVE_SCRIPT)
        proc = run_script(script, env={"SHOAL_HOME": str(cp.home)}, timeout=90)
    finally:
        cp.stop()
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0, proc.stderr
    assert "F1 1" in lines and "F2 2" in lines, proc.stdout
    assert "F3 3" in lines, f"f3 never got a container: {proc.stdout}"
