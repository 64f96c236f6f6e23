"""`App`: groups functions, runs them as an ephemeral app (`app.run()`), and holds local entrypoints."""

from __future__ import annotations

import inspect
import os
import threading
import time
import weakref
from collections.abc import Callable, Collection
from typing import Any

from . import _container_context
from ._client.aio import Plan, in_thread, on_class, rpc
from ._client.transport import get_client
from ._deploy_log import DeployLogFollower
from ._options import build_options, check_secrets, reject_deprecated
from ._output import (
    LiveStartProgress,
    LogPrinter,
    StartProgress,
    created_objects,
    line_safe_output,
    output_enabled,
    start_progress,
    status,
)
from ._partial import BATCHED_ATTR, CONCURRENT_ATTR, check_batched_function
from ._spec.definitions import FunctionDefinition
from ._spec.limits import name_problem
from .exception import InvalidError
from .functions import Function
from .retries import Retries
from .schedule import Cron, Period
from .web import check_not_generator, webhook_of

LOG_POLL_S = 25.0
STOP_WAIT_S = 5.0
DETACHED_LOG_WAIT_S = 0.5  # a detached app's log never ends: wait only for output already on its way


class LocalEntrypoint:
    """A function that runs on the caller's machine, inside the running app (`shoal run`)."""

    def __init__(self, app: App, raw_f: Callable, name: str) -> None:
        self.app = app
        self.raw_f = raw_f
        self.name = name
        self.__doc__ = raw_f.__doc__

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.raw_f(*args, **kwargs)

    @property
    def info(self) -> inspect.Signature:
        return inspect.signature(self.raw_f)


class App:
    """A group of functions that are run or deployed together."""

    _instances: weakref.WeakSet[App] = weakref.WeakSet()

    def __init__(
        self,
        name: str | None = None,
        *,
        tags: dict[str, str] | None = None,
        image: Any = None,
        secrets: Collection[Any] = (),
        volumes: dict[Any, Any] | None = None,
        include_source: bool = True,
    ) -> None:
        if name is not None and (problem := name_problem(name, "App")):
            raise InvalidError(problem)
        from .image import check_image

        check_image(image, "App")
        self._name = name
        self._tags = dict(tags or {})
        self._image = image
        self._secrets = check_secrets(secrets)
        self._volumes = dict(volumes or {})
        self._include_source = include_source
        self._functions: dict[str, Function] = {}
        self._entrypoints: dict[str, LocalEntrypoint] = {}
        self._classes: dict[str, Any] = {}  # name -> Cls
        self._servers: dict[str, Any] = {}  # name -> Server (its function is in _functions, under the same tag)
        self._app_id: str | None = None
        self._deployed_version: int | None = None
        self._running = False
        self._serve = False  # `shoal serve`: definitions say so (web URLs get "-dev"), registrations recreate
        self._interactive = False  # `app.run(interactive=True)`
        App._instances.add(self)

    def __repr__(self) -> str:
        return f"App({self._name!r})"

    # -- properties ------------------------------------------------------------------------------------------
    @property
    def name(self) -> str | None:
        return self._name

    @property
    def app_id(self) -> str | None:
        return self._app_id

    @property
    def description(self) -> str | None:
        """The app's name, else the file that defines it: what the CLI shows for an unnamed app."""
        if self._name:
            return self._name
        import __main__

        main = getattr(__main__, "__file__", None)
        return os.path.basename(main) if main else None

    @property
    def image(self) -> Any:
        """The default image of the app's functions (when none was given, shoal's default, `Image.debian_slim()`),
        so `with app.image.imports():` works in user code."""
        if self._image is None:
            from .image import Image

            return Image.debian_slim()
        return self._image

    @image.setter
    def image(self, value: Any) -> None:
        from .image import check_image

        check_image(value, "App.image")
        self._image = value

    @property
    def is_interactive(self) -> bool:
        """Whether the app was run with `app.run(interactive=True)` (shoal's CLI has no `-i` yet)."""
        return self._interactive

    @property
    def tags(self) -> dict[str, str]:
        return dict(self._tags)

    @property
    def registered_functions(self) -> dict[str, Function]:
        return dict(self._functions)

    @property
    def registered_entrypoints(self) -> dict[str, LocalEntrypoint]:
        return dict(self._entrypoints)

    @property
    def registered_classes(self) -> dict[str, Any]:
        return dict(self._classes)

    @property
    def registered_servers(self) -> dict[str, Any]:
        """`@app.server()` classes by name (each is also a registered function, under the same tag)."""
        return dict(self._servers)

    @property
    def registered_web_endpoints(self) -> list[str]:
        """Tags of the web functions, and `Cls.method` for the web methods of classes."""
        tags = [tag for tag, fn in self._functions.items() if fn._webhook is not None]
        for cls_name, cls in self._classes.items():
            methods = cls._info.methods if cls._info is not None else {}
            tags += [f"{cls_name}.{m}" for m, spec in methods.items() if spec.webhook is not None]
        return tags

    def include(self, other_app: App, /, inherit_tags: bool = True) -> App:
        """Add another app's functions and entrypoints to this one."""
        for tag, fn in other_app._functions.items():
            if tag in self._functions and self._functions[tag] is not fn:
                raise InvalidError(f"both apps define a function named {tag!r}")
            self._functions[tag] = fn
        self._entrypoints.update(other_app._entrypoints)
        self._classes.update(other_app._classes)
        self._servers.update(other_app._servers)
        if inherit_tags:
            self._tags = {**other_app._tags, **self._tags}
        return self

    def get_tags(self) -> dict[str, str]:
        return dict(self._tags)

    # -- decorators ------------------------------------------------------------------------------------------
    def function(
        self,
        _warn_parentheses_missing: Any = None,
        *,
        image: Any = None,
        schedule: Period | Cron | None = None,
        env: dict[str, str | None] | None = None,
        secrets: Collection[Any] | None = None,
        gpu: str | list[str] | None = None,
        serialized: bool = False,
        network_file_systems: dict[Any, Any] = {},  # noqa: B006 - Modal's signature
        volumes: dict[Any, Any] = {},  # noqa: B006
        cpu: float | tuple[float, float] | None = None,
        memory: int | tuple[int, int] | None = None,
        ephemeral_disk: int | None = None,
        min_containers: int | None = None,
        max_containers: int | None = None,
        buffer_containers: int | None = None,
        scaledown_window: int | None = None,
        proxy: Any = None,
        retries: int | Retries | None = None,
        timeout: int = 300,
        startup_timeout: int | None = None,
        name: str | None = None,
        is_generator: bool | None = None,
        cloud: str | None = None,
        region: str | list[str] | None = None,
        routing_region: str | None = None,
        nonpreemptible: bool = False,
        enable_memory_snapshot: bool = False,
        block_network: bool = False,
        restrict_modal_access: bool = False,
        single_use_containers: bool = False,
        i6pn: bool | None = None,
        include_source: bool | None = None,
        experimental_options: dict[str, Any] | None = None,
        _experimental_restrict_output: bool = False,
        max_inputs: int | None = None,
        keep_warm: Any = None,
        concurrency_limit: Any = None,
        container_idle_timeout: Any = None,
        allow_concurrent_inputs: Any = None,
    ) -> Callable[[Callable], Function]:
        """Turn a Python function into a shoal Function. Bad arguments fail here, naming the parameter."""
        if _warn_parentheses_missing is not None:
            raise InvalidError("Did you forget parentheses? Use `@app.function()`, not `@app.function`.")
        from .image import check_image

        check_image(image, "@app.function()")
        reject_deprecated(dict(keep_warm=keep_warm, concurrency_limit=concurrency_limit,
                               container_idle_timeout=container_idle_timeout,
                               allow_concurrent_inputs=allow_concurrent_inputs))
        if schedule is not None and not isinstance(schedule, (Period, Cron)):
            raise InvalidError(f"`schedule` must be a modal.Period or modal.Cron, got {type(schedule).__name__}")
        if env is not None and not isinstance(env, dict):
            raise InvalidError(f"`env` must be a dict, got {type(env).__name__}")
        if not isinstance(timeout, (int, float)) and timeout is not None:
            raise InvalidError(f"`timeout` must be a number of seconds, got {timeout!r}")
        from .secret import Secret

        all_secrets = [*self._secrets, *check_secrets(secrets)]
        if env:
            all_secrets.append(Secret.from_dict(env))
        extra = dict(network_file_systems=network_file_systems, volumes={**self._volumes, **volumes},
                     ephemeral_disk=ephemeral_disk, proxy=proxy, cloud=cloud, routing_region=routing_region,
                     nonpreemptible=nonpreemptible, enable_memory_snapshot=enable_memory_snapshot,
                     block_network=block_network, restrict_modal_access=restrict_modal_access, i6pn=i6pn,
                     experimental_options=experimental_options)

        def decorate(f: Callable) -> Function:
            if not isinstance(f, type):
                from .cls import _check_function_target

                _check_function_target(f)
            if isinstance(f, Function):
                raise InvalidError(f"{f.tag!r} is already a shoal Function; decorate it only once")
            if not callable(f):
                raise InvalidError(f"@app.function() must decorate a function, got {type(f).__name__}")
            gen = bool(is_generator) if is_generator is not None else (
                inspect.isgeneratorfunction(f) or inspect.isasyncgenfunction(f))
            qualname = getattr(f, "__qualname__", getattr(f, "__name__", ""))
            if "<locals>" in qualname and not serialized:
                raise InvalidError(
                    f"function {qualname!r} is defined in a local scope; pass serialized=True or move it to "
                    "module level")
            if schedule is not None and _has_required_params(f):
                raise InvalidError(f"scheduled function {qualname!r} must take no arguments")
            webhook = webhook_of(f)
            if webhook is not None:
                check_not_generator(qualname, gen)
            options = build_options(
                timeout=timeout, startup_timeout=startup_timeout, retries=retries, min_containers=min_containers,
                max_containers=max_containers, buffer_containers=buffer_containers,
                scaledown_window=scaledown_window, cpu=cpu, memory=memory, gpu=gpu,
                single_use_containers=single_use_containers, max_inputs=max_inputs, serialized=serialized,
                include_source=include_source, region=region, is_generator=gen, is_web=webhook is not None,
                extra=extra,
            )
            concurrency = getattr(f, CONCURRENT_ATTR, None)
            if concurrency:
                if options.single_use_containers:
                    raise InvalidError("@modal.concurrent cannot be combined with single_use_containers=True")
                options.max_inputs = concurrency["max_inputs"]
                options.target_inputs = concurrency["target_inputs"]
            batching = getattr(f, BATCHED_ATTR, None) if not isinstance(f, type) else None
            if batching:
                check_batched_function(f, getattr(f, "__name__", qualname), gen)
                if concurrency:
                    raise InvalidError(f"{qualname}: @modal.batched cannot be combined with @modal.concurrent")
                if webhook is not None:
                    raise InvalidError(f"{qualname}: @modal.batched cannot be combined with a web endpoint "
                                       "decorator")
                options.batch_max_size = batching["max_batch_size"]
                options.batch_wait_ms = batching["wait_ms"]
            tag = name or qualname
            fn = Function(self, f, tag=tag, options=options, secrets=all_secrets, image=image or self._image,
                          is_generator=gen, schedule=schedule, webhook=webhook)
            if tag in self._functions and self._functions[tag]._raw_f is not f:
                import warnings

                warnings.warn(f"function {tag!r} is defined twice in app {self._name!r}; the last one wins",
                              stacklevel=2)
            self._functions[tag] = fn
            return fn

        return decorate

    def cls(
        self,
        _warn_parentheses_missing: Any = None,
        *,
        image: Any = None,
        env: dict[str, str | None] | None = None,
        secrets: Collection[Any] | None = None,
        gpu: str | list[str] | None = None,
        serialized: bool = False,
        network_file_systems: dict[Any, Any] = {},  # noqa: B006 - Modal's signature
        volumes: dict[Any, Any] = {},  # noqa: B006
        cpu: float | tuple[float, float] | None = None,
        memory: int | tuple[int, int] | None = None,
        ephemeral_disk: int | None = None,
        min_containers: int | None = None,
        max_containers: int | None = None,
        buffer_containers: int | None = None,
        scaledown_window: int | None = None,
        proxy: Any = None,
        retries: int | Retries | None = None,
        timeout: int = 300,
        startup_timeout: int | None = None,
        cloud: str | None = None,
        region: str | list[str] | None = None,
        routing_region: str | None = None,
        nonpreemptible: bool = False,
        enable_memory_snapshot: bool = False,
        block_network: bool = False,
        restrict_modal_access: bool = False,
        single_use_containers: bool = False,
        i6pn: bool | None = None,
        include_source: bool | None = None,
        experimental_options: dict[str, Any] | None = None,
        _experimental_restrict_output: bool = False,
        max_inputs: int | None = None,
        keep_warm: Any = None,
        concurrency_limit: Any = None,
        container_idle_timeout: Any = None,
        allow_concurrent_inputs: Any = None,
    ) -> Callable[[type], Any]:
        """Turn a class into a shoal Cls: `@modal.method()`s become Functions sharing one container pool per
        parameter set, with `@modal.enter()`/`@modal.exit()` hooks run once per container."""
        if _warn_parentheses_missing is not None:
            raise InvalidError("Did you forget parentheses? Use `@app.cls()`, not `@app.cls`.")
        reject_deprecated(dict(keep_warm=keep_warm, concurrency_limit=concurrency_limit,
                               container_idle_timeout=container_idle_timeout,
                               allow_concurrent_inputs=allow_concurrent_inputs), where="@app.cls")
        from .cls import _cls_decorator

        return _cls_decorator(self, dict(
            image=image, env=env, secrets=secrets, gpu=gpu, serialized=serialized,
            network_file_systems=network_file_systems, volumes=volumes, cpu=cpu, memory=memory,
            ephemeral_disk=ephemeral_disk, min_containers=min_containers, max_containers=max_containers,
            buffer_containers=buffer_containers, scaledown_window=scaledown_window, proxy=proxy, retries=retries,
            timeout=timeout, startup_timeout=startup_timeout, cloud=cloud, region=region,
            routing_region=routing_region, nonpreemptible=nonpreemptible, enable_memory_snapshot=enable_memory_snapshot,
            block_network=block_network, restrict_modal_access=restrict_modal_access,
            single_use_containers=single_use_containers, i6pn=i6pn, include_source=include_source,
            experimental_options=experimental_options, _experimental_restrict_output=_experimental_restrict_output,
            max_inputs=max_inputs))

    def server(
        self,
        _warn_parentheses_missing: Any = None,
        *,
        image: Any = None,
        env: dict[str, str | None] | None = None,
        secrets: Collection[Any] | None = None,
        gpu: str | list[str] | None = None,
        serialized: bool = False,
        volumes: dict[Any, Any] = {},  # noqa: B006 - Modal's signature
        cpu: float | tuple[float, float] | None = None,
        memory: int | tuple[int, int] | None = None,
        ephemeral_disk: int | None = None,
        target_concurrency: float | None = None,
        max_concurrency: int | None = None,
        min_containers: int | None = None,
        max_containers: int | None = None,
        buffer_containers: int | None = None,
        scaleup_window: int | None = None,
        scaledown_window: int | None = None,
        startup_timeout: int = 30,
        name: str | None = None,
        port: int = 8000,
        unauthenticated: bool = False,
        h2_enabled: bool = False,
        exit_grace_period: int = 0,
        routing_region: str = "us-east",
        compute_region: str | Collection[str] | None = None,
        cloud: str | None = None,
        nonpreemptible: bool = False,
        proxy: Any = None,
        i6pn: bool | None = None,
        enable_memory_snapshot: bool = False,
        include_source: bool | None = None,
        experimental_options: dict[str, Any] | None = None,
    ) -> Callable[[type], Any]:
        """Turn a class into a shoal Server: its `@modal.enter()` starts a process listening on `0.0.0.0:port`,
        served at `Server.get_url()` (authenticated unless `unauthenticated=True`). Containers autoscale only
        with `target_concurrency`; with none up, requests get 503 while one starts."""
        if _warn_parentheses_missing is not None:
            raise InvalidError("Did you forget parentheses? Use `@app.server()`, not `@app.server`.")
        from .image import check_image
        from .servers import _server_decorator, server_config

        check_image(image, "@app.server()")
        config = server_config(
            port=port, startup_timeout=startup_timeout, target_concurrency=target_concurrency,
            max_concurrency=max_concurrency, scaleup_window=scaleup_window, unauthenticated=unauthenticated,
            exit_grace_period=exit_grace_period, routing_region=routing_region, compute_region=compute_region,
            h2_enabled=h2_enabled)
        return _server_decorator(self, config, dict(
            image=image, env=env, secrets=secrets, gpu=gpu, serialized=serialized, volumes=volumes, cpu=cpu,
            memory=memory, ephemeral_disk=ephemeral_disk, min_containers=min_containers,
            max_containers=max_containers, buffer_containers=buffer_containers, scaledown_window=scaledown_window,
            cloud=cloud, nonpreemptible=nonpreemptible, proxy=proxy, i6pn=i6pn,
            enable_memory_snapshot=enable_memory_snapshot, include_source=include_source,
            experimental_options=experimental_options), name)

    def local_entrypoint(self, _warn_parentheses_missing: Any = None, *, name: str | None = None
                         ) -> Callable[[Callable], LocalEntrypoint]:
        """A function `shoal run` calls on your machine, with the app running; its arguments become flags."""
        if _warn_parentheses_missing is not None:
            raise InvalidError("Did you forget parentheses? Use `@app.local_entrypoint()`.")

        def decorate(f: Callable) -> LocalEntrypoint:
            ep = LocalEntrypoint(self, f, name or f.__name__)
            self._entrypoints[ep.name] = ep
            return ep

        return decorate

    # -- running ---------------------------------------------------------------------------------------------
    def run(self, *, name: str | None = None, client: Any = None, detach: bool = False,
            interactive: bool = False, environment_name: str | None = None, quiet: bool = False) -> _RunContext:
        """Run this app ephemerally for the duration of the `with` (or `async with`) block."""
        if not _container_context.is_local():
            if _container_context.importing_user_module:
                from ._container_context import StopImport

                raise StopImport()
            raise InvalidError("app.run() cannot be used inside a shoal container")
        self._interactive = bool(interactive)
        return _RunContext(self, name=name, detach=detach, quiet=quiet)

    @rpc
    def stop(self) -> Plan:
        """Stop the running app (its calls are cancelled, its containers stop)."""
        if self._app_id:
            yield ("POST", f"/v1/apps/{self._app_id}/stop", {})

    @in_thread  # it uploads sources and image files over connections of their own
    def deploy(self, *, name: str | None = None, environment_name: str | None = None, tag: str = "",
               client: Any = None, strategy: str = "rolling") -> App:
        """Deploy this app: it persists under its name until stopped. Deploying again updates it in place as
        its next version: `strategy="rolling"` keeps the old containers serving until new ones are ready, then
        drains them; `"recreate"` stops them at once. The functions are hydrated, so `.remote()` works here
        afterwards; other processes reach them with `Function.from_name(name, tag)`."""
        if not _container_context.is_local():
            if _container_context.importing_user_module:
                from ._container_context import StopImport

                raise StopImport()
            raise InvalidError("app.deploy() cannot be used inside a shoal container")
        if strategy not in ("rolling", "recreate"):
            raise InvalidError(f"strategy must be 'rolling' or 'recreate', not {strategy!r}")
        name = name or self._name
        if not name or not isinstance(name, str):
            raise InvalidError("a deployed app needs a name: `App(\"name\")` or `app.deploy(name=\"name\")`")
        if self._running:
            raise InvalidError("this app is running (`app.run()`): deploy it outside the `with` block")
        t0 = time.monotonic()
        progress = start_progress("Uploading sources and image files")
        follower = DeployLogFollower(name, progress) if output_enabled() else None
        try:
            body = {"name": name, "strategy": strategy, "tag": tag or "", "functions": self._definitions()}
            progress.phase("Building images and registering functions")
            if follower is not None:
                follower.start()
            resp: dict[str, Any] | None = None
            try:
                resp = get_client().call("POST", "/v1/apps/deploy", body)
            finally:
                if follower is not None:  # the build's lines all printed (and drawn) before the status goes
                    follower.finish(resp["app_id"] if resp is not None else None)
        finally:
            progress.close()
        self._app_id = resp["app_id"]
        for fn_tag, fn in self._functions.items():
            fn._hydrate(resp["functions"][fn_tag])
        self._deployed_version = int(resp["version"])
        created_objects(list(self._functions), self._web_urls)
        status(f"App deployed in {time.monotonic() - t0:.1f}s! 🎉 {name!r} version {resp['version']} "
               f"({self._app_id}, {strategy})")
        status(f"View Deployment: {_app_page(self._app_id)}", mark="")
        return self

    @on_class
    @rpc
    def lookup(cls, name: str, *, client: Any = None, environment_name: str | None = None,
               create_if_missing: bool = False) -> Plan:
        """The deployed app named `name` (or any app by its `ap-` id); with `create_if_missing`, an empty
        deployed app is created when there is none. NotFoundError otherwise."""
        if not isinstance(name, str) or not name:
            raise InvalidError("App.lookup takes the name (or ap- id) of an app")
        resp = yield ("POST", "/v1/apps/lookup", {"name": name, "create_if_missing": create_if_missing})
        app = cls(resp.get("name"))
        App._instances.discard(app)  # not a definition: containers never hydrate it
        app._app_id = resp["app_id"]
        app._deployed_version = resp.get("version")
        return app

    def _definitions(self) -> list[FunctionDefinition]:
        from ._client.source import container_module_name, pack_module
        from ._serialization import dumps
        from .image import wire_for

        client = get_client()
        uploaded: set[str] = set()
        defs = []
        for fn in self._functions.values():
            d = fn._definition()
            d.image = wire_for(getattr(fn, "_image", None), client, uploaded)  # fn's, else app's, else default
            raw = fn.get_raw_f()
            if fn._options.serialized:
                d.serialized_fn = dumps(raw, f"function {fn.tag!r}")
            else:
                module = raw.__module__
                sha, blob = pack_module(module)
                if sha not in uploaded:
                    status_code, _ = client.request_raw("HEAD", f"/v1/blobs/{sha}")
                    if status_code == 404:
                        client.request_raw("PUT", f"/v1/blobs/{sha}", blob)
                    uploaded.add(sha)
                d.source_id = sha
                d.module = container_module_name(module)
            d.serve = self._serve
            defs.append(d)
        return defs

    def _functions_body(self) -> dict[str, Any]:
        """The body of `POST /v1/apps/{id}/functions`. A served app's (`shoal serve`) definitions are registered
        as the app's next version, replacing its running containers at once, so a reload from a fresh import
        of the code (in another process) is a redeploy of the running app."""
        body: dict[str, Any] = {"functions": self._definitions()}
        if self._serve:
            body["strategy"] = "recreate"
        return body

    def _web_urls(self) -> dict[str, str]:
        """Each web function's URL (and each web method's, `Cls.method`), for the tree of created objects."""
        urls: dict[str, str] = {}
        for fn in self._functions.values():
            try:
                urls.update(fn._web_urls())
            except Exception:  # noqa: BLE001 - a URL we cannot get is not worth failing the start for
                continue
        return urls

    def _start(self, name: str | None, detach: bool, on_created: Callable[[str], None] | None = None,
               on_registered: Callable[[], None] | None = None) -> None:
        """Create the ephemeral app and register its functions (their images built meanwhile). `on_created`
        starts following its log; `on_registered` runs once the functions are registered (the build's output
        all printed)."""
        if self._running:
            raise InvalidError("this app is already running")
        client = get_client()
        resp = client.call("POST", "/v1/apps", {"name": name or self._name, "mode": "ephemeral", "detach": detach,
                                                **({"serve": True} if self._serve else {})})
        self._app_id = resp["app_id"]
        status(f"Initialized app {self._app_id}. View it at {_app_page(self._app_id)}")
        try:
            if on_created is not None:
                on_created(self._app_id)  # follow the log now: image builds stream to it while registering
            ids = client.call("POST", f"/v1/apps/{self._app_id}/functions", self._functions_body())["functions"]
            if on_registered is not None:
                on_registered()
        except BaseException:
            client.call("POST", f"/v1/apps/{self._app_id}/stop", {})
            raise
        for tag, fn in self._functions.items():
            fn._hydrate(ids[tag])
        self._running = True
        created_objects(list(self._functions), self._web_urls)

    def _finish(self, detach: bool) -> None:
        self._running = False
        if not detach and self._app_id:
            get_client().call("POST", f"/v1/apps/{self._app_id}/stop", {})
            status(f"App completed: {self._app_id}")
        for fn in self._functions.values():
            fn._function_id = None

    @classmethod
    def _hydrate_all(cls, app_functions: dict[str, str], app_name: str | None, tag: str | None = None
                     ) -> App | None:
        """Inside a container: give the functions of the app being served their ids, so nested calls work."""
        for app in list(cls._instances):
            if tag is not None and tag not in app._functions:
                continue
            if app_name is not None and app._name not in (None, app_name):
                continue
            for t, fn in app._functions.items():
                if t in app_functions:
                    fn._hydrate(app_functions[t])
            return app
        return None


class _RunContext:
    """`with app.run():` / `async with app.run():`, following the app's logs while it runs."""

    def __init__(self, app: App, *, name: str | None, detach: bool, quiet: bool) -> None:
        self.app = app
        self.name = name
        self.detach = detach
        self.quiet = quiet
        self._follower: _LogFollower | None = None
        self._progress: StartProgress = StartProgress()

    def __enter__(self) -> App:
        self._streams = line_safe_output()
        self._streams.__enter__()
        self._progress = start_progress("Creating objects")  # a live status on a terminal, else nothing
        try:
            self.app._start(self.name, self.detach, on_created=self._follow, on_registered=self._registered)
        except BaseException as exc:  # e.g. ImageBuildError: print the rest of the build output first
            self._progress.close()
            if self._follower is not None:
                self._follower.stop()
            self._streams.__exit__(type(exc), exc, exc.__traceback__)
            raise
        return self.app

    def _follow(self, app_id: str) -> None:
        self._follower = _LogFollower(app_id, session=not self.detach, quiet=self.quiet)
        self._follower.printer.watcher = self._progress
        self._follower.start()

    def _registered(self) -> None:
        """The functions are registered, so their images are built: the live status goes once the build's
        lines have been printed (each step drawn in it), and later lines are printed as they come."""
        if self._follower is not None and isinstance(self._progress, LiveStartProgress):
            self._follower.catch_up()
        self._progress.close()
        if self._follower is not None:
            self._follower.printer.watcher = None

    def __exit__(self, *exc: Any) -> None:
        try:
            self.app._finish(self.detach)
        finally:
            if self._follower is not None:
                # A detached app keeps running and its log never ends: wait only briefly for it.
                self._follower.stop(wait=DETACHED_LOG_WAIT_S if self.detach else STOP_WAIT_S)
            self._streams.__exit__(*exc)

    async def __aenter__(self) -> App:
        import asyncio

        return await asyncio.to_thread(self.__enter__)

    async def __aexit__(self, *exc: Any) -> None:
        import asyncio

        await asyncio.to_thread(self.__exit__, *exc)


class _LogFollower(threading.Thread):
    """Long-polls the app's logs and prints them. Its open poll is also the app's liveness signal: when this
    process dies the control plane stops the app after a short grace period."""

    def __init__(self, app_id: str, session: bool, quiet: bool) -> None:
        super().__init__(name="shoal-logs", daemon=True)
        self.app_id = app_id
        self.session = session
        self.quiet = quiet
        self.printer = LogPrinter()
        self._stop_event = threading.Event()
        self._read = threading.Condition()
        self.after = -1  # the last entry printed

    def run(self) -> None:
        try:
            self._follow()
        finally:
            with self._read:
                self._read.notify_all()

    def _follow(self) -> None:
        client = get_client()
        while True:
            try:
                resp = client.call(
                    "GET", f"/v1/apps/{self.app_id}/logs?after={self.after}&timeout={LOG_POLL_S}"
                    f"&session={int(self.session and not self._stop_event.is_set())}")
            except Exception:  # noqa: BLE001 - the control plane went away for good
                return
            for entry in resp["entries"]:
                if not self.quiet:
                    self.printer.write(entry)
            with self._read:
                self.after = resp.get("last", self.after)
                self._read.notify_all()
            if resp["state"] == "stopped" or (self._stop_event.is_set() and not resp["entries"]):
                return

    def catch_up(self, wait: float = STOP_WAIT_S) -> None:
        """Return once what the app has logged until now is printed (or after `wait` seconds)."""
        try:
            last = get_client().call("GET", f"/v1/apps/{self.app_id}/logs?after={self.after}&timeout=0")["last"]
        except Exception:  # noqa: BLE001 - nothing to wait for then
            return
        with self._read:
            self._read.wait_for(lambda: self.after >= last or not self.is_alive(), timeout=wait)

    def stop(self, wait: float = STOP_WAIT_S) -> None:
        """Stop following after at most `wait` seconds spent printing what the app still logs (while it stops,
        or, for a detached app that keeps running, output already on its way)."""
        self._stop_event.set()
        self.join(timeout=wait)


def _app_page(app_id: str) -> str:
    """The app's page on the control plane's dashboard (`shoal dashboard` logs a browser in)."""
    return f"{get_client().info.url.rstrip('/')}/dashboard/apps/{app_id}"


def _has_required_params(f: Callable) -> bool:
    try:
        sig = inspect.signature(f)
    except (TypeError, ValueError):
        return False
    return any(p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
               for p in sig.parameters.values())
