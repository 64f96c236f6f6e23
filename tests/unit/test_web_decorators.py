"""Decoration-time behaviour of the web endpoint decorators and what they put on the wire (no control plane)."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

import shoal as modal
from shoal._client import transport
from shoal.exception import DeprecationError, InvalidError

WIRE_KEYS = {"type", "method", "label", "docs", "requires_proxy_auth", "custom_domains", "port", "startup_timeout"}


# -- the attribute dict -------------------------------------------------------------------------------------------
def test_fastapi_endpoint_dict() -> None:
    @modal.fastapi_endpoint(method="post", label="my-api", custom_domains=["api.example.com"], docs=True,
                            requires_proxy_auth=True)
    def f(x: int) -> int:
        return x

    assert msgspec.to_builtins(f.__shoal_webhook__) == {  # type: ignore[attr-defined]
        "type": "fastapi", "method": "POST", "label": "my-api", "docs": True, "requires_proxy_auth": True,
        "custom_domains": ["api.example.com"], "port": None, "startup_timeout": None}


def test_fastapi_endpoint_defaults() -> None:
    @modal.fastapi_endpoint()
    def f() -> str:
        return "hi"

    assert msgspec.to_builtins(f.__shoal_webhook__) == {  # type: ignore[attr-defined]
        "type": "fastapi", "method": "GET", "label": None, "docs": False, "requires_proxy_auth": False,
        "custom_domains": [], "port": None, "startup_timeout": None}
    assert set(msgspec.to_builtins(f.__shoal_webhook__)) == WIRE_KEYS  # type: ignore[attr-defined]


@pytest.mark.parametrize(("decorator", "kind"), [(modal.asgi_app, "asgi"), (modal.wsgi_app, "wsgi")])
def test_asgi_and_wsgi_dicts(decorator: Any, kind: str) -> None:
    @decorator(label="web", requires_proxy_auth=True)
    def factory() -> Any:
        return object()

    assert msgspec.to_builtins(factory.__shoal_webhook__) == {
        "type": kind, "method": None, "label": "web", "docs": False, "requires_proxy_auth": True,
        "custom_domains": [], "port": None, "startup_timeout": None}


def test_web_server_dict() -> None:
    @modal.web_server(8000, startup_timeout=30)
    def serve() -> None:
        pass

    assert msgspec.to_builtins(serve.__shoal_webhook__) == {  # type: ignore[attr-defined]
        "type": "web_server", "method": None, "label": None, "docs": False, "requires_proxy_auth": False,
        "custom_domains": [], "port": 8000, "startup_timeout": 30.0}


def test_decorators_return_the_raw_function() -> None:
    def f() -> int:
        return 1

    assert modal.fastapi_endpoint()(f) is f
    assert f() == 1


def test_exports() -> None:
    for name in ("fastapi_endpoint", "asgi_app", "wsgi_app", "web_server", "web_endpoint"):
        assert name in modal.__all__
        assert callable(getattr(modal, name))


# -- validation ---------------------------------------------------------------------------------------------------
def test_parentheses_are_required() -> None:
    def f() -> None:
        pass

    for decorator in (modal.fastapi_endpoint, modal.asgi_app, modal.wsgi_app):
        with pytest.raises(InvalidError, match="forgotten parentheses"):
            decorator(f)
    with pytest.raises(InvalidError, match='method="POST"'):
        modal.fastapi_endpoint("POST")
    with pytest.raises(InvalidError, match="parentheses.*port"):
        modal.web_server(f)  # type: ignore[arg-type]


@pytest.mark.parametrize("method", ["FETCH", "", 1, None])
def test_bad_method(method: Any) -> None:
    with pytest.raises(InvalidError, match="`method`"):
        modal.fastapi_endpoint(method=method)


@pytest.mark.parametrize("method", ["get", "Post", "PUT", "delete", "patch", "HEAD", "options"])
def test_methods_are_case_insensitive(method: str) -> None:
    def f() -> None:
        pass

    assert msgspec.to_builtins(modal.fastapi_endpoint(method=method)(f).__shoal_webhook__)["method"] == method.upper()


@pytest.mark.parametrize("label", ["Upper", "-lead", "trail-", "under_score", "dot.ted", "", "a" * 64, 3])
def test_bad_label(label: Any) -> None:
    for decorator in (modal.fastapi_endpoint, modal.asgi_app, modal.wsgi_app):
        with pytest.raises(InvalidError, match="`label`"):
            decorator(label=label)
    with pytest.raises(InvalidError, match="`label`"):
        modal.web_server(8000, label=label)


@pytest.mark.parametrize("label", ["a", "my-app-2", "0", "a" * 63])
def test_good_label(label: str) -> None:
    modal.fastapi_endpoint(label=label)


@pytest.mark.parametrize("domains", ["example.com", [1], 5])
def test_bad_custom_domains(domains: Any) -> None:
    with pytest.raises(InvalidError, match="`custom_domains`"):
        modal.asgi_app(custom_domains=domains)


def test_bad_flags() -> None:
    with pytest.raises(InvalidError, match="`docs`"):
        modal.fastapi_endpoint(docs="yes")  # type: ignore[arg-type]
    with pytest.raises(InvalidError, match="`requires_proxy_auth`"):
        modal.wsgi_app(requires_proxy_auth=1)  # type: ignore[arg-type]


@pytest.mark.parametrize("port", [0, 65536, -1, "8000", 8000.0, True])
def test_bad_port(port: Any) -> None:
    with pytest.raises(InvalidError, match="`port`"):
        modal.web_server(port)


def test_port_bounds_accepted() -> None:
    modal.web_server(1)
    modal.web_server(65535)


@pytest.mark.parametrize("timeout", [0, -1.5, "5", True])
def test_bad_startup_timeout(timeout: Any) -> None:
    with pytest.raises(InvalidError, match="`startup_timeout`"):
        modal.web_server(8000, startup_timeout=timeout)


@pytest.mark.parametrize("decorator", [modal.asgi_app(), modal.wsgi_app(), modal.web_server(8000)])
def test_factories_must_be_nullary(decorator: Any) -> None:
    def factory(x: int) -> Any:
        return x

    with pytest.raises(InvalidError, match="must take no arguments"):
        decorator(factory)


def test_factory_with_only_defaults_warns() -> None:
    def factory(x: int = 1) -> Any:
        return x

    with pytest.warns(DeprecationError, match="default parameters"):
        modal.asgi_app()(factory)


def test_asgi_factory_cannot_be_async() -> None:
    async def factory() -> Any:
        return None

    with pytest.raises(InvalidError, match="async"):
        modal.asgi_app()(factory)


def test_web_endpoint_was_renamed() -> None:
    with pytest.raises(DeprecationError, match="renamed to `@modal.fastapi_endpoint`"):
        modal.web_endpoint()
    with pytest.raises(DeprecationError):
        modal.web_endpoint(method="POST")


def test_generators_cannot_be_web_functions() -> None:
    with pytest.raises(InvalidError, match="cannot be generators"):
        @modal.fastapi_endpoint()
        def gen():
            yield 1

    app = modal.App()

    @modal.fastapi_endpoint()
    def f() -> Any:
        return [1]

    with pytest.raises(InvalidError, match="cannot be generators"):
        app.function(serialized=True, is_generator=True)(f)


def test_web_functions_cannot_have_retries() -> None:
    app = modal.App()
    with pytest.raises(InvalidError, match="`retries` is not supported for web endpoints"):
        @app.function(serialized=True, retries=2)
        @modal.fastapi_endpoint()
        def f() -> None:
            pass


def test_web_decorator_goes_under_app_function() -> None:
    app = modal.App()

    @app.function(serialized=True)
    def f() -> None:
        pass

    for decorator in (modal.fastapi_endpoint(), modal.asgi_app(), modal.wsgi_app(), modal.web_server(8000)):
        with pytest.raises(InvalidError, match="swap the order"):
            decorator(f)


def test_only_one_web_decorator() -> None:
    with pytest.raises(InvalidError, match="only one web decorator"):
        @modal.asgi_app()
        @modal.fastapi_endpoint()
        def f() -> None:
            pass


def test_web_and_batched_do_not_mix() -> None:
    with pytest.raises(InvalidError, match="batched"):
        @modal.fastapi_endpoint()
        @modal.batched(max_batch_size=2, wait_ms=1)
        def f(xs: list[int]) -> list[int]:
            return xs

    app = modal.App()
    with pytest.raises(InvalidError, match="batched"):
        @app.function(serialized=True)
        @modal.batched(max_batch_size=2, wait_ms=1)
        @modal.fastapi_endpoint()
        def g(xs: list[int]) -> list[int]:
            return xs


def test_web_and_lifecycle_do_not_mix() -> None:
    with pytest.raises(InvalidError, match="lifecycle"):
        @modal.enter()
        @modal.fastapi_endpoint()
        def f(self: Any) -> None:
            pass


# -- @app.function ------------------------------------------------------------------------------------------------
def test_local_calls_the_raw_function() -> None:
    app = modal.App()

    @app.function(serialized=True)
    @modal.fastapi_endpoint(method="POST")
    def square(x: int) -> dict[str, int]:
        return {"square": x**2}

    assert square.local(7) == {"square": 49}
    assert square.local(x=3) == {"square": 9}


def test_definition_contains_the_webhook() -> None:
    app = modal.App()

    @app.function(serialized=True)
    @modal.web_server(8080, label="files")
    def files() -> None:
        pass

    @app.function(serialized=True)
    def plain() -> None:
        pass

    assert msgspec.to_builtins(files._definition())["webhook"] == {
        "type": "web_server", "method": None, "label": "files", "docs": False, "requires_proxy_auth": False,
        "custom_domains": [], "port": 8080, "startup_timeout": 5.0}
    assert msgspec.to_builtins(plain._definition())["webhook"] is None
    assert app.registered_web_endpoints == [files.tag]


@pytest.mark.parametrize("web_on_top", [False, True])
def test_concurrent_combines_with_web_decorators(web_on_top: bool) -> None:
    app = modal.App()

    def raw() -> Any:
        return object()

    if web_on_top:
        raw = modal.asgi_app()(modal.concurrent(max_inputs=100, target_inputs=80)(raw))
    else:
        raw = modal.concurrent(max_inputs=100, target_inputs=80)(modal.asgi_app()(raw))
    fn = app.function(serialized=True)(raw)
    assert fn._options.max_inputs == 100
    assert fn._options.target_inputs == 80
    assert msgspec.to_builtins(fn._definition())["webhook"]["type"] == "asgi"


def test_get_web_url_of_a_plain_function_asks_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transport, "_client", _NoRequests())
    app = modal.App()

    @app.function(serialized=True)
    def plain() -> None:
        pass

    assert plain.get_web_url() is None


class _NoRequests:
    def __getattr__(self, name: str) -> Any:
        pytest.fail("no request expected")


class _FakeClient:
    def __init__(self, url: str) -> None:
        self.url = url
        self.requests: list[tuple[str, str]] = []

    def call(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        self.requests.append((method, path))
        return {"url": self.url}


def test_get_web_url_asks_once(monkeypatch: pytest.MonkeyPatch) -> None:
    client = _FakeClient("https://ws--app-f.shoal.run")
    monkeypatch.setattr(transport, "_client", client)
    app = modal.App()

    @app.function(serialized=True)
    @modal.fastapi_endpoint()
    def f() -> None:
        pass

    f._hydrate("fu-123")
    assert f.get_web_url() == "https://ws--app-f.shoal.run"
    assert f.get_web_url() == "https://ws--app-f.shoal.run"
    assert client.requests == [("GET", "/v1/functions/fu-123/web_url")]


# -- classes ------------------------------------------------------------------------------------------------------
def _server_class(app: modal.App) -> Any:
    @app.cls(serialized=True)
    class Server:
        root: str = modal.parameter(default=".")

        @modal.web_server(8000)
        def files(self) -> None:
            pass

        @modal.method()
        @modal.fastapi_endpoint(method="POST", docs=True)
        def echo(self, item: dict) -> dict:
            return {"root": self.root, **item}

        @modal.asgi_app(label="server-app")
        def web(self) -> Any:
            return object()

        @modal.method()
        def plain(self, x: int) -> int:
            return x + 1

    return Server


def test_class_web_methods_are_in_cls_info() -> None:
    app = modal.App()
    server = _server_class(app)
    methods = msgspec.to_builtins(server._info)["methods"]
    assert set(methods) == {"files", "echo", "web", "plain"}
    assert methods["files"]["webhook"]["type"] == "web_server"
    assert methods["files"]["webhook"]["port"] == 8000
    assert methods["echo"]["webhook"] == {
        "type": "fastapi", "method": "POST", "label": None, "docs": True, "requires_proxy_auth": False,
        "custom_domains": [], "port": None, "startup_timeout": None}
    assert methods["web"]["webhook"]["label"] == "server-app"
    assert methods["echo"]["is_generator"] is False
    assert methods["plain"]["webhook"] is None
    definition = msgspec.to_builtins(app._functions["Server.*"]._definition())
    assert definition["webhook"] is None
    assert definition["cls"]["methods"]["echo"]["webhook"]["type"] == "fastapi"
    assert sorted(app.registered_web_endpoints) == ["Server.echo", "Server.files", "Server.web"]


def test_class_web_method_local_and_url(monkeypatch: pytest.MonkeyPatch) -> None:
    app = modal.App()
    server = _server_class(app)
    obj = server(root="/data")
    assert obj.echo.local({"x": 1}) == {"root": "/data", "x": 1}
    assert obj.plain.get_web_url() is None

    client = _FakeClient("https://ws--server-files.shoal.run")
    monkeypatch.setattr(transport, "_client", client)
    server._service._hydrate("fu-cls")
    assert obj.files.get_web_url() == "https://ws--server-files.shoal.run"
    assert obj.files.get_web_url() == "https://ws--server-files.shoal.run"
    # The class's own function is asked (no pool is created for root="/data"), naming the method.
    assert client.requests == [("GET", "/v1/functions/fu-cls/web_url?method=files")]


def test_class_factory_methods_take_only_self() -> None:
    app = modal.App()
    with pytest.raises(InvalidError, match="must take no arguments"):
        @app.cls(serialized=True)
        class Bad:
            @modal.asgi_app()
            def web(self, x: int) -> Any:
                return x


def test_class_web_method_cannot_be_a_generator() -> None:
    app = modal.App()
    with pytest.raises(InvalidError, match="cannot be generators"):
        @app.cls(serialized=True)
        class Bad:
            @modal.method(is_generator=True)
            @modal.fastapi_endpoint()
            def stream(self) -> Any:
                return iter([1])


def test_class_with_web_method_and_concurrency() -> None:
    app = modal.App()

    @app.cls(serialized=True)
    @modal.concurrent(max_inputs=10)
    class Web:
        @modal.fastapi_endpoint()
        def hello(self) -> str:
            return "hi"

    assert app._functions["Web.*"]._options.max_inputs == 10
    assert Web._info.methods["hello"].webhook.type == "fastapi"


def test_get_web_url_aio(monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    class _AsyncClient(_FakeClient):
        async def acall(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
            return self.call(method, path, body)

    client = _AsyncClient("https://ws--app-g.shoal.run")
    monkeypatch.setattr(transport, "_client", client)
    app = modal.App()

    @app.function(serialized=True)
    @modal.wsgi_app()
    def g() -> Any:
        return object()

    @app.function(serialized=True)
    def plain() -> None:
        pass

    g._hydrate("fu-9")
    assert asyncio.run(g.get_web_url.aio()) == "https://ws--app-g.shoal.run"
    assert asyncio.run(plain.get_web_url.aio()) is None
    assert client.requests == [("GET", "/v1/functions/fu-9/web_url")]
