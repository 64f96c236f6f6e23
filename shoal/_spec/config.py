"""Where shoal keeps its state and how clients find the control plane. Environment variables win.

Read by the SDK (finding or starting a control plane), the control plane and the backends alike.
"""

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


def package_dir() -> Path:
    """The directory of this `shoal` package: images link it in, so containers run the control plane's own copy."""
    return Path(__file__).resolve().parent.parent


def env_flag(name: str, default: bool = False) -> bool:
    """`1`, `true`, `yes` or `on` (any case) set a flag; anything else clears it."""
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in ("1", "true", "yes", "on")


RESULT_TTL_S = 7 * 24 * 3600  # results are kept this long (OutputExpiredError after)
