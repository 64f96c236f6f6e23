"""Ingress policy: the token bucket with an explicit clock, every proxy-auth outcome, and which budget a request
spends (refused requests never the workspace's)."""

from __future__ import annotations

import pytest

from shoal.controlplane.ingress_policy import (
    INVALID_CREDENTIALS,
    MISSING_CREDENTIALS,
    RATE_LIMITED,
    REJECTED_LIMITED,
    Admission,
    Refusal,
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


# -- admission: auth first, then the budget it spends -------------------------------------------------------
MISSING = (401, MISSING_CREDENTIALS)


def test_admitted_requests_spend_the_workspace_budget() -> None:
    admission = Admission(rate=10, burst_s=1)
    assert all(admission.decide(None, "10.0.0.1", 0.0) is None for _ in range(10))
    refusal = admission.decide(None, "10.0.0.2", 0.0)  # one budget for every client
    assert refusal == Refusal(429, RATE_LIMITED, 1)
    assert admission.decide(None, "10.0.0.2", 0.1) is None  # refilled


def test_refused_requests_never_spend_the_workspace_budget() -> None:
    admission = Admission(rate=10, burst_s=1, rejected_rate=5, rejected_burst_s=1)
    answers = [admission.decide(MISSING, "10.0.0.9", 0.0) for _ in range(1500)]
    assert answers[:5] == [Refusal(401, MISSING_CREDENTIALS)] * 5
    assert set(answers[5:]) == {Refusal(429, REJECTED_LIMITED, 1)}
    # The flood spent its own address's budget only: authenticated traffic keeps all of the workspace's.
    assert all(admission.decide(None, "10.0.0.9", 0.0) is None for _ in range(10))
    assert admission.decide(None, "10.0.0.1", 0.0) == Refusal(429, RATE_LIMITED, 1)


def test_each_address_has_its_own_budget_for_refused_requests() -> None:
    admission = Admission(rate=10, burst_s=1, rejected_rate=2, rejected_burst_s=1)
    denied = (403, "modal-http: token is not allowed to access app 'x'")
    assert [admission.decide(denied, "a", 0.0) for _ in range(3)] == [
        Refusal(*denied), Refusal(*denied), Refusal(429, REJECTED_LIMITED, 1)]
    assert admission.decide(denied, "b", 0.0) == Refusal(*denied)  # another client is not held back by "a"
    assert admission.decide(denied, "a", 0.5) == Refusal(*denied)  # "a" refills at its own rate


def test_the_retry_after_of_a_refused_flood_is_whole_seconds() -> None:
    admission = Admission(rate=10, burst_s=1, rejected_rate=0.25, rejected_burst_s=4)
    assert admission.decide(MISSING, "a", 0.0) == Refusal(*MISSING)
    assert admission.decide(MISSING, "a", 0.0) == Refusal(429, REJECTED_LIMITED, 4)
    assert admission.decide(MISSING, "a", 1.5) == Refusal(429, REJECTED_LIMITED, 3)


def test_addresses_kept_are_bounded() -> None:
    admission = Admission(rate=10, burst_s=1, rejected_rate=1, rejected_burst_s=1, max_clients=3)
    for client in ("a", "b", "c"):
        assert admission.decide(MISSING, client, 0.0) == Refusal(*MISSING)
    assert admission.decide(MISSING, "a", 0.0).status == 429  # "a" is now the most recently refused
    assert admission.decide(MISSING, "d", 0.0) == Refusal(*MISSING)  # evicts "b", the least recently refused
    assert len(admission.rejected) == 3 and "b" not in admission.rejected
    assert admission.decide(MISSING, "a", 0.0).status == 429  # still counted


def test_no_workspace_limit_still_bounds_refused_requests() -> None:
    admission = Admission(rate=None, rejected_rate=1, rejected_burst_s=1)
    assert all(admission.decide(None, "a", 0.0) is None for _ in range(10_000))
    assert admission.decide(MISSING, "a", 0.0) == Refusal(*MISSING)
    assert admission.decide(MISSING, "a", 0.0).status == 429
