"""Named secrets: environment variables stored encrypted (Fernet) with a key that is not in the database.

The key comes from `SHOAL_SECRET_KEY`, else `SHOAL_HOME/secrets.key` (created once, mode 0600). Values are
decrypted only when a container starts, into that container's environment; they are never logged or listed.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import msgspec
from aiohttp import web
from cryptography.fernet import Fernet, InvalidToken

from .._spec import requests as req
from .._spec.definitions import ImageSpec, SecretRef
from .._spec.secrets import KEY_RE, MAX_KEY
from .idempotency import is_retry, request_key
from .rest import ApiError, body_of, path_of, reply
from .store import Store
from .store import secrets as sealed_secrets


def load_key(state_dir: Path) -> bytes:
    if os.environ.get("SHOAL_SECRET_KEY"):
        return os.environ["SHOAL_SECRET_KEY"].encode()
    path = state_dir / "secrets.key"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(Fernet.generate_key())
    return path.read_bytes().strip()




def _check_keys(env: dict[str, str]) -> dict[str, str]:
    for k in env:
        if not KEY_RE.match(k) or len(k) > MAX_KEY:
            raise ApiError(400, f"invalid secret key {k[:100]!r}: must match [A-Za-z_][A-Za-z0-9_]*")
    return env


class SecretStore:
    def __init__(self, store: Store, state_dir: Path) -> None:
        self.store = store
        self.fernet = Fernet(load_key(state_dir))

    def add_routes(self, r: web.UrlDispatcher) -> None:
        r.add_get("/v1/secrets", self.list)
        r.add_post("/v1/secrets", self.create)
        r.add_post("/v1/secrets/{name}/update", self.update)
        r.add_delete("/v1/secrets/{name}", self.delete)

    def _seal(self, env: dict[str, str]) -> bytes:
        return self.fernet.encrypt(json.dumps(env).encode())

    def _open(self, data: bytes) -> dict[str, str]:
        try:
            return json.loads(self.fernet.decrypt(data))
        except InvalidToken as exc:
            raise ApiError(500, "a secret cannot be decrypted with this control plane's key "
                                "(SHOAL_SECRET_KEY or SHOAL_HOME/secrets.key changed?)", "InternalFailure") from exc

    async def _get(self, name: str) -> dict[str, str] | None:
        data = await sealed_secrets.sealed(self.store, name)
        return self._open(data) if data is not None else None

    # -- routes ----------------------------------------------------------------------------------------------
    async def list(self, request: web.Request) -> web.Response:
        listed = await sealed_secrets.list_all(self.store)
        return reply({"secrets": [{"name": n, "created_at": c, "updated_at": u} for n, c, u in listed]})

    async def create(self, request: web.Request) -> web.Response:
        body = await body_of(request, req.CreateSecret)
        name = body.name
        if not await sealed_secrets.create(self.store, name, self._seal(_check_keys(body.env)), time.time(),
                                           overwrite=body.overwrite, idem=request_key(request)):
            if body.allow_existing:
                return reply({"created": False})
            raise ApiError(409, f"secret {name!r} already exists", "AlreadyExistsError")
        return reply({"created": True})

    async def update(self, request: web.Request) -> web.Response:
        """dict.update semantics; containers started afterwards see the new values."""
        name = path_of(request, req.SecretPath).name
        changes = _check_keys((await body_of(request, req.UpdateSecret)).env)
        current = await self._get(name)
        if current is None:
            raise ApiError(404, f"secret {name!r} not found", "NotFoundError")
        await sealed_secrets.replace(self.store, name, self._seal({**current, **changes}), time.time(),
                                     request_key(request))
        return reply({"ok": True})

    async def delete(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if not await sealed_secrets.delete(self.store, name) and not is_retry(request):  # (a resend: deleted)
            raise ApiError(404, f"secret {name!r} not found", "NotFoundError")
        return reply({"ok": True})

    # -- used by registration and container start --------------------------------------------------------------
    async def check(self, refs: list[SecretRef]) -> None:
        """Every named secret exists and holds its required keys (at `app.run()`, not at first call)."""
        for ref in refs:
            if ref.name is None:
                continue
            env = await self._get(ref.name)
            if env is None:
                raise ApiError(404, f"secret {ref.name!r} not found (create it with `shoal secret create`)",
                               "NotFoundError")
            missing = [k for k in ref.required_keys or [] if k not in env]
            if missing:
                raise ApiError(404, f"secret {ref.name!r} is missing required keys: {', '.join(missing)}",
                               "NotFoundError")

    async def resolve_image(self, wire: ImageSpec) -> ImageSpec:
        """An image spec whose steps name secrets (`secret_names`: e.g. a registry secret given as
        `Secret.from_name`) with their values resolved into `named_secret_env` (unhashed, as `secret_env`), which
        the builder folds under the step's own values."""
        if not any(isinstance(step, dict) and step.get("secret_names") for step in wire.steps or []):
            return wire
        steps = []
        for step in wire.steps:
            names = step.get("secret_names") if isinstance(step, dict) else None
            if names:
                if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                    raise ApiError(400, "invalid 'secret_names' in an image step: a list of secret names")
                refs = [SecretRef(name=n) for n in names]
                await self.check(refs)
                step = {**step, "named_secret_env": await self.resolve(refs)}
            steps.append(step)
        return msgspec.structs.replace(wire, steps=steps)

    async def resolve(self, refs: list[SecretRef]) -> dict[str, str]:
        """The environment of a function's secrets, later ones overriding earlier ones."""
        env: dict[str, str] = {}
        for ref in refs:
            if ref.name is not None:
                env.update(await self._get(ref.name) or {})
            else:
                env.update({k: v for k, v in (ref.env or {}).items() if v is not None})
        return env
