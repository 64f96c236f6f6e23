"""`Function` and `FunctionCall`: what a decorated function becomes, and a handle on a running call."""

from __future__ import annotations

import inspect
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Callable, Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from . import _serialization as ser
from ._client.aio import Plan, arun_plan, on_loop, rpc, run_plan
from ._client.transport import Client, get_client
from ._container_context import current_input_id
from ._options import FunctionOptions
from ._output import map_progress
from ._spec.definitions import ClsInfo, FunctionDefinition, WebhookConfig
from ._spec.limits import MAX_WAIT_S
from .exception import (
    ExecutionError,
    FunctionTimeoutError,
    InputCancellation,
    InvalidError,
)

if TYPE_CHECKING:
    from .app import App

POLL_S = MAX_WAIT_S  # longest a single server-side wait lasts; longer waits are several requests
MAP_WINDOW = 1000  # inputs in flight per map, as Modal's per-map concurrency limit
MAP_BATCH = 500  # inputs per request
MAP_BATCH_WAIT_S = 0.002


def new_call_id() -> str:
    return f"fc-{uuid.uuid4().hex[:20]}"


def _decode_output(status: str, data: bytes | None) -> Any:
    """A successful value, or raise the remote exception with its remote traceback."""
    if status == "success":
        return ser.loads(data, "return value") if data is not None else None
    if data is None:
        raise ExecutionError(f"call ended with status {status!r}")
    exc = ser.loads_exception(data)
    if status == "terminated":
        raise InputCancellation(str(exc))
    if status == "timeout" and not isinstance(exc, FunctionTimeoutError):
        raise FunctionTimeoutError(str(exc))
    raise exc


def _output_value(status: str, data: bytes | None) -> Any:
    """For `return_exceptions=True`: the exception object instead of raising it."""
    try:
        return _decode_output(status, data)
    except Exception as exc:  # noqa: BLE001
        return exc


class Function:
    """A function that runs in containers. Created by `@app.function()`."""

    # Methods of a Cls (their calls name the method), the Cls's service function, and variants made by
    # with_options/with_concurrency/with_batching or by parameter values (their own pool, created on first use).
    _method_name: str | None = None
    _cls_info: ClsInfo | None = None
    _variant_base: Function | None = None
    _variant_params: bytes | None = None
    _variant_overrides: dict[str, Any] | None = None
    _variant_cache: tuple[str, str] | None = None  # (base function id, variant function id)
    _lookup: tuple[str, str, int | None] | None = None  # Function.from_name: (app name, tag, version)
    _web_url_cache: tuple[str, str | None] | None = None  # (function id, URL the control plane gave for it)

    def __init__(
        self,
        app: App | None,
        raw_f: Callable | None,
        *,
        tag: str,
        options: FunctionOptions,
        secrets: list[Any],
        image: Any = None,
        is_generator: bool = False,
        schedule: Any = None,
        webhook: WebhookConfig | None = None,
    ) -> None:
        self._app = app
        self._raw_f = raw_f
        self._tag = tag
        self._options = options
        self._secrets = secrets
        self._image = image
        self._is_generator = is_generator
        self._is_async = raw_f is not None and (
            inspect.iscoroutinefunction(raw_f) or inspect.isasyncgenfunction(raw_f)
        )
        self._schedule = schedule
        self._webhook = webhook
        self._function_id: str | None = None
        self._is_shoal_function = True
        if raw_f is not None:
            self.__doc__ = raw_f.__doc__
            self.__name__ = getattr(raw_f, "__name__", tag)
            self.__qualname__ = getattr(raw_f, "__qualname__", tag)
            self.__module__ = getattr(raw_f, "__module__", None)  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<Function {self._tag}{' ' + self._function_id if self._function_id else ''}>"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise InvalidError(
            f"Function {self._tag!r} is not callable directly: use .remote() to run it in a container or "
            f".local() to run it here."
        )

    # -- identity --------------------------------------------------------------------------------------------
    @property
    def object_id(self) -> str | None:
        return self._function_id

    @property
    def tag(self) -> str:
        return self._tag

    @property
    def app(self) -> App | None:
        return self._app

    def get_raw_f(self) -> Callable:
        assert self._raw_f is not None
        return self._raw_f

    def _hydrate(self, function_id: str) -> None:
        self._function_id = function_id

    # -- lookups ---------------------------------------------------------------------------------------------
    @classmethod
    def from_name(cls, app_name: str, name: str, *, version: int | None = None,
                  environment_name: str | None = None, client: Client | None = None) -> Function:
        """A lazy reference to function `name` of the deployed app `app_name`, resolved on first use
        (NotFoundError then if there is none). Where no deployed app has that name, the most recently started
        running app of that name is used (`app.run()`, `shoal run`). `version=` must be the app's current
        version: only that one runs."""
        from ._options import FunctionOptions

        if not isinstance(app_name, str) or not isinstance(name, str) or not app_name or not name:
            raise InvalidError("Function.from_name takes an app name and a function name (strings)")
        if version is not None and (not isinstance(version, int) or isinstance(version, bool) or version < 1):
            raise InvalidError(f"version must be a positive integer, got {version!r}")
        fn = cls(None, None, tag=name, options=FunctionOptions(), secrets=[])
        fn._lookup = (app_name, name, version)
        return fn

    def _lookup_path(self) -> str:
        from urllib.parse import quote

        assert self._lookup is not None
        return f"/v1/functions/lookup?app_name={quote(self._lookup[0])}&tag={quote(self._lookup[1])}"

    def _apply_lookup(self, resp: dict[str, Any]) -> None:
        assert self._lookup is not None
        app_name, name, version = self._lookup
        if resp.get("server"):
            raise InvalidError(f"{name!r} of app {app_name!r} is a Server: use Server.from_name({app_name!r}, "
                               f"{name!r})")
        if resp.get("cls"):
            raise InvalidError(f"{name!r} of app {app_name!r} is a class: use Cls.from_name({app_name!r}, "
                               f"{name.split('.')[0]!r})")
        if version is not None and resp.get("version") != version:
            from .exception import NotFoundError

            raise NotFoundError(f"Lookup failed for Function {name!r} from the {app_name!r} app: it runs version "
                                f"{resp.get('version')}, not {version} (only the current version runs)")
        self._is_generator = bool(resp.get("is_generator"))
        self._function_id = resp["function_id"]

    def _lookup_failed(self, exc: Exception) -> Exception:
        from .exception import NotFoundError

        assert self._lookup is not None
        return NotFoundError(f"Lookup failed for Function {self._lookup[1]!r} from the {self._lookup[0]!r} app: "
                             f"{exc}")

    @rpc
    def hydrate(self, client: Client | None = None) -> Plan:
        """Resolve a looked-up function now (raising NotFoundError if it does not exist); returns self."""
        return (yield from self._hydrate_plan())

    def _hydrate_plan(self) -> Plan:
        base = self._variant_base or self
        if base._lookup is not None and base._function_id is None:
            yield from base._fid_plan()
        self._is_generator = base._is_generator
        return self

    def _fid_plan(self) -> Plan:
        """This function's id, as a request plan (`_client.aio`): a looked-up function is resolved by name, a
        variant (`with_options`, a parameter set) is registered with the control plane, once each."""
        if self._variant_base is not None:
            base_id = yield from self._variant_base._fid_plan()
            if self._variant_cache is None or self._variant_cache[0] != base_id:
                body = yield from self._variant_request()
                resp = yield ("POST", f"/v1/functions/{base_id}/variants", body)
                self._variant_cache = (base_id, resp["function_id"])
            return self._variant_cache[1]
        if self._function_id is None and self._lookup is not None:
            from .exception import NotFoundError

            try:
                resp = yield ("GET", self._lookup_path(), None)
            except NotFoundError as exc:
                raise self._lookup_failed(exc) from None
            self._apply_lookup(resp)
        if self._function_id is None:
            raise ExecutionError(
                f"Function {self._tag!r} has not been hydrated: its app is not running. Call it inside "
                "`with app.run():`, from `shoal run`, or after deploying the app."
            )
        return self._function_id

    def _fid(self) -> str:
        """The function id, a variant's created on first use (blocking)."""
        return run_plan(self._fid_plan())

    def _variant_request(self) -> Plan:
        """The body creating this variant: `with_options(volumes=...)`'s volumes resolved to mounts now."""
        overrides = dict(self._variant_overrides or {})
        if "volumes" in overrides:
            from ._spec.definitions import VolumeMount

            mounts = []
            for path, vol in overrides["volumes"].items():
                volume_id = yield from vol._resolve()
                mounts.append(VolumeMount(mount_path=path, volume_id=volume_id, name=vol.name,
                                          read_only=vol._read_only))
            overrides["volumes"] = mounts
        return {"params": self._variant_params, "options": overrides}

    def _call_extra(self) -> dict[str, Any]:
        """What a new call says beside its arguments: the method of a class it runs, and inside a container the
        input it is made from (the call graph links them)."""
        extra: dict[str, Any] = {"method": self._method_name} if self._method_name else {}
        parent = current_input_id()
        if parent is not None:
            extra["parent_input_id"] = parent
        return extra

    def _check_gen(self, generator_call: bool, what: str) -> Plan:
        """A plan: `what` (a call form) fits whether this is a generator function."""
        base = self._variant_base or self
        if base._lookup is not None:
            yield from self._hydrate_plan()  # a looked-up function: whether it is a generator is known once resolved
        if generator_call and not self._is_generator:
            raise InvalidError(f"{what} is only for generator functions; use .remote() for {self._tag!r}")
        if not generator_call and self._is_generator:
            raise InvalidError(f"{self._tag!r} is a generator function: use .remote_gen(), not {what}")

    def _definition(self) -> FunctionDefinition:
        """What the control plane needs to run this function (the image and source are attached by the app)."""
        from .secret import secret_refs

        volumes = []
        if self._options.extra.get("volumes"):
            from .volume import mount_refs

            volumes = mount_refs(self._options.extra["volumes"])  # resolved (or created) now
        return FunctionDefinition(
            tag=self._tag,
            is_generator=self._is_generator,
            is_async=self._is_async,
            options=self._options.to_wire(),
            secrets=secret_refs(self._secrets),
            schedule=self._schedule.to_wire() if self._schedule is not None else None,
            app_name=self._app.name if self._app else None,
            webhook=self._webhook,
            volumes=volumes,
            cls=self._cls_info,
        )

    # -- local -----------------------------------------------------------------------------------------------
    def local(self, *args: Any, **kwargs: Any) -> Any:
        """Run the body in this process: no container, image or scaling."""
        return self.get_raw_f()(*args, **kwargs)

    # -- remote ----------------------------------------------------------------------------------------------
    @rpc
    def remote(self, *args: Any, **kwargs: Any) -> Plan:
        """Run in a container and return the result (re-raising its exception)."""
        yield from self._check_gen(False, ".remote()")
        fid = yield from self._fid_plan()
        call_id = new_call_id()
        resp = yield ("POST", f"/v1/functions/{fid}/calls",
                      {**self._call_extra(), "kind": "remote", "call_id": call_id,
                       "args": ser.dumps_args(args, kwargs), "wait": POLL_S})
        while resp.get("pending"):
            resp = yield ("GET", f"/v1/calls/{call_id}/result?timeout={POLL_S}", None)
        return _decode_output(resp["status"], resp["data"])

    @on_loop
    async def remote_gen(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        """Stream a generator function's items as the container yields them."""
        await arun_plan(self._check_gen(True, ".remote_gen()"))
        fid = await arun_plan(self._fid_plan())
        client = get_client()
        call_id = new_call_id()
        await client.acall("POST", f"/v1/functions/{fid}/calls",
                           {**self._call_extra(), "kind": "gen", "call_id": call_id,
                            "args": ser.dumps_args(args, kwargs)})
        after = -1
        while True:
            resp = await client.acall("GET", f"/v1/calls/{call_id}/outputs?after={after}&timeout={POLL_S}")
            for seq, _idx, status, data, final in resp["outputs"]:
                after = seq
                if status == "item":
                    yield ser.loads(data, "yielded value")
                elif final:
                    _decode_output(status, data)
                    return

    # -- spawn -----------------------------------------------------------------------------------------------
    @rpc
    def spawn(self, *args: Any, **kwargs: Any) -> Plan:
        """Start a call and return its handle at once; the result is kept for 7 days."""
        yield from self._check_gen(False, ".spawn()")
        fid = yield from self._fid_plan()
        call_id = new_call_id()
        yield ("POST", f"/v1/functions/{fid}/calls",
               {**self._call_extra(), "kind": "spawn", "call_id": call_id, "args": ser.dumps_args(args, kwargs)})
        return FunctionCall(call_id, num_inputs=1)

    # -- map family ------------------------------------------------------------------------------------------
    async def _map_outputs(
        self, arg_tuples: Iterable[tuple] | AsyncIterator[tuple], kwargs: dict[str, Any], *,
        order_outputs: bool, return_exceptions: bool,
    ) -> AsyncIterator[Any]:
        """The engine of map/starmap/for_each: stream inputs in batches with at most MAP_WINDOW in flight, and
        yield outputs (in input order unless order_outputs=False)."""
        import asyncio

        await arun_plan(self._check_gen(False, ".map()"))
        fid = await arun_plan(self._fid_plan())
        client = get_client()
        call_id = new_call_id()
        await client.acall("POST", f"/v1/functions/{fid}/calls",
                           {**self._call_extra(), "kind": "map", "call_id": call_id})
        window = asyncio.Semaphore(MAP_WINDOW)
        total: list[int] = []  # set once the feeder has read every input
        progress = map_progress(self._progress_label())

        async def feed() -> None:
            batch: list[list[Any]] = []
            started = time.monotonic()
            n = 0

            async def send(last: bool) -> None:
                nonlocal batch, started
                await client.acall("POST", f"/v1/calls/{call_id}/inputs", {"items": batch, "last": last})
                batch, started = [], time.monotonic()

            async for args in _aiter(arg_tuples):
                if window.locked() and batch:
                    await send(False)  # don't sit on inputs while waiting for room
                await window.acquire()
                batch.append([n, ser.dumps_args(tuple(args), kwargs)])
                n += 1
                if len(batch) >= MAP_BATCH or time.monotonic() - started > MAP_BATCH_WAIT_S:
                    await send(False)
            total.append(n)
            progress.set_total(n)
            await send(True)

        feeder = asyncio.ensure_future(feed())
        after, received, next_idx = -1, 0, 0
        pending: dict[int, tuple[str, bytes | None]] = {}
        stats_at = 0.0
        try:
            while not total or received < total[0]:
                if feeder.done() and feeder.exception() is not None:
                    raise feeder.exception()  # type: ignore[misc]
                if progress.active and time.monotonic() - stats_at >= 1.0:  # the line shows the containers
                    stats_at = time.monotonic()
                    try:
                        stats = await client.acall("GET", f"/v1/functions/{fid}/stats")
                        progress.set_containers(stats["num_total_runners"])
                    except Exception:  # noqa: BLE001 - the progress line never fails the map
                        pass
                wait = 0.5 if not feeder.done() else POLL_S
                resp = await client.acall("GET", f"/v1/calls/{call_id}/outputs?after={after}&timeout={wait}")
                for seq, idx, status, data, final in resp["outputs"]:
                    after = seq
                    if not final:
                        continue
                    received += 1
                    window.release()
                    progress.input_done(status == "success")
                    if status != "success" and not return_exceptions:
                        _decode_output(status, data)
                    if not order_outputs:
                        yield _output_value(status, data)
                        continue
                    pending[idx] = (status, data)
                    while next_idx in pending:
                        yield _output_value(*pending.pop(next_idx))
                        next_idx += 1
        except BaseException:
            feeder.cancel()
            if not (total and received >= total[0]):
                try:
                    await client.acall("POST", f"/v1/calls/{call_id}/cancel", {})
                except Exception:  # noqa: BLE001 - best effort while already failing
                    pass
            raise
        finally:
            progress.close()
        await feeder

    @on_loop(refuse_in_loop=True)
    def map(self, *input_iterators: Iterable[Any], kwargs: dict[str, Any] = {},  # noqa: B006
             order_outputs: bool = True, return_exceptions: bool = False,
             wrap_returned_exceptions: bool | None = None) -> AsyncIterator[Any]:
        """Run once per input, in parallel containers; yields results in input order by default."""
        if wrap_returned_exceptions is not None:
            warnings.warn("`wrap_returned_exceptions` has no effect: exceptions are never wrapped",
                          DeprecationWarning, stacklevel=4)
        if not input_iterators:
            raise InvalidError("map() needs at least one iterable of inputs")
        return self._map_outputs(_zip(input_iterators), kwargs, order_outputs=order_outputs,
                                 return_exceptions=return_exceptions)

    @on_loop(refuse_in_loop=True)
    def starmap(self, input_iterator: Iterable[tuple], *, kwargs: dict[str, Any] = {},  # noqa: B006
                 order_outputs: bool = True, return_exceptions: bool = False,
                 wrap_returned_exceptions: bool | None = None) -> AsyncIterator[Any]:
        """Like map, with each input a tuple of positional arguments."""
        return self._map_outputs(input_iterator, kwargs, order_outputs=order_outputs,
                                 return_exceptions=return_exceptions)

    @on_loop(refuse_in_loop=True)
    async def for_each(self, *input_iterators: Iterable[Any], kwargs: dict[str, Any] = {},  # noqa: B006
                        ignore_exceptions: bool = False) -> None:
        """Map for side effects; results are discarded."""
        async for _ in self._map_outputs(_zip(input_iterators), kwargs, order_outputs=False,
                                         return_exceptions=ignore_exceptions):
            pass

    @on_loop
    async def spawn_map(self, *input_iterators: Iterable[Any], kwargs: dict[str, Any] = {}) -> None:  # noqa: B006
        """Submit every input and return once they are all accepted; results are not retrievable."""
        await self._submit_map(input_iterators, kwargs, ".spawn_map()")

    @on_loop
    async def experimental_spawn_map(self, *input_iterators: Iterable[Any],
                                     kwargs: dict[str, Any] = {}) -> FunctionCall:  # noqa: B006
        """Submit every input; the FunctionCall returned gives each result: `.get(index=i)`, `.iter()`."""
        call_id, n = await self._submit_map(input_iterators, kwargs, ".experimental_spawn_map()")
        return FunctionCall(call_id, n)

    async def _submit_map(self, input_iterators: tuple[Iterable[Any], ...], kwargs: dict[str, Any],
                          what: str) -> tuple[str, int]:
        """A map call with every input submitted (none of its results read): its id and number of inputs."""
        await arun_plan(self._check_gen(False, what))
        client = get_client()
        call_id = new_call_id()
        await client.acall("POST", f"/v1/functions/{await arun_plan(self._fid_plan())}/calls",
                           {**self._call_extra(), "kind": "map", "call_id": call_id})
        batch: list[list[Any]] = []
        n = 0
        progress = map_progress(self._progress_label("spawn_map"), sent_only=True)
        try:
            async for args in _zip(input_iterators):
                batch.append([n, ser.dumps_args(tuple(args), kwargs)])
                n += 1
                if len(batch) >= MAP_BATCH:
                    await client.acall("POST", f"/v1/calls/{call_id}/inputs", {"items": batch, "last": False})
                    progress.inputs_sent(len(batch))
                    batch = []
            progress.set_total(n)
            await client.acall("POST", f"/v1/calls/{call_id}/inputs", {"items": batch, "last": True})
            progress.inputs_sent(len(batch))
        finally:
            progress.close()
        return call_id, n

    def _progress_label(self, verb: str = "map") -> str:
        return f"{self._tag or 'function'}.{verb}"

    # -- variants: each a new, independent container pool ---------------------------------------------------
    def _variant(self, overrides: dict[str, Any], params: bytes | None = None) -> Function:
        """A copy whose calls go to the pool for these option overrides (and class parameter values)."""
        import copy

        from ._options import merge_overrides

        v = copy.copy(self)
        v._variant_base = self._variant_base or self
        v._variant_overrides = merge_overrides(self._variant_overrides, overrides)
        v._variant_params = params if params is not None else self._variant_params
        v._variant_cache = None
        v._function_id = None
        return v

    def _effective_option(self, key: str) -> Any:
        ov = (self._variant_overrides or {}).get("options", {})
        return ov[key] if key in ov else getattr(self._options, key, None)

    def with_options(
        self,
        *,
        cpu: float | tuple[float, float] | None = None,
        memory: int | tuple[int, int] | None = None,
        gpu: str | list[str] | None = None,
        env: dict[str, str | None] | None = None,
        secrets: Any = None,
        volumes: dict[Any, Any] = {},  # noqa: B006 - Modal's signature
        retries: Any = None,
        max_containers: int | None = None,
        buffer_containers: int | None = None,
        scaledown_window: int | None = None,
        timeout: int | None = None,
        region: str | list[str] | None = None,
        cloud: str | None = None,
        routing_region: str | None = None,
    ) -> Function:
        """This function with other options, running in its own container pool. Calls stack (later values win);
        `secrets` and `volumes` replace the function's rather than adding to them; options cannot be unset."""
        from ._options import option_overrides

        return self._variant(option_overrides(
            cpu=cpu, memory=memory, gpu=gpu, env=env, secrets=secrets, volumes=volumes, retries=retries,
            max_containers=max_containers, buffer_containers=buffer_containers, scaledown_window=scaledown_window,
            timeout=timeout, region=region, cloud=cloud, routing_region=routing_region))

    def with_concurrency(self, *, max_inputs: int, target_inputs: int | None = None) -> Function:
        """This function with each container running up to `max_inputs` inputs at once, in its own pool."""
        from ._partial import concurrent

        concurrent(max_inputs=max_inputs, target_inputs=target_inputs)  # the decorator's validation
        if self._options.single_use_containers:
            raise InvalidError("with_concurrency cannot be combined with single_use_containers=True")
        if self._effective_option("batch_max_size"):
            raise InvalidError(f"{self._tag!r} uses dynamic batching; it cannot also take concurrent inputs")
        return self._variant({"options": {"max_inputs": max_inputs, "target_inputs": target_inputs}})

    def with_batching(self, *, max_batch_size: int, wait_ms: int) -> Function:
        """This function called with batches of up to `max_batch_size` inputs (lists), in its own pool."""
        from ._partial import check_batched_function, check_batching

        check_batching(max_batch_size, wait_ms)
        if int(self._effective_option("max_inputs") or 1) > 1:
            raise InvalidError(f"{self._tag!r} takes concurrent inputs; it cannot also use dynamic batching")
        if self._raw_f is not None and self._cls_info is None and self._method_name is None:
            check_batched_function(self._raw_f, self._tag, self._is_generator)
        return self._variant({"options": {"batch_max_size": max_batch_size, "batch_wait_ms": wait_ms}})

    # -- introspection ---------------------------------------------------------------------------------------
    def _web_url_fid_plan(self) -> Plan:
        """The id the control plane knows the URL by: the base function's (a variant shares its URL, and asking
        must not create a pool)."""
        return (yield from (self._variant_base or self)._fid_plan())

    def _asks_for_web_url(self) -> bool:
        """False where the answer is None without asking: not a web function (a looked-up function may be one,
        so it is asked)."""
        return self._webhook is not None or (self._variant_base or self)._lookup is not None

    def _web_url_plan(self) -> Plan:
        """Ask the control plane, once per function id (an ephemeral app gets new ids, and URLs, each run)."""
        fid = yield from self._web_url_fid_plan()
        if self._web_url_cache is None or self._web_url_cache[0] != fid:
            query = f"?method={quote(self._method_name)}" if self._method_name else ""
            resp = yield ("GET", f"/v1/functions/{fid}/web_url{query}", None)
            self._web_url_cache = (fid, resp.get("url"))
        return self._web_url_cache[1]

    @rpc
    def get_web_url(self) -> Plan:
        """The URL of a web function (None for other functions)."""
        if not self._asks_for_web_url():
            return None
        return (yield from self._web_url_plan())

    def _web_urls(self) -> dict[str, str]:
        """What `shoal serve` lists: this web function's URL by its tag, or a class's web methods' URLs by
        `Cls.method` (blocking)."""
        info = self._cls_info
        if info is None or self._function_id is None:
            url = self.get_web_url()
            return {self._tag: url} if url else {}
        urls = {}
        for name, spec in info.methods.items():
            if spec.webhook is not None:
                resp = get_client().call("GET", f"/v1/functions/{self._function_id}/web_url?method={quote(name)}")
                if resp.get("url"):
                    urls[f"{info.name}.{name}"] = resp["url"]
        return urls

    @rpc
    def get_current_stats(self) -> Plan:
        from .types import FunctionCurrentStats

        fid = yield from self._fid_plan()
        s = yield ("GET", f"/v1/functions/{fid}/stats", None)
        return FunctionCurrentStats(backlog=s["backlog"], num_total_runners=s["num_total_runners"],
                                    num_running_inputs=s["num_running_inputs"],
                                    input_headroom=s.get("input_headroom", 0))

    # -- autoscaler ------------------------------------------------------------------------------------------
    @property
    def autoscaler(self) -> FunctionAutoscalerManager:
        """`.autoscaler.settings()` and `.autoscaler.update(...)`: this function's pool at runtime."""
        return FunctionAutoscalerManager(self._fid_plan)

    @rpc(deprecated="`Function.update_autoscaler(...)` is deprecated; use `Function.autoscaler.update(...)`")
    def update_autoscaler(self, *, min_containers: int | None = None, max_containers: int | None = None,
                          buffer_containers: int | None = None, scaledown_window: int | None = None) -> Plan:
        """Deprecated: use `.autoscaler.update(...)`. Returns the settings now in force."""
        return (yield from self.autoscaler._apply(min_containers=min_containers, max_containers=max_containers,
                                                  buffer_containers=buffer_containers,
                                                  scaledown_window=scaledown_window))


class FunctionAutoscalerManager:
    """`Function.autoscaler`: read and override the pool's autoscaler knobs while the app runs. Overrides last
    until the app is redeployed."""

    def __init__(self, function_id: Callable[[], Plan]) -> None:
        self._function_id = function_id  # a plan giving the function's id

    def _apply(self, **values: int | None) -> Plan:
        from ._options import check_autoscaler
        from .types import FunctionAutoscalerSettings

        check_autoscaler(values)
        body = {k: v for k, v in values.items() if v is not None}
        fid = yield from self._function_id()
        resp = yield ("POST", f"/v1/functions/{fid}/autoscaler", body)
        return FunctionAutoscalerSettings(**resp["settings"])

    @rpc
    def update(self, *, min_containers: int | None = None, max_containers: int | None = None,
               buffer_containers: int | None = None, scaledown_window: int | None = None) -> Plan:
        """Override some knobs now (None leaves one as it is); validated like the decorator's."""
        yield from self._apply(min_containers=min_containers, max_containers=max_containers,
                               buffer_containers=buffer_containers, scaledown_window=scaledown_window)

    @rpc
    def settings(self) -> Plan:
        """The knobs in force now: the decorator's, with runtime overrides applied."""
        from .types import FunctionAutoscalerSettings

        fid = yield from self._function_id()
        resp = yield ("GET", f"/v1/functions/{fid}/autoscaler", None)
        return FunctionAutoscalerSettings(**resp["settings"])


async def _aiter(items: Iterable[Any] | AsyncIterator[Any]) -> AsyncIterator[Any]:
    if hasattr(items, "__aiter__"):
        async for x in items:  # type: ignore[union-attr]
            yield x
    else:
        for x in items:  # type: ignore[union-attr]
            yield x


async def _zip(iterables: tuple[Iterable[Any], ...]) -> AsyncIterator[tuple]:
    """zip() over sync and async iterables alike, lazily."""
    its = [aiter(_aiter(it)) for it in iterables]
    while True:
        row = []
        for it in its:
            try:
                row.append(await anext(it))
            except StopAsyncIteration:
                return
        yield tuple(row)


class FunctionCall:
    """A handle on a spawned call; `FunctionCall.from_id(id)` works from any process for 7 days."""

    def __init__(self, call_id: str, num_inputs: int | None = None) -> None:
        self._call_id = call_id
        self._num_inputs = num_inputs

    def __repr__(self) -> str:
        return f"FunctionCall({self._call_id!r})"

    @property
    def object_id(self) -> str:
        return self._call_id

    @staticmethod
    def from_id(function_call_id: str, client: Client | None = None) -> FunctionCall:
        if not isinstance(function_call_id, str) or not function_call_id.startswith("fc-"):
            raise InvalidError(f"not a function call id: {function_call_id!r}")
        return FunctionCall(function_call_id)

    @rpc
    def get(self, timeout: float | None = None, *, index: int = 0) -> Plan:
        """The result; waits up to `timeout` seconds (None: forever, 0: poll) then raises builtin TimeoutError."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wait = POLL_S if deadline is None else max(0.0, min(POLL_S, deadline - time.monotonic()))
            resp = yield ("GET", f"/v1/calls/{self._call_id}/result?index={index}&timeout={wait}", None)
            if not resp.get("pending"):
                return _decode_output(resp["status"], resp["data"])
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"function call {self._call_id} did not finish within {timeout}s")

    @on_loop
    async def iter(self, *, start: int = 0, end: int | None = None) -> AsyncIterator[Any]:
        """Results of each input in order (for calls with several inputs)."""
        n = await self.num_inputs.aio() if end is None else end
        for i in range(start, n):
            yield await self.get.aio(index=i)

    @rpc
    def num_inputs(self) -> Plan:
        if self._num_inputs is None:
            info = yield ("GET", f"/v1/calls/{self._call_id}", None)
            self._num_inputs = info["num_inputs"]
        return int(self._num_inputs or 0)

    @rpc
    def cancel(self, terminate_containers: bool = False) -> Plan:
        """Cancel every input of the call; none is retried."""
        yield ("POST", f"/v1/calls/{self._call_id}/cancel", {"terminate_containers": terminate_containers})

    @rpc
    def get_call_graph(self) -> Plan:
        """The inputs of this call, each with the inputs of the calls made while it ran (`InputInfo` trees)."""
        from .call_graph import InputInfo

        resp = yield ("GET", f"/v1/calls/{self._call_id}/graph", None)
        return [InputInfo._from_wire(node) for node in resp["inputs"]]

    @staticmethod
    @on_loop
    async def gather(*function_calls: FunctionCall) -> list[Any]:
        """All results, in order; the first failure is raised."""
        import asyncio

        return list(await asyncio.gather(*(fc.get.aio() for fc in function_calls)))
