"""Bounds stated once: the decorators, `autoscaler.update(...)`, the CLI and the control plane all check these.

Each bound is `(lowest, highest)`, `None` for no upper bound, both inclusive.
"""

from __future__ import annotations

import re

SCALEDOWN_WINDOW_S: tuple[int, int] = (2, 3600)  # seconds an idle container waits before it may go
TIMEOUT_S: tuple[int, int] = (1, 24 * 3600)  # a function's `timeout` and `startup_timeout`
# The longest one request waits in the control plane (results, outputs, queue gets and puts): longer waits are
# several requests, so no proxy or load balancer on the way times a request out.
MAX_WAIT_S = 50.0
SESSION_IDLE_S: tuple[int, int] = (1, 24 * 3600)  # a Server session's `idle_timeout`

# `modal.Retries`.
RETRIES: tuple[int, int] = (0, 10)
RETRY_BACKOFF: tuple[float, float] = (1.0, 10.0)
RETRY_INITIAL_DELAY_S: tuple[float, float] = (0.0, 60.0)
RETRY_MAX_DELAY_S: tuple[float, float] = (1.0, 60.0)
# `@modal.batched` (Modal's: max_batch_size under 1000, wait_ms under 10 minutes).
BATCH_MAX_SIZE: tuple[int, int] = (1, 999)
BATCH_WAIT_MS: tuple[int, int] = (0, 10 * 60 * 1000 - 1)
# `@app.server(...)`.
PORT: tuple[int, int] = (1, 65535)
EXIT_GRACE_PERIOD_S: tuple[int, int] = (0, 3600)

# The autoscaler's knobs, as `@app.function(...)`, `with_options(...)` and `autoscaler.update(...)` accept them.
AUTOSCALER_BOUNDS: dict[str, tuple[int, int | None]] = {
    "min_containers": (0, None),
    "max_containers": (1, None),
    "buffer_containers": (0, None),
    "scaledown_window": SCALEDOWN_WINDOW_S,
}

# Names, as Modal's: apps and named objects (Dicts, Queues, Volumes, Secrets) are 1 to 64 characters of ASCII
# letters, digits, '-', '_' and '.'.
NAME_MAX = 64
NAME_PATTERN = r"^[A-Za-z0-9._-]+$"


def name_problem(name: object, kind: str) -> str | None:
    """Why `name` cannot name an app or object of `kind` (None if it can): the SDK says so where the name is
    given, the control plane where it arrives."""
    if isinstance(name, str) and 0 < len(name) <= NAME_MAX and re.match(NAME_PATTERN, name):
        return None
    return (f"Invalid {kind} name: {name!r}. Names may contain only alphanumeric characters, dashes, periods and "
            f"underscores, and must be 1 to {NAME_MAX} characters long.")
NO_NUL = r"^[^\x00]*$"  # text the store keeps or looks up: PostgreSQL's text columns cannot hold NUL
# Request bodies of the control plane's API, read into memory: most are small; those that carry a user's data
# (call arguments, map inputs, Dict values, Queue items, definitions with a pickled function) are bounded by
# the data limits (a Dict value is at most 100 MiB). Uploads (source blobs, Volume files) stream to disk.
BODY_MAX = 4 * 1024 * 1024
DATA_BODY_MAX = 128 * 1024 * 1024
BLOB_MAX = 1024 * 1024 * 1024
VOLUME_FILE_MAX = 64 * 1024 ** 3
# -- The ingress proxy (controlplane/proxy.py): what one web client's connection may make the control plane hold
# or wait for. A head is read only up to these bounds, so memory per connection stays bounded whatever is sent.
PROXY_MAX_URL = 8 * 1024  # bytes of a request's target (path and query): longer is 414
PROXY_MAX_HEAD = 64 * 1024  # bytes of a request head (request line and header fields): more is 431
PROXY_MAX_HEADERS = 100  # header fields in one request head: more is 431
PROXY_HEAD_TIMEOUT_S = 20.0  # from a head's first byte to its last: later is 408 and the connection closes
PROXY_IDLE_TIMEOUT_S = 60.0  # a connection with no request under way for this long is closed
PROXY_MAX_BODY = 4 * 1024**3  # Modal's request body limit: a larger Content-Length is 413 before the body is read
# After an error answer (400/408/413/414/431) the connection is closed once the client stops sending, or after
# this many more bytes (discarded) or seconds, so the client can read the answer before the connection goes.
PROXY_LINGER_BYTES = 1024 * 1024
PROXY_LINGER_S = 2.0
