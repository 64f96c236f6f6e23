"""The lease rules of several control planes (controlplane/replicas.py), as pure functions."""

from __future__ import annotations

from shoal.controlplane import policy


def decide(holder, expires_at, me="cp-a", now=100.0, ttl=5.0, want=True):
    return policy.lease_decision(holder=holder, expires_at=expires_at, me=me, now=now, ttl_s=ttl, want=want)


def test_a_free_lease_is_taken_with_a_fresh_expiry() -> None:
    d = decide(None, None)
    assert (d.action, d.owner, d.expires_at) == ("take", "cp-a", 105.0)


def test_the_holder_renews_its_live_lease() -> None:
    d = decide("cp-a", 101.0)
    assert (d.action, d.owner, d.expires_at) == ("renew", "cp-a", 105.0)


def test_a_live_lease_of_another_replica_is_left_to_it_however_close_to_expiry() -> None:
    d = decide("cp-b", 100.001)
    assert (d.action, d.owner, d.expires_at) == ("defer", "cp-b", 100.001)


def test_an_expired_lease_is_free_for_anyone() -> None:
    assert decide("cp-b", 99.0).action == "take"
    assert decide("cp-b", 100.0).action == "take"  # expiry is exclusive: at expires_at it is over


def test_its_old_holder_takes_an_expired_lease_as_a_newcomer() -> None:
    # It may have been taken and handed back meanwhile: whoever takes it rebuilds the app from the store.
    assert decide("cp-a", 99.0).action == "take"


def test_asking_without_wanting_never_takes() -> None:
    assert decide(None, None, want=False) == policy.LeaseDecision("defer", None, None)
    assert decide("cp-b", 99.0, want=False).action == "defer"
    assert decide("cp-b", 101.0, want=False).owner == "cp-b"
    assert decide("cp-a", 101.0, want=False).action == "renew"


def test_a_replica_stops_acting_before_its_lease_can_expire() -> None:
    # Renewed by a request sent at 10.0 (its own clock): the database set the expiry at least ttl later.
    until = policy.lease_confirmed_until(sent_at=10.0, ttl_s=5.0, margin_s=1.25)
    assert until == 13.75
    assert policy.lease_confirmed_until(sent_at=10.0, ttl_s=1.0, margin_s=2.0) == 10.0  # never after the send
