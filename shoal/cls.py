"""`@app.cls()` classes: `Cls` (what the decorator returns), `Obj` (an instance bound to parameter values) and
the helpers the container runtime uses to build the object and find its lifecycle hooks.

A class registers one "service function" tagged `"<Class>.*"`; its methods are Functions bound to it whose calls
carry the method name, so all methods share the class's container pool and `@modal.concurrent` limit. Each
distinct set of parameter values (and each `with_options`/`with_concurrency`/`with_batching` variant) is a
separate pool the control plane creates on first use (`POST /v1/functions/{id}/variants`).

Parameters travel as msgpack of the full `{name: value}` map (defaults applied, keys sorted), so the same values
always name the same pool, and a container never unpickles them.
"""

from __future__ import annotations

import inspect
import threading
import typing
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import msgspec

from ._client.aio import Plan
from ._client.loop import run_sync
from ._partial import (
    BATCHED_ATTR,
    CONCURRENT_ATTR,
    ENTER_ATTR,
    EXIT_ATTR,
    METHOD_ATTR,
    NO_DEFAULT,
    WEBHOOK_ATTR,
    Parameter,
    check_batched_function,
    check_batching,
)
from ._spec.definitions import Batching, ClsInfo, ClsParam, MethodInfo
from ._spec.params import PARAM_TYPES, bind_params, check_value, pack_params
from .exception import DeprecationError, InvalidError, NotFoundError
from .functions import Function
from .web import check_not_generator, webhook_of

if TYPE_CHECKING:
    from .app import App

# -- class inspection (decoration time, and again in the container) ---------------------------------------------
def _annotations(user_cls: type) -> dict[str, Any]:
    """Annotations of the class and its bases, base classes first (resolved where possible)."""
    try:
        return typing.get_type_hints(user_cls)
    except Exception:  # noqa: BLE001 - unresolvable forward references: fall back to the raw annotations
        out: dict[str, Any] = {}
        for klass in reversed(user_cls.__mro__):
            out.update(klass.__dict__.get("__annotations__", {}))
        return out


def _type_name(pname: str, annotation: Any) -> str:
    if isinstance(annotation, type) and annotation.__name__ in PARAM_TYPES and \
            PARAM_TYPES[annotation.__name__] is annotation:
        return annotation.__name__
    if isinstance(annotation, str) and annotation in PARAM_TYPES:
        return annotation
    shown = getattr(annotation, "__name__", None) or repr(annotation)
    raise InvalidError(f"Class parameter '{pname}': {shown} is not a supported parameter type; "
                       "modal.parameter() supports int, str, bytes and bool")


def _members(user_cls: type) -> dict[str, Any]:
    """Attributes of the class and its bases; a subclass's definition replaces its base's, keeping the base's
    position (definition order, base classes first)."""
    members: dict[str, Any] = {}
    for klass in reversed(user_cls.__mro__):
        if klass is object:
            continue
        for name, value in klass.__dict__.items():
            members[name] = value
    return members


def inspect_class(user_cls: type) -> ClsInfo:
    """Everything the SDK, control plane and runtime need to know about a class, in wire form; validates it
    the way Modal does."""
    name = user_cls.__name__
    members = _members(user_cls)
    methods: dict[str, MethodInfo] = {}
    snap_hooks, enter_hooks, exit_hooks = [], [], []
    batched: Batching | None = None
    batched_names = []
    for key, value in members.items():
        f = value.__func__ if isinstance(value, (staticmethod, classmethod)) else value
        if not callable(f) or isinstance(f, type):
            continue
        if getattr(f, CONCURRENT_ATTR, None) is not None:
            raise InvalidError(f"@modal.concurrent on method {name}.{key}: with @app.cls(), apply it to the "
                               "class (under @app.cls()), not to individual methods")
        if hasattr(f, METHOD_ATTR) or hasattr(f, BATCHED_ATTR) or hasattr(f, WEBHOOK_ATTR):
            is_gen = bool(getattr(f, METHOD_ATTR, {}).get("is_generator")) or inspect.isgeneratorfunction(f) or \
                inspect.isasyncgenfunction(f)
            webhook = webhook_of(f)
            if webhook is not None:
                _check_web_method(f"{name}.{key}", f, is_gen)
            methods[key] = MethodInfo(is_generator=is_gen, webhook=webhook,
                                      is_async=inspect.iscoroutinefunction(f) or inspect.isasyncgenfunction(f))
            if hasattr(f, BATCHED_ATTR):
                batched_names.append(key)
                batched = Batching(**getattr(f, BATCHED_ATTR))
                check_batched_function(f, f"{name}.{key}", is_gen)
        if hasattr(f, ENTER_ATTR):
            (snap_hooks if getattr(f, ENTER_ATTR).get("snap") else enter_hooks).append(key)
        if hasattr(f, EXIT_ATTR):
            exit_hooks.append(key)
    if len(batched_names) > 1:
        raise InvalidError(f"Modal class {name} can only have one batched function.")
    if batched_names and len(methods) > 1:
        raise InvalidError(f"Modal class {name} with a modal batched function cannot have other modal methods.")

    # Parameters: annotated class attributes whose value is modal.parameter(init=True).
    hints = _annotations(user_cls)
    params: list[ClsParam] = []
    for pname, annotation in hints.items():
        spec = members.get(pname)
        if not isinstance(spec, Parameter) or not spec.init:
            continue
        entry = ClsParam(name=pname, type=_type_name(pname, annotation))  # type: ignore[arg-type]
        if spec.default is not NO_DEFAULT:
            check_value(name, pname, entry.type, spec.default)
            entry.default = spec.default
        params.append(entry)
    unannotated = [k for k, v in members.items() if isinstance(v, Parameter) and v.init and k not in hints]
    if unannotated:
        raise InvalidError("All modal.parameter() specifications need to be type-annotated "
                           f"(missing: {', '.join(unannotated)})")
    custom_init = user_cls.__init__ is not object.__init__  # type: ignore[misc]
    if custom_init:
        if params:
            raise InvalidError("A class can't have both a custom __init__ constructor and dataclass-style "
                               "modal.parameter() annotations")
        try:
            init_params = list(inspect.signature(user_cls.__init__).parameters.values())[1:]  # type: ignore[misc]
        except (TypeError, ValueError):
            init_params = []
        if any(p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in init_params):
            raise InvalidError(f"{name}.__init__ takes arguments: shoal does not pass constructor arguments; "
                               "declare them as parameters instead, e.g. `model_name: str = modal.parameter()`")
        warnings.warn(
            f"{name} uses a non-default constructor (__init__) method. Custom constructors will not be supported "
            "in a future version of Modal; use modal.parameter() declarations and @modal.enter() instead.",
            DeprecationError, stacklevel=4)
    return ClsInfo(name=name, params=params, methods=methods, enter=snap_hooks + enter_hooks, exit=exit_hooks,
                   batched=batched, custom_init=custom_init)


def _check_web_method(label: str, f: Any, is_generator: bool) -> None:
    """A web method answers requests with one response each, and runs on the class's pool unbatched."""
    check_not_generator(label, is_generator)
    if hasattr(f, BATCHED_ATTR):
        raise InvalidError(f"{label}: @modal.batched cannot be combined with a web endpoint decorator")


def construct_instance(user_cls: type, info: ClsInfo, values: dict[str, Any]) -> Any:
    """The user's object as Modal builds it: `__init__` is not run for parameterized classes; parameter values
    (defaults applied) are set as instance attributes."""
    if info.custom_init:
        return user_cls()
    values = {**{p.name: p.default for p in info.params if p.has_default}, **values}
    missing = [p.name for p in info.params if p.name not in values]
    if missing:
        raise InvalidError(f"{info.name}() missing required parameter(s): {', '.join(missing)}")
    instance = user_cls.__new__(user_cls)
    instance.__dict__.update(values)
    return instance


# -- Cls, Obj and bound methods ----------------------------------------------------------------------------------
class _Method(Function):
    """A method of an `Obj`: a Function whose calls go to the object's pool and name the method."""

    _obj: Obj

    def _fid_plan(self) -> Plan:
        return (yield from self._obj._service_function()._fid_plan())

    def _web_url_fid_plan(self) -> Plan:
        """A web method has one URL for the class (parameters go in its query string): ask by the class's own
        service function, never creating a parameter-set pool for it."""
        self._obj._info()  # resolves a looked-up class
        service = self._obj._cls._service
        assert service is not None
        return (yield from service._fid_plan())

    def local(self, *args: Any, **kwargs: Any) -> Any:
        """Run the method in this process on a local object, built once per Obj; its @enter hooks run once."""
        return self._obj._local_call(self._method_name or "", args, kwargs)

    def _variant(self, overrides: dict[str, Any], params: bytes | None = None) -> Function:
        raise InvalidError(f"{self._tag}: options apply to the whole class; use "
                           f"{self._tag.split('.')[0]}.with_options(...) / with_concurrency / with_batching")

    def __repr__(self) -> str:
        return f"<Method {self._tag}>"


class _UnboundMethod:
    """`MyCls.method`: using it says to instantiate the class first, as Modal does."""

    def __init__(self, cls_name: str, name: str) -> None:
        self._label = f"{cls_name}.{name}"

    def _fail(self) -> AttributeError:
        return AttributeError(
            "You can't access methods on a Cls directly - Did you forget to instantiate the class first?\n"
            f"e.g. instead of {self._label}.remote(), do {self._label.replace('.', '().', 1)}.remote()")

    def __getattr__(self, k: str) -> Any:
        if k.startswith("__"):
            raise AttributeError(k)
        raise self._fail()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise self._fail()

    def __repr__(self) -> str:
        return f"<unbound method {self._label}>"


class Obj:
    """An instance of a `Cls` with its parameter values: `Model(name="x")`. Its methods are Functions."""

    def __init__(self, cls: Cls, args: tuple, kwargs: dict[str, Any]) -> None:
        self._cls = cls
        self._args = args
        self._kwargs = kwargs
        self._values: dict[str, Any] | None = None
        self._service_fn: Function | None = None
        self._methods: dict[str, _Method] = {}
        self._local_instance: Any = None
        self._entered = False
        self._lock = threading.RLock()
        if cls._info is not None:
            self._values = bind_params(cls._info, args, kwargs)  # mistakes surface where they are written

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in (self._values or self._kwargs).items())
        return f"{self._cls._name}({shown})"

    def _info(self) -> ClsInfo:
        self._cls._ensure_hydrated()
        info = self._cls._info
        assert info is not None
        if self._values is None:
            self._values = bind_params(info, self._args, self._kwargs)
        return info

    def _service_function(self) -> Function:
        """The Function serving this object's pool: the class's own, or a variant for these parameter values
        and options (created on the control plane on first use)."""
        with self._lock:
            if self._service_fn is None:
                info = self._info()
                base = self._cls._service
                assert base is not None and self._values is not None
                params = pack_params(self._values) if info.params else None
                if params is None and not self._cls._overrides:
                    self._service_fn = base
                else:
                    self._service_fn = base._variant(self._cls._overrides, params=params)
            return self._service_fn

    def _method(self, name: str) -> _Method:
        m = self._methods.get(name)
        if m is None:
            info = self._info()
            cls = self._cls
            raw = _members(cls._user_cls).get(name) if cls._user_cls is not None else None
            base = cls._service
            assert base is not None
            method = info.methods[name]
            m = _Method(cls._app, raw, tag=f"{info.name}.{name}", options=base._options, secrets=[],
                        is_generator=method.is_generator)
            m._is_async = method.is_async
            m._webhook = method.webhook
            m._method_name = name
            m._obj = self
            self._methods[name] = m
        return m

    def __getattr__(self, k: str) -> Any:
        if k.startswith("__") or "_cls" not in self.__dict__:
            raise AttributeError(k)
        info = self._info()
        if k in info.methods:
            return self._method(k)
        if self._cls._user_cls is not None:
            return getattr(self._local(), k)
        raise NotFoundError(f"Class has no method `{k}` and attributes (or undecorated methods) can't be accessed "
                            "for remote classes (`Cls.from_name` instances)")

    # -- local ---------------------------------------------------------------------------------------------------
    def _local(self) -> Any:
        with self._lock:
            if self._local_instance is None:
                info = self._info()
                if self._cls._user_cls is None:
                    raise InvalidError(f"{info.name} was looked up by name: .local() and attribute access "
                                       "need the class definition in this process")
                assert self._values is not None
                self._local_instance = construct_instance(self._cls._user_cls, info, self._values)
            return self._local_instance

    def _local_call(self, name: str, args: tuple, kwargs: dict[str, Any]) -> Any:
        instance = self._local()
        with self._lock:
            if not self._entered:
                for hook in self._info().enter:
                    result = getattr(instance, hook)()
                    if inspect.isawaitable(result):
                        run_sync(result)
                self._entered = True
        return getattr(instance, name)(*args, **kwargs)

    # -- autoscaler ----------------------------------------------------------------------------------------------
    def update_autoscaler(self, *, min_containers: int | None = None, max_containers: int | None = None,
                          scaledown_window: int | None = None, buffer_containers: int | None = None) -> None:
        """Override the autoscaler settings of this object's pool (its parameter set) while the app runs."""
        self._service_function().autoscaler.update(
            min_containers=min_containers, max_containers=max_containers, scaledown_window=scaledown_window,
            buffer_containers=buffer_containers)


class Cls:
    """What `@app.cls()` returns. Call it with parameter values to get an `Obj`: `Model(name="x").f.remote()`."""

    _is_shoal_cls = True
    _version: int | None = None  # Cls.from_name(..., version=N)

    def __init__(self, *, name: str, user_cls: type | None, app: App | None, service: Function | None,
                 info: ClsInfo | None, overrides: dict[str, Any] | None = None,
                 lookup: tuple[str, str] | None = None) -> None:
        self._name = name
        self._user_cls = user_cls
        self._app = app
        self._service = service
        self._info = info
        self._overrides: dict[str, Any] = overrides or {}
        self._lookup = lookup
        self._parent: Cls | None = None
        self._hydrate_lock = threading.Lock()
        if user_cls is not None:
            self.__doc__ = user_cls.__doc__
            self.__module__ = user_cls.__module__
            self.__qualname__ = user_cls.__qualname__

    def __repr__(self) -> str:
        return f"Cls({self._name})"

    @property
    def object_id(self) -> str | None:
        return self._service.object_id if self._service is not None else None

    def _get_user_cls(self) -> type:
        assert self._user_cls is not None
        return self._user_cls

    def _get_method_names(self) -> list[str]:
        self._ensure_hydrated()
        assert self._info is not None
        return list(self._info.methods)

    # -- construction --------------------------------------------------------------------------------------------
    def __call__(self, *args: Any, **kwargs: Any) -> Obj:
        """Bind parameter values (missing, unknown or mistyped ones raise InvalidError here)."""
        return Obj(self, args, kwargs)

    def __getattr__(self, k: str) -> Any:
        if k.startswith("__") or "_info" not in self.__dict__:
            raise AttributeError(k)
        user_cls = self.__dict__.get("_user_cls")
        info = self.__dict__.get("_info")
        if user_cls is not None:
            if info is not None and k in info.methods:
                return _UnboundMethod(self._name, k)
            return getattr(user_cls, k)
        if k.startswith("_"):
            raise AttributeError(k)
        return _UnboundMethod(self._name, k)

    # -- lookups -------------------------------------------------------------------------------------------------
    @classmethod
    def from_name(cls, app_name: str, name: str, *, version: int | None = None, environment_name: str | None = None,
                  client: Any = None) -> Cls:
        """A lazy reference to class `name` of the deployed app `app_name`; resolved on first use (NotFoundError
        then if there is none). Where no deployed app has that name, the most recently started running app of
        that name is used (`app.run()` / `shoal run`). `version=` must be the app's current version: only that
        one runs."""
        if not isinstance(app_name, str) or not isinstance(name, str):
            raise InvalidError("Cls.from_name takes an app name and a class name (strings)")
        if version is not None and (not isinstance(version, int) or isinstance(version, bool) or version < 1):
            raise InvalidError(f"version must be a positive integer, got {version!r}")
        found = cls(name=name, user_cls=None, app=None, service=None, info=None, lookup=(app_name, name))
        found._version = version
        return found

    def _ensure_hydrated(self) -> None:
        if self._info is not None:
            return
        if self._parent is not None:
            self._parent._ensure_hydrated()
            self._service, self._info = self._parent._service, self._parent._info
            return
        from ._client.transport import get_client
        from ._options import FunctionOptions

        assert self._lookup is not None
        app_name, name = self._lookup
        with self._hydrate_lock:
            if self._info is not None:
                return
            try:
                resp = get_client().call(
                    "GET", f"/v1/functions/lookup?app_name={quote(app_name)}&tag={quote(name + '.*')}")
            except NotFoundError as exc:
                raise NotFoundError(f"Lookup failed for Cls '{name}' from the '{app_name}' app: {exc}") from None
            if not resp.get("cls"):
                raise NotFoundError(f"Lookup failed for Cls '{name}' from the '{app_name}' app: not a class")
            version = self._version
            if version is not None and resp.get("version") != version:
                raise NotFoundError(f"Lookup failed for Cls '{name}' from the '{app_name}' app: it runs version "
                                    f"{resp.get('version')}, not {version} (only the current version runs)")
            service = Function(None, None, tag=f"{name}.*", options=FunctionOptions(), secrets=[])
            service._hydrate(resp["function_id"])
            info = msgspec.convert(resp["cls"], ClsInfo)
            service._cls_info = info
            self._service = service
            self._info = info

    # -- variants ------------------------------------------------------------------------------------------------
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
        concurrency_limit: Any = None,
        container_idle_timeout: Any = None,
        allow_concurrent_inputs: Any = None,
    ) -> Cls:
        """A copy of this class whose objects run in their own pools with these options. Calls stack: later
        values win; `secrets`/`volumes` are replaced, not merged; options cannot be unset."""
        from ._options import option_overrides, reject_deprecated

        reject_deprecated(dict(concurrency_limit=concurrency_limit, container_idle_timeout=container_idle_timeout,
                               allow_concurrent_inputs=allow_concurrent_inputs), where="Cls.with_options")
        overrides = option_overrides(
            cpu=cpu, memory=memory, gpu=gpu, env=env, secrets=secrets, volumes=volumes, retries=retries,
            max_containers=max_containers, buffer_containers=buffer_containers, scaledown_window=scaledown_window,
            timeout=timeout, region=region, cloud=cloud, routing_region=routing_region)
        return self._variant_cls(overrides)

    def with_concurrency(self, *, max_inputs: int, target_inputs: int | None = None) -> Cls:
        """A copy of this class whose containers each run up to `max_inputs` inputs at once."""
        from ._partial import concurrent

        concurrent(max_inputs=max_inputs, target_inputs=target_inputs)  # same validation as the decorator
        if self._service is not None and self._service._options.single_use_containers:
            raise InvalidError("with_concurrency cannot be combined with single_use_containers=True")
        if self._batching_enabled():
            raise InvalidError(f"{self._name} uses dynamic batching; it cannot also take concurrent inputs")
        return self._variant_cls({"options": {"max_inputs": max_inputs, "target_inputs": target_inputs}})

    def with_batching(self, *, max_batch_size: int, wait_ms: int) -> Cls:
        """A copy of this class whose batched method gets batches of up to `max_batch_size` inputs."""
        check_batching(max_batch_size, wait_ms)
        if self._concurrency_enabled():
            raise InvalidError(f"{self._name} takes concurrent inputs; it cannot also use dynamic batching")
        return self._variant_cls({"options": {"batch_max_size": max_batch_size, "batch_wait_ms": wait_ms}})

    def _variant_cls(self, overrides: dict[str, Any]) -> Cls:
        from ._options import merge_overrides

        other = Cls(name=self._name, user_cls=self._user_cls, app=self._app, service=self._service,
                    info=self._info, overrides=merge_overrides(self._overrides, overrides), lookup=self._lookup)
        other._parent = self  # a looked-up class is resolved once, through its parent
        return other

    def _effective(self, key: str) -> Any:
        if key in self._overrides.get("options", {}):
            return self._overrides["options"][key]
        return getattr(self._service._options, key, None) if self._service is not None else None

    def _batching_enabled(self) -> bool:
        return bool(self._effective("batch_max_size"))

    def _concurrency_enabled(self) -> bool:
        return int(self._effective("max_inputs") or 1) > 1


def _cls_decorator(app: App, function_kwargs: dict[str, Any]) -> Callable[[type], Cls]:
    """The decorator `@app.cls(...)` returns: registers the service function through `app.function` (so the
    class gets exactly the options handling of functions), then records what the class looks like."""

    def decorate(user_cls: type) -> Cls:
        if getattr(user_cls, "_is_shoal_cls", False):
            raise InvalidError(f"{user_cls!r} is already a shoal Cls; decorate it only once")
        if not isinstance(user_cls, type):
            raise InvalidError(f"@app.cls() must decorate a class, got {type(user_cls).__name__}")
        info = inspect_class(user_cls)
        service = app.function(**function_kwargs, name=f"{user_cls.__name__}.*")(user_cls)
        options = service._options
        if info.batched is not None:
            if options.max_inputs > 1:
                raise InvalidError(f"Modal class {info.name}: @modal.batched cannot be combined with "
                                   "@modal.concurrent")
            options.batch_max_size = info.batched.max_batch_size
            options.batch_wait_ms = info.batched.wait_ms
        service._cls_info = info
        cls = Cls(name=user_cls.__name__, user_cls=user_cls, app=app, service=service, info=info)
        app._classes[user_cls.__name__] = cls
        return cls

    return decorate


def _check_function_target(f: Any) -> None:
    """`@app.function()` on something decorated for classes only."""
    for attr, deco in ((METHOD_ATTR, "method"), (ENTER_ATTR, "enter"), (EXIT_ATTR, "exit")):
        if hasattr(f, attr):
            raise InvalidError(f"@modal.{deco}() is for methods of an @app.cls() class, not for @app.function()")
