"""The tables of the store, written once in SQLite's dialect; `postgres.py` translates them (`pg_schema`).

Keep to types both databases have under these names or a translation: TEXT, INTEGER (BIGINT there), REAL
(DOUBLE PRECISION there), BLOB (BYTEA there). `WITHOUT ROWID` is dropped for PostgreSQL. Partial indexes work in both.
"""

from __future__ import annotations

SCHEMA = """
CREATE TABLE IF NOT EXISTS apps (
    app_id TEXT PRIMARY KEY, name TEXT, mode TEXT NOT NULL, state TEXT NOT NULL,
    detach INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL, stopped_at REAL
);
CREATE TABLE IF NOT EXISTS functions (
    function_id TEXT PRIMARY KEY, app_id TEXT NOT NULL, tag TEXT NOT NULL, definition BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS calls (
    call_id TEXT PRIMARY KEY, function_id TEXT NOT NULL, kind TEXT NOT NULL, created_at REAL NOT NULL,
    num_inputs INTEGER, state TEXT NOT NULL DEFAULT 'running', completed_at REAL, method TEXT
);
CREATE TABLE IF NOT EXISTS inputs (
    call_id TEXT NOT NULL, idx INTEGER NOT NULL, args BLOB NOT NULL, PRIMARY KEY (call_id, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS outputs (
    call_id TEXT NOT NULL, seq INTEGER NOT NULL, idx INTEGER NOT NULL, status TEXT NOT NULL, data BLOB,
    final INTEGER NOT NULL, created_at REAL NOT NULL, PRIMARY KEY (call_id, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS outputs_final ON outputs (call_id, idx) WHERE final = 1;
CREATE INDEX IF NOT EXISTS calls_state ON calls (state);
CREATE INDEX IF NOT EXISTS calls_function ON calls (function_id, created_at);
CREATE TABLE IF NOT EXISTS schedules (
    function_id TEXT PRIMARY KEY, anchor REAL NOT NULL, last_fire REAL
);
CREATE TABLE IF NOT EXISTS secrets (
    name TEXT PRIMARY KEY, data BLOB NOT NULL, created_at REAL NOT NULL, updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS objects (
    object_id TEXT PRIMARY KEY, kind TEXT NOT NULL, name TEXT, created_at REAL NOT NULL, app_id TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS objects_name ON objects (kind, name) WHERE name IS NOT NULL;
CREATE TABLE IF NOT EXISTS dict_entries (
    dict_id TEXT NOT NULL, key BLOB NOT NULL, value BLOB NOT NULL, touched_at REAL NOT NULL,
    PRIMARY KEY (dict_id, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS queue_items (
    queue_id TEXT NOT NULL, partition TEXT NOT NULL, seq INTEGER NOT NULL, value BLOB NOT NULL,
    PRIMARY KEY (queue_id, partition, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS queue_partitions (
    queue_id TEXT NOT NULL, partition TEXT NOT NULL, expires_at REAL NOT NULL,
    PRIMARY KEY (queue_id, partition)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS proxy_tokens (
    token_id TEXT PRIMARY KEY, secret_hash TEXT NOT NULL, scope BLOB NOT NULL, created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS app_versions (
    app_id TEXT NOT NULL, version INTEGER NOT NULL, created_at REAL NOT NULL, definitions BLOB NOT NULL,
    strategy TEXT NOT NULL, tag TEXT, rollback_of INTEGER, PRIMARY KEY (app_id, version)
);
CREATE TABLE IF NOT EXISTS replicas (
    replica_id TEXT PRIMARY KEY, url TEXT NOT NULL, web_url TEXT, pid INTEGER, started_at REAL NOT NULL,
    heartbeat_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS leases (
    key TEXT PRIMARY KEY, owner TEXT NOT NULL, expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS idempotency_keys (
    key TEXT PRIMARY KEY, result BLOB NOT NULL, created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS idempotency_keys_age ON idempotency_keys (created_at);
CREATE TABLE IF NOT EXISTS sandboxes (
    sandbox_id TEXT PRIMARY KEY, app_id TEXT NOT NULL, name TEXT, tags BLOB NOT NULL, state TEXT NOT NULL,
    returncode INTEGER, reason TEXT, created_at REAL NOT NULL, ended_at REAL, command BLOB NOT NULL,
    image_id TEXT, container_id TEXT
);
CREATE INDEX IF NOT EXISTS sandboxes_app ON sandboxes (app_id, created_at);
"""

# Columns added after a table first shipped: (table, column, declaration). Applied at open when missing, so a
# state directory from an older shoal keeps working. Append here; never edit a shipped CREATE TABLE's meaning.
ADDED_COLUMNS: list[tuple[str, str, str]] = [
    ("calls", "method", "TEXT"),
    ("schedules", "call_id", "TEXT"),  # the last scheduled call: a new owner does not overlap it
]
