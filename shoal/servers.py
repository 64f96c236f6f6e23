"""`@app.server()` and `modal.Server` (Modal 1.5+): a class whose `@modal.enter()` starts a process that listens
on a port and speaks HTTP; the control plane proxies requests to it at the Server's URL.

(`shoal/controlplane/` is the control plane; this module is the SDK side, hence the name.)

A Server registers one definition, like a class's service function: tag `name or cls.__name__`, the class info
in `"cls"` (lifecycle hooks only), `"webhook": None`, the usual `"options"`, and the Server's settings in
`"server"` (see `server_config`). It has no `.remote()`, no input queue and no retries: callers send HTTP
requests to `Server.get_url()`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from ._client.aio import Plan, rpc
from ._partial import (
    BATCHED_ATTR,
    CONCURRENT_ATTR,
    ENTER_ATTR,
    METHOD_ATTR,
    SESSIONED_ATTR,
    WEBHOOK_ATTR,
    Parameter,
)
from ._spec.definitions import FunctionDefinition, ServerConfig
from ._spec.limits import EXIT_GRACE_PERIOD_S, PORT
from .exception import ExecutionError, InvalidError, NotImplementedWarning
from .functions import Function

if TYPE_CHECKING:
    from .app import App

ROUTING_REGIONS = ("us-east", "us-west", "eu-west", "ap-south")
DEFAULT_ROUTING_REGION = "us-east"
SESSION_START_WAIT_S = 25 * 60.0  # as Modal's client: a session start waits this long for a container
# Server options shoal records but does not act on (the function options among them warn through build_options).
_SERVER_NOT_YET_ENFORCED = ("h2_enabled", "routing_region", "compute_region")
_NO_CALLS = ("remote", "remote_gen", "spawn", "map", "starmap", "for_each", "spawn_map", "local", "with_options",
             "with_concurrency", "with_batching")


# -- returned dataclasses ------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ServerInfo:
    """What `Server.info()` returns. Fields the control plane did not report (a `Server.from_id` handle) are None."""

    name: str | None
    app_name: str | None
    url: str | None
    port: int | None
    target_concurrency: float | None
    max_concurrency: int | None
    unauthenticated: bool | None
    routing_region: str | None
    object_id: str | None


@dataclasses.dataclass(frozen=True)
class ServerAutoscalerSettings:
    """A Server's autoscaler knobs as they apply now (decorator values, replaced by runtime updates)."""

    min_containers: int | None = None
    max_containers: int | None = None
    buffer_containers: int | None = None
    scaledown_window: int | None = None
    target_concurrency: float | None = None
    scaleup_window: float | None = None

    @classmethod
    def _from_wire(cls, settings: dict[str, Any]) -> ServerAutoscalerSettings:
        """Only the known keys: the control plane may report more than this SDK knows."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in settings.items() if k in names})


# -- validation (decoration time, naming the parameter) --------------------------------------------------------------
def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise InvalidError(f"`{name}` must be a bool, got {value!r}")
    return value


def _check_target_concurrency(value: Any) -> None:
    """None, or a finite number >= 0 (0 turns autoscaling off)."""
    if value is not None and (not _is_number(value) or value < 0 or not math.isfinite(value)):
        raise InvalidError(f"`target_concurrency` must be a non-negative number, got {value!r}")


def _check_scaleup_window(value: Any) -> None:
    if value is not None and (not _is_number(value) or not value > 0):
        raise InvalidError(f"`scaleup_window` must be a positive number of seconds, got {value!r}")


def _parse_compute_region(compute_region: str | Sequence[str] | None) -> list[str] | None:
    """A region or a list of them, recorded as a list (the `region=` parser's rules, naming this parameter)."""
    if compute_region is None:
        return None
    regions = [compute_region] if isinstance(compute_region, str) else (
        list(compute_region) if isinstance(compute_region, (list, tuple)) else None)
    if regions is None or not all(isinstance(r, str) and r for r in regions):
        raise InvalidError(f"`compute_region` must be a string or a list of strings, got {compute_region!r}")
    return regions or None


def server_config(
    *,
    port: Any = 8000,
    startup_timeout: Any = 30,
    target_concurrency: Any = None,
    max_concurrency: Any = None,
    scaleup_window: Any = None,
    unauthenticated: Any = False,
    exit_grace_period: Any = 0,
    routing_region: Any = DEFAULT_ROUTING_REGION,
    compute_region: Any = None,
    h2_enabled: Any = False,
    sessioned: bool = False,
) -> ServerConfig:
    """The `server` of the definition (the wire contract with the control plane), validated with Modal's
    rules and messages. `target_concurrency=0` and `max_concurrency=0` mean "unset" and are sent as None."""
    if not isinstance(port, int) or isinstance(port, bool) or not PORT[0] <= port <= PORT[1]:
        raise InvalidError(f"`port` must be a positive integer between {PORT[0]} and {PORT[1]}, got {port!r}")
    if not _is_number(startup_timeout) or not startup_timeout > 0:
        raise InvalidError(f"The `startup_timeout` argument must be positive, got {startup_timeout!r}")
    if exit_grace_period is None:
        exit_grace_period = 0
    if not _is_number(exit_grace_period) or exit_grace_period < 0:
        raise InvalidError(f"The `exit_grace_period` argument must be non-negative, got {exit_grace_period!r}")
    if exit_grace_period > EXIT_GRACE_PERIOD_S[1]:
        raise InvalidError("The `exit_grace_period` argument must not exceed 3600 seconds (1 hour), got "
                           f"{exit_grace_period!r}")
    _check_target_concurrency(target_concurrency)
    if max_concurrency is not None and (not isinstance(max_concurrency, int) or isinstance(max_concurrency, bool)
                                        or max_concurrency < 0):
        raise InvalidError(f"`max_concurrency` must be a non-negative integer, got {max_concurrency!r}")
    target = float(target_concurrency) if target_concurrency else None  # 0 disables autoscaling, like None
    cap = int(max_concurrency) if max_concurrency else None  # 0 means unlimited, like None
    if target is not None and cap is not None and cap < target:
        raise InvalidError(f"`max_concurrency` ({cap}) must be greater than or equal to `target_concurrency` "
                           f"({target_concurrency})")
    _check_scaleup_window(scaleup_window)
    if not routing_region:
        raise InvalidError("The `routing_region` argument must be passed.")
    if routing_region not in ROUTING_REGIONS:
        raise InvalidError(f"`routing_region` must be one of {', '.join(ROUTING_REGIONS)}, got {routing_region!r}")
    return ServerConfig(
        port=port,
        startup_timeout=float(startup_timeout),
        target_concurrency=target,
        max_concurrency=cap,
        scaleup_window=float(scaleup_window) if scaleup_window is not None else None,
        unauthenticated=_check_bool("unauthenticated", unauthenticated),
        exit_grace_period=float(exit_grace_period),
        routing_region=routing_region,
        compute_region=_parse_compute_region(compute_region),
        h2_enabled=_check_bool("h2_enabled", h2_enabled),
        sessioned=bool(sessioned),
    )


def check_server_class(user_cls: Any, *, enable_memory_snapshot: bool = False) -> None:
    """What a Server class may be (Modal's rules and messages): lifecycle hooks only, started by `@enter`."""
    from .cls import _members

    if getattr(user_cls, "_is_shoal_cls", False) or getattr(user_cls, "_is_shoal_server", False):
        raise InvalidError(f"{user_cls!r} is already a shoal Cls or Server; decorate it only once")
    if not isinstance(user_cls, type):
        raise InvalidError("The @app.server() decorator must be used on a class.")
    name = user_cls.__name__
    members = _members(user_cls)
    if any(isinstance(v, Parameter) for v in members.values()):
        raise InvalidError(f"Server class {name} cannot use modal.parameter(). Servers do not support "
                           "parameterization.")
    funcs = {k: (v.__func__ if isinstance(v, (staticmethod, classmethod)) else v) for k, v in members.items()}
    funcs = {k: f for k, f in funcs.items() if callable(f) and not isinstance(f, type)}
    enters = [f for f in funcs.values() if hasattr(f, ENTER_ATTR)]
    if not enters:
        raise InvalidError("Server class must have an @modal.enter() to setup the server.")
    for key, f in funcs.items():
        if hasattr(f, METHOD_ATTR) or hasattr(f, BATCHED_ATTR):
            deco = "@modal.method()" if hasattr(f, METHOD_ATTR) else "@modal.batched()"
            raise InvalidError(f"Server class {name} cannot have `{deco}` decorated functions ({name}.{key}). "
                               "Servers only expose HTTP endpoints.")
    if not enable_memory_snapshot and any(getattr(f, ENTER_ATTR).get("snap") for f in enters):
        raise InvalidError("Server must have `enable_memory_snapshot=True` to use `snap=True` on `@modal.enter` "
                           "methods.")
    if getattr(user_cls, CONCURRENT_ATTR, None) is not None or any(
            getattr(f, CONCURRENT_ATTR, None) is not None for f in funcs.values()):
        raise InvalidError(f"Server class {name} cannot be decorated with `@modal.concurrent()`. Please use "
                           "`target_concurrency` param instead.")
    for key, f in funcs.items():
        webhook = getattr(f, WEBHOOK_ATTR, None)
        if webhook is not None:
            from .web import webhook_decorator

            raise InvalidError(f"Server class {name} cannot be decorated with `@modal.{webhook_decorator(webhook)}()` "
                               f"({name}.{key}). Servers already expose HTTP endpoints.")
    if user_cls.__init__ is not object.__init__:  # type: ignore[misc]
        raise InvalidError(f"Server class {name} cannot have a custom __init__ method. Use @modal.enter() for "
                           "initialization logic instead.")


def _warn_not_enforced(config: ServerConfig, stacklevel: int) -> None:
    """Server options shoal records but does not act on warn once per process, as `@app.function`'s do."""
    from . import _options

    if "SHOAL_CONTAINER_ID" in os.environ:  # the container imports the same module: warn on the caller's side
        return
    given = {"h2_enabled": config.h2_enabled,
             "routing_region": config.routing_region != DEFAULT_ROUTING_REGION,
             "compute_region": config.compute_region}
    for name in _SERVER_NOT_YET_ENFORCED:
        if given[name] and name not in _options._warned:
            _options._warned.add(name)
            warnings.warn(f"shoal records `{name}=` but does not enforce it yet", NotImplementedWarning,
                          stacklevel=stacklevel + 1)


# -- the service function --------------------------------------------------------------------------------------------
class _NoCalls:
    """`server_fn.remote` and friends: a Server is reached over HTTP, never called with inputs."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, objtype: Any = None) -> Any:
        raise AttributeError(_no_calls_message(self.name))


def _no_calls_message(attr: str) -> str:
    return (f"A Server has no `.{attr}`: it is not called with inputs. Send HTTP requests to its URL "
            "(`server.get_url()`) instead.")


class _ServerFunction(Function):
    """The Function a Server registers (and is hydrated as); its definition carries the `server` config."""

    _server_config: ServerConfig | None = None  # None: a looked-up Server not resolved yet
    _lookup_app_id: str | None = None

    def _definition(self) -> FunctionDefinition:
        return msgspec.structs.replace(super()._definition(), webhook=None,
                                       server=self._server_config or ServerConfig())

    def _asks_for_web_url(self) -> bool:
        """Always ask the control plane (a Server always has a URL; `shoal serve` prints it)."""
        return True

    def _check_hydratable(self) -> None:
        """Fail before any request (which would start a control plane) where there is nothing to resolve."""
        if self._function_id is None and self._lookup is None:
            raise ExecutionError(f"Server {self._tag!r} has not been hydrated: its app is not running. Use it inside "
                                 "`with app.run():`, from `shoal run`, or after deploying the app.")

    def _apply_lookup(self, resp: dict[str, Any]) -> None:
        assert self._lookup is not None
        app_name, name, _ = self._lookup
        server = resp.get("server")
        # A control plane that reports `server` says what it is; otherwise a class-like definition without the
        # ".*" of a Cls's tag can only be a Server.
        is_server = bool(server) if "server" in resp else resp.get("cls") is not None
        if not is_server:
            raise InvalidError(f"{name!r} of app {app_name!r} is not a Server: use Function.from_name or "
                               "Cls.from_name")
        self._server_config = msgspec.convert(server, ServerConfig) if server else None
        self._lookup_app_id = resp.get("app_id")
        self._function_id = resp["function_id"]


for _attr in _NO_CALLS:
    _descriptor = _NoCalls()
    _descriptor.__set_name__(_ServerFunction, _attr)
    setattr(_ServerFunction, _attr, _descriptor)
del _attr, _descriptor


# -- Server ----------------------------------------------------------------------------------------------------------
class ServerAutoscalerManager:
    """`Server.autoscaler`: read and override the Server's autoscaler knobs while its app runs. Overrides last
    until the app is redeployed."""

    def __init__(self, service: Function) -> None:
        self._service = service

    def _apply(self, **values: Any) -> Plan:
        from ._options import check_autoscaler

        check_autoscaler(values)
        _check_target_concurrency(values.get("target_concurrency"))
        _check_scaleup_window(values.get("scaleup_window"))
        body = {k: v for k, v in values.items() if v is not None}
        self._service._check_hydratable()
        fid = yield from self._service._fid_plan()
        resp = yield ("POST", f"/v1/functions/{fid}/autoscaler", body)
        return ServerAutoscalerSettings._from_wire(resp["settings"])

    @rpc
    def update(self, *, target_concurrency: float | None = None, min_containers: int | None = None,
               max_containers: int | None = None, buffer_containers: int | None = None,
               scaleup_window: float | None = None, scaledown_window: int | None = None) -> Plan:
        """Override some knobs now (None leaves one as it is; `target_concurrency=0` turns autoscaling off);
        returns the settings in force afterwards (a ServerAutoscalerSettings)."""
        return (yield from self._apply(target_concurrency=target_concurrency, min_containers=min_containers,
                                       max_containers=max_containers, buffer_containers=buffer_containers,
                                       scaleup_window=scaleup_window, scaledown_window=scaledown_window))

    @rpc
    def settings(self) -> Plan:
        """The knobs in force now (a ServerAutoscalerSettings): the decorator's, with runtime overrides applied."""
        self._service._check_hydratable()
        fid = yield from self._service._fid_plan()
        resp = yield ("GET", f"/v1/functions/{fid}/autoscaler", None)
        return ServerAutoscalerSettings._from_wire(resp["settings"])


@dataclasses.dataclass(frozen=True)
class ServerSessionCredentials:
    """A strict session (`Server.sessions.start()`): send `Modal-Authorization: Bearer <token>` with each request
    to reach its container; the token also authenticates the request."""

    session_id: str
    token: str


class ServerSessionsManager:
    """`Server.sessions`: strict sessions of a `@modal.sessioned()` Server, each pinned to one container, which is
    kept while the session lives. A session ends when terminated, after `idle_timeout` seconds without requests,
    or with its container; its token then gets 410 (a token never issued: 404)."""

    def __init__(self, server: Server) -> None:
        self._server = server

    def _fid_plan(self) -> Plan:
        service = self._server._service
        if service._lookup is not None:
            yield from service._hydrate_plan()  # a looked-up Server: whether it is sessioned is known once resolved
        config = service._server_config
        if config is not None and not config.sessioned:
            raise InvalidError("`sessions` requires `@modal.sessioned()` on the Server.")
        service._check_hydratable()
        return (yield from service._fid_plan())

    @rpc
    def start(self, idle_timeout: int = 600) -> Plan:
        """A new session on one of the Server's containers (one is started when none is up; this waits for it,
        up to SESSION_START_WAIT_S) -> ServerSessionCredentials."""
        from ._spec.limits import SESSION_IDLE_S

        if not isinstance(idle_timeout, int) or isinstance(idle_timeout, bool) or not (
                SESSION_IDLE_S[0] <= idle_timeout <= SESSION_IDLE_S[1]):
            raise InvalidError(f"`idle_timeout` must be a whole number of seconds in {SESSION_IDLE_S[0]}.."
                               f"{SESSION_IDLE_S[1]}.")
        fid = yield from self._fid_plan()
        deadline = time.monotonic() + SESSION_START_WAIT_S
        while True:
            resp = yield ("POST", f"/v1/functions/{fid}/sessions", {"idle_timeout": idle_timeout})
            if not resp.get("pending"):
                return ServerSessionCredentials(session_id=resp["session_id"], token=resp["token"])
            if time.monotonic() > deadline:
                raise ExecutionError(f"no container of Server {self._server.name!r} became ready for a session "
                                     f"within {SESSION_START_WAIT_S:g}s")

    @rpc
    def terminate(self, token: str) -> Plan:
        """End the session of `token` (a session already ended, or unknown, counts as ended)."""
        from .exception import NotFoundError

        if not isinstance(token, str):
            raise InvalidError("`token` must be the token of a session (a string)")
        fid = yield from self._fid_plan()
        try:
            yield ("POST", f"/v1/functions/{fid}/sessions/terminate", {"token": token})
        except NotFoundError:
            pass


class Server:
    """What `@app.server()` returns; `Server.from_name(app, name)` looks one up. A Server is reached over HTTP at
    `get_url()`: it has no `.remote()`."""

    _is_shoal_server = True

    def __init__(self, *, name: str, service: _ServerFunction, user_cls: type | None = None,
                 app: App | None = None, by_id: bool = False) -> None:
        self._name = name
        self._by_id = by_id
        self._service = service
        self._user_cls = user_cls
        self._app = app
        if user_cls is not None:
            self.__doc__ = user_cls.__doc__
            self.__module__ = user_cls.__module__
            self.__qualname__ = user_cls.__qualname__

    def __repr__(self) -> str:
        fid = self._service.object_id
        return f"Server({self._name}{', ' + fid if fid else ''})"

    def __getattr__(self, k: str) -> Any:
        if k in _NO_CALLS:
            raise AttributeError(_no_calls_message(k))
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {k!r}")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise InvalidError(f"Server {self._name!r} is not instantiated: its container builds the object and runs "
                           "its @modal.enter() hooks. Send HTTP requests to `get_url()` instead.")

    # -- identity --------------------------------------------------------------------------------------------------
    @property
    def object_id(self) -> str | None:
        """The id of the Server's function (None until its app runs, or until a looked-up Server is resolved)."""
        return self._service.object_id

    @property
    def name(self) -> str:
        return self._name

    def _get_user_cls(self) -> type:
        assert self._user_cls is not None
        return self._user_cls

    def _get_service_function(self) -> _ServerFunction:
        return self._service

    def _is_local(self) -> bool:
        return self._user_cls is not None

    def _is_sessioned(self) -> bool:
        config = self._service._server_config
        return config is not None and config.sessioned

    # -- lookups ---------------------------------------------------------------------------------------------------
    @classmethod
    def from_name(cls, app_name: str, name: str, *, environment_name: str | None = None,
                  client: Any = None) -> Server:
        """A lazy reference to Server `name` of the deployed app `app_name`, resolved on first use (NotFoundError
        then if there is none). Where no deployed app has that name, the most recently started running app of that
        name is used, as for `Function.from_name`."""
        from ._options import FunctionOptions

        if not isinstance(app_name, str) or not isinstance(name, str) or not app_name or not name:
            raise InvalidError("Server.from_name takes an app name and a Server name (strings)")
        service = _ServerFunction(None, None, tag=name, options=FunctionOptions(), secrets=[])
        service._lookup = (app_name, name, None)
        return cls(name=name, service=service)

    @classmethod
    def from_id(cls, server_id: str, *, client: Any = None) -> Server:
        """A Server by the id of its function (`fu-…`, as `Server.object_id` gives it)."""
        from ._options import FunctionOptions

        if not isinstance(server_id, str) or not server_id:
            raise InvalidError(f"not a Server id: {server_id!r}")
        service = _ServerFunction(None, None, tag=server_id, options=FunctionOptions(), secrets=[])
        service._function_id = server_id
        return cls(name=server_id, service=service, by_id=True)

    @rpc
    def hydrate(self, client: Any = None) -> Plan:
        """Resolve the Server now (NotFoundError if a looked-up one does not exist; ExecutionError if its app is
        not running); returns self."""
        self._service._check_hydratable()
        if self._service._function_id is None:
            yield from self._service._fid_plan()
        return self

    # -- URL and info ----------------------------------------------------------------------------------------------
    @rpc
    def get_url(self) -> Plan:
        """The URL to send requests to (cached per run of its app)."""
        self._service._check_hydratable()
        return (yield from self._service._web_url_plan())

    def _info_needs_url(self, refresh: bool) -> bool:
        """Prepare `info()`; False where there is nothing to ask (defined here, its app not running)."""
        service = self._service
        if refresh:
            service._web_url_cache = None
            if service._lookup is not None:
                service._function_id = None  # look it up again
        return service._lookup is not None or service._function_id is not None

    def _info_of(self, url: str | None) -> ServerInfo:
        service = self._service
        config = service._server_config
        if self._app is not None:
            app_name = self._app.name
        else:
            app_name = service._lookup[0] if service._lookup is not None else None
        settings = (config.port, config.target_concurrency, config.max_concurrency, config.unauthenticated,
                    config.routing_region) if config is not None else (None,) * 5
        return ServerInfo(None if self._by_id else self._name, app_name, url, *settings, object_id=service.object_id)

    @rpc
    def info(self, *, refresh: bool = False) -> Plan:
        """An overview of the Server (a ServerInfo): name, app, URL, port and its request-handling settings. Asks
        the control plane for what it does not know yet (a looked-up Server, the URL), or again with
        `refresh=True`."""
        ask = self._info_needs_url(refresh)
        return self._info_of((yield from self._service._web_url_plan()) if ask else None)

    # -- autoscaler and sessions -----------------------------------------------------------------------------------
    @property
    def autoscaler(self) -> ServerAutoscalerManager:
        """`.autoscaler.settings()` and `.autoscaler.update(...)`: the Server's container pool at runtime."""
        return ServerAutoscalerManager(self._service)

    @rpc(deprecated="`Server.update_autoscaler(...)` is deprecated; use `Server.autoscaler.update(...)`")
    def update_autoscaler(self, *, target_concurrency: float | None = None,
                          min_containers: int | None = None, max_containers: int | None = None,
                          buffer_containers: int | None = None, scaleup_window: float | None = None,
                          scaledown_window: int | None = None) -> Plan:
        """Deprecated: use `.autoscaler.update(...)`. Returns the settings now in force."""
        return (yield from self.autoscaler._apply(
            target_concurrency=target_concurrency, min_containers=min_containers, max_containers=max_containers,
            buffer_containers=buffer_containers, scaleup_window=scaleup_window, scaledown_window=scaledown_window))

    @property
    def sessions(self) -> ServerSessionsManager:
        """Strict sessions of a `@modal.sessioned()` Server (InvalidError for one defined here without it)."""
        if self._is_local() and not self._is_sessioned():
            raise InvalidError("`sessions` requires `@modal.sessioned()` on the Server.")
        return ServerSessionsManager(self)


# -- @app.server() -----------------------------------------------------------------------------------------------------
def _register(app: App, function_kwargs: dict[str, Any], user_cls: type) -> Function:
    """Register through `app.function` (so a Server gets exactly the options handling of functions), with its
    warnings pointing at the user's decorator line rather than at this module."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fn = app.function(**function_kwargs)(user_cls)
    try:
        for w in caught:
            warnings.warn(w.message, w.category, stacklevel=3)
    except BaseException:  # a warning turned into an error by the caller's filters: leave nothing registered
        if app._functions.get(fn.tag) is fn:
            del app._functions[fn.tag]
        raise
    return fn


def _server_decorator(app: App, config: ServerConfig, function_kwargs: dict[str, Any],
                      name: str | None) -> Callable[[type], Server]:
    """The decorator `@app.server(...)` returns; `config` is validated already (`server_config`)."""
    if name is not None and (not isinstance(name, str) or not name):
        raise InvalidError(f"`name` must be a non-empty string, got {name!r}")

    def decorate(user_cls: type) -> Server:
        from .cls import inspect_class

        check_server_class(user_cls, enable_memory_snapshot=bool(function_kwargs.get("enable_memory_snapshot")))
        tag = name or user_cls.__name__
        info = inspect_class(user_cls)
        sessioned = bool(getattr(user_cls, SESSIONED_ATTR, False))
        _warn_not_enforced(config, stacklevel=2)
        fn = _register(app, {**function_kwargs, "name": tag,
                             # @enter and the port together must be ready within startup_timeout
                             "startup_timeout": math.ceil(config.startup_timeout)}, user_cls)
        fn.__class__ = _ServerFunction  # the same Function, with the Server's definition and no calls
        assert isinstance(fn, _ServerFunction)
        fn._cls_info = info
        fn._server_config = msgspec.structs.replace(config, sessioned=sessioned)
        fn._options.region = config.compute_region
        server = Server(name=tag, service=fn, user_cls=user_cls, app=app)
        app._servers[tag] = server
        return server

    return decorate
