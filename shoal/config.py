"""Where shoal keeps its state and how clients find the control plane. Environment variables win."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """State directory: `SHOAL_HOME`, else `~/.shoal`."""
    return Path(os.environ.get("SHOAL_HOME") or Path.home() / ".shoal").expanduser()


def server_file() -> Path:
    """Written by a running control plane: its URL, pid and token."""
    return home() / "server.json"


def server_url_override() -> str | None:
    """`SHOAL_SERVER_URL` points at a control plane that is not auto-started."""
    return os.environ.get("SHOAL_SERVER_URL") or None


def env_flag(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in ("1", "true", "yes", "on")


RESULT_TTL_S = 7 * 24 * 3600
