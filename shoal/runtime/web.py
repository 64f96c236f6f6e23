"""Web functions inside a container: each web target (a function, or a web method of a class) gets an HTTP
server on a port of the container's own loopback, which the control plane's ingress proxy connects to.

- `fastapi_endpoint`: the function wrapped in a FastAPI app (the image must have FastAPI, as in Modal);
- `asgi_app` / `wsgi_app`: the factory's app (WSGI through a2wsgi, on `max_inputs` threads);
- `web_server(port)`: the function starts its own server; the container is ready once that port accepts
  connections (within `startup_timeout`);
- `@app.server`: the class's `@enter` hooks start the server; the container is ready once the port accepts
  connections on 0.0.0.0 (within `startup_timeout`).

ASGI apps are served by uvicorn (its httptools parser, WebSockets through `websockets`) on one event loop thread,
with the ASGI lifespan honoured: a failing startup fails the container start with its error. WebSocket messages
over 2 MiB close the connection (1009), as Modal's limit. The proxy sets
`X-Forwarded-For`, which uvicorn turns into `request.client`.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .._spec.definitions import FunctionDefinition, ServerConfig, WebhookConfig

WS_MAX_MESSAGE = 2 * 1024 * 1024  # Modal's WebSocket message limit
KEEPALIVE_S = 3600  # the proxy closes idle connections first (no race between its reuse and our close)


class WebStartError(Exception):
    """A web target could not be served (missing FastAPI, lifespan startup failed, port never listened)."""


def fastapi_app(fn: Callable, webhook: WebhookConfig) -> Any:
    """The `fastapi_endpoint` wrapper: one route at `/` for the function, CORS open, `/docs` when asked."""
    try:
        from fastapi import FastAPI
        from fastapi.middleware.cors import CORSMiddleware
    except ImportError as exc:
        raise WebStartError(
            "@modal.fastapi_endpoint needs FastAPI in the function's image: "
            "Image.debian_slim().pip_install(\"fastapi[standard]\")") from exc
    docs = webhook.docs
    app = FastAPI(docs_url="/docs" if docs else None, redoc_url="/redoc" if docs else None,
                  openapi_url="/openapi.json" if docs else None)
    app.add_api_route("/", fn, methods=[webhook.method or "GET"])
    app.add_middleware(CORSMiddleware, allow_origins=["*"], allow_methods=["*"], allow_headers=["*"],
                       allow_credentials=False)
    return app


def build_app(kind: str, target: Callable, webhook: WebhookConfig, max_inputs: int) -> Any:
    """The ASGI app of one target (None for `web_server`, which serves itself)."""
    if kind == "fastapi":
        return fastapi_app(target, webhook)
    app = target()
    if kind == "wsgi":
        from a2wsgi import WSGIMiddleware

        return WSGIMiddleware(app, workers=max(1, max_inputs))
    return app


def wait_for_port(port: int, timeout: float, any_address: bool = False) -> None:
    """Until something accepts connections on `port`. A Server must bind 0.0.0.0 (`any_address`): it is probed
    on 127.0.0.2, which a server bound to 127.0.0.1 alone refuses; a `web_server` only needs the port."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.2" if any_address else "127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                if any_address:
                    raise WebStartError(
                        f"the server did not listen on 0.0.0.0:{port} within {timeout:g}s (startup_timeout); it "
                        "must bind 0.0.0.0, not only 127.0.0.1 or another interface") from None
                raise WebStartError(f"the web server did not listen on port {port} within {timeout:g}s "
                                    "(startup_timeout)") from None
            time.sleep(0.01)


class _ErrorCapture(logging.Handler):
    """Keeps uvicorn's error messages, so a failed lifespan startup is reported with its reason."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


class WebServers:
    """The uvicorn servers of one container, on one event loop thread."""

    def __init__(self) -> None:
        self.servers: list[Any] = []
        self.thread: threading.Thread | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    def start(self, apps: dict[str, Any], concurrency: int) -> dict[str, int]:
        """Serve each app on a fresh loopback port; returns {target: port} once every server has started."""
        if not apps:
            return {}
        import uvicorn

        capture = _ErrorCapture()
        ports: dict[str, int] = {}
        pairs = []
        for key, app in apps.items():
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            # Inherited by accepted connections: a response written in two pieces (head, body) must not wait
            # 40 ms for the proxy's delayed ACK (uvloop does not set it on sockets it is given).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.bind(("127.0.0.1", 0))
            ports[key] = sock.getsockname()[1]
            config = uvicorn.Config(
                app, lifespan="auto", log_level="warning", access_log=False, proxy_headers=True,
                forwarded_allow_ips="*", ws_max_size=WS_MAX_MESSAGE, timeout_keep_alive=KEEPALIVE_S,
                http="auto",  # httptools when importable (it is among the runtime's packages), else h11
                backlog=max(2048, concurrency), timeout_graceful_shutdown=30,
            )
            server = uvicorn.Server(config)
            server.install_signal_handlers = lambda: None  # type: ignore[method-assign]  # older uvicorn
            pairs.append((server, sock))
            self.servers.append(server)
        # After the configs: each uvicorn.Config runs logging.config.dictConfig, which drops the handlers of
        # the "uvicorn.error" logger (a handler added before would never see the lifespan's error).
        logging.getLogger("uvicorn.error").addHandler(capture)
        try:
            import uvloop

            self.loop = uvloop.new_event_loop()
        except ImportError:
            self.loop = asyncio.new_event_loop()
        loop = self.loop

        async def serve_all() -> None:
            await asyncio.gather(*(s.serve(sockets=[sock]) for s, sock in pairs))

        def run() -> None:
            asyncio.set_event_loop(loop)
            # A coroutine (a root Task), not a bare gather: under a root Task, AnyIO (Starlette, FastAPI) reuses
            # its worker threads for sync endpoints; without one it starts and stops a thread per request
            # (measured: twice the container's CPU per request).
            loop.run_until_complete(serve_all())

        self.thread = threading.Thread(target=run, name="shoal-web", daemon=True)
        self.thread.start()
        while not all(s.started for s in self.servers):
            if not self.thread.is_alive() or any(s.should_exit for s in self.servers):
                self.stop()
                reason = "; ".join(capture.messages) or "the ASGI app's lifespan startup failed"
                raise WebStartError(f"web app failed to start: {reason}")
            time.sleep(0.002)
        return ports

    def stop(self, timeout: float = 30.0) -> None:
        """Stop taking connections, let requests in flight finish (lifespan shutdown runs), then return."""
        for s in self.servers:
            s.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout)


def web_targets(fn: Callable, definition: FunctionDefinition,
                instance: Any) -> dict[str, tuple[WebhookConfig | ServerConfig, Callable]]:
    """{target key: (its config, callable)}: "" for a web function or a Server, the method name for a class's
    web methods."""
    if definition.server is not None:  # @app.server: its @enter hooks started the process; only the port is ours
        return {"": (definition.server, fn)}
    if definition.webhook is not None:
        return {"": (definition.webhook, fn)}
    out: dict[str, tuple[WebhookConfig | ServerConfig, Callable]] = {}
    for name, info in (definition.cls.methods if definition.cls is not None else {}).items():
        if info.webhook is not None and instance is not None:
            out[name] = (info.webhook, getattr(instance, name))
    return out


def start_web(fn: Callable, definition: FunctionDefinition, instance: Any, servers: WebServers) -> dict[str, int]:
    """Start every web target of the container; returns {target key: port} for the control plane."""
    from .._spec.definitions import ServerConfig

    targets = web_targets(fn, definition, instance)
    if not targets:
        return {}
    max_inputs = definition.options.max_inputs
    apps: dict[str, Any] = {}
    ports: dict[str, int] = {}
    for key, (config, target) in targets.items():
        if isinstance(config, ServerConfig):
            ports[key] = config.port
            wait_for_port(ports[key], config.startup_timeout, any_address=True)
        elif config.type == "web_server":
            result = target()
            if asyncio.iscoroutine(result):
                asyncio.run(result)
            ports[key] = int(config.port or 8000)
            wait_for_port(ports[key], float(config.startup_timeout or 5.0))
        else:
            apps[key] = build_app(config.type, target, config, max_inputs)
    ports.update(servers.start(apps, max_inputs))
    return ports
