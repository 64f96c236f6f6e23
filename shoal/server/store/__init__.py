"""Durable state of the control plane. `open_store()` picks the implementation from the environment."""

from __future__ import annotations

from pathlib import Path

from .sqlite import SQLiteStore


def open_store(state_dir: Path) -> SQLiteStore:
    return SQLiteStore(state_dir / "state.db")


__all__ = ["SQLiteStore", "open_store"]
