"""Pull of a multi-layer image from a registry on loopback: shoal.oci's pull next to `skopeo copy`, in one run.

    .venv/bin/python -m bench.oci_pull [--layers 5] [--mib 16] [--rounds 5]

Runs a real `docker-registry` on 127.0.0.1, pushes an image it makes (LAYERS layers of MIB MiB of incompressible
files each), then alternates, ROUNDS times, into fresh directories each time:
  skopeo      `skopeo copy docker://… oci:DIR` (the blobs only)
  pull        shoal.oci.registry.pull into an empty store (the blobs, verified, + unpacking every layer +
              the record): what a node does before a container can start on the image
  pull-blobs  the same pull's transfer alone (skopeo into the store's blob directory), for the like-for-like ratio
  skopeo+umoci  `skopeo copy` then `umoci raw unpack` (a Go unpacker) of the same layout: the same work as `pull`
              done by other tools, for scale (when umoci is installed)
Prints medians and the ratios to skopeo. Needs root (layers keep ownership), skopeo and docker-registry.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shoal.oci.layout import LayoutWriter  # noqa: E402
from shoal.oci.registry import pull, push_layout  # noqa: E402
from shoal.oci.store import LayerStore  # noqa: E402
from tests.integration.oci_registry import random_layer, registry  # noqa: E402


def _skopeo(ref: str, dest: Path, shared: Path | None = None) -> None:
    cmd = ["skopeo", "--insecure-policy", "copy", "--quiet", "--src-tls-verify=false", "--src-no-creds"]
    if shared is not None:
        cmd += ["--dest-shared-blob-dir", str(shared)]
    subprocess.run([*cmd, f"docker://{ref}", f"oci:{dest}:image"], check=True, capture_output=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=5)
    ap.add_argument("--mib", type=int, default=16, help="MiB per layer")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="shoal-oci-bench-"))
    umoci = shutil.which("umoci")
    try:
        with registry(work / "registry") as reg:
            writer = LayoutWriter(work / "layout")
            layers = [writer.add_layer(random_layer(f"l{i}", args.mib << 20)) for i in range(args.layers)]
            writer.tag("v1", writer.add_image(layers, {"Cmd": ["/bin/sh"]}))
            ref = f"{reg}/bench/multi:v1"
            push_layout(work / "layout", "v1", ref)
            times: dict[str, list[float]] = {"skopeo": [], "pull": [], "pull-blobs": [], "skopeo+umoci": []}
            for i in range(args.rounds):
                t = time.perf_counter()
                _skopeo(ref, work / f"skopeo-{i}")
                times["skopeo"].append(time.perf_counter() - t)

                store = LayerStore(work / f"store-{i}")
                t = time.perf_counter()
                pull(store, ref)
                times["pull"].append(time.perf_counter() - t)

                blobs = LayerStore(work / f"blobs-{i}")
                t = time.perf_counter()
                _skopeo(ref, blobs.tmp / "layout", shared=blobs.blobs)
                times["pull-blobs"].append(time.perf_counter() - t)
                if umoci:
                    t = time.perf_counter()
                    _skopeo(ref, work / f"umoci-{i}")
                    subprocess.run([umoci, "raw", "unpack", "--image", f"{work / f'umoci-{i}'}:image",
                                    str(work / f"umoci-root-{i}")], check=True, capture_output=True)
                    times["skopeo+umoci"].append(time.perf_counter() - t)
                for d in (work / f"skopeo-{i}", work / f"store-{i}", work / f"blobs-{i}", work / f"umoci-{i}",
                          work / f"umoci-root-{i}"):
                    shutil.rmtree(d, ignore_errors=True)
        times = {k: v for k, v in times.items() if v}
        base = statistics.median(times["skopeo"])
        print(f"image: {args.layers} layers x {args.mib} MiB (incompressible), registry on loopback, "
              f"{args.rounds} rounds, medians")
        for name, samples in times.items():
            med = statistics.median(samples)
            print(f"  {name:<11} {med * 1000:8.0f} ms   {med / base:5.2f}x skopeo copy   "
                  f"(min {min(samples) * 1000:.0f} ms)")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
