"""Proxy auth tokens (`proxy_tokens`): the hash of each token's secret (never the secret) and its scope, the
app names it is valid for (msgpack; empty means every app). The control plane holds them all in memory and
reads them once, at start (controlplane/proxy_tokens.py)."""

from __future__ import annotations

import logging
from typing import NamedTuple

import msgpack

from . import idempotency
from .base import Connection, Store

log = logging.getLogger("shoal.store")


class StoredToken(NamedTuple):
    token_id: str
    secret_hash: str
    scope: list[str]
    created_at: float


def load_all(store: Store) -> list[StoredToken]:
    """Every token (a blocking read, for start-up). One whose scope cannot be read is left out, so it admits
    nothing (an empty scope would admit every app), and the control plane starts."""
    tokens = []
    for token_id, secret_hash, scope, created_at in store.read_now(
            "SELECT token_id, secret_hash, scope, created_at FROM proxy_tokens"):
        try:
            apps = msgpack.unpackb(scope, raw=False)
            if not isinstance(apps, list) or not all(isinstance(a, str) for a in apps):
                raise ValueError(f"not a list of app names: {apps!r:.100}")
        except Exception as exc:  # noqa: BLE001 - stored by an older or buggy version
            log.error("proxy token %s has an unreadable scope (%s); it admits nothing", token_id, exc)
            continue
        tokens.append(StoredToken(token_id, secret_hash, apps, created_at))
    return tokens


async def insert(store: Store, token_id: str, secret_hash: str, scope: list[str], created_at: float,
                 idem: str | None = None) -> str | None:
    """Returns once committed. With `idem` (an idempotency key) the token's id is kept under it; a token an
    earlier send under the key made is deleted in the same transaction (its secret was never seen: only its
    hash is kept anywhere, so a resend cannot be answered with it) and its id returned."""

    def run(c: Connection) -> str | None:
        done = idempotency.previous(c, idem)
        if done is not None:
            c.execute("DELETE FROM proxy_tokens WHERE token_id=?", (done.result,))
        c.execute("INSERT INTO proxy_tokens (token_id, secret_hash, scope, created_at) VALUES (?,?,?,?)",
                  (token_id, secret_hash, msgpack.packb(scope), created_at))
        idempotency.record(c, idem, token_id)
        return done.result if done is not None else None

    return await store.transact(run)


async def delete(store: Store, token_id: str) -> None:
    """Returns once committed."""
    await store.flushed(store.write("DELETE FROM proxy_tokens WHERE token_id=?", (token_id,)))


async def set_scope(store: Store, token_id: str, scope: list[str]) -> None:
    """Returns once committed."""
    await store.flushed(store.write("UPDATE proxy_tokens SET scope=? WHERE token_id=?",
                                    (msgpack.packb(scope), token_id)))
