"""`idempotency.Recent`: results of keyed writes whose effect lives in memory, kept for a while, bounded."""

from __future__ import annotations

import time

from shoal.controlplane.idempotency import Recent


def test_a_kept_result_comes_back_under_its_key_only() -> None:
    recent = Recent()
    assert recent.put("k", {"id": 1}) == {"id": 1}
    assert recent.get("k") == {"id": 1}
    assert recent.get("other") is None
    assert recent.put(None, {"id": 2}) == {"id": 2} and recent.get(None) is None  # no key: nothing kept


def test_results_expire_and_the_oldest_go_first_past_the_cap() -> None:
    recent = Recent(ttl=0.0)
    recent.put("k", 1)
    time.sleep(0.01)
    assert recent.get("k") is None
    capped = Recent(cap=2)
    for key in ("a", "b", "c"):
        capped.put(key, key)
    assert [capped.get(k) for k in ("a", "b", "c")] == [None, "b", "c"]
