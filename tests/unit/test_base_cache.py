"""The machine's base-image cache (shoal.oci.base) is used only when it is this user's alone: the layers it holds
become containers' root filesystems without being unpacked and checked again."""

from __future__ import annotations

import pytest

from shoal.oci.base import BaseImageError, debian_slim
from shoal.oci.store import LayerStore


def test_a_cache_others_can_write_is_refused_before_anything_is_read_or_built(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    cache.chmod(0o777)
    with pytest.raises(BaseImageError, match=r"base-image cache .* must belong to this user and be writable by it"):
        debian_slim(LayerStore(tmp_path / "store"), "3.11", cache=cache)
    assert list(cache.iterdir()) == []
