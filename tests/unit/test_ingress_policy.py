"""Ingress policy: the token bucket with an explicit clock, and every proxy-auth outcome."""

from __future__ import annotations

import pytest

from shoal.controlplane.ingress_policy import (
    INVALID_CREDENTIALS,
    MISSING_CREDENTIALS,
    TokenBucket,
    TokenRecord,
    check_proxy_auth,
    hash_secret,
)

# -- token bucket ------------------------------------------------------------------------------------------


def drain(bucket: TokenBucket, now: float) -> int:
    n = 0
    while bucket.take(now):
        n += 1
    return n


def test_bucket_starts_full_with_rate_times_burst() -> None:
    bucket = TokenBucket(200, 5)
    assert drain(bucket, 100.0) == 1000
    assert not bucket.take(100.0)


def test_bucket_refills_continuously_at_rate() -> None:
    bucket = TokenBucket(10, 1)
    assert drain(bucket, 0.0) == 10
    assert drain(bucket, 0.05) == 0  # half a token
    assert drain(bucket, 0.1) == 1
    assert drain(bucket, 0.55) == 4  # 0.45 s more: 4.5 tokens, 0.5 carried over
    assert drain(bucket, 0.6) == 1


def test_bucket_refill_is_capped_at_the_burst() -> None:
    bucket = TokenBucket(10, 2)
    assert drain(bucket, 0.0) == 20
    assert drain(bucket, 3600.0) == 20


def test_steady_rate_is_never_refused() -> None:
    bucket = TokenBucket(200, 5)
    drain(bucket, 0.0)
    assert all(bucket.take(i / 200) for i in range(1, 2001))


def test_retry_after() -> None:
    bucket = TokenBucket(4, 1)
    assert bucket.retry_after(0.0) == 0.0
    drain(bucket, 0.0)
    assert bucket.retry_after(0.0) == pytest.approx(0.25)
    assert bucket.retry_after(0.1) == pytest.approx(0.15)
    assert bucket.retry_after(0.25) == pytest.approx(0.0)
    assert bucket.take(0.25)


def test_clock_stepping_back_refills_nothing() -> None:
    bucket = TokenBucket(10, 1)
    drain(bucket, 5.0)
    assert not bucket.take(4.0)
    assert drain(bucket, 5.1) == 1


def test_tiny_burst_still_allows_one_request() -> None:
    bucket = TokenBucket(0.5, 1)  # capacity would be 0.5 tokens
    assert bucket.take(0.0)
    assert not bucket.take(1.0)
    assert bucket.retry_after(1.0) == pytest.approx(1.0)
    assert bucket.take(2.0)


@pytest.mark.parametrize(("rate", "burst"), [(0, 5), (-1, 5), (200, 0)])
def test_bucket_rejects_non_positive_settings(rate: float, burst: float) -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate, burst)


# -- proxy auth --------------------------------------------------------------------------------------------

SECRET = "ws-" + "s" * 43
TOKENS = {
    "wk-all": TokenRecord("wk-all", hash_secret(SECRET), [], 0.0),
    "wk-scoped": TokenRecord("wk-scoped", hash_secret(SECRET), ["web", "api"], 0.0),
}


def check(key: str | None, secret: str | None, app: str | None = "web") -> tuple[int, str] | None:
    return check_proxy_auth(key, secret, TOKENS.get, app)


def test_hash_secret_is_sha256_hex() -> None:
    assert hash_secret("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert len(hash_secret("ws-\udcff")) == 64  # undecodable header bytes: a hash, not an exception


@pytest.mark.parametrize(("key", "secret"), [(None, None), ("wk-all", None), (None, SECRET), ("", SECRET),
                                             ("wk-all", "")])
def test_missing_credentials(key: str | None, secret: str | None) -> None:
    assert check(key, secret) == (401, MISSING_CREDENTIALS)
    assert MISSING_CREDENTIALS == "modal-http: missing credentials for proxy authorization"


@pytest.mark.parametrize(("key", "secret"), [("wk-unknown", SECRET), ("wk-all", "ws-wrong"),
                                             ("wk-scoped", SECRET + "x"), ("wk-all", hash_secret(SECRET))])
def test_invalid_credentials(key: str, secret: str) -> None:
    assert check(key, secret) == (401, INVALID_CREDENTIALS)


def test_unscoped_token_reaches_every_app() -> None:
    assert check("wk-all", SECRET, "web") is None
    assert check("wk-all", SECRET, "anything") is None
    assert check("wk-all", SECRET, None) is None


def test_scoped_token_reaches_only_its_apps() -> None:
    assert check("wk-scoped", SECRET, "web") is None
    assert check("wk-scoped", SECRET, "api") is None
    assert check("wk-scoped", SECRET, "other") == (403, "modal-http: token is not allowed to access app 'other'")
    status, body = check("wk-scoped", SECRET, None)  # type: ignore[misc]
    assert status == 403 and "not allowed" in body


def test_bad_secret_is_401_even_for_an_app_out_of_scope() -> None:
    """Scope is only revealed to a caller that proved it holds the secret."""
    assert check("wk-scoped", "ws-wrong", "other") == (401, INVALID_CREDENTIALS)
