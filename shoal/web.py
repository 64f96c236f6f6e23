"""Web endpoint decorators: `@modal.fastapi_endpoint`, `@modal.asgi_app`, `@modal.wsgi_app`, `@modal.web_server`
(and the removed `@modal.web_endpoint`).

Like the other decorators under `@app.function()` (see `_partial.py`), each returns the raw function with an
attribute set, so `.local()` and stacking with `@modal.concurrent` keep working. The attribute,
`__shoal_webhook__`, is the wire contract with the control plane: a `_spec.definitions.WebhookConfig`, made by
`_webhook()` below and carried by the function's definition (`webhook`) or its class's method info.
"""

from __future__ import annotations

import inspect
import re
import warnings
from collections.abc import Callable, Iterable
from typing import Any

from ._partial import BATCHED_ATTR, WEBHOOK_ATTR, _check_target, _no_mixing
from ._spec.definitions import WebhookConfig
from ._spec.limits import PORT
from .exception import DeprecationError, InvalidError

WEB_TYPES = ("fastapi", "asgi", "wsgi", "web_server")
HTTP_METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS")
_DNS_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_FACTORY_KIND = {"asgi": "ASGI app function", "wsgi": "WSGI app function", "web_server": "Web server function"}


# -- argument checks (decoration time, naming the parameter) ------------------------------------------------------
def _no_positional(decorator: str, value: Any, suggestion: str) -> None:
    """`@modal.asgi_app` without parentheses passes the function as the first argument."""
    if value is not None:
        raise InvalidError(f"Positional arguments are not allowed. Have you forgotten parentheses? Suggestion: "
                           f"`@modal.{decorator}({suggestion})`.")


def _check_bool(decorator: str, name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise InvalidError(f"`{name}` of @modal.{decorator} must be a bool, got {value!r}")
    return value


def _check_method(method: Any) -> str:
    """An HTTP method name, stored upper-case (FastAPI routes by it)."""
    if not isinstance(method, str) or method.upper() not in HTTP_METHODS:
        raise InvalidError(f"`method` of @modal.fastapi_endpoint must be one of {', '.join(HTTP_METHODS)}, "
                           f"got {method!r}")
    return method.upper()


def _check_label(decorator: str, label: Any) -> str | None:
    """The label becomes the host name's first part (`<workspace>--<label>.<domain>`): a DNS label."""
    if label is None:
        return None
    if not isinstance(label, str) or not _DNS_LABEL.fullmatch(label):
        raise InvalidError(f"`label` of @modal.{decorator} must be a valid DNS label (lowercase letters, digits "
                           f"and '-', not starting or ending with '-', at most 63 characters), got {label!r}")
    return label


def _check_domains(decorator: str, custom_domains: Any) -> list[str]:
    if custom_domains is None:
        return []
    if isinstance(custom_domains, (str, bytes)) or not isinstance(custom_domains, Iterable):
        raise InvalidError(f"`custom_domains` of @modal.{decorator} must be a list of domain names, "
                           f"got {custom_domains!r}")
    domains = list(custom_domains)
    for d in domains:
        if not isinstance(d, str) or not d:
            raise InvalidError(f"`custom_domains` of @modal.{decorator} must contain domain names (strings), "
                               f"got {d!r}")
    return domains


def _webhook(kind: str, decorator: str, *, label: Any, custom_domains: Any, requires_proxy_auth: Any,
             method: str | None = None, docs: bool = False, port: int | None = None,
             startup_timeout: float | None = None) -> WebhookConfig:
    """The wire form, its values checked."""
    return WebhookConfig(
        type=kind,  # type: ignore[arg-type]
        method=method,
        label=_check_label(decorator, label),
        docs=_check_bool(decorator, "docs", docs),
        requires_proxy_auth=_check_bool(decorator, "requires_proxy_auth", requires_proxy_auth),
        custom_domains=_check_domains(decorator, custom_domains),
        port=port,
        startup_timeout=startup_timeout,
    )


# -- the wrapped function -----------------------------------------------------------------------------------------
def _check_factory(f: Callable, kind: str) -> None:
    """ASGI/WSGI factories and web server starters are called once, with no arguments, when a container starts
    (a method gets only `self`; the class's parameters configure it)."""
    what = _FACTORY_KIND[kind]
    name = getattr(f, "__name__", repr(f))
    if kind in ("asgi", "wsgi") and inspect.iscoroutinefunction(f):
        raise InvalidError(f"{what} {name} is an async function. Only sync Python functions are supported.")
    try:
        params = list(inspect.signature(f).parameters.values())
    except (TypeError, ValueError):
        return
    if params and params[0].name == "self" and params[0].kind in (params[0].POSITIONAL_ONLY,
                                                                   params[0].POSITIONAL_OR_KEYWORD):
        params = params[1:]
    required = [p for p in params if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if required:
        raise InvalidError(f"{what} {name} can't have parameters: it must take no arguments (other than `self` "
                           "in a class). See https://modal.com/docs/guide/webhooks#asgi.")
    if params:
        warnings.warn(f"{what} {name} has default parameters, but shouldn't have any parameters - they are never "
                      "passed.", DeprecationError, stacklevel=4)


def check_not_generator(name: str, is_generator: bool) -> None:
    """Web functions answer one request with one response (stream with a StreamingResponse instead)."""
    if is_generator:
        raise InvalidError(f"Webhooks cannot be generators ({name}). If you want a streaming response, see "
                           "https://modal.com/docs/guide/streaming-endpoints")


def _decorator(decorator: str, config: WebhookConfig) -> Callable[[Callable], Callable]:
    def decorate(f: Callable) -> Callable:
        _check_target(f, decorator)
        if hasattr(f, WEBHOOK_ATTR):
            raise InvalidError(f"Cannot add `@modal.{decorator}` to {getattr(f, '__name__', f)!r}: it already "
                               f"has a `@modal.{webhook_decorator(getattr(f, WEBHOOK_ATTR))}`; a function can "
                               "have only one web decorator.")
        if hasattr(f, BATCHED_ATTR):
            raise InvalidError(f"Cannot combine `@modal.{decorator}` with `@modal.batched`: a web endpoint "
                               "cannot be batched.")
        name = getattr(f, "__qualname__", getattr(f, "__name__", repr(f)))
        check_not_generator(name, inspect.isgeneratorfunction(f) or inspect.isasyncgenfunction(f))
        if config.type != "fastapi":
            _check_factory(f, config.type)
        setattr(f, WEBHOOK_ATTR, config)
        _no_mixing(f)
        return f

    return decorate


def webhook_decorator(webhook: WebhookConfig) -> str:
    """The decorator name for a web configuration, for messages."""
    return {"fastapi": "fastapi_endpoint", "asgi": "asgi_app", "wsgi": "wsgi_app"}.get(webhook.type, "web_server")


def webhook_of(f: Any) -> WebhookConfig | None:
    """The web configuration of a raw function (None if it is not a web endpoint)."""
    if isinstance(f, type):
        return None
    webhook = getattr(f, WEBHOOK_ATTR, None)
    return webhook if isinstance(webhook, WebhookConfig) else None


# -- the decorators -----------------------------------------------------------------------------------------------
def fastapi_endpoint(
    _warn_parentheses_missing: Any = None,
    *,
    method: str = "GET",
    label: str | None = None,
    custom_domains: Iterable[str] | None = None,
    docs: bool = False,
    requires_proxy_auth: bool = False,
) -> Callable[[Callable], Callable]:
    """Serve the function as a one-route FastAPI app: query parameters (GET) or the JSON body become its
    arguments. The image needs FastAPI; `docs=True` also serves `/docs`."""
    if isinstance(_warn_parentheses_missing, str):  # probably the method, passed positionally
        raise InvalidError("Positional arguments are not allowed. Suggestion: "
                           f'`@modal.fastapi_endpoint(method="{_warn_parentheses_missing}")`.')
    _no_positional("fastapi_endpoint", _warn_parentheses_missing, "")
    config = _webhook("fastapi", "fastapi_endpoint", method=_check_method(method), label=label,
                      custom_domains=custom_domains, docs=docs, requires_proxy_auth=requires_proxy_auth)
    return _decorator("fastapi_endpoint", config)


def asgi_app(
    _warn_parentheses_missing: Any = None,
    *,
    label: str | None = None,
    custom_domains: Iterable[str] | None = None,
    requires_proxy_auth: bool = False,
) -> Callable[[Callable], Callable]:
    """Serve the ASGI app (FastAPI, Starlette, FastHTML...) the decorated no-argument function returns; it is
    called once per container."""
    _no_positional("asgi_app", _warn_parentheses_missing, "")
    config = _webhook("asgi", "asgi_app", label=label, custom_domains=custom_domains,
                      requires_proxy_auth=requires_proxy_auth)
    return _decorator("asgi_app", config)


def wsgi_app(
    _warn_parentheses_missing: Any = None,
    *,
    label: str | None = None,
    custom_domains: Iterable[str] | None = None,
    requires_proxy_auth: bool = False,
) -> Callable[[Callable], Callable]:
    """Serve the WSGI app (Flask, Django...) the decorated no-argument function returns; requests run on
    threads."""
    _no_positional("wsgi_app", _warn_parentheses_missing, "")
    config = _webhook("wsgi", "wsgi_app", label=label, custom_domains=custom_domains,
                      requires_proxy_auth=requires_proxy_auth)
    return _decorator("wsgi_app", config)


def web_server(
    port: int,
    *,
    startup_timeout: float = 5.0,
    label: str | None = None,
    custom_domains: Iterable[str] | None = None,
    requires_proxy_auth: bool = False,
) -> Callable[[Callable], Callable]:
    """Proxy requests to a server the decorated no-argument function starts, listening on `0.0.0.0:port`;
    the container is ready once the port accepts connections (within `startup_timeout` seconds)."""
    if callable(port):
        raise InvalidError("Have you forgotten parentheses? `port` is required: the first argument of "
                           "`@modal.web_server` must be a local port, such as `@modal.web_server(8000)`.")
    if not isinstance(port, int) or isinstance(port, bool) or not PORT[0] <= port <= PORT[1]:
        raise InvalidError("First argument of `@web_server` must be a local port, such as `@web_server(8000)`: "
                           f"`port` must be an integer from {PORT[0]} to {PORT[1]}, got {port!r}")
    if isinstance(startup_timeout, bool) or not isinstance(startup_timeout, (int, float)) or \
            not startup_timeout > 0:
        raise InvalidError(f"The `startup_timeout` argument of `@web_server` must be positive, got "
                           f"{startup_timeout!r}")
    config = _webhook("web_server", "web_server", label=label, custom_domains=custom_domains,
                      requires_proxy_auth=requires_proxy_auth, port=port, startup_timeout=float(startup_timeout))
    return _decorator("web_server", config)


def web_endpoint(*args: Any, **kwargs: Any) -> Any:
    """Removed in Modal 1.x: renamed `fastapi_endpoint`."""
    raise DeprecationError("Deprecated on 2025-03-05: The `@modal.web_endpoint` decorator has been renamed to "
                           "`@modal.fastapi_endpoint`.")
