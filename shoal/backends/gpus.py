"""GPUs of this machine and which container has which: matching `gpu=` requests to `nvidia-smi -L` output.

Everything but `detect()` is pure, so the matching is tested without GPUs.

A request is what `shoal._options.parse_gpu` produced: a list of `"MODEL"` or `"MODEL:COUNT"`, tried in order
(a fallback list). Model names follow Modal's:

- `"A100"` takes a 40 GB or an 80 GB A100 (40 GB first); `"A100-40GB"`/`"A100-80GB"` only that one;
- `"H100"` takes an H100, else an H200 (Modal may upgrade H100 requests); `"H100!"` only an H100;
- `"A10"` and `"A10G"` are one family;
- `"ANY"` takes any GPU of the machine.

A container asking for `COUNT` GPUs gets that many of one model, lowest indices first, exclusively until it
exits; `CUDA_VISIBLE_DEVICES` lists their indices, which are `nvidia-smi`'s (PCI bus order), so the backend
also sets `CUDA_DEVICE_ORDER=PCI_BUS_ID`.

A request no GPU of the machine could ever meet (none at all, or none of that model) fails the container's start
at once with a message naming the development opt-in `SHOAL_GPU_FALLBACK=cpu`, which runs such functions on the
CPU instead (`place`); waiting only makes sense where a matching GPU exists and is busy.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass

FALLBACK_ENV = "SHOAL_GPU_FALLBACK"  # "cpu": run GPU functions on the CPU where no GPU could ever match (dev)
FALLBACK_VALUES = ("", "off", "cpu")
_LINE = re.compile(r"^GPU\s+(\d+):\s*(.+?)\s*(?:\(UUID:\s*([^)]+)\))?\s*$")

# Models a request accepts, best first.
_ACCEPTS: dict[str, tuple[str, ...]] = {
    "A100": ("A100-40GB", "A100-80GB"),
    "A100-40GB": ("A100-40GB",),
    "A100-80GB": ("A100-80GB",),
    "H100": ("H100", "H200"),
    "H100!": ("H100",),
    "A10": ("A10", "A10G"),
    "A10G": ("A10G", "A10"),
}


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str  # as nvidia-smi prints it, e.g. "NVIDIA A100-SXM4-80GB"
    uuid: str
    model: str  # shoal's model name, e.g. "A100-80GB"


def normalize_model(name: str) -> str:
    """`nvidia-smi` product name → the model name `gpu=` uses (`"NVIDIA H100 80GB HBM3"` → `"H100"`)."""
    n = name.upper().replace("NVIDIA", " ").replace("TESLA", " ")
    n = re.sub(r"\s+", " ", n).strip()
    if re.search(r"\bA100\b|\bA100-", n):
        if "80GB" in n.replace(" ", ""):
            return "A100-80GB"
        return "A100-40GB"
    for model in ("H200", "H100", "B200", "L40S", "A10G", "L4", "T4"):
        if re.search(rf"(^|[\s-]){model}($|[\s-])", n):
            return model
    if re.search(r"(^|[\s-])A10($|[\s-])", n):
        return "A10"
    return n  # another GPU: usable through "any"


def parse_nvidia_smi(text: str) -> list[Gpu]:
    """Parse `nvidia-smi -L`: lines like `GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-5d1f…)`; others are
    ignored (MIG lines, warnings)."""
    gpus = []
    for line in text.splitlines():
        m = _LINE.match(line.strip())
        if m:
            gpus.append(Gpu(int(m.group(1)), m.group(2), (m.group(3) or "").strip(), normalize_model(m.group(2))))
    return gpus


def parse_request(item: str) -> tuple[str, int]:
    model, _, count = item.upper().partition(":")
    return model, int(count) if count else 1


def accepted_models(model: str) -> tuple[str, ...] | None:
    """The machine models a requested model accepts, best first; None for "ANY" (every model)."""
    if model == "ANY":
        return None
    return _ACCEPTS.get(model, (model,))


def choose(request: list[str], gpus: list[Gpu], busy: set[int]) -> list[int] | None:
    """The GPU indices to give a container asking for `request` (a fallback list), or None when none fit now.
    Tries each option in order; within one, the accepted models in order; within one model, lowest indices."""
    free = [g for g in sorted(gpus, key=lambda g: g.index) if g.index not in busy]
    for item in request:
        model, count = parse_request(item)
        accepted = accepted_models(model)
        if accepted is None:
            by_model: dict[str, list[int]] = {}
            for g in free:
                by_model.setdefault(g.model, []).append(g.index)
            fits = [ids for ids in by_model.values() if len(ids) >= count]
            if fits:
                return min(fits, key=lambda ids: ids[:count])[:count]
            continue
        for m in accepted:
            ids = [g.index for g in free if g.model == m]
            if len(ids) >= count:
                return ids[:count]
    return None


def describe_request(request: list[str]) -> str:
    return ", then ".join(request)


def _fits_machine(item: str, gpus: list[Gpu]) -> list[Gpu]:
    """The machine's GPUs that one request option could use if all were free (empty: it can never run here).
    One model per container: a model must have `count` GPUs on its own."""
    model, count = parse_request(item)
    accepted = accepted_models(model)
    group = [g for g in gpus if accepted is None or g.model in accepted]
    sizes: dict[str, int] = {}
    for g in group:
        sizes[g.model] = sizes.get(g.model, 0) + 1
    return [g for g in group if sizes[g.model] >= count]


def _machine_listing(gpus: list[Gpu]) -> str:
    have: dict[str, int] = {}
    for g in gpus:
        have[g.model] = have.get(g.model, 0) + 1
    return ", ".join(f"{n}x {m}" for m, n in sorted(have.items()))


def waiting_reason(request: list[str], gpus: list[Gpu], busy: set[int], note: str = "") -> str:
    """Why `request` cannot be met now, for users: no GPUs at all, none of that model, or all in use."""
    want = describe_request(request)
    if not gpus:
        return f"waiting for a GPU ({want}): this machine has no GPUs" + (f" ({note})" if note else "")
    matching = {g.index for item in request for g in _fits_machine(item, gpus)}
    if not matching:
        return f"waiting for a GPU ({want}): this machine has {_machine_listing(gpus)}, none that fit"
    in_use = len(matching & busy)
    return f"waiting for a GPU ({want}): {in_use} of {len(matching)} matching GPUs are in use"


@dataclass(frozen=True)
class Placement:
    """What to do with a container asking for GPUs: give it `ids`, run it on the CPU (`cpu`), keep it pending
    (`wait`, the reason), or fail its start (`fail`, the message)."""

    ids: tuple[int, ...] = ()
    cpu: bool = False
    wait: str | None = None
    fail: str | None = None


def place(request: list[str], gpus: list[Gpu], busy: set[int], fallback: str = "", note: str = "") -> Placement:
    """The decision for a container asking for `request` on one machine (the local backend). Waiting is for
    GPUs that exist and are busy; a request no GPU here could ever meet fails at once, unless `fallback`
    is "cpu" (SHOAL_GPU_FALLBACK, for developing GPU code on a machine without one)."""
    ids = choose(request, gpus, busy)
    if ids is not None:
        return Placement(ids=tuple(ids))
    if any(_fits_machine(item, gpus) for item in request):
        return Placement(wait=waiting_reason(request, gpus, busy, note))
    if fallback == "cpu":
        return Placement(cpu=True)
    want = describe_request(request)
    have = f"has {_machine_listing(gpus)}" if gpus else "has no GPUs" + (f" ({note})" if note else "")
    return Placement(fail=(
        f"gpu={want!r} can never run here: this machine {have}. To run GPU functions on the CPU while "
        f"developing, start the control plane with {FALLBACK_ENV}=cpu (e.g. `{FALLBACK_ENV}=cpu shoal up`)"))


def fallback_setting(env: Mapping[str, str]) -> str:
    """SHOAL_GPU_FALLBACK, checked: "" (off, the default), "off" or "cpu"."""
    value = env.get(FALLBACK_ENV, "").strip().lower()
    if value not in FALLBACK_VALUES:
        raise ValueError(f"{FALLBACK_ENV} must be 'cpu' or 'off', not {value!r}")
    return value


def detect() -> tuple[list[Gpu], str]:
    """This machine's GPUs, from `nvidia-smi -L`, and a note when there are none."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return [], "nvidia-smi not found"
    try:
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return [], f"nvidia-smi failed: {exc}"
    gpus = parse_nvidia_smi(out.stdout)
    if not gpus:
        return [], f"nvidia-smi -L listed none{': ' + out.stderr.strip() if out.stderr.strip() else ''}"
    return gpus, ""


class GpuAllocator:
    """Which container holds which GPU, on one machine. Single-threaded (the control plane's event loop)."""

    def __init__(self, gpus: list[Gpu], note: str = "", fallback: str = "") -> None:
        self.gpus = gpus
        self.note = note
        self.fallback = fallback
        self.held: dict[str, list[int]] = {}

    @property
    def busy(self) -> set[int]:
        return {i for ids in self.held.values() for i in ids}

    def place(self, container_id: str, request: list[str]) -> Placement:
        """`place()` for this machine; the GPUs given are held by `container_id` until `release`."""
        decision = place(request, self.gpus, self.busy, self.fallback, self.note)
        if decision.ids:
            self.held[container_id] = list(decision.ids)
        return decision

    def release(self, container_id: str) -> None:
        self.held.pop(container_id, None)
