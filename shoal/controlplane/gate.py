"""The API's gate (api.py's `auth` middleware): which credential a request carries, who that is, and whether
access.py allows it. It gathers what the decision needs (the app a route acts on, the secrets and images a
registration would use) and remembers which ephemeral apps containers created, so they may run functions in
them and stop them."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import msgpack
from aiohttp import web
from multidict import CIMultiDict

from .._spec import requests as req
from .._spec.definitions import FunctionDefinition
from .._spec.images import BUILD_KINDS, image_id_for, split_mounts
from .._spec.limits import DATA_BODY_MAX
from .access import BODY_ROUTES, Facts, Identity, decide
from .credentials import bearer, forwarded, parse_container, verify_forwarded
from .definitions import check_client_fields
from .rest import ApiError, Handler, body_of

if TYPE_CHECKING:
    from .core.model import Container
    from .core.registry import Registry
    from .images import ImageBuilder

__all__ = ["Gate"]

PUBLIC = frozenset({"/v1/health"})
REGISTRY_PREFIX = "/v2/"
RUNS_CODE = BUILD_KINDS - {"env", "workdir"}  # image steps that run commands on the machine that builds


def image_secret_names(spec: Any) -> frozenset[str]:
    """The named secrets an image's build steps would be given (`secret_names`: a registry secret or a step's
    `secrets=` given as `Secret.from_name`): a container may name only those it holds, as for its functions'."""
    steps = getattr(spec, "steps", None) or []
    return frozenset(n for s in steps if isinstance(s, dict) and isinstance(s.get("secret_names"), list)
                     for n in s["secret_names"] if isinstance(n, str))


class Gate:
    def __init__(self, token: str, registry: Registry, images: ImageBuilder, replicated: bool) -> None:
        self.token = token.encode()
        self.registry = registry
        self.images = images
        self.replicated = replicated  # requests may be forwarded to another replica: they carry who sent them
        self.created_by: dict[str, str] = {}  # ephemeral app id -> the app whose container created it
        # The app a sandbox route acts on (controlplane/sandboxes.py sets it): (request, route) -> app id or None.
        self.sandbox_app: Callable[[web.Request, str], Awaitable[str | None]] | None = None

    async def admit(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in PUBLIC or request.path.startswith(REGISTRY_PREFIX):
            # The image registry (oci_serve.py) checks its own requests: registry clients send Basic credentials
            # and need a challenge and error bodies of the registry API's shape.
            return await handler(request)
        who = self.identify(request)
        resource = request.match_info.route.resource
        if who.is_admin or resource is None:  # no such route: the usual 404 or 405, whoever asks
            return await handler(request)
        route = resource.canonical
        if self.replicated:
            headers = CIMultiDict(request.headers)
            headers["Authorization"] = f"Bearer {forwarded(who, self.token)}"
            request = request.clone(headers=headers)
        facts = await self.facts(request, route, who)
        decision = decide(who, request.method, route, facts)
        if not decision.allowed:
            raise ApiError(403, f"{decision.reason} (the request came from container {who.container_id} of "
                                f"app {who.app_id or '(none)'}, with that container's credential)",
                           "PermissionDeniedError")
        response = await handler(request)
        if (request.method, route) == ("POST", "/v1/apps") and isinstance(response, web.Response) \
                and response.status == 200 and isinstance(response.body, bytes):
            self._created(msgpack.unpackb(response.body, raw=False)["app_id"], who.app_id)
        return response

    def identify(self, request: web.Request) -> Identity:
        """The admin, or the container whose credential this is (while it runs); 401 otherwise."""
        return self.identify_credential(bearer(request.headers.get("Authorization", "")))

    def identify_credential(self, credential: str | None) -> Identity:
        if credential is None:
            raise ApiError(401, "missing credential: the API takes `Authorization: Bearer <token>` "
                                "(see SHOAL_HOME/token)", "AuthError")
        if not credential.isascii():  # none is: and a header's undecodable bytes would not encode back
            raise ApiError(401, "wrong token (see SHOAL_HOME/token)", "AuthError")
        if hmac.compare_digest(credential.encode(), self.token):
            return Identity()
        parsed = parse_container(credential)
        if parsed is not None:
            c = self.registry.containers.get(parsed[0])
            if c is not None and hmac.compare_digest(parsed[1].encode(), c.token.encode()):
                return self._of(c)
        elif self.replicated and (vouched := verify_forwarded(credential, self.token)) is not None:
            return vouched
        raise ApiError(401, "wrong or expired token (see SHOAL_HOME/token; a container's credential ends with "
                            "its container)", "AuthError")

    def _of(self, c: Container) -> Identity:
        pool = c.pool
        return Identity(container_id=c.id, app_id=pool.app_id, function=pool.tag,
                        secrets=frozenset(s.name for s in pool.definition.secrets if s.name),
                        created=frozenset(a for a, owner in self.created_by.items()
                                          if owner == pool.app_id and a in self.registry.apps))

    def _created(self, app_id: str, owner: str) -> None:
        self.created_by = {a: o for a, o in self.created_by.items() if a in self.registry.apps}
        self.created_by[app_id] = owner

    async def facts(self, request: web.Request, route: str, who: Identity) -> Facts:
        """What `access.decide` needs of this request beyond its route."""
        info = request.match_info
        app_id = info.get("app_id")
        if "function_id" in info:
            pool = self.registry.pools.get(info["function_id"])
            app_id = pool.app_id if pool is not None else None
        if route.startswith(("/v1/sandboxes", "/v1/execs/")) and self.sandbox_app is not None:
            return await self._sandbox_facts(request, route)
        if (request.method, route) not in BODY_ROUTES:
            return Facts(app_id=app_id)
        if route == "/v1/apps":
            created = await body_of(request, req.CreateApp)
            name, mine = created.name, who.created | {who.app_id}
            return Facts(mode=created.mode, name_taken=name is not None and any(
                a.name == name and a.id not in mine for a in self.registry.apps.values()))
        if route == "/v1/apps/lookup":
            return Facts(create_if_missing=(await body_of(request, req.AppLookup)).create_if_missing)
        if route.endswith("/variants"):
            overrides = (await body_of(request, req.CreateVariant)).options
            refs = overrides.get("secrets") if isinstance(overrides, dict) else None
            names = {r.get("name") for r in refs if isinstance(r, dict)} if isinstance(refs, list) else set()
            return Facts(app_id=app_id, secrets=frozenset(n for n in names if isinstance(n, str)))
        defs = check_client_fields(
            (await body_of(request, req.RegisterFunctions, DATA_BODY_MAX, "function definition")).functions)
        return Facts(app_id=app_id, secrets=frozenset(s.name for d in defs for s in d.secrets if s.name)
                     | frozenset(n for d in defs for n in image_secret_names(d.image)),
                     builds_image=any(self._builds(d) for d in defs))

    async def _sandbox_facts(self, request: web.Request, route: str) -> Facts:
        """A sandbox route: its app, and for a creation or an exec the secrets it would attach (a container may
        attach only those it holds) and whether its image would be built here."""
        assert self.sandbox_app is not None
        app_id = await self.sandbox_app(request, route)
        if request.method == "POST" and route == "/v1/sandboxes":
            body = await body_of(request, req.SandboxCreate)
            builds = body.image is not None and self._builds(FunctionDefinition(tag="sandbox", image=body.image))
            return Facts(app_id=app_id, secrets=frozenset(body.secret_names) | image_secret_names(body.image),
                         builds_image=builds)
        if request.method == "POST" and route.endswith("/exec"):
            return Facts(app_id=app_id, secrets=frozenset((await body_of(request, req.ExecCreate)).secret_names))
        return Facts(app_id=app_id)

    def _builds(self, d: FunctionDefinition) -> bool:
        """Registering `d` would run build steps (commands, package installs) on this machine: its image has
        some, and they are not built here yet (or are forced again)."""
        spec = d.image
        if spec is None:
            return False
        steps: list[dict[str, Any]] = spec.steps
        if not any(isinstance(s, dict) and s.get("kind") in RUNS_CODE for s in steps):
            return False
        if spec.force_base is True or any(isinstance(s, dict) and s.get("force") for s in steps):
            return True
        try:
            base_id = image_id_for(spec.python_version or "", split_mounts(steps)[0])
        except Exception:  # noqa: BLE001 - a malformed spec: the registration refuses it (400) if let through
            return True
        return self.images.cached(base_id) is None
