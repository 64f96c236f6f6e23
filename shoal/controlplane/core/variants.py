"""Variants of a function: the pool of a class parameter set and/or `with_options` overrides, created on first
use, stored like any function (so it survives a restart), the same one for the same values; a redeploy derives
each variant again from its base's new definition."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

import msgpack
import msgspec

from ..._spec.definitions import FunctionDefinition, Options, VariantOverrides
from ..store import Store
from ..store import apps as app_rows
from .model import Pool, new_id
from .queues import Queues

if TYPE_CHECKING:
    from .registry import Registry


class Variants:
    def __init__(self, registry: Registry, store: Store, queues: Queues) -> None:
        self.registry = registry
        self.store = store
        self.queues = queues

    async def create_variant(self, pool: Pool, params: bytes | None, overrides: VariantOverrides) -> str:
        """The function id of the variant of `pool`'s function (its base's) for these values.
        msgspec.ValidationError if an override does not fit its option."""
        pools = self.registry.pools
        base = pools.get(pool.definition.variant_of or pool.function_id)
        if base is None or base.stopped:
            raise KeyError(f"function {pool.function_id} is not running")
        app = self.registry.apps[base.app_id]
        canonical = _canonical(msgspec.to_builtins(overrides))
        digest = hashlib.sha256(msgpack.packb([params, canonical], use_bin_type=True)).hexdigest()
        key = f"{base.tag}#{digest[:16]}"
        existing = app.functions.get(key)
        if existing is not None and existing in pools:
            return existing
        d = variant_definition(base.definition, params, overrides, base.function_id, key)
        function_id = new_id("fu")
        variant = self.registry.add_pool(function_id, app.id, d)
        await self.store.flushed(app_rows.put_function(self.store, function_id, app.id, key, d))
        if variant.options.min_containers:
            self.queues.scale(variant)
        return function_id

    def variants_of(self, function_id: str) -> list[Pool]:
        return [p for p in self.registry.pools.values() if p.definition.variant_of == function_id]

    def redefine(self, variant: Pool, base: Pool) -> int:
        """A variant follows its base function to the base's new definition; returns the store ticket."""
        old = variant.definition
        key = old.variant_key or old.tag
        d = variant_definition(base.definition, old.params, old.variant_overrides or VariantOverrides(),
                               base.function_id, key)
        variant.redefine(d)
        return app_rows.put_function(self.store, variant.function_id, variant.app_id, key, d)


def variant_definition(base: FunctionDefinition, params: bytes | None, overrides: VariantOverrides, base_id: str,
                       key: str) -> FunctionDefinition:
    """The definition of a variant pool: its base function's with the option overrides and parameter values
    applied. The overrides are kept, so a redeploy can derive the variant again from the new base.
    msgspec.ValidationError if an override does not fit its option."""
    options = base.options
    if overrides.options or overrides.extra:
        merged = {**msgspec.structs.asdict(options), **overrides.options,
                  "extra": {**options.extra, **overrides.extra}}
        options = msgspec.convert(merged, Options)  # checked as a decoded definition is
    return msgspec.structs.replace(
        base, options=options, secrets=base.secrets if overrides.secrets is None else list(overrides.secrets),
        volumes=base.volumes if overrides.volumes is None else list(overrides.volumes), params=params,
        variant_of=base_id, variant_key=key, variant_overrides=overrides)


def _canonical(value: Any) -> Any:
    """Maps with sorted keys, so equal overrides hash equally whatever order the client built them in."""
    if isinstance(value, dict):
        return [[k, _canonical(value[k])] for k in sorted(value)]
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    return value
