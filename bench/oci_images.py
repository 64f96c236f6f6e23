"""OCI image builds: the first build of `from_registry(<test image>).pip_install("six")` against uv by hand, and
a whole-image cache hit.

    python -m bench.oci_images [--repeat 5]

The base is the tests' small Debian-3.11 image (tests/integration/rootfs_images.py) on a registry on loopback.
Rows: "fresh state" builds in an empty SHOAL_HOME (pull + unpack, the pip step online with an empty uv cache,
probe, runtime packages; the static uv fetched by the first run is copied into the others, as it is fetched once
per machine); "new image, warm" builds another image on that state (base pulled, uv cache warm: its pip step
differs by an `env` value only); "by hand" is `uv venv` + `uv pip install six` with an empty and a warm cache.
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

from shoal._spec.definitions import ImageSpec
from shoal._spec.images import BUILDER_VERSION, image_id_for
from shoal.controlplane.images import ImageBuilder
from shoal.oci.registry import push_layout
from tests.integration.oci_registry import registry
from tests.integration.rootfs_images import build_tars, write_layout


def spec(tag: str, env: dict[str, str] | None = None) -> ImageSpec:
    steps = [{"kind": "from_registry", "repr": f"from_registry({tag!r})", "tag": tag, "registry": "generic",
              "add_python": None},
             {"kind": "pip_install", "repr": "pip_install('six')", "packages": ["six"],
              **({"env": env} if env else {})}]
    return ImageSpec(image_id=image_id_for(None, steps), builder=BUILDER_VERSION, python_version=None, steps=steps)


def timed(builder: ImageBuilder, wire: ImageSpec) -> float:
    t0 = time.perf_counter()
    asyncio.run(builder.ensure(wire, lambda _text: None))
    return time.perf_counter() - t0


def by_hand(workdir: Path, uv: str, cache: Path) -> float:
    env = {**os.environ, "UV_CACHE_DIR": str(cache)}
    venv = workdir / f"venv{time.monotonic_ns()}"
    t0 = time.perf_counter()
    subprocess.run([uv, "venv", "-q", "--python", sys.executable, str(venv)], check=True, env=env)
    subprocess.run([uv, "pip", "install", "-q", "--python", str(venv / "bin" / "python"), "six"], check=True, env=env)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-oci-images-"))
    try:
        tars = build_tars(work / "tars")
        with registry(work / "registry") as address:
            tag = f"{address}/bench/python:v1"
            push_layout(write_layout(work / "layout", tars, "python", tag="v1"), "v1", tag)
            fresh, warm, hand_cold, hand_warm = [], [], [], []
            for i in range(args.repeat):
                state = work / f"state{i}"
                if i:
                    for d in (work / "state0" / "images" / ".cache").glob("uv-static-*"):
                        shutil.copytree(d, state / "images" / ".cache" / d.name)
                builder = ImageBuilder(state)
                fresh.append(timed(builder, spec(tag)))
                warm.append(timed(builder, spec(tag, {"RUN": str(i)})))
                cache = work / f"uv-cache{i}"
                hand_cold.append(by_hand(work, builder.uv, cache))
                hand_warm.append(by_hand(work, builder.uv, cache))
            builder = ImageBuilder(work / "state0")
            wire = spec(tag)

            async def hits() -> list[float]:
                out = []
                for _ in range(200):
                    t0 = time.perf_counter()
                    await builder.ensure(wire, lambda _text: None)
                    out.append(time.perf_counter() - t0)
                return out

            hit = asyncio.run(hits())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    med = statistics.median
    print(f"first build, fresh state: median {med(fresh[1:] or fresh):.2f} s (runs: "
          f"{', '.join(f'{x:.2f}' for x in fresh)}; the first also fetched the static uv)")
    print(f"first build of a new image, base pulled, uv cache warm: median {med(warm):.2f} s")
    print(f"by hand (uv venv + uv pip install six): empty cache {med(hand_cold):.2f} s, warm {med(hand_warm):.2f} s")
    print(f"whole-image cache hit (ImageBuilder.ensure): median {med(hit) * 1000:.3f} ms, max {max(hit) * 1000:.2f} ms")
    print(f"load average: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
