"""A Ray node's image pull from the control plane's registry (`/v2/`, controlplane/oci_serve.py) next to the
same pull from `docker-registry`, in one run.

    .venv/bin/python -m bench.oci_serve [--layers 5] [--mib 16] [--rounds 5]

Makes an image (LAYERS layers of MIB MiB of incompressible files), pushes it to a real `docker-registry` on
127.0.0.1 and pulls it from there into a control plane's store, then alternates, ROUNDS times, into fresh empty
stores:
  registry       shoal.oci.registry.pull from docker-registry (blobs + unpacking + record)
  control plane  backends.ray_images.ensure_image from the control plane's /v2/ with the node pull credential:
                 what a Ray node does before a container of the image starts (the same pull, another server)
  again          ensure_image a second time into the same store (nothing to pull)
Prints medians. Needs root (layers keep ownership), skopeo and docker-registry.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.images import push_multi_layer  # noqa: E402
from shoal.backends.ray_images import ensure_image  # noqa: E402
from shoal.controlplane.credentials import pull_credential  # noqa: E402
from shoal.oci.registry import pull  # noqa: E402
from shoal.oci.store import LayerStore  # noqa: E402
from tests.integration.oci_registry import registry  # noqa: E402


def _control_plane(home: Path) -> tuple[subprocess.Popen, str]:
    home.mkdir(parents=True)
    proc = subprocess.Popen([sys.executable, "-m", "shoal.controlplane", "--port", "0", "--state-dir", str(home)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "SHOAL_WEB_PORT": "0"})
    deadline = time.monotonic() + 60
    while not (home / "server.json").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the control plane did not start")
        time.sleep(0.05)
    return proc, json.loads((home / "server.json").read_text())["url"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=5)
    ap.add_argument("--mib", type=int, default=16, help="MiB per layer")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="shoal-oci-serve-bench-"))
    proc = None
    try:
        proc, url = _control_plane(work / "home")
        credential = pull_credential((work / "home" / "token").read_text().strip().encode())
        with registry(work / "registry") as reg:
            ref = push_multi_layer(work, reg, args.layers, args.mib)
            cp_store = LayerStore(work / "home" / "oci")
            image = pull(cp_store, ref, name="im-bench")
            cp_layers = [str(p) for p in cp_store.lowerdirs(image)]
            times: dict[str, list[float]] = {"registry": [], "control plane": [], "again": []}
            for i in range(args.rounds):
                t = time.perf_counter()
                pull(LayerStore(work / f"reg-{i}"), ref)
                times["registry"].append(time.perf_counter() - t)

                node = LayerStore(work / f"node-{i}")
                t = time.perf_counter()
                _, pulled = ensure_image(node, url, credential, "im-bench", image.manifest_digest, cp_layers)
                times["control plane"].append(time.perf_counter() - t)
                assert pulled
                t = time.perf_counter()
                _, pulled = ensure_image(node, url, credential, "im-bench", image.manifest_digest, cp_layers)
                times["again"].append(time.perf_counter() - t)
                assert not pulled
                for d in (work / f"reg-{i}", work / f"node-{i}"):
                    shutil.rmtree(d, ignore_errors=True)
        base = statistics.median(times["registry"])
        print(f"image: {args.layers} layers x {args.mib} MiB (incompressible), both servers on loopback, "
              f"{args.rounds} rounds, medians")
        for name, samples in times.items():
            med = statistics.median(samples)
            print(f"  {name:<14} {med * 1000:8.1f} ms   {med / base:5.2f}x docker-registry   "
                  f"(min {min(samples) * 1000:.1f} ms)")
        return 0
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
