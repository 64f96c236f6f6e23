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
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass

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


def waiting_reason(request: list[str], gpus: list[Gpu], busy: set[int], note: str = "") -> str:
    """Why `request` cannot be met now, for users: no GPUs at all, none of that model, or all in use."""
    want = describe_request(request)
    if not gpus:
        return f"waiting for a GPU ({want}): this machine has no GPUs" + (f" ({note})" if note else "")
    matching: set[int] = set()
    for item in request:
        model, count = parse_request(item)
        accepted = accepted_models(model)
        group = [g for g in gpus if accepted is None or g.model in accepted]
        sizes: dict[str, int] = {}  # one model per container: a model must have `count` GPUs on its own
        for g in group:
            sizes[g.model] = sizes.get(g.model, 0) + 1
        if not sizes or max(sizes.values()) < count:
            continue
        matching.update(g.index for g in group)
    if not matching:
        have: dict[str, int] = {}
        for g in gpus:
            have[g.model] = have.get(g.model, 0) + 1
        listing = ", ".join(f"{n}x {m}" for m, n in sorted(have.items()))
        return f"waiting for a GPU ({want}): this machine has {listing}, none that fit"
    in_use = len(matching & busy)
    return f"waiting for a GPU ({want}): {in_use} of {len(matching)} matching GPUs are in use"


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

    def __init__(self, gpus: list[Gpu], note: str = "") -> None:
        self.gpus = gpus
        self.note = note
        self.held: dict[str, list[int]] = {}

    @property
    def busy(self) -> set[int]:
        return {i for ids in self.held.values() for i in ids}

    def acquire(self, container_id: str, request: list[str]) -> list[int] | None:
        ids = choose(request, self.gpus, self.busy)
        if ids is not None:
            self.held[container_id] = ids
        return ids

    def reason(self, request: list[str]) -> str:
        return waiting_reason(request, self.gpus, self.busy, self.note)

    def release(self, container_id: str) -> None:
        self.held.pop(container_id, None)
