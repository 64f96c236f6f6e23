"""The SDK's one sync/async rule: every I/O method is written once, and its blocking form `obj.m(...)` and its async
form `await obj.m.aio(...)` (`for x in obj.m(...)` / `async for x in obj.m.aio(...)` for streams) are both
generated from that one implementation by the decorator that says its shape:

- `@rpc` — a *Plan*: a generator that yields requests `(method, path, body)`, receives each response (or has the
  request's exception thrown in at the `yield`), and returns the result. Blocking, `run_plan` sends the requests
  on this thread's keep-alive http.client connection (about 0.2 ms a round trip, no thread hop); `.aio`,
  `arun_plan` sends them with aiohttp. Request/response operations, and the hot paths (`.remote`, `.spawn`,
  `FunctionCall.get`), are Plans.
- `@rpc_iter` — a Plan that also yields `Emit(items)` (a page of a listing): blocking it is an iterator, `.aio` an
  async iterator (`iter_plan` / `aiter_plan`).
- `@on_loop` — an async implementation (`async def`, an async generator, or a function returning either), for work
  that needs concurrency (map's feeder beside its poller, gather). `.aio` is the implementation; blocking runs it
  on shoal's background loop thread (`loop.run_sync` / `loop.iter_sync`, about +0.14 ms a call).
- `@in_thread` — a blocking implementation, for bodies streamed over a connection of its own (volume files);
  `.aio` runs it in a worker thread.

Options: `deprecated="message"` (any decorator) warns with DeprecationWarning at the caller's line, whichever form
is called; `refuse_in_loop=True` (`@on_loop`) makes the blocking form raise InvalidError inside a running event loop,
pointing at `.name.aio` (a blocking `.map` there would stall the caller's loop).

The result, a `Method`, binds like a function: `obj.m` gives both forms for `obj`; under `@staticmethod` the class
gives them (`FunctionCall.gather(...)`, `FunctionCall.gather.aio(...)`); `@on_class` over a shape binds the class
as `@classmethod` does (`App.lookup(...)`, `App.lookup.aio(...)`). In an `@on_loop` implementation,
`warnings.warn(..., stacklevel=4)` names the caller's line in either form.
"""

from __future__ import annotations

import functools
import inspect
import warnings
from collections.abc import AsyncIterator, Callable, Generator, Iterable, Iterator
from typing import Any

from ..exception import InvalidError
from .loop import in_running_loop, iter_sync, run_sync
from .transport import Client, get_client

Request = tuple[str, str, dict[str, Any] | None]
Plan = Generator[Request, dict[str, Any], Any]

__all__ = ["BoundMethod", "ClassMethod", "Emit", "Method", "Plan", "Request", "aiter_plan", "arun_plan", "in_thread",
           "iter_plan", "on_class", "on_loop", "rpc", "rpc_iter", "run_plan"]


class Emit:
    """Yielded by an `@rpc_iter` plan: items handed to the caller's iteration (a page at a time)."""

    __slots__ = ("items",)

    def __init__(self, items: Iterable[Any]) -> None:
        self.items = items


# -- drivers ---------------------------------------------------------------------------------------------------------
def run_plan(plan: Plan) -> Any:
    """Run a plan on this thread with the blocking transport; returns its result."""
    try:
        request = next(plan)
        client = get_client()  # only once a request is due: getting it may start a control plane
        while True:
            try:
                response = client.call(*request)
            except Exception as exc:  # noqa: BLE001 - the plan may handle it (e.g. NotFound → default)
                request = plan.throw(exc)
            else:
                request = plan.send(response)
    except StopIteration as done:
        return done.value


async def arun_plan(plan: Plan) -> Any:
    """Run a plan with the async transport; returns its result."""
    try:
        request = next(plan)
        client = get_client()
        while True:
            try:
                response = await client.acall(*request)
            except Exception as exc:  # noqa: BLE001 - the plan may handle it
                request = plan.throw(exc)
            else:
                request = plan.send(response)
    except StopIteration as done:
        return done.value


def iter_plan(plan: Generator[Any, Any, Any]) -> Iterator[Any]:
    """Run an `@rpc_iter` plan with the blocking transport, yielding what it emits; requests are sent as the caller
    iterates."""
    client: Client | None = None
    try:
        request = next(plan)
        while True:
            if isinstance(request, Emit):
                yield from request.items
                request = next(plan)
                continue
            client = client or get_client()  # only once a request is due
            try:
                response = client.call(*request)
            except Exception as exc:  # noqa: BLE001 - the plan may handle it
                request = plan.throw(exc)
            else:
                request = plan.send(response)
    except StopIteration:
        return
    finally:
        plan.close()


async def aiter_plan(plan: Generator[Any, Any, Any]) -> AsyncIterator[Any]:
    """`iter_plan` with the async transport."""
    client: Client | None = None
    try:
        request = next(plan)
        while True:
            if isinstance(request, Emit):
                for item in request.items:
                    yield item
                request = next(plan)
                continue
            client = client or get_client()
            try:
                response = await client.acall(*request)
            except Exception as exc:  # noqa: BLE001 - the plan may handle it
                request = plan.throw(exc)
            else:
                request = plan.send(response)
    except StopIteration:
        return
    finally:
        plan.close()


# -- the method descriptor -------------------------------------------------------------------------------------------
class Method:
    """An I/O method with its two forms: calling it blocks, `.aio(...)` is the awaitable (or async iterator)."""

    def __init__(self, impl: Callable, blocking: Callable, non_blocking: Callable) -> None:
        self._blocking = blocking
        self._aio = non_blocking
        functools.update_wrapper(self, impl)  # type: ignore[arg-type]

    def __get__(self, obj: Any, objtype: Any = None) -> Any:
        return self if obj is None else BoundMethod(self, obj)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._blocking(*args, **kwargs)

    def aio(self, *args: Any, **kwargs: Any) -> Any:
        return self._aio(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<shoal method {self.__qualname__}>"


class ClassMethod(Method):
    """A Method bound to the class it is looked up on: `App.lookup(...)`, `App.lookup.aio(...)`."""

    def __get__(self, obj: Any, objtype: Any = None) -> Any:
        return BoundMethod(self, objtype if objtype is not None else type(obj))


def on_class(method: Method) -> ClassMethod:
    """`@on_class` over `@rpc` (or another of the shapes): the method's first argument is the class, as with
    `@classmethod`."""
    return ClassMethod(method.__wrapped__, method._blocking, method._aio)


class BoundMethod:
    """`obj.m`: the method's two forms for `obj`."""

    __slots__ = ("_method", "_obj")

    def __init__(self, method: Method, obj: Any) -> None:
        self._method = method
        self._obj = obj

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._method._blocking(self._obj, *args, **kwargs)

    def aio(self, *args: Any, **kwargs: Any) -> Any:
        return self._method._aio(self._obj, *args, **kwargs)

    def __repr__(self) -> str:
        return f"<shoal method {self._method.__qualname__} of {self._obj!r}>"


def _warning(form: Callable, message: str) -> Callable:
    def warn_then_call(*args: Any, **kwargs: Any) -> Any:
        warnings.warn(message, DeprecationWarning, stacklevel=3)  # the caller's line: ← BoundMethod ← caller
        return form(*args, **kwargs)

    return warn_then_call


def _decorator(make: Callable[[Callable], tuple[Callable, Callable]], impl: Callable | None,
               deprecated: str | None) -> Any:
    def wrap(fn: Callable) -> Method:
        blocking, non_blocking = make(fn)
        if deprecated is not None:
            blocking, non_blocking = _warning(blocking, deprecated), _warning(non_blocking, deprecated)
        return Method(fn, blocking, non_blocking)

    return wrap if impl is None else wrap(impl)


# -- the four shapes -------------------------------------------------------------------------------------------------
def _plan_forms(plan_fn: Callable[..., Plan]) -> tuple[Callable, Callable]:
    def blocking(*args: Any, **kwargs: Any) -> Any:
        return run_plan(plan_fn(*args, **kwargs))

    def non_blocking(*args: Any, **kwargs: Any) -> Any:
        return arun_plan(plan_fn(*args, **kwargs))

    return blocking, non_blocking


def _plan_iter_forms(plan_fn: Callable[..., Generator[Any, Any, Any]]) -> tuple[Callable, Callable]:
    def blocking(*args: Any, **kwargs: Any) -> Iterator[Any]:
        return iter_plan(plan_fn(*args, **kwargs))

    def non_blocking(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        return aiter_plan(plan_fn(*args, **kwargs))

    return blocking, non_blocking


def _loop_forms(impl: Callable, refuse_in_loop: bool) -> tuple[Callable, Callable]:
    name = impl.__name__.lstrip("_")

    def blocking(*args: Any, **kwargs: Any) -> Any:
        if refuse_in_loop and in_running_loop():
            raise InvalidError(
                f"A blocking `.{name}()` cannot run inside an event loop; use `.{name}.aio(...)` "
                f"(e.g. `async for x in f.{name}.aio(...)`) from async code.")
        result = impl(*args, **kwargs)
        return iter_sync(result) if hasattr(result, "__anext__") else run_sync(result)

    def non_blocking(*args: Any, **kwargs: Any) -> Any:
        return impl(*args, **kwargs)  # one frame, as in the blocking form: warnings' stacklevel is the same

    return blocking, non_blocking


_END = object()


def _thread_forms(impl: Callable) -> tuple[Callable, Callable]:
    # asyncio is imported when `.aio` runs, not here: a container's runtime imports the SDK (≈ 12 ms for asyncio).
    if inspect.isgeneratorfunction(impl):
        async def non_blocking_iter(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
            import asyncio

            items = impl(*args, **kwargs)
            while (item := await asyncio.to_thread(next, items, _END)) is not _END:
                yield item

        return impl, non_blocking_iter

    def non_blocking(*args: Any, **kwargs: Any) -> Any:
        import asyncio

        return asyncio.to_thread(impl, *args, **kwargs)

    return impl, non_blocking


def rpc(impl: Callable[..., Plan] | None = None, *, deprecated: str | None = None) -> Any:
    """A Plan → a method whose blocking form runs it with `run_plan` and whose `.aio` runs it with `arun_plan`."""
    return _decorator(_plan_forms, impl, deprecated)


def rpc_iter(impl: Callable[..., Generator[Any, Any, Any]] | None = None, *, deprecated: str | None = None) -> Any:
    """A Plan that yields `Emit(items)` → a method returning an iterator, or with `.aio` an async iterator."""
    return _decorator(_plan_iter_forms, impl, deprecated)


def on_loop(impl: Callable | None = None, *, deprecated: str | None = None, refuse_in_loop: bool = False) -> Any:
    """An async implementation → a method whose `.aio` is it and whose blocking form runs it on the background
    loop thread; with `refuse_in_loop`, the blocking form raises InvalidError inside a running event loop."""
    return _decorator(functools.partial(_loop_forms, refuse_in_loop=refuse_in_loop), impl, deprecated)


def in_thread(impl: Callable | None = None, *, deprecated: str | None = None) -> Any:
    """A blocking implementation → a method whose `.aio` runs it in a worker thread (item by item for a
    generator)."""
    return _decorator(_thread_forms, impl, deprecated)
