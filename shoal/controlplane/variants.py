"""Variants of a function: the pool of a class parameter set and/or `with_options` overrides, created on first
use, stored like any function (so it survives a restart), the same one for the same values; a redeploy derives
each variant again from its base's new definition."""

from __future__ import annotations

import copy
import hashlib
from typing import TYPE_CHECKING, Any

import msgpack

from .model import Pool, new_id
from .queues import Queues
from .store import Store
from .store import apps as app_rows

if TYPE_CHECKING:
    from .registry import Registry


class Variants:
    def __init__(self, registry: Registry, store: Store, queues: Queues) -> None:
        self.registry = registry
        self.store = store
        self.queues = queues

    async def create_variant(self, pool: Pool, params: bytes | None, overrides: dict[str, Any]) -> str:
        """The function id of the variant of `pool`'s function (its base's) for these values."""
        pools = self.registry.pools
        base = pools.get(pool.definition.get("variant_of") or pool.function_id)
        if base is None or base.stopped:
            raise KeyError(f"function {pool.function_id} is not running")
        app = self.registry.apps[base.app_id]
        digest = hashlib.sha256(msgpack.packb([params, _canonical(overrides)], use_bin_type=True)).hexdigest()
        key = f"{base.tag}#{digest[:16]}"
        existing = app.functions.get(key)
        if existing is not None and existing in pools:
            return existing
        d = variant_definition(base.definition, params, overrides, base.function_id, key)
        function_id = new_id("fu")
        variant = self.registry.add_pool(function_id, app.id, d)
        await self.store.flushed(app_rows.put_function(self.store, function_id, app.id, key, d))
        if variant.options.get("min_containers"):
            self.queues.scale(variant)
        return function_id

    def variants_of(self, function_id: str) -> list[Pool]:
        return [p for p in self.registry.pools.values() if p.definition.get("variant_of") == function_id]

    def redefine(self, variant: Pool, base: Pool) -> int:
        """A variant follows its base function to the base's new definition; returns the store ticket."""
        old = variant.definition
        d = variant_definition(base.definition, old.get("params"), old.get("variant_overrides") or {},
                               base.function_id, old["variant_key"])
        variant.redefine(d)
        return app_rows.put_function(self.store, variant.function_id, variant.app_id, old["variant_key"], d)


def variant_definition(base: dict[str, Any], params: bytes | None, overrides: dict[str, Any], base_id: str,
                       key: str) -> dict[str, Any]:
    """The definition of a variant pool: its base function's with the option overrides and parameter values
    applied. The overrides are kept, so a redeploy can derive the variant again from the new base."""
    d = copy.deepcopy(base)
    d["options"] = {**d.get("options", {}), **overrides.get("options", {})}
    if overrides.get("extra"):
        d["options"]["extra"] = {**d["options"].get("extra", {}), **overrides["extra"]}
    if "secrets" in overrides:
        d["secrets"] = list(overrides["secrets"])
    d.update(params=params, variant_of=base_id, variant_key=key, variant_overrides=overrides)
    return d


def _canonical(value: Any) -> Any:
    """Maps with sorted keys, so equal overrides hash equally whatever order the client built them in."""
    if isinstance(value, dict):
        return [[k, _canonical(value[k])] for k in sorted(value)]
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    return value
