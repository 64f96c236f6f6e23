"""Proxy auth tokens (`Modal-Key: wk-…` / `Modal-Secret: ws-…`) for web functions with `requires_proxy_auth`.

Every token is held in memory, so the proxy checks a request without touching the store (`lookup` is
synchronous). Edits go to memory first, then to the store, and are acknowledged once committed. Only the
secret's hash is kept anywhere; the secret itself is returned once, by `create`.
"""

from __future__ import annotations

import dataclasses
import secrets
import string
import time
from typing import Any

from aiohttp import web

from .._spec import requests as req
from .idempotency import is_retry, request_key
from .ingress_policy import TokenRecord, hash_secret
from .rest import ApiError, body_of, reply
from .store import Store
from .store import tokens as stored_tokens

Scope = list[str]  # app names; empty means every app
_ALPHABET = string.ascii_letters + string.digits
ID_CHARS = 22  # ≈ 131 bits: unguessable, though ids are not secret
SECRET_CHARS = 43  # ≈ 256 bits, the "32+ random bytes" that make a fast hash safe
MAX_SCOPE = 100


def _random(n: int) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(n))




def _public(r: TokenRecord) -> dict[str, Any]:
    """What listing shows: never the secret nor its hash."""
    return {"token_id": r.token_id, "scope": list(r.scope), "created_at": r.created_at}


class ProxyTokens:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.tokens: dict[str, TokenRecord] = {
            t.token_id: TokenRecord(t.token_id, t.secret_hash, t.scope, t.created_at)
            for t in stored_tokens.load_all(store)}

    # -- used by the proxy, per request ----------------------------------------------------------------------
    def lookup(self, token_id: str) -> TokenRecord | None:
        return self.tokens.get(token_id)

    # -- operations ------------------------------------------------------------------------------------------
    async def create(self, scope: Scope, key: str | None = None) -> tuple[str, str]:
        """A new token valid for `scope`: (token_id, secret). The secret is not kept, only its hash. A resend
        under the same idempotency `key` replaces the token its first send made (whose secret was lost with
        the reply): one token per request, with the secret of the last answer."""
        token_id, secret = "wk-" + _random(ID_CHARS), "ws-" + _random(SECRET_CHARS)
        record = TokenRecord(token_id, hash_secret(secret), list(scope), time.time())
        self.tokens[token_id] = record
        replaced = await stored_tokens.insert(self.store, token_id, record.secret_hash, record.scope,
                                              record.created_at, key)
        if replaced is not None:
            self.tokens.pop(replaced, None)
        return token_id, secret

    async def delete(self, token_id: str) -> bool:
        """False if there is no such token. Requests stop passing at once, before the commit."""
        if self.tokens.pop(token_id, None) is None:
            return False
        await stored_tokens.delete(self.store, token_id)
        return True

    def list(self) -> list[dict[str, Any]]:
        return [_public(r) for r in sorted(self.tokens.values(), key=lambda r: r.created_at)]

    async def allow(self, token_id: str, app: str) -> TokenRecord:
        """Add `app` to a scoped token. A token for every app already allows it (narrowing it would be a
        surprise: create a scoped token instead)."""
        record = self._get(token_id)
        if not record.scope or app in record.scope:
            return record
        return await self._set_scope(record, [*record.scope, app])

    async def revoke(self, token_id: str, app: str) -> TokenRecord:
        """Remove `app` from a token's scope. Refused where it would mean every app: an empty scope does."""
        record = self._get(token_id)
        if not record.scope:
            raise ApiError(400, f"token {token_id} is valid for every app, so it cannot exclude {app!r}; "
                                "create a token scoped to the apps it should reach, then delete this one")
        if app not in record.scope:
            return record
        if record.scope == [app]:
            raise ApiError(400, f"{app!r} is the only app token {token_id} may access: revoking it would make "
                                "the token valid for every app; delete the token instead")
        return await self._set_scope(record, [a for a in record.scope if a != app])

    def _get(self, token_id: str) -> TokenRecord:
        record = self.tokens.get(token_id)
        if record is None:
            raise ApiError(404, f"proxy token {token_id!r} not found", "NotFoundError")
        return record

    async def _set_scope(self, record: TokenRecord, scope: Scope) -> TokenRecord:
        if len(scope) > MAX_SCOPE:
            raise ApiError(400, f"a token may name at most {MAX_SCOPE} apps")
        new = dataclasses.replace(record, scope=scope)
        self.tokens[record.token_id] = new
        await stored_tokens.set_scope(self.store, record.token_id, scope)
        return new

    # -- routes ----------------------------------------------------------------------------------------------
    def add_routes(self, r: web.UrlDispatcher) -> None:
        r.add_post("/v1/proxy-tokens", self.handle_create)
        r.add_get("/v1/proxy-tokens", self.handle_list)
        r.add_delete("/v1/proxy-tokens/{token_id}", self.handle_delete)
        r.add_post("/v1/proxy-tokens/{token_id}/allow", self.handle_allow)
        r.add_post("/v1/proxy-tokens/{token_id}/revoke", self.handle_revoke)

    async def handle_create(self, request: web.Request) -> web.Response:
        body = await body_of(request, req.CreateProxyToken)
        token_id, secret = await self.create(list(dict.fromkeys(body.scope)),  # de-duplicated, in order
                                             request_key(request))
        return reply({"token_id": token_id, "token_secret": secret})

    async def handle_list(self, request: web.Request) -> web.Response:
        return reply({"tokens": self.list()})

    async def handle_delete(self, request: web.Request) -> web.Response:
        token_id = request.match_info["token_id"]
        if not await self.delete(token_id) and not is_retry(request):  # (a resend: its first send deleted it)
            raise ApiError(404, f"proxy token {token_id!r} not found", "NotFoundError")
        return reply({"ok": True})

    async def handle_allow(self, request: web.Request) -> web.Response:
        body = await body_of(request, req.ProxyTokenApp)
        record = await self.allow(request.match_info["token_id"], body.app)
        return reply(_public(record))

    async def handle_revoke(self, request: web.Request) -> web.Response:
        body = await body_of(request, req.ProxyTokenApp)
        record = await self.revoke(request.match_info["token_id"], body.app)
        return reply(_public(record))
