"""Dynamic batching in real containers: callers pass single items, the function gets lists."""

from __future__ import annotations

import time

import pytest

from shoal.exception import InvalidError


@pytest.fixture(scope="module")
def batch_app(control_plane):
    import batch_app

    with batch_app.app.run(quiet=True):
        yield batch_app


def test_map_runs_in_batches_of_at_most_max_batch_size(batch_app) -> None:
    results = list(batch_app.sizes.map(range(10)))
    assert [doubled for doubled, _ in results] == [2 * x for x in range(10)]  # each caller got its own item
    sizes = [size for _, size in results]
    assert all(1 <= s <= 4 for s in sizes), sizes
    assert max(sizes) == 4, sizes  # full batches ran without waiting
    # Each batch of size s accounts for exactly s results.
    assert all(sizes.count(s) % s == 0 for s in set(sizes)), sizes


def test_a_lone_input_runs_after_wait_ms(batch_app) -> None:
    batch_app.sizes.remote(0)  # warm
    start = time.monotonic()
    assert batch_app.sizes.remote(5) == (10, 1)
    assert time.monotonic() - start >= 0.25  # wait_ms=300 after the first input


def test_lists_per_parameter_positional_and_keyword_async(batch_app) -> None:
    assert batch_app.add.remote(1, 2) == 3
    assert batch_app.add.remote(xs=1, ys=5) == 6
    assert list(batch_app.add.map([1, 2, 3, 4], [10, 20, 30, 40])) == [11, 22, 33, 44]


def test_output_length_mismatch_fails_every_input(batch_app) -> None:
    results = list(batch_app.wrong_length.map(range(3), return_exceptions=True))
    assert len(results) == 3
    for r in results:
        assert isinstance(r, InvalidError)
        assert "equal length" in str(r)


def test_an_exception_fails_every_input_of_the_batch(batch_app) -> None:
    results = list(batch_app.fails.map(range(3), return_exceptions=True))
    assert all(isinstance(r, RuntimeError) and "failed" in str(r) for r in results), results


def test_batched_method_of_a_class(batch_app) -> None:
    results = list(batch_app.Batcher(offset=100).run.map(range(7)))
    assert [r[0] for r in results] == [100 + x for x in range(7)]
    assert all(r[1] <= 5 for r in results) and max(r[1] for r in results) == 5
    assert len({r[2] for r in results}) == 1


def test_with_batching_turns_a_function_into_a_batched_one(batch_app) -> None:
    batched = batch_app.plain.with_batching(max_batch_size=3, wait_ms=200)
    sizes = list(batched.map(range(7)))
    assert all(1 <= s <= 3 for s in sizes) and max(sizes) == 3, sizes
    assert batch_app.plain.remote([1, 2]) == [2, 2]  # the original is not batched


def test_cls_with_batching_overrides_the_batch_size(batch_app) -> None:
    smaller = batch_app.Batcher.with_batching(max_batch_size=2, wait_ms=100)(offset=1)
    results = list(smaller.run.map(range(5)))
    assert [r[0] for r in results] == [1, 2, 3, 4, 5]
    assert all(r[1] <= 2 for r in results), results
