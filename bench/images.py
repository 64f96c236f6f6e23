"""Image builds: cache hit cost, and the first build of `pip_install("six")` against uv by hand.

    python -m bench.images [--repeat 5]

Prints one line per measurement. "warm" runs share uv's cache with the rest of the machine (what a user sees
after their first build of anything); "cold" runs give both sides an empty uv cache of their own (downloads).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from shoal.controlplane.images import ImageBuilder
from shoal.image import Image


def by_hand(workdir: Path, env: dict[str, str], uv: str, python: str) -> float:
    venv = workdir / "venv"
    t0 = time.perf_counter()
    subprocess.run([uv, "venv", "-q", "--python", python, str(venv)], check=True, env=env, cwd=workdir)
    subprocess.run([uv, "pip", "install", "-q", "--python", str(venv / "bin" / "python"), "six"], check=True,
                   env=env, cwd=workdir)
    return time.perf_counter() - t0


def shoal_build(workdir: Path, env: dict[str, str]) -> tuple[float, ImageBuilder]:
    old = dict(os.environ)
    os.environ.update(env)
    try:
        builder = ImageBuilder(workdir)
        spec = Image.debian_slim().pip_install("six").to_wire()
        t0 = time.perf_counter()
        asyncio.run(builder.ensure(spec, lambda text: None))
        return time.perf_counter() - t0, builder
    finally:
        os.environ.clear()
        os.environ.update(old)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    base_env = dict(os.environ)
    builder = ImageBuilder(Path(tempfile.mkdtemp()))
    python = asyncio.run(builder._find_python(Image.debian_slim().to_wire()["python_version"],
                                              type("B", (), {"image_id": "-"})()))[0]

    # Cache hits: the control plane's side (a manifest read) and the client's (hashing the chain).
    spec = Image.debian_slim().pip_install("six").to_wire()
    asyncio.run(builder.ensure(spec, lambda text: None))

    async def hits(n: int) -> list[float]:
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            await builder.ensure(spec, lambda text: None)
            out.append(time.perf_counter() - t0)
        return out

    hit = statistics.median(asyncio.run(hits(200)))
    t0 = time.perf_counter()
    for i in range(200):
        Image.debian_slim().pip_install("six", f"pkg{i}").apt_install("hello").env({"A": "1"}).to_wire()
    wire = (time.perf_counter() - t0) / 200
    print(f"cache hit: ImageBuilder.ensure {hit * 1e3:.3f} ms (median of 200); client to_wire of a 3-step chain "
          f"{wire * 1e3:.3f} ms")

    for label, fresh_cache in (("warm uv cache", False), ("cold uv cache", True)):
        ours, hand = [], []
        for _ in range(args.repeat):
            with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
                env = dict(base_env)
                if fresh_cache:
                    env["UV_CACHE_DIR"] = str(Path(a) / "uv-cache")
                hand.append(by_hand(Path(a), env, builder.uv, python))
                if fresh_cache:
                    env["UV_CACHE_DIR"] = str(Path(b) / "uv-cache")
                ours.append(shoal_build(Path(b), env)[0])
        h, o = statistics.median(hand), statistics.median(ours)
        print(f"first build of pip_install('six'), {label}: shoal {o:.3f} s, `uv venv` + `uv pip install six` "
              f"{h:.3f} s, ratio {o / h:.2f} (median of {args.repeat})")


if __name__ == "__main__":
    main()
