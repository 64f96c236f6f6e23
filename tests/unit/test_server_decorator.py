"""`@app.server()` / `modal.Server` / `modal.sessioned()` without a control plane: decoration-time validation, the
definition sent to the control plane, lookups and autoscaler calls against a fake client, and `shoal server`."""

from __future__ import annotations

import subprocess
import sys
import warnings
from typing import Any

import msgspec
import pytest
from click.testing import CliRunner

import shoal as modal
from shoal import _options, servers
from shoal._client import transport
from shoal.exception import ExecutionError, InvalidError, NotImplementedWarning

# -- the seed's example, at module level as users write it ------------------------------------------------------------
seed_app = modal.App("seed-app")


@seed_app.server(unauthenticated=True)
class Server:
    @modal.enter()
    def startup(self):
        import subprocess

        subprocess.Popen("python -m http.server -d / 8000", shell=True)


@pytest.fixture(autouse=True)
def no_control_plane(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing here may start a control plane: an unexpected request goes to a closed port and fails. Warnings
    of not-yet-enforced options start fresh (they warn once per process)."""
    monkeypatch.setenv("SHOAL_SERVER_URL", "http://127.0.0.1:9")
    monkeypatch.delenv("SHOAL_CONTAINER_ID", raising=False)
    monkeypatch.setattr(transport, "_client", None)
    monkeypatch.setattr(_options, "_warned", set())


class FakeClient:
    """Answers requests from `routes` ({(method, path): response}) and records them."""

    def __init__(self, routes: dict[tuple[str, str], Any]) -> None:
        self.routes = routes
        self.requests: list[tuple[str, str, Any]] = []

    def call(self, method: str, path: str, body: Any = None) -> Any:
        self.requests.append((method, path, body))
        answer = self.routes[(method, path)]
        if isinstance(answer, Exception):
            raise answer
        return answer(body) if callable(answer) else answer

    async def acall(self, method: str, path: str, body: Any = None) -> Any:
        return self.call(method, path, body)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Any:
    def install(routes: dict[tuple[str, str], Any]) -> FakeClient:
        client = FakeClient(routes)
        monkeypatch.setattr(transport, "_client", client)
        return client

    return install


def refuse_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    class Refuse:
        def __getattr__(self, name: str) -> Any:
            raise AssertionError("no request expected")

    monkeypatch.setattr(transport, "_client", Refuse())


def _server(app: modal.App | None = None, **kwargs: Any) -> Any:
    app = app or modal.App("a")

    @app.server(serialized=True, **kwargs)
    class S:
        @modal.enter()
        def start(self) -> None:
            pass

    return S


# -- the definition ------------------------------------------------------------------------------------------------
def test_seed_example_definition() -> None:
    assert isinstance(Server, modal.Server)
    d = msgspec.to_builtins(Server._get_service_function()._definition())
    assert d["tag"] == "Server"
    assert d["webhook"] is None
    assert d["cls"] == {"name": "Server", "params": [], "methods": {}, "enter": ["startup"], "exit": [],
                        "batched": None, "custom_init": False}
    assert d["server"] == {
        "port": 8000, "startup_timeout": 30.0, "target_concurrency": None, "max_concurrency": None,
        "scaleup_window": None, "unauthenticated": True, "exit_grace_period": 0.0, "routing_region": "us-east",
        "compute_region": None, "h2_enabled": False, "sessioned": False}
    options = d["options"]
    assert {k: options[k] for k in ("min_containers", "max_containers", "buffer_containers", "scaledown_window",
                                    "cpu", "memory", "gpu", "timeout", "startup_timeout", "serialized")} == {
        "min_containers": None, "max_containers": None, "buffer_containers": None, "scaledown_window": None,
        "cpu": None, "memory": None, "gpu": None, "timeout": 300, "startup_timeout": 30, "serialized": False}
    assert d["app_name"] == "seed-app" and d["is_generator"] is False
    assert seed_app.registered_servers == {"Server": Server}
    assert seed_app.registered_functions["Server"] is Server._get_service_function()


def test_the_server_dict_carries_every_setting() -> None:
    app = modal.App("a")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotImplementedWarning)
        s = _server(app, port=9000, startup_timeout=12, target_concurrency=2.5, max_concurrency=10,
                    scaleup_window=5, exit_grace_period=60, routing_region="eu-west", compute_region="eu-west-1",
                    h2_enabled=True, min_containers=1, max_containers=4, buffer_containers=1, scaledown_window=120,
                    cpu=2.0, memory=1024, gpu="t4", name="api")
    d = msgspec.to_builtins(s._get_service_function()._definition())
    assert d["tag"] == "api" and s.name == "api" and app.registered_servers == {"api": s}
    assert d["server"] == {
        "port": 9000, "startup_timeout": 12.0, "target_concurrency": 2.5, "max_concurrency": 10,
        "scaleup_window": 5.0, "unauthenticated": False, "exit_grace_period": 60.0, "routing_region": "eu-west",
        "compute_region": ["eu-west-1"], "h2_enabled": True, "sessioned": False}
    o = d["options"]
    assert (o["min_containers"], o["max_containers"], o["buffer_containers"], o["scaledown_window"]) == (1, 4, 1, 120)
    assert (o["cpu"], o["memory"], o["gpu"], o["startup_timeout"], o["region"]) == (2.0, 1024, ["T4"], 12,
                                                                                    ["eu-west-1"])
    assert d["cls"]["enter"] == ["start"] and d["cls"]["methods"] == {}


def test_fractional_target_concurrency_is_accepted() -> None:
    d = msgspec.to_builtins(_server(target_concurrency=1.5, max_concurrency=2)._get_service_function()._definition())
    assert (d["server"]["target_concurrency"], d["server"]["max_concurrency"]) == (1.5, 2)


def test_zero_means_unset() -> None:
    # 0 disables autoscaling (target) and means unlimited (max): sent as None, like leaving them out.
    d = msgspec.to_builtins(_server(target_concurrency=0, max_concurrency=0)._get_service_function()._definition())
    assert (d["server"]["target_concurrency"], d["server"]["max_concurrency"]) == (None, None)


def test_exit_hooks_and_compute_region_list() -> None:
    app = modal.App("a")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotImplementedWarning)

        @app.server(serialized=True, compute_region=["us-east-1", "us-east-2"])
        class S:
            @modal.enter()
            def start(self) -> None:
                pass

            @modal.exit()
            def stop(self) -> None:
                pass

    d = msgspec.to_builtins(S._get_service_function()._definition())
    assert (d["cls"]["enter"], d["cls"]["exit"]) == (["start"], ["stop"])
    assert d["server"]["compute_region"] == ["us-east-1", "us-east-2"]


def test_include_carries_servers() -> None:
    other = modal.App("other")
    s = _server(other)
    app = modal.App("main").include(other)
    assert app.registered_servers == {"S": s} and "S" in app.registered_functions


# -- validation ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(port=0), "`port` must be a positive integer between 1 and 65535"),
    (dict(port=65536), "`port` must be"),
    (dict(port="8000"), "`port` must be"),
    (dict(port=True), "`port` must be"),
    (dict(startup_timeout=0), "`startup_timeout` argument must be positive"),
    (dict(startup_timeout=-1), "`startup_timeout` argument must be positive"),
    (dict(exit_grace_period=-1), "`exit_grace_period` argument must be non-negative"),
    (dict(exit_grace_period=3601), "`exit_grace_period` argument must not exceed 3600"),
    (dict(target_concurrency=-1), "`target_concurrency` must be a non-negative number"),
    (dict(target_concurrency="2"), "`target_concurrency` must be"),
    (dict(max_concurrency=-1), "`max_concurrency` must be a non-negative integer"),
    (dict(max_concurrency=1.5), "`max_concurrency` must be"),
    (dict(target_concurrency=4, max_concurrency=2), r"`max_concurrency` \(2\) must be greater than or equal to "
                                                    r"`target_concurrency` \(4\)"),
    (dict(target_concurrency=2.5, max_concurrency=2), "`max_concurrency`"),
    (dict(scaleup_window=0), "`scaleup_window` must be a positive number"),
    (dict(scaleup_window=-5), "`scaleup_window`"),
    (dict(routing_region="mars"), "`routing_region` must be one of us-east, us-west, eu-west, ap-south"),
    (dict(routing_region=""), "`routing_region` argument must be passed"),
    (dict(compute_region=5), "`compute_region` must be a string or a list of strings"),
    (dict(compute_region=["us-east-1", 2]), "`compute_region`"),
    (dict(unauthenticated="yes"), "`unauthenticated` must be a bool"),
    (dict(h2_enabled=1), "`h2_enabled` must be a bool"),
])
def test_server_options_are_validated(kwargs: dict[str, Any], message: str) -> None:
    app = modal.App("a")
    with pytest.raises(InvalidError, match=message):
        app.server(**kwargs)


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(min_containers=-1), "`min_containers` must be >= 0"),
    (dict(max_containers=0), "`max_containers` must be >= 1"),
    (dict(min_containers=3, max_containers=2), r"`min_containers` \(3\) cannot be greater than `max_containers`"),
    (dict(buffer_containers=-1), "`buffer_containers`"),
    (dict(scaledown_window=1), "`scaledown_window` must be between 2 and 3600"),
    (dict(cpu=-1), "`cpu` must be positive"),
    (dict(memory=1.5), "`memory` is in MiB"),
    (dict(gpu="X1"), "unknown GPU type"),
    (dict(startup_timeout=10 ** 6), "`startup_timeout` must be between 1 and 86400"),
    (dict(name=""), "`name` must be a non-empty string"),
    (dict(image="debian"), "`image` must be a shoal.Image"),
])
def test_function_options_are_validated_like_app_function(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidError, match=message):
        _server(**kwargs)


def test_missing_parentheses() -> None:
    app = modal.App("a")
    with pytest.raises(InvalidError, match="Did you forget parentheses"):
        @app.server
        class S:
            @modal.enter()
            def start(self) -> None:
                pass


def _decorate(body: dict[str, Any], *, bases: tuple[type, ...] = (), **kwargs: Any) -> Any:
    return modal.App("a").server(serialized=True, **kwargs)(type("S", bases, body))


def _start(self: Any) -> None:
    pass


def test_class_needs_an_enter_hook() -> None:
    with pytest.raises(InvalidError, match=r"Server class must have an @modal.enter\(\) to setup the server"):
        _decorate({"start": _start})


def test_class_rejects_methods() -> None:
    with pytest.raises(InvalidError, match=r"cannot have `@modal.method\(\)` decorated functions"):
        _decorate({"start": modal.enter()(lambda self: None), "f": modal.method()(lambda self: 1)})


def test_class_rejects_batched_methods() -> None:
    def f(self: Any, xs: list[int]) -> list[int]:
        return xs

    with pytest.raises(InvalidError, match=r"cannot have `@modal.batched\(\)`"):
        _decorate({"start": modal.enter()(_start), "f": modal.batched(max_batch_size=2, wait_ms=1)(f)})


def test_class_rejects_concurrent_on_the_class() -> None:
    cls = modal.concurrent(max_inputs=4)(type("S", (), {"start": modal.enter()(lambda self: None)}))
    with pytest.raises(InvalidError, match=r"cannot be decorated with `@modal.concurrent\(\)`.*target_concurrency"):
        modal.App("a").server(serialized=True)(cls)


def test_class_rejects_concurrent_on_a_method() -> None:
    with pytest.raises(InvalidError, match=r"`@modal.concurrent\(\)`"):
        _decorate({"start": modal.enter()(lambda self: None),
                   "g": modal.concurrent(max_inputs=2)(lambda self: None)})


@pytest.mark.parametrize(("decorator", "name"), [
    (modal.web_server(8000), "web_server"),
    (modal.fastapi_endpoint(), "fastapi_endpoint"),
    (modal.asgi_app(), "asgi_app"),
    (modal.wsgi_app(), "wsgi_app"),
])
def test_class_rejects_web_decorators(decorator: Any, name: str) -> None:
    def web(self: Any) -> None:
        pass

    with pytest.raises(InvalidError, match=rf"cannot be decorated with `@modal.{name}\(\)`.*already expose HTTP"):
        _decorate({"start": modal.enter()(_start), "web": decorator(web)})


def test_class_rejects_parameters() -> None:
    body = {"start": modal.enter()(_start), "x": modal.parameter(default=1), "__annotations__": {"x": int}}
    with pytest.raises(InvalidError, match=r"cannot use modal.parameter\(\)"):
        _decorate(body)


def test_class_rejects_a_custom_init() -> None:
    def __init__(self: Any) -> None:  # noqa: N807
        pass

    with pytest.raises(InvalidError, match="cannot have a custom __init__ method"):
        _decorate({"start": modal.enter()(_start), "__init__": __init__})


def test_class_rules_cover_base_classes() -> None:
    base = type("Base", (), {"f": modal.method()(lambda self: 1)})
    with pytest.raises(InvalidError, match="@modal.method"):
        _decorate({"start": modal.enter()(_start)}, bases=(base,))
    # an enter hook inherited from a base class is enough
    hooked = type("Hooked", (), {"start": modal.enter()(_start)})
    s = _decorate({}, bases=(hooked,))
    assert msgspec.to_builtins(s._get_service_function()._definition())["cls"]["enter"] == ["start"]


def test_snap_enter_needs_memory_snapshots() -> None:
    with pytest.raises(InvalidError, match="enable_memory_snapshot=True` to use `snap=True`"):
        _decorate({"start": modal.enter(snap=True)(_start)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotImplementedWarning)
        _decorate({"start": modal.enter(snap=True)(_start)}, enable_memory_snapshot=True)


def test_must_decorate_a_class_once() -> None:
    app = modal.App("a")
    with pytest.raises(InvalidError, match="must be used on a class"):
        app.server(serialized=True)(_start)
    s = _server(app)
    with pytest.raises(InvalidError, match="decorate it only once"):
        app.server(serialized=True)(s)


def test_local_class_needs_serialized() -> None:
    app = modal.App("a")
    with pytest.raises(InvalidError, match="local scope; pass serialized=True"):
        @app.server()
        class S:
            @modal.enter()
            def start(self) -> None:
                pass


# -- warnings for recorded-only options ------------------------------------------------------------------------------
@pytest.mark.parametrize(("kwargs", "option"), [
    (dict(h2_enabled=True), "h2_enabled"),
    (dict(routing_region="us-west"), "routing_region"),
    (dict(compute_region="us-east-1"), "compute_region"),
    (dict(cloud="aws"), "cloud"),
    (dict(nonpreemptible=True), "nonpreemptible"),
    (dict(proxy=object()), "proxy"),
    (dict(i6pn=True), "i6pn"),
    (dict(enable_memory_snapshot=True), "enable_memory_snapshot"),
])
def test_recorded_only_options_warn_once_at_the_users_line(kwargs: dict[str, Any], option: str) -> None:
    with pytest.warns(NotImplementedWarning, match=f"`{option}=`") as record:
        _server(**kwargs)
    assert all(w.filename == __file__ for w in record if issubclass(w.category, NotImplementedWarning))
    with warnings.catch_warnings():
        warnings.simplefilter("error", NotImplementedWarning)
        _server(**kwargs)  # once per process


def test_defaults_do_not_warn() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _server(unauthenticated=True, target_concurrency=3, min_containers=1, gpu="T4")


# -- sessioned -------------------------------------------------------------------------------------------------------
def test_sessioned() -> None:
    app = modal.App("a")

    @app.server(serialized=True)
    @modal.sessioned()
    class S:
        @modal.enter()
        def start(self) -> None:
            pass

    assert msgspec.to_builtins(S._get_service_function()._definition())["server"]["sessioned"] is True
    with pytest.raises(InvalidError, match="idle_timeout"):
        S.sessions.start(idle_timeout=0)
    with pytest.raises(ExecutionError, match="has not been hydrated"):
        S.sessions.start()  # its app is not running


def test_sessions_need_sessioned() -> None:
    with pytest.raises(InvalidError, match=r"`sessions` requires `@modal.sessioned\(\)` on the Server"):
        _ = _server().sessions


def test_sessioned_needs_parentheses_and_the_right_place() -> None:
    with pytest.raises(InvalidError, match="parentheses"):
        @modal.sessioned
        class S:
            pass
    with pytest.raises(InvalidError, match="swap the order"):
        modal.sessioned()(_server())
    with pytest.raises(InvalidError, match="must decorate a class"):
        modal.sessioned()(_start)


# -- no calls --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("attr", ["remote", "map", "spawn", "starmap", "remote_gen", "local", "with_options"])
def test_a_server_has_no_remote(attr: str) -> None:
    s = _server()
    with pytest.raises(AttributeError, match=rf"A Server has no `.{attr}`.*get_url\(\)"):
        getattr(s, attr)
    assert not hasattr(s, attr)
    assert not hasattr(s._get_service_function(), attr)  # nor its function (app.registered_functions)
    with pytest.raises(AttributeError):
        s.no_such_thing  # noqa: B018
    with pytest.raises(InvalidError, match="not instantiated"):
        s()


# -- hydration and lookups -------------------------------------------------------------------------------------------
def test_a_server_not_running_asks_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    refuse_requests(monkeypatch)
    s = _server()
    info = s.info()
    assert (info.name, info.app_name, info.url, info.port, info.object_id) == ("S", "a", None, 8000, None)
    for call in (s.get_url, s.hydrate, s.autoscaler.settings, lambda: s.autoscaler.update(min_containers=1)):
        with pytest.raises(ExecutionError, match="has not been hydrated: its app is not running"):
            call()


def test_a_running_server_gets_its_url(fake: Any) -> None:
    client = fake({("GET", "/v1/functions/fu-1/web_url"): {"url": "http://x--a-s.localhost"}})
    s = _server()
    s._get_service_function()._hydrate("fu-1")  # what App does after registering its functions
    assert s.object_id == "fu-1"
    assert s.get_url() == "http://x--a-s.localhost"
    assert s.get_url() == "http://x--a-s.localhost"  # cached
    assert s.info().url == "http://x--a-s.localhost"
    assert len(client.requests) == 1
    s.info(refresh=True)
    assert len(client.requests) == 2


LOOKUP = "/v1/functions/lookup?app_name=my-app&tag=Server"
SERVER_DICT = {"port": 8080, "startup_timeout": 30.0, "target_concurrency": 4.0, "max_concurrency": 8,
               "scaleup_window": None, "unauthenticated": True, "exit_grace_period": 0.0, "routing_region": "us-east",
               "compute_region": None, "h2_enabled": False, "sessioned": False}


def test_from_name_is_lazy_and_resolves_on_first_use(fake: Any) -> None:
    client = fake({
        ("GET", LOOKUP): {"function_id": "fu-9", "app_id": "ap-1", "tag": "Server", "cls": {"methods": {}},
                          "server": SERVER_DICT, "version": 3},
        ("GET", "/v1/functions/fu-9/web_url"): {"url": "http://ws--my-app-server.localhost"},
    })
    s = modal.Server.from_name("my-app", "Server")
    assert client.requests == [] and s.object_id is None
    info = s.info()
    assert info == servers.ServerInfo(name="Server", app_name="my-app", url="http://ws--my-app-server.localhost",
                                      port=8080, target_concurrency=4.0, max_concurrency=8, unauthenticated=True,
                                      routing_region="us-east", object_id="fu-9")
    assert [r[1] for r in client.requests] == [LOOKUP, "/v1/functions/fu-9/web_url"]
    assert s.hydrate() is s and len(client.requests) == 2
    s.info(refresh=True)
    assert [r[1] for r in client.requests[2:]] == [LOOKUP, "/v1/functions/fu-9/web_url"]
    with pytest.raises(InvalidError, match=r"`sessions` requires `@modal.sessioned\(\)`"):
        s.sessions.start()  # known once resolved: this one is not sessioned


def test_from_name_of_something_else(fake: Any) -> None:
    fake({("GET", LOOKUP): {"function_id": "fu-9", "cls": None, "server": None}})
    with pytest.raises(InvalidError, match="is not a Server"):
        modal.Server.from_name("my-app", "Server").hydrate()


def test_from_name_with_a_control_plane_that_does_not_report_server(fake: Any) -> None:
    fake({("GET", LOOKUP): {"function_id": "fu-9", "cls": {"methods": {}}}})
    assert modal.Server.from_name("my-app", "Server").hydrate().object_id == "fu-9"


def test_from_name_and_from_id_check_their_arguments() -> None:
    with pytest.raises(InvalidError):
        modal.Server.from_name("", "Server")
    with pytest.raises(InvalidError):
        modal.Server.from_id("")
    s = modal.Server.from_id("fu-5")
    assert s.object_id == "fu-5"


SETTINGS = {"min_containers": 0, "max_containers": None, "buffer_containers": 0, "scaledown_window": 60,
            "target_concurrency": 2.5, "scaleup_window": 10, "something_new": 1}


def test_autoscaler_settings_and_update(fake: Any) -> None:
    client = fake({
        ("GET", "/v1/functions/fu-1/autoscaler"): {"settings": SETTINGS},
        ("POST", "/v1/functions/fu-1/autoscaler"): lambda body: {"settings": {**SETTINGS, **body}},
    })
    s = modal.Server.from_id("fu-1")
    assert s.autoscaler.settings() == servers.ServerAutoscalerSettings(
        min_containers=0, max_containers=None, buffer_containers=0, scaledown_window=60, target_concurrency=2.5,
        scaleup_window=10)
    after = s.autoscaler.update(target_concurrency=1.5, scaleup_window=5, min_containers=1)
    assert client.requests[-1] == ("POST", "/v1/functions/fu-1/autoscaler",
                                   {"target_concurrency": 1.5, "scaleup_window": 5, "min_containers": 1})
    assert (after.target_concurrency, after.scaleup_window, after.min_containers) == (1.5, 5, 1)
    s.autoscaler.update(target_concurrency=0)  # 0 turns autoscaling off: sent, not dropped
    assert client.requests[-1][2] == {"target_concurrency": 0}


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(target_concurrency=-1), "`target_concurrency`"),
    (dict(scaleup_window=0), "`scaleup_window`"),
    (dict(scaledown_window=1), "`scaledown_window`"),
    (dict(min_containers=3, max_containers=2), "`min_containers`"),
])
def test_autoscaler_update_validates(fake: Any, kwargs: dict[str, Any], message: str) -> None:
    client = fake({})
    with pytest.raises(InvalidError, match=message):
        modal.Server.from_id("fu-1").autoscaler.update(**kwargs)
    assert client.requests == []


def test_update_autoscaler_is_deprecated_and_forwards(fake: Any) -> None:
    client = fake({("POST", "/v1/functions/fu-1/autoscaler"): lambda body: {"settings": {**SETTINGS, **body}}})
    with pytest.warns(DeprecationWarning, match=r"use `Server.autoscaler.update\(...\)`"):
        settings = modal.Server.from_id("fu-1").update_autoscaler(max_containers=3, target_concurrency=2)
    assert client.requests == [("POST", "/v1/functions/fu-1/autoscaler",
                                {"max_containers": 3, "target_concurrency": 2})]
    assert settings.max_containers == 3


# -- `shoal server` ------------------------------------------------------------------------------------------------
def test_cli_group() -> None:
    from shoal.cli import cli

    result = CliRunner().invoke(cli, ["server", "--help"])
    assert result.exit_code == 0, result.output
    for command in ("info", "logs", "requests", "autoscaler", "deploy"):
        assert command in result.output
    result = CliRunner().invoke(cli, ["server", "autoscaler", "update", "my-app", "Server"])
    assert result.exit_code != 0 and "give at least one of --target-concurrency" in result.output
    result = CliRunner().invoke(cli, ["server", "deploy", "--app-name", "x"])
    assert result.exit_code != 0 and "--cmd" in result.output


def test_direct_deploy_builds_one_serialized_server() -> None:
    from shoal.cli.server_cmds import build_direct_app

    app, server = build_direct_app(app_name="files", command="python -m http.server 9000", port=9000,
                                   image_pip=("httpx",), env_vars=("A=1", "B=x=y"), unauthenticated=True,
                                   target_concurrency=4.0, max_concurrency=None, startup_timeout=45.0,
                                   exit_grace_period=5.0)
    assert list(app.registered_servers) == ["Server"] and list(app.registered_functions) == ["Server"]
    d = msgspec.to_builtins(server._get_service_function()._definition())
    assert d["options"]["serialized"] is True and d["cls"]["enter"] == ["start"]
    assert d["server"] == {**d["server"], "port": 9000, "unauthenticated": True, "target_concurrency": 4.0,
                           "startup_timeout": 45.0, "exit_grace_period": 5.0}
    with pytest.raises(Exception, match="KEY=VALUE"):
        build_direct_app(app_name="files", command="true", env_vars=("nope",))


def test_direct_server_class_travels_by_value(tmp_path: Any) -> None:
    """What the container does with a `shoal server deploy` definition: unpickle the class in an interpreter that
    never imported shoal.cli, build the object as the runtime does and run its @enter hooks."""
    from shoal._serialization import dumps
    from shoal.cli.server_cmds import _direct_server_class

    marker = tmp_path / "started"
    cls = _direct_server_class(f"echo hi > {marker}")
    blob = tmp_path / "cls.pkl"
    blob.write_bytes(dumps(cls, "the class"))
    code = (
        "import pickle, sys\n"
        "cls = pickle.loads(open(sys.argv[1], 'rb').read())\n"
        "assert 'shoal.cli' not in sys.modules and 'shoal.cli.server_cmds' not in sys.modules\n"
        "obj = cls.__new__(cls)\n"
        "obj.start()\n"
        "sys.exit(obj.process.wait())\n"
    )
    subprocess.run([sys.executable, "-c", code, str(blob)], check=True, timeout=60)
    assert marker.read_text().strip() == "hi"
