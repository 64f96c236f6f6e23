"""Validation of `@app.function(...)` / `@app.cls(...)` options.

Pure: takes the keyword arguments, returns a `FunctionOptions` or raises `InvalidError`/`DeprecationError`
naming the parameter. Runs at decoration time so mistakes surface where they are written.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Collection, Sequence
from typing import Any

from ._spec.definitions import Options, RetryPolicy
from ._spec.limits import AUTOSCALER_BOUNDS, TIMEOUT_S
from .exception import DeprecationError, InvalidError, NotImplementedWarning
from .retries import Retries, parse_retries

KNOWN_GPUS = {
    "T4", "L4", "A10", "A10G", "A100", "A100-40GB", "A100-80GB", "L40S", "H100", "H100!", "H200", "B200", "ANY",
}
DEPRECATED_ALIASES = {
    "keep_warm": "min_containers",
    "concurrency_limit": "max_containers",
    "container_idle_timeout": "scaledown_window",
    "allow_concurrent_inputs": "@modal.concurrent(max_inputs=...)",
}
# Options shoal accepts and records but does not act on yet; using one warns once per process.
NOT_YET_ENFORCED = (
    "network_file_systems", "ephemeral_disk", "proxy", "cloud", "region",
    "routing_region",
    "nonpreemptible", "enable_memory_snapshot", "restrict_modal_access", "i6pn",
    "experimental_options",
)
_warned: set[str] = set()


@dataclasses.dataclass
class FunctionOptions:
    """Everything a decorator said about how to run a function; sent to the control plane as a dict."""

    timeout: int = 300
    startup_timeout: int | None = None
    retries: Retries | None = None
    min_containers: int | None = None
    max_containers: int | None = None
    buffer_containers: int | None = None
    scaledown_window: int | None = None
    cpu: float | tuple[float, float] | None = None
    memory: int | tuple[int, int] | None = None
    gpu: list[str] | None = None
    single_use_containers: bool = False
    max_inputs: int = 1  # inputs one container runs at once (@modal.concurrent)
    target_inputs: int | None = None
    batch_max_size: int | None = None  # @modal.batched / with_batching
    batch_wait_ms: int | None = None
    serialized: bool = False
    include_source: bool | None = None
    region: list[str] | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_wire(self) -> Options:
        return Options(
            timeout=self.timeout, startup_timeout=self.startup_timeout,
            retries=RetryPolicy(**self.retries.to_dict()) if self.retries else None,
            min_containers=self.min_containers, max_containers=self.max_containers,
            buffer_containers=self.buffer_containers, scaledown_window=self.scaledown_window,
            cpu=list(self.cpu) if isinstance(self.cpu, tuple) else self.cpu,
            memory=list(self.memory) if isinstance(self.memory, tuple) else self.memory,
            gpu=self.gpu, single_use_containers=self.single_use_containers, max_inputs=self.max_inputs,
            target_inputs=self.target_inputs, batch_max_size=self.batch_max_size, batch_wait_ms=self.batch_wait_ms,
            serialized=self.serialized, include_source=self.include_source, region=self.region,
            extra={k: v for k, v in self.extra.items() if isinstance(v, (str, int, float, bool, type(None)))})


def reject_deprecated(kwargs: dict[str, Any], where: str = "@app.function") -> None:
    """Modal 1.6 raises for the removed aliases instead of accepting them."""
    for old, new in DEPRECATED_ALIASES.items():
        if kwargs.get(old) is not None:
            raise DeprecationError(f"The `{old}` parameter of {where} has been renamed; use `{new}` instead.")


def check_autoscaler(values: dict[str, Any]) -> None:
    """The autoscaler's knobs among `values` (None: not given), in their bounds (`limits.AUTOSCALER_BOUNDS`), and
    min_containers <= max_containers: as decorators, `with_options` and `autoscaler.update` take them."""
    for name, bounds in AUTOSCALER_BOUNDS.items():
        _check_int(name, values.get(name), *bounds)
    lo, hi = values.get("min_containers"), values.get("max_containers")
    if lo is not None and hi is not None and lo > hi:
        raise InvalidError(f"`min_containers` ({lo}) cannot be greater than `max_containers` ({hi})")


def _check_int(name: str, value: Any, lo: int, hi: int | None = None) -> None:
    if value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidError(f"`{name}` must be an integer, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        bound = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
        raise InvalidError(f"`{name}` must be {bound}, got {value}")


def parse_gpu(gpu: str | Sequence[str] | None) -> list[str] | None:
    """`"A100-80GB:2"` → `["A100-80GB:2"]`; a list is a fallback order. Model names are uppercased."""
    if gpu is None:
        return None
    if isinstance(gpu, str):
        items = [gpu]
    elif isinstance(gpu, (list, tuple)):
        items = list(gpu)
    else:
        raise InvalidError(f"`gpu` must be a string or a list of strings, got {gpu!r}")
    if not items:
        raise InvalidError("`gpu` must not be an empty list")
    parsed = []
    for item in items:
        if not isinstance(item, str):
            raise InvalidError(f"`gpu` must be a string or a list of strings, got {item!r}")
        model, _, count = item.upper().partition(":")
        if model not in KNOWN_GPUS:
            raise InvalidError(f"`gpu`: unknown GPU type {item!r}; known types: {', '.join(sorted(KNOWN_GPUS))}")
        if count and (not count.isdigit() or not 1 <= int(count) <= 8):
            raise InvalidError(f"`gpu`: GPU count in {item!r} must be between 1 and 8")
        parsed.append(f"{model}:{count}" if count else model)
    return parsed


def _parse_region(region: str | Sequence[str] | None) -> list[str] | None:
    if region is None:
        return None
    regions = [region] if isinstance(region, str) else list(region)
    if not all(isinstance(r, str) for r in regions):
        raise InvalidError(f"`region` must be a string or a list of strings, got {region!r}")
    return regions


def _check_resource(name: str, value: Any, kind: type) -> None:
    if value is None:
        return
    pair = value if isinstance(value, tuple) else (value,)
    if len(pair) not in (1, 2) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in pair):
        raise InvalidError(f"`{name}` must be a number or a (request, limit) tuple, got {value!r}")
    if kind is int and not all(isinstance(v, int) for v in pair):
        raise InvalidError(f"`{name}` is in MiB and must be an integer, got {value!r}")
    if any(v <= 0 for v in pair):
        raise InvalidError(f"`{name}` must be positive, got {value!r}")
    if len(pair) == 2 and pair[1] < pair[0]:
        raise InvalidError(f"`{name}` limit ({pair[1]}) must be at least its request ({pair[0]})")


def build_options(
    *,
    timeout: int | None,
    startup_timeout: int | None,
    retries: int | Retries | None,
    min_containers: int | None,
    max_containers: int | None,
    buffer_containers: int | None,
    scaledown_window: int | None,
    cpu: float | tuple[float, float] | None,
    memory: int | tuple[int, int] | None,
    gpu: str | list[str] | None,
    single_use_containers: bool,
    max_inputs: int | None,
    serialized: bool,
    include_source: bool | None,
    region: str | Sequence[str] | None,
    is_generator: bool,
    is_web: bool = False,
    extra: dict[str, Any] | None = None,
) -> FunctionOptions:
    """Validate decorator arguments the way Modal 1.6 does and collect them."""
    if timeout is None:
        raise InvalidError("`timeout` must be a number of seconds; None is not allowed (the default is 300)")
    _check_int("timeout", timeout, *TIMEOUT_S)
    _check_int("startup_timeout", startup_timeout, *TIMEOUT_S)
    check_autoscaler({"min_containers": min_containers, "max_containers": max_containers,
                      "buffer_containers": buffer_containers, "scaledown_window": scaledown_window})
    _check_resource("cpu", cpu, float)
    _check_resource("memory", memory, int)
    parsed_retries = parse_retries(retries)
    if parsed_retries is not None and parsed_retries.max_retries > 0:
        if is_generator:
            raise InvalidError("`retries` is not supported for generator functions")
        if is_web:
            raise InvalidError("`retries` is not supported for web endpoints")
    if max_inputs is not None:
        if max_inputs != 1:
            raise InvalidError("`max_inputs` only accepts 1; use `single_use_containers=True` instead")
        warnings.warn(
            "`max_inputs=1` is deprecated; use `single_use_containers=True`", DeprecationWarning, stacklevel=3
        )
        single_use_containers = True
    region = _parse_region(region)
    extra = dict(extra or {})
    if extra.get("volumes"):
        from .volume import check_mounts

        extra["volumes"] = check_mounts(extra["volumes"])
    parsed_gpu = parse_gpu(gpu)
    # Warn on the caller's side only: containers import the same module and would repeat every warning.
    in_container = "SHOAL_CONTAINER_ID" in os.environ
    for name in NOT_YET_ENFORCED:
        value = {"gpu": gpu, "region": region, "cpu": cpu, "memory": memory}.get(name, extra.get(name))
        if value not in (None, False, {}, []) and name not in _warned and not in_container:
            _warned.add(name)
            warnings.warn(
                f"shoal records `{name}=` but does not enforce it yet", NotImplementedWarning, stacklevel=3
            )
    if include_source is False and "include_source" not in _warned and not in_container:
        _warned.add("include_source")
        warnings.warn("shoal always ships the defining module's source; `include_source=False` has no effect yet",
                      NotImplementedWarning, stacklevel=3)
    return FunctionOptions(
        timeout=timeout,
        startup_timeout=startup_timeout,
        retries=parsed_retries,
        min_containers=min_containers,
        max_containers=max_containers,
        buffer_containers=buffer_containers,
        scaledown_window=scaledown_window,
        cpu=cpu,
        memory=memory,
        gpu=parsed_gpu,
        single_use_containers=bool(single_use_containers),
        serialized=bool(serialized),
        include_source=include_source,
        region=region,
        extra=extra,
    )


def check_secrets(secrets: Collection[Any] | None) -> list[Any]:
    from .secret import Secret

    items = list(secrets or [])
    for s in items:
        if not isinstance(s, Secret):
            raise InvalidError(f"`secrets` must contain modal.Secret objects, got {type(s).__name__}")
    return items


def option_overrides(
    *,
    cpu: float | tuple[float, float] | None = None,
    memory: int | tuple[int, int] | None = None,
    gpu: str | list[str] | None = None,
    env: dict[str, str | None] | None = None,
    secrets: Collection[Any] | None = None,
    volumes: dict[Any, Any] | None = None,
    retries: int | Retries | None = None,
    max_containers: int | None = None,
    buffer_containers: int | None = None,
    scaledown_window: int | None = None,
    timeout: int | None = None,
    region: str | Sequence[str] | None = None,
    cloud: str | None = None,
    routing_region: str | None = None,
) -> dict[str, Any]:
    """Validate `with_options(...)` arguments; returns the overrides in wire form:
    `{"options": {...}, "extra": {...}, "secrets": [...]}` (only what was given).

    As in Modal, options cannot be unset (None means "unchanged"), and `secrets`/`env` replace the function's
    secrets rather than adding to them."""
    from .secret import Secret, secret_refs

    _check_int("timeout", timeout, *TIMEOUT_S)
    check_autoscaler({"max_containers": max_containers, "buffer_containers": buffer_containers,
                      "scaledown_window": scaledown_window})
    _check_resource("cpu", cpu, float)
    _check_resource("memory", memory, int)
    if env is not None and not isinstance(env, dict):
        raise InvalidError(f"`env` must be a dict, got {type(env).__name__}")
    region = _parse_region(region)
    parsed_retries = parse_retries(retries)
    options: dict[str, Any] = {
        "timeout": timeout, "max_containers": max_containers, "buffer_containers": buffer_containers,
        "scaledown_window": scaledown_window, "cpu": list(cpu) if isinstance(cpu, tuple) else cpu,
        "memory": list(memory) if isinstance(memory, tuple) else memory, "gpu": parse_gpu(gpu), "region": region,
        "retries": parsed_retries.to_dict() if parsed_retries else None,
    }
    out: dict[str, Any] = {"options": {k: v for k, v in options.items() if v is not None}}
    extra = {k: v for k, v in (("cloud", cloud), ("routing_region", routing_region)) if v is not None}
    if extra:
        out["extra"] = extra
    if secrets or env:
        out["secrets"] = secret_refs([*check_secrets(secrets), *([Secret.from_dict(env)] if env else [])])
    if volumes:  # the Volume objects: resolved to mounts when the variant is created (`Function._fid_plan`)
        from .volume import check_mounts

        out["volumes"] = check_mounts(volumes)
    in_container = "SHOAL_CONTAINER_ID" in os.environ
    given = {"region": region, "cloud": cloud, "routing_region": routing_region}  # as the decorator's
    for name, value in given.items():
        if value not in (None, {}, []) and name not in _warned and not in_container:
            _warned.add(name)
            warnings.warn(f"shoal records `{name}=` but does not enforce it yet", NotImplementedWarning,
                          stacklevel=3)
    return out


def merge_overrides(first: dict[str, Any] | None, then: dict[str, Any]) -> dict[str, Any]:
    """Stacked `with_options(...)`: later values win; `secrets` and `volumes` are replaced, not merged."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in (first or {}).items()}
    for key in ("options", "extra"):
        if then.get(key):
            out[key] = {**out.get(key, {}), **then[key]}
    for key in ("secrets", "volumes"):
        if key in then:
            out[key] = then[key]
    return out
