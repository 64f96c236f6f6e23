"""Functions reading secrets from their environment."""

import hashlib
import os

import shoal as modal


def digest() -> str | None:
    """What the functions return: results are stored, so they must not carry the secret itself."""
    value = os.environ.get("DB_PASSWORD")
    return hashlib.sha256(value.encode()).hexdigest() if value is not None else None

app = modal.App("secrets")


@app.function(secrets=[modal.Secret.from_name("shoal-test-db", required_keys=["DB_PASSWORD"])])
def read_db_password() -> str | None:
    return digest()


@app.function(secrets=[modal.Secret.from_name("shoal-test-db"), modal.Secret.from_dict({"DB_PASSWORD": "dict"})])
def later_wins() -> str | None:
    return digest()


@app.function(secrets=[modal.Secret.from_dict({"DB_PASSWORD": "dict"}), modal.Secret.from_name("shoal-test-db")])
def named_later_wins() -> str | None:
    return digest()


@app.function()
def no_secret() -> str | None:
    return digest()
