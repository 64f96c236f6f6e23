"""Named secrets: created on the CLI, encrypted at rest, injected into containers in order."""

from __future__ import annotations

import hashlib

import pytest

import shoal
from shoal.exception import NotFoundError

from ..conftest import run_cli

VALUE = "hunter2-9f8e7d6c5b4a"


def digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


@pytest.fixture(scope="module")
def created_secret(control_plane):
    out = run_cli("secret", "create", "shoal-test-db", f"DB_PASSWORD={VALUE}", "USER=app", "--force")
    assert out.returncode == 0, out.stderr
    assert VALUE not in out.stdout + out.stderr
    yield control_plane


def test_cli_secret_reaches_the_function_and_is_encrypted_at_rest(created_secret) -> None:
    import secrets_app

    with secrets_app.app.run(quiet=True):
        assert secrets_app.read_db_password.remote() == digest(VALUE)
        assert secrets_app.no_secret.remote() is None
    state = created_secret.state_bytes()
    assert state and VALUE.encode() not in state, "the store holds the secret in plain text"
    listed = run_cli("secret", "list")
    assert "shoal-test-db" in listed.stdout and VALUE not in listed.stdout


def test_later_secrets_override_earlier_ones(created_secret) -> None:
    import secrets_app

    with secrets_app.app.run(quiet=True):
        assert secrets_app.later_wins.remote() == digest("dict")
        assert secrets_app.named_later_wins.remote() == digest(VALUE)


def test_update_reaches_new_containers(created_secret) -> None:
    import secrets_app

    shoal.Secret.from_name("shoal-test-db").update({"DB_PASSWORD": "rotated"})
    try:
        with secrets_app.app.run(quiet=True):
            assert secrets_app.read_db_password.remote() == digest("rotated")
    finally:
        shoal.Secret.from_name("shoal-test-db").update({"DB_PASSWORD": VALUE})


def test_missing_secret_fails_at_app_start(control_plane) -> None:
    import secrets_missing_app

    with pytest.raises(NotFoundError, match="shoal-test-does-not-exist"):
        with secrets_missing_app.app.run(quiet=True):
            pass


def test_required_keys_are_checked(created_secret) -> None:
    app = shoal.App("required-keys")

    @app.function(serialized=True, secrets=[shoal.Secret.from_name("shoal-test-db", required_keys=["NOPE"])])
    def f() -> int:
        return 1

    with pytest.raises(NotFoundError, match="NOPE"):
        with app.run(quiet=True):
            pass


def test_secret_objects_api_and_cli_delete(control_plane) -> None:
    shoal.Secret.objects.create("shoal-test-tmp", {"A": "1"})
    with pytest.raises(shoal.exception.AlreadyExistsError):
        shoal.Secret.objects.create("shoal-test-tmp", {"A": "1"})
    assert "shoal-test-tmp" in [s.name for s in shoal.Secret.objects.list()]
    assert run_cli("secret", "delete", "shoal-test-tmp", "-y").returncode == 0
    assert "shoal-test-tmp" not in [s.name for s in shoal.Secret.objects.list()]
    assert run_cli("secret", "delete", "shoal-test-tmp", "-y").returncode == 1
    assert run_cli("secret", "delete", "shoal-test-tmp", "-y", "--allow-missing").returncode == 0
    bad = run_cli("secret", "create", "x", "1BAD=v")
    assert bad.returncode != 0 and "1BAD" in bad.stdout + bad.stderr
