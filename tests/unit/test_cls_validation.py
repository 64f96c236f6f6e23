"""Decoration-time and construction-time checks of classes, parameters and batching (no control plane)."""

from __future__ import annotations

import msgspec
import pytest

import shoal as modal
from shoal.exception import DeprecationError, InvalidError


# -- @modal.batched --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("size", "wait", "message"), [
    (0, 10, "max_batch_size must be a positive integer"),
    (1000, 10, "max_batch_size must be less than 1000"),
    (4, -1, "wait_ms must be a non-negative integer"),
    (4, 600_000, "wait_ms must be less than 600000"),
])
def test_batched_bounds(size: int, wait: int, message: str) -> None:
    with pytest.raises(InvalidError, match=message):
        modal.batched(max_batch_size=size, wait_ms=wait)


def test_batched_bounds_accept_the_extremes() -> None:
    modal.batched(max_batch_size=1, wait_ms=0)
    modal.batched(max_batch_size=999, wait_ms=599_999)


def test_batched_function_cannot_be_a_generator_or_take_defaults() -> None:
    app = modal.App()
    with pytest.raises(InvalidError, match="cannot return generators"):
        @app.function(serialized=True)
        @modal.batched(max_batch_size=2, wait_ms=1)
        def gen(xs):
            yield xs

    with pytest.raises(InvalidError, match="does not accept default arguments"):
        @app.function(serialized=True)
        @modal.batched(max_batch_size=2, wait_ms=1)
        def with_default(xs, ys=1):
            return xs


def test_batched_needs_parentheses_and_goes_under_app_function() -> None:
    app = modal.App()
    with pytest.raises(InvalidError, match="parentheses"):
        modal.batched(lambda xs: xs, max_batch_size=2, wait_ms=1)

    @app.function(serialized=True)
    def f(xs):
        return xs

    with pytest.raises(InvalidError, match="swap the order"):
        modal.batched(max_batch_size=2, wait_ms=1)(f)


def test_batched_and_concurrent_do_not_mix() -> None:
    app = modal.App()
    with pytest.raises(InvalidError, match="cannot be combined"):
        @app.function(serialized=True)
        @modal.concurrent(max_inputs=2)
        @modal.batched(max_batch_size=2, wait_ms=1)
        def f(xs):
            return xs


def test_batched_options_reach_the_definition() -> None:
    app = modal.App()

    @app.function(serialized=True)
    @modal.batched(max_batch_size=8, wait_ms=50)
    def f(xs):
        return xs

    options = msgspec.to_builtins(f._definition())["options"]
    assert (options["batch_max_size"], options["batch_wait_ms"]) == (8, 50)
    assert f.local([1, 2]) == [1, 2]  # .local() calls the body as written, with lists


def test_with_batching_and_with_concurrency_validate() -> None:
    app = modal.App()

    @app.function(serialized=True)
    def f(xs):
        return xs

    with pytest.raises(InvalidError, match="less than 1000"):
        f.with_batching(max_batch_size=1000, wait_ms=1)
    with pytest.raises(InvalidError, match="cannot also take concurrent inputs"):
        f.with_batching(max_batch_size=4, wait_ms=1).with_concurrency(max_inputs=2)
    with pytest.raises(InvalidError, match="cannot also use dynamic batching"):
        f.with_concurrency(max_inputs=2).with_batching(max_batch_size=4, wait_ms=1)
    with pytest.raises(InvalidError, match="target_inputs"):
        f.with_concurrency(max_inputs=2, target_inputs=3)


def test_with_options_validates_and_stacks() -> None:
    app = modal.App()

    @app.function(serialized=True, timeout=10)
    def f(x):
        return x

    with pytest.raises(TypeError):
        f.with_options(min_containers=1)
    with pytest.raises(InvalidError, match="timeout"):
        f.with_options(timeout=0)
    with pytest.raises(InvalidError, match="scaledown_window"):
        f.with_options(scaledown_window=1)
    v = f.with_options(timeout=20, env={"A": "1"}).with_options(max_containers=2, env={"B": "2"})
    assert v._variant_overrides["options"] == {"timeout": 20, "max_containers": 2}
    secrets = str(v._variant_overrides["secrets"])
    assert "B" in secrets and "A" not in secrets  # env/secrets are replaced, not merged
    assert v._variant_base is f and f._variant_overrides is None  # the original is unchanged
    assert v.local(3) == 3


# -- classes ---------------------------------------------------------------------------------------------------
def test_a_class_with_a_batched_method_cannot_have_other_methods() -> None:
    app = modal.App()
    with pytest.raises(InvalidError, match="cannot have other modal methods"):
        @app.cls(serialized=True)
        class C:
            @modal.batched(max_batch_size=2, wait_ms=1)
            def run(self, xs):
                return xs

            @modal.method()
            def other(self):
                return 1


def test_concurrent_goes_on_the_class_not_a_method() -> None:
    app = modal.App()
    with pytest.raises(InvalidError, match="apply it to the class"):
        @app.cls(serialized=True)
        class C:
            @modal.concurrent(max_inputs=2)
            @modal.method()
            def f(self):
                return 1

    @app.cls(serialized=True)
    @modal.concurrent(max_inputs=5, target_inputs=3)
    class D:
        @modal.method()
        def f(self):
            return 1

    options = msgspec.to_builtins(app._functions["D.*"]._definition())["options"]
    assert (options["max_inputs"], options["target_inputs"]) == (5, 3)


def test_interface_and_lifecycle_decorators_do_not_mix() -> None:
    with pytest.raises(InvalidError, match="cannot be combined with lifecycle"):
        class C:
            @modal.enter()
            @modal.method()
            def f(self):
                return 1


def test_class_decorators_are_not_for_functions() -> None:
    app = modal.App()
    with pytest.raises(InvalidError, match="methods of an @app.cls"):
        @app.function(serialized=True)
        @modal.method()
        def f():
            return 1
    with pytest.raises(InvalidError, match="Did you forget parentheses"):
        app.cls(type("X", (), {}))


def test_parameter_types_and_annotations() -> None:
    app = modal.App()
    with pytest.raises(InvalidError, match="Class parameter 'x'.*not a supported parameter type"):
        @app.cls(serialized=True)
        class A:
            x: float = modal.parameter()
    with pytest.raises(InvalidError, match="type-annotated"):
        @app.cls(serialized=True)
        class B:
            x = modal.parameter()
    with pytest.raises(InvalidError, match="must be of type int"):
        @app.cls(serialized=True)
        class C:
            x: int = modal.parameter(default="1")
    with pytest.raises(InvalidError, match="custom __init__"):
        @app.cls(serialized=True)
        class D:
            x: int = modal.parameter()

            def __init__(self):
                pass


def test_custom_nullary_init_is_deprecated_but_runs() -> None:
    app = modal.App()
    with pytest.warns(DeprecationError, match="non-default constructor"):
        @app.cls(serialized=True)
        class C:
            def __init__(self):
                self.ready = True

            @modal.method()
            def f(self):
                return self.ready

    assert C().f.local() is True
    with pytest.raises(InvalidError, match="takes arguments"):
        @app.cls(serialized=True)
        class D:
            def __init__(self, x):
                self.x = x


def test_construction_binds_checks_and_applies_defaults() -> None:
    app = modal.App()

    class Base:
        a: int = modal.parameter(default=1)

    @app.cls(serialized=True)
    class C(Base):
        s: str = modal.parameter()
        b: bytes = modal.parameter(default=b"")
        flag: bool = modal.parameter(default=False)
        later: str = modal.parameter(init=False)

        @modal.method()
        def values(self):
            return (self.a, self.s, self.b, self.flag)

    with pytest.raises(InvalidError, match=r"missing required parameter\(s\): s"):
        C()
    with pytest.raises(InvalidError, match="unexpected parameter 'later'"):
        C(s="x", later="y")  # init=False is not a parameter
    with pytest.raises(InvalidError, match="must be of type int"):
        C(s="x", a=True)  # a bool is not an int here
    with pytest.raises(InvalidError, match="64-bit"):
        C(s="x", a=2**64)
    with pytest.raises(InvalidError, match="multiple values"):
        C(2, a=3, s="x")
    assert C(s="x")._values == {"a": 1, "b": b"", "flag": False, "s": "x"}
    assert C(5, "y").values.local() == (5, "y", b"", False)  # positional: declaration order, base first
    with pytest.raises(AttributeError, match="instantiate the class first"):
        C.values.remote()
    assert app.registered_classes == {"C": C}
    assert "C.*" in app.registered_functions


def test_local_runs_enter_hooks_once_in_order_sync_and_async() -> None:
    app = modal.App()
    calls: list[str] = []

    @app.cls(serialized=True)
    class C:
        @modal.enter()
        async def second(self):
            calls.append("async-enter")

        @modal.enter(snap=True)
        def first(self):
            calls.append("snap-enter")

        @modal.method()
        def f(self, x):
            calls.append(f"f{x}")
            return x

        @modal.method()
        def g(self):
            return "g"

    obj = C()
    assert obj.f.local(1) == 1 and obj.f.local(2) == 2 and obj.g.local() == "g"
    assert calls == ["snap-enter", "async-enter", "f1", "f2"]
    C().f.local(3)  # another object: its own instance, its own enter
    assert calls[-3:] == ["snap-enter", "async-enter", "f3"]


def test_cls_with_options_stacks_and_keeps_the_original() -> None:
    app = modal.App()

    @app.cls(serialized=True)
    class C:
        @modal.method()
        def f(self):
            return 1

    v = C.with_options(timeout=5).with_options(buffer_containers=1).with_concurrency(max_inputs=4)
    assert v._overrides["options"] == {"timeout": 5, "buffer_containers": 1, "max_inputs": 4, "target_inputs": None}
    assert C._overrides == {}
    with pytest.raises(TypeError):
        C.with_options(min_containers=1)
    with pytest.raises(DeprecationError):
        C.with_options(concurrency_limit=3)
    with pytest.raises(InvalidError, match="cannot also use dynamic batching"):
        v.with_batching(max_batch_size=2, wait_ms=1)
    with pytest.raises(InvalidError, match="apply to the whole class"):
        C().f.with_options(timeout=3)


def test_cls_from_name_is_lazy() -> None:
    ref = modal.Cls.from_name("some-app", "Model")
    assert repr(ref) == "Cls(Model)"
    assert repr(modal.Cls.from_name("some-app", "Model", version=2)) == "Cls(Model)"  # checked on use
    with pytest.raises(InvalidError, match="positive integer"):
        modal.Cls.from_name("some-app", "Model", version=0)
