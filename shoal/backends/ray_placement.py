"""Where a container can go on a Ray cluster: its resource request as Ray actor options, pure.

A function's `cpu=`, `memory=`, `gpu=` and `region=` become the Ray resources its container's actor reserves:

- `cpu` (request, or (request, limit)): `num_cpus` = the request (default 0.125, as Modal's);
- `memory` in MiB (request, or (request, limit)): Ray's `memory` resource, in bytes, = the request (default 128);
- `gpu="A100:2"`: `num_gpus=2` and the custom resource `accelerator_type:A100` (Ray's own name for a node's GPU
  model, which Ray sets on nodes it finds GPUs on, and which `ray start --resources` can declare), 0.001 of it
  as Ray's `accelerator_type=` option does; Modal's model names map to Ray's (`"A100-80GB"` → `A100-80G`,
  `"H100"` takes an H100, else an H200), `"any"` asks for GPUs of any model;
- `region="eu-west"`: the custom resource `region:eu-west` (0.001), which nodes of that region declare
  (`ray start --resources '{"region:eu-west": 1}'`).

A list of GPU models or regions is a fallback order: `alternatives()` lists every combination, best first, and
`choose()` takes the first that fits a live node's free resources now. Nothing here talks to Ray, so the
matching is tested without a cluster (tests/unit/test_ray_placement.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .gpus import describe_request, parse_request
from .sandbox import Limits

if TYPE_CHECKING:
    from .._spec.definitions import Options

MIB = 1024 * 1024
FRACTION = 0.001  # of a marker resource (accelerator type, region): any number of containers share a node's one

# Modal's GPU model names → the Ray accelerator types that satisfy them, best first.
RAY_ACCELERATORS: dict[str, tuple[str, ...]] = {
    "A100": ("A100", "A100-40G", "A100-80G"),
    "A100-40GB": ("A100-40G",),
    "A100-80GB": ("A100-80G",),
    "H100": ("H100", "H200"),
    "H100!": ("H100",),
    "A10": ("A10", "A10G"),
    "A10G": ("A10G", "A10"),
}


def accelerator_types(model: str) -> tuple[str, ...] | None:
    """The Ray accelerator types a requested model accepts, best first; None for "ANY" (any model)."""
    model = model.upper()
    if model == "ANY":
        return None
    return RAY_ACCELERATORS.get(model, (model,))


@dataclass(frozen=True)
class Placement:
    """One way to place a container: Ray actor resource options, and what it means for users."""

    num_cpus: float
    memory: int  # bytes
    num_gpus: int = 0
    resources: dict[str, float] = field(default_factory=dict)
    gpu: str | None = None  # the `gpu=` option this satisfies ("A100:2"), for messages
    accelerator: str | None = None  # the Ray accelerator type it asks for
    region: str | None = None

    def actor_options(self) -> dict[str, Any]:
        opts: dict[str, Any] = {"num_cpus": self.num_cpus, "memory": self.memory}
        if self.num_gpus:
            opts["num_gpus"] = self.num_gpus
        if self.resources:
            opts["resources"] = dict(self.resources)
        return opts

    def needs(self) -> dict[str, float]:
        """The node resources this takes, as Ray names them."""
        out = {"CPU": self.num_cpus, "memory": float(self.memory), **self.resources}
        if self.num_gpus:
            out["GPU"] = float(self.num_gpus)
        return {k: v for k, v in out.items() if v}

    def describe(self) -> str:
        parts = [f"{self.num_cpus:g} CPU", f"{self.memory // MIB} MiB"]
        if self.num_gpus:
            parts.append(f"{self.num_gpus}x {self.accelerator or 'any'} GPU")
        if self.region:
            parts.append(f"region {self.region}")
        return ", ".join(parts)


def alternatives(options: Options) -> list[Placement]:
    """Every placement `options` accept, in the order to try them (GPU fallbacks first, then regions)."""
    lim = Limits.from_options(options)
    cpus = lim.cpu_request
    memory = lim.memory_request_mib * MIB
    regions: list[str | None] = list(options.region or []) or [None]
    gpu_request = list(options.gpu or [])
    gpu_choices: list[tuple[str | None, str | None, int]] = []  # (option, accelerator type, count)
    for item in gpu_request:
        model, count = parse_request(item)
        types = accelerator_types(model)
        if types is None:
            gpu_choices.append((item, None, count))
        else:
            gpu_choices.extend((item, t, count) for t in types)
    if not gpu_choices:
        gpu_choices = [(None, None, 0)]
    out = []
    for option, accel, count in gpu_choices:
        for region in regions:
            res: dict[str, float] = {}
            if accel:
                res[f"accelerator_type:{accel}"] = FRACTION
            if region:
                res[f"region:{region}"] = FRACTION
            out.append(Placement(cpus, memory, count, res, option, accel, region))
    return out


@dataclass
class NodeView:
    """A Ray node as placement sees it: alive or not, its total and its free resources."""

    node_id: str
    alive: bool
    total: dict[str, float]
    available: dict[str, float]
    address: str = ""


def fits(needs: dict[str, float], resources: dict[str, float]) -> bool:
    # A small tolerance: Ray keeps resources in units of 1/10000.
    return all(resources.get(k, 0.0) + 1e-9 >= v for k, v in needs.items())


def choose(options: list[Placement], nodes: list[NodeView]) -> Placement | None:
    """The first placement that some live node has room for now, or None."""
    live = [n for n in nodes if n.alive]
    for p in options:
        needs = p.needs()
        if any(fits(needs, n.available) for n in live):
            return p
    return None


def waiting_reason(options: list[Placement], nodes: list[NodeView]) -> str:
    """Why no placement fits now, for users: no node could ever hold it, or those that could are full."""
    live = [n for n in nodes if n.alive]
    first = options[0]
    gpu_request = [p.gpu for p in options if p.gpu]
    if gpu_request:
        want = f"a GPU ({describe_request(list(dict.fromkeys(gpu_request)))})"
    else:
        want = "room"
    regions = list(dict.fromkeys(p.region for p in options if p.region))
    where = f" in region {' or '.join(regions)}" if regions else ""
    if not live:
        return f"waiting for {want}{where}: the Ray cluster has no live nodes"
    possible = [p for p in options if any(fits(p.needs(), n.total) for n in live)]
    if not possible:
        return (f"waiting for {want}{where}: no node of the Ray cluster can hold {first.describe()} "
                f"({_listing(live)})")
    holders = sum(1 for n in live if any(fits(p.needs(), n.total) for p in possible))
    return (f"waiting for {want}{where}: the {holders} node{'s' if holders != 1 else ''} that could hold "
            f"{possible[0].describe()} {'are' if holders != 1 else 'is'} full")


def _listing(nodes: list[NodeView]) -> str:
    """A short summary of what the cluster's nodes have, e.g. `3 nodes: 6 CPU, 1x A100 GPU, region eu-west`."""
    cpus = sum(n.total.get("CPU", 0.0) for n in nodes)
    gpus: dict[str, float] = {}
    regions: set[str] = set()
    plain_gpus = 0.0
    for n in nodes:
        types = [k.split(":", 1)[1] for k in n.total if k.startswith("accelerator_type:")]
        if n.total.get("GPU"):
            if types:
                for t in types:
                    gpus[t] = gpus.get(t, 0.0) + n.total["GPU"]
            else:
                plain_gpus += n.total["GPU"]
        regions.update(k.split(":", 1)[1] for k in n.total if k.startswith("region:"))
    parts = [f"{cpus:g} CPU"]
    parts += [f"{math.floor(v)}x {t} GPU" for t, v in sorted(gpus.items())]
    if plain_gpus:
        parts.append(f"{math.floor(plain_gpus)}x GPU of no declared model")
    if regions:
        parts.append("regions " + ", ".join(sorted(regions)))
    else:
        parts.append("no regions declared")
    return f"{len(nodes)} node{'s' if len(nodes) != 1 else ''}: " + ", ".join(parts)


def capacity(nodes: list[NodeView], per_cpu: int = 4, minimum: int = 4) -> int:
    """How many containers the cluster is taken to hold, for the autoscaler's clamp (as the local backend's
    `max(4, 4 × cores)` per machine): Ray's resources do the real holding."""
    return sum(max(minimum, int(per_cpu * n.total.get("CPU", 0.0))) for n in nodes if n.alive)
