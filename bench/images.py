"""Images, side by side in one run: cache hits, a registry pull next to skopeo, cold starts on OCI and venv
images and on debian_slim built as a root filesystem (SHOAL_DEBIAN_SLIM=rootfs) with and without the warm pool,
first builds next to uv by hand.

    python -m bench.images [--only pull,build,cold] [--rounds 5] [--layers 5] [--mib 16]

Needs root, skopeo, umoci (optional), docker-registry, sandboxed containers, and PyPI (the builds install six and
fastapi). The OCI base is the tests' small Debian image with Python 3.11 (tests/integration/rootfs_images.py),
pushed to a real `docker-registry` on 127.0.0.1 (tests/integration/oci_registry.py). bench/README.md says what
each row measures; docs/images.md has the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shoal._spec.definitions import ImageSpec  # noqa: E402
from shoal._spec.images import BUILDER_VERSION, image_id_for  # noqa: E402
from shoal.controlplane.images import ImageBuilder  # noqa: E402
from shoal.image import Image  # noqa: E402
from shoal.oci.layout import LayoutWriter  # noqa: E402
from shoal.oci.registry import pull, push_layout  # noqa: E402
from shoal.oci.store import LayerStore  # noqa: E402
from tests.integration.oci_registry import random_layer, registry  # noqa: E402
from tests.integration.rootfs_images import build_tars, write_layout  # noqa: E402

SECTIONS = ("pull", "build", "cold")  # (1) comes with build (in process) and cold (through the control plane)
Row = tuple[str, float | None, float | None, str, str]  # metric, shoal, reference, reference's name, target


# -- (2) pull ------------------------------------------------------------------------------------------------------
def push_multi_layer(work: Path, reg: str, layers: int, mib: int) -> str:
    """An image of `layers` layers of `mib` MiB of incompressible files, pushed to the registry; its reference."""
    writer = LayoutWriter(work / "multi-layout")
    blobs = [writer.add_layer(random_layer(f"l{i}", mib << 20)) for i in range(layers)]
    writer.tag("v1", writer.add_image(blobs, {"Cmd": ["/bin/sh"]}))
    ref = f"{reg}/bench/multi:v1"
    push_layout(work / "multi-layout", "v1", ref)
    return ref


def _skopeo(ref: str, dest: Path) -> None:
    subprocess.run(["skopeo", "--insecure-policy", "copy", "--quiet", "--src-tls-verify=false", "--src-no-creds",
                    f"docker://{ref}", f"oci:{dest}:image"], check=True, capture_output=True)


def pull_times(work: Path, ref: str, rounds: int) -> dict[str, list[float]]:
    """Each round, in turn, into fresh directories: skopeo copy (blobs only); shoal's pull (blobs + every layer
    unpacked + the record), with layers unpacked while they arrive and, for comparison, after the transfer;
    skopeo copy + umoci raw unpack (the same work as a pull, by Go tools)."""
    umoci = shutil.which("umoci")
    times: dict[str, list[float]] = {"skopeo": [], "pull": [], "pull, unpack after transfer": [],
                                     "skopeo+umoci": []}
    for i in range(rounds):
        scratch = work / f"pull-{i}"
        scratch.mkdir()
        t = time.perf_counter()
        _skopeo(ref, scratch / "skopeo")
        times["skopeo"].append(time.perf_counter() - t)
        t = time.perf_counter()
        pull(LayerStore(scratch / "store"), ref)
        times["pull"].append(time.perf_counter() - t)
        t = time.perf_counter()
        pull(LayerStore(scratch / "store-late"), ref, early_unpack=False)
        times["pull, unpack after transfer"].append(time.perf_counter() - t)
        if umoci:
            t = time.perf_counter()
            _skopeo(ref, scratch / "umoci")
            subprocess.run([umoci, "raw", "unpack", "--image", f"{scratch / 'umoci'}:image", str(scratch / "root")],
                           check=True, capture_output=True)
            times["skopeo+umoci"].append(time.perf_counter() - t)
        shutil.rmtree(scratch, ignore_errors=True)
    return {k: v for k, v in times.items() if v}


# -- (4) first builds, and the in-process cache hit ------------------------------------------------------------------
def oci_spec(tag: str, env: dict[str, str] | None = None) -> ImageSpec:
    """`from_registry(tag).pip_install("six")` as the SDK sends it (`env`: a variant with another image id)."""
    steps = [{"kind": "from_registry", "repr": f"from_registry({tag!r})", "tag": tag, "registry": "generic",
              "add_python": None},
             {"kind": "pip_install", "repr": "pip_install('six')", "packages": ["six"],
              **({"env": env} if env else {})}]
    return ImageSpec(image_id=image_id_for(None, steps), builder=BUILDER_VERSION, python_version=None, steps=steps)


def _timed_build(builder: ImageBuilder, spec: ImageSpec) -> float:
    t0 = time.perf_counter()
    asyncio.run(builder.ensure(spec, lambda _text: None))
    return time.perf_counter() - t0


def _by_hand(work: Path, uv: str, cache: Path) -> float:
    """`uv venv` + `uv pip install six`, as a user would, with the given uv cache."""
    env = {**os.environ, "UV_CACHE_DIR": str(cache)}
    venv = work / f"venv{time.monotonic_ns()}"
    t0 = time.perf_counter()
    subprocess.run([uv, "venv", "-q", "--python", sys.executable, str(venv)], check=True, env=env)
    subprocess.run([uv, "pip", "install", "-q", "--python", str(venv / "bin" / "python"), "six"], check=True, env=env)
    return time.perf_counter() - t0


def build_times(work: Path, tag: str, repeat: int) -> tuple[dict[str, list[float]], list[float]]:
    """First builds in empty state directories (empty uv caches: online), a new image on warm state, uv by hand
    (empty and warm cache); and 200 whole-image cache hits of `ImageBuilder.ensure` for the OCI image."""
    t: dict[str, list[float]] = {k: [] for k in ("oci fresh", "oci warm", "venv fresh", "venv warm", "rootfs fresh",
                                                 "rootfs warm", "hand cold", "hand warm")}
    slim = Image.debian_slim().pip_install("six").to_wire()
    for i in range(repeat):
        state = work / f"state{i}"
        if i:  # the static uv is fetched once per machine: not part of an image's first build
            for d in (work / "state0" / "images" / ".cache").glob("uv-static-*"):
                shutil.copytree(d, state / "images" / ".cache" / d.name)
        builder = ImageBuilder(state)
        t["oci fresh"].append(_timed_build(builder, oci_spec(tag)))
        t["oci warm"].append(_timed_build(builder, oci_spec(tag, {"RUN": str(i)})))
        for mode in ("venv", "rootfs"):  # what debian_slim() is (SHOAL_DEBIAN_SLIM); rootfs: the machine's base cached
            slim_builder = ImageBuilder(work / f"slim-{mode}{i}", debian_slim=mode)
            t[f"{mode} fresh"].append(_timed_build(slim_builder, slim))
            again = Image.debian_slim().env({"RUN": str(i)}).pip_install("six").to_wire()  # the pip step runs again
            t[f"{mode} warm"].append(_timed_build(slim_builder, again))
        cache = work / f"uv-cache{i}"
        t["hand cold"].append(_by_hand(work, builder.uv, cache))
        t["hand warm"].append(_by_hand(work, builder.uv, cache))
    builder = ImageBuilder(work / "state0")
    spec = oci_spec(tag)

    async def hits() -> list[float]:
        out = []
        for _ in range(200):
            t0 = time.perf_counter()
            await builder.ensure(spec, lambda _text: None)
            out.append(time.perf_counter() - t0)
        return out

    return t, asyncio.run(hits())


# -- (1) registration with the images cached, (3) cold starts --------------------------------------------------------
def registration_hits(n: int) -> dict[str, list[float]]:
    """`with app.run():` entered `n` times on a running control plane whose images are built: the app's creation
    and its function's registration, the image a cache hit (bench/fastapi_workload.py: `oci_app` on the registry
    image, `app` on debian_slim)."""
    from bench import fastapi_workload as w

    out: dict[str, list[float]] = {}
    for name, app in (("oci", w.oci_app), ("venv", w.app)):
        samples = out[name] = []
        for _ in range(n):
            run = app.run(quiet=True)
            t0 = time.perf_counter()
            run.__enter__()
            samples.append(time.perf_counter() - t0)
            run.__exit__(None, None, None)
    return out


def cold_times(tag: str, repeat: int) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Cold starts of the FastAPI functions on both images, on a control plane with its warm pool and on one
    without (one SHOAL_HOME: the second finds the images built); then `registration_hits` on a third."""
    from bench.coldstart import shoal_first_results, shutdown
    from shoal._client.transport import reset_client

    os.environ["SHOAL_BENCH_OCI_TAG"] = tag
    home = tempfile.mkdtemp(prefix="shoal-bench-images-")
    out: dict[str, list[float]] = {}
    names = ("handler_oci", "handler")
    os.environ["SHOAL_DEBIAN_SLIM"] = "venv"  # `handler`: debian_slim as a venv (and the registration hits)
    for warm in (True, False):
        for name, samples in shoal_first_results(warm, repeat, names, home).items():
            out[f"{name} {'warm' if warm else 'cold'}"] = samples
    rootfs_home = tempfile.mkdtemp(prefix="shoal-bench-images-rootfs-")  # debian_slim built as a root filesystem
    os.environ["SHOAL_DEBIAN_SLIM"] = "rootfs"
    try:
        for warm in (True, False):
            out[f"handler_rootfs {'warm' if warm else 'cold'}"] = shoal_first_results(
                warm, repeat, ("handler",), rootfs_home)["handler"]
    finally:
        os.environ["SHOAL_DEBIAN_SLIM"] = "venv"
        shutil.rmtree(rootfs_home, ignore_errors=True)
    os.environ["SHOAL_HOME"] = home
    reset_client()
    try:
        hits = registration_hits(20)
    finally:
        shutdown()
        del os.environ["SHOAL_DEBIAN_SLIM"]
        shutil.rmtree(home, ignore_errors=True)
    return out, hits


# -- the table -------------------------------------------------------------------------------------------------------
def _ms(samples: list[float] | None) -> float | None:
    return statistics.median(samples) * 1000 if samples else None


def _num(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 else f"{x:.2f}" if x >= 1 else f"{x:.3f}"


def table(rows: list[Row]) -> str:
    head = ("metric", "shoal", "reference", "shoal / reference", "target")
    cells = [head] + [(m, "—" if s is None else _num(s), "—" if r is None else f"{_num(r)} ({rn})",
                       f"{s / r:.2f}x" if s is not None and r else "", tgt) for m, s, r, rn, tgt in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
    lines = [" | ".join(c[i].ljust(widths[i]) if i in (0, 2, 4) else c[i].rjust(widths[i]) for i in range(len(head)))
             for c in cells]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def _check(value: float | None, limit: float) -> str:
    return "" if value is None else ("ok" if value <= limit else "MISSED")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=",".join(SECTIONS), help=f"sections, of {','.join(SECTIONS)}")
    ap.add_argument("--rounds", type=int, default=5, help="pull rounds, cold starts per cell, builds")
    ap.add_argument("--layers", type=int, default=5)
    ap.add_argument("--mib", type=int, default=16, help="MiB per layer of the pulled image")
    args = ap.parse_args()
    only = set(args.only.split(","))
    if only - set(SECTIONS):
        ap.error(f"--only: unknown section(s) {sorted(only - set(SECTIONS))}")
    load0, t_start = os.getloadavg()[0], time.perf_counter()
    rows: list[Row] = []
    notes: list[str] = []
    work = Path(tempfile.mkdtemp(prefix="shoal-bench-images-"))
    try:
        with registry(work / "registry") as reg:
            tag = f"{reg}/bench/python:v1"
            push_layout(write_layout(work / "layout", build_tars(work / "tars"), "python", tag="v1"), "v1", tag)
            if "pull" in only:
                ref = push_multi_layer(work, reg, args.layers, args.mib)
                p = pull_times(work, ref, args.rounds)
                sk = _ms(p["skopeo"])
                assert sk is not None
                name = f"(2) pull, {args.layers} layers x {args.mib} MiB, median of {args.rounds} [ms]"
                rows.append((name, _ms(p["pull"]), sk, "skopeo copy", f"<= 1.2x {_check(_ms(p['pull']), 1.2 * sk)}"))
                rows.append(("(2)   the same, layers unpacked after the transfer [ms]",
                             _ms(p["pull, unpack after transfer"]), sk, "skopeo copy", ""))
                if "skopeo+umoci" in p:
                    rows.append(("(2)   pull vs skopeo copy + umoci raw unpack [ms]", _ms(p["pull"]),
                                 _ms(p["skopeo+umoci"]), "skopeo+umoci", ""))
            if "build" in only:
                b, hits = build_times(work / "build", tag, args.rounds)
                hit = _ms(hits)
                rows.append(("(1) cache hit, ImageBuilder.ensure, OCI image, median of 200 [ms]", hit, None, "",
                             f"<= 20 ms {_check(hit, 20)}"))
                hand_cold, hand_warm = _ms(b["hand cold"]), _ms(b["hand warm"])
                rows += [
                    ("(4) first build, from_registry(test image).pip_install('six'), empty state [ms]",
                     _ms(b["oci fresh"]), hand_cold, "uv venv + uv pip install six, empty cache", "report"),
                    ("(4)   a new image on that state (base pulled, uv cache warm) [ms]", _ms(b["oci warm"]),
                     hand_warm, "uv by hand, warm cache", ""),
                ]
                for mode, what in (("rootfs", "a Debian root filesystem (its base cached on the machine)"),
                                   ("venv", "a venv")):
                    rows += [
                        (f"(4) first build, debian_slim().pip_install('six') as {what}, empty state [ms]",
                         _ms(b[f"{mode} fresh"]), hand_cold, "uv venv + uv pip install six, empty cache", "report"),
                        ("(4)   a new image on that state, the pip step run again (uv cache warm) [ms]",
                         _ms(b[f"{mode} warm"]), hand_warm, "uv by hand, warm cache", ""),
                    ]
                notes.append("(4) each figure is the median of " f"{args.rounds}; the pip steps resolve online "
                             "from PyPI (empty uv caches), so the network's speed is in them")
            if "cold" in only:
                c, reg_hits = cold_times(tag, args.rounds)
                for kind, label in (("oci", "OCI image"), ("venv", "venv image")):
                    hit = _ms(reg_hits[kind])
                    rows.append((f"(1) app.run() enter, one function, its {label} cached, median of 20 [ms]", hit,
                                 None, "", f"<= 20 ms {_check(hit, 20)}"))
                for name, label in (("handler_oci", "OCI image (registry)"),
                                    ("handler", "debian_slim, SHOAL_DEBIAN_SLIM=venv"),
                                    ("handler_rootfs", "debian_slim, SHOAL_DEBIAN_SLIM=rootfs")):
                    warm, cold = _ms(c[f"{name} warm"]), _ms(c[f"{name} cold"])
                    rows.append((f"(3) cold start, FastAPI function, {label}, warm pool [ms]", warm, cold,
                                 "no warm pool", f"<= 20 ms {_check(warm, 20)}"))
                    rows.append((f"(3) cold start, FastAPI function, {label}, no warm pool [ms]", cold, None, "",
                                 f"<= 250 ms {_check(cold, 250)}"))
                notes.append(f"(3) first result of a call that needs a new container (single_use_containers), median "
                             f"of {args.rounds}, calls 1.5 s apart")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"shoal images bench on {os.cpu_count()} cores; load avg {load0:.1f} -> {os.getloadavg()[0]:.1f}; "
          f"{time.perf_counter() - t_start:.0f}s")
    print(table(rows))
    for note in notes:
        print(note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
