"""Durable state of the control plane. `open_store()` picks the implementation from the environment:
PostgreSQL when `SHOAL_DATABASE_URL` is a `postgresql://` (or `postgres://`) URL, else SQLite in the state dir."""

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
