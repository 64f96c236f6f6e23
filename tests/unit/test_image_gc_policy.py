"""The image clean-up policy (controlplane/image_policy.py): what may go, given what uses each image and when; and
its grace period, read from SHOAL_IMAGE_GC_GRACE."""

from __future__ import annotations

import pytest

from shoal.controlplane.image_gc import DEFAULT_GRACE_S, grace_from_env
from shoal.controlplane.image_policy import ImageUse, collectable, idle_since, refusal, stale_records

DAY = 86400.0
NOW = 10 * DAY


def test_idle_images_go_after_the_grace_period_only():
    images = [ImageUse("im-old", created=NOW - 3 * DAY, last_used=NOW - 2 * DAY),
              ImageUse("im-recent", created=NOW - 3 * DAY, last_used=NOW - 60),
              ImageUse("im-new", created=NOW - 60),
              ImageUse("im-never-used", created=NOW - 2 * DAY)]
    assert collectable(images, NOW, DAY) == ["im-never-used", "im-old"]
    assert collectable(images, NOW, 3 * DAY) == []
    assert collectable(images, NOW, 0) == ["im-never-used", "im-new", "im-old", "im-recent"]
    assert idle_since(images[0]) == NOW - 2 * DAY and idle_since(images[2]) == NOW - 60


def test_images_in_use_or_busy_stay_whatever_their_age():
    images = [ImageUse("im-app", created=0, last_used=0, apps=("web (ap-1)",)),
              ImageUse("im-building", created=0, busy="it is being built"),
              ImageUse("im-container", created=0, busy="container ta-1 runs on it"),
              ImageUse("im-idle", created=0)]
    assert collectable(images, NOW, 0) == ["im-idle"]


def test_an_image_that_stays_keeps_the_images_it_is_built_on():
    images = [ImageUse("im-base", created=0, last_used=0),
              ImageUse("im-mid", created=0, parents=("im-base",)),
              ImageUse("im-thin", created=0, apps=("a (ap-1)",), parents=("im-mid",)),
              ImageUse("im-other-thin", created=0, parents=("im-gone",))]  # a parent no longer there
    assert collectable(images, NOW, DAY) == ["im-other-thin"]
    # once nothing uses the thin image, the whole chain may go
    idle = [ImageUse(i.image_id, i.created, i.last_used, (), "", i.parents) for i in images]
    assert collectable(idle, NOW, DAY) == ["im-base", "im-mid", "im-other-thin", "im-thin"]


def test_an_explicit_removal_ignores_age_but_not_use():
    images = [ImageUse("im-app", created=NOW, apps=("web (ap-1)", "api (ap-2)")),
              ImageUse("im-busy", created=0, busy="it is being built"),
              ImageUse("im-base", created=0),
              ImageUse("im-thin", created=0, parents=("im-base",)),
              ImageUse("im-fresh", created=NOW)]
    assert refusal("im-app", images) == "image im-app is used by apps web (ap-1), api (ap-2); stop them first"
    assert refusal("im-app", [ImageUse("im-app", created=NOW, apps=("ap-3",))]) == (
        "image im-app is used by app ap-3; stop it first")
    assert refusal("im-busy", images) == "image im-busy cannot be removed now: it is being built"
    assert refusal("im-base", images) == "image im-base is the base of im-thin; remove that first"
    assert refusal("im-thin", images) is None and refusal("im-fresh", images) is None
    assert refusal("im-unknown", images) is None


def test_records_that_are_not_images_go_when_no_kept_image_needs_their_layers():
    kept = frozenset({"l1", "l2", "l3"})
    records = [("docker.io/library/python:3.12", frozenset({"l1", "l2"}), 0.0),  # the base of a kept image
               ("docker.io/library/alpine:3", frozenset({"l9"}), 0.0),  # nobody's base
               ("docker.io/library/busybox:1", frozenset({"l8"}), NOW - 60)]  # nobody's, but pulled just now
    assert stale_records(records, kept, NOW, DAY) == ["docker.io/library/alpine:3"]
    assert stale_records(records, frozenset(), NOW, 0) == [
        "docker.io/library/alpine:3", "docker.io/library/busybox:1", "docker.io/library/python:3.12"]


def test_the_grace_period_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv("SHOAL_IMAGE_GC_GRACE", raising=False)
    assert grace_from_env() == DEFAULT_GRACE_S == 86400
    monkeypatch.setenv("SHOAL_IMAGE_GC_GRACE", "2.5")
    assert grace_from_env() == 2.5
    for bad in ("-1", "soon", "inf", "nan"):
        monkeypatch.setenv("SHOAL_IMAGE_GC_GRACE", bad)
        with pytest.raises(ValueError, match="SHOAL_IMAGE_GC_GRACE must be a number of seconds"):
            grace_from_env()
