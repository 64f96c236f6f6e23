"""Durable state of the control plane. `open_store()` picks the implementation from the environment:
PostgreSQL when `SHOAL_DATABASE_URL` is a `postgresql://` (or `postgres://`) URL, else SQLite in the state dir.

All the control plane's SQL is in this package (tests/unit/test_store_boundary.py keeps it so): `base.py`,
`sqlite.py` and `postgres.py` are the store itself, `schema.py` its tables, and one module per aggregate holds
the functions the rest of the control plane calls, each taking the Store: `apps` (apps, versions, function
definitions), `calls` (calls, inputs, outputs), `objects` (Dicts, Queues and Volumes
by name), `dicts`, `queues`, `idempotency` (what keyed client writes did), `secrets`, `tokens` (proxy auth),
`schedules`, and for replicas on PostgreSQL `leases` and `replicas`."""

from __future__ import annotations

import os
from pathlib import Path

from .base import Connection, Store, StoreError
from .sqlite import SQLiteStore


def open_store(state_dir: Path, replica: bool = False) -> Store:
    """`replica`: this control plane is one of several sharing the database (controlplane/replicas.py)."""
    url = os.environ.get("SHOAL_DATABASE_URL", "").strip()
    if url:
        from .postgres import PostgresStore, is_postgres_url

        if not is_postgres_url(url):
            raise StoreError("SHOAL_DATABASE_URL must be a postgresql:// URL; unset it to keep state in SQLite "
                             "under the state directory")
        return PostgresStore(url, shared=replica)
    if replica:
        raise StoreError("replicas share their state in PostgreSQL: set SHOAL_DATABASE_URL=postgresql://…")
    return SQLiteStore(state_dir / "state.db")


__all__ = ["Connection", "SQLiteStore", "Store", "StoreError", "open_store"]
