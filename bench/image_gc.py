"""The image routes with many images on disk: `GET /v1/images`, a dry-run prune, and a prune removing them all.

    python -m bench.image_gc [--images 200] [--files 50] [--repeat 5]

Starts a control plane on a scratch SHOAL_HOME that holds `--images` venv images (a manifest and `--files` small
files each, built two hours ago, used by no app), then prints one line of medians.
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


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.image_gc")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--files", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="shoal-image-gc-"))
    for i in range(args.images):
        root = home / "images" / f"im-{i:064x}"
        (root / "venv" / "lib").mkdir(parents=True)
        for j in range(args.files):
            (root / "venv" / "lib" / f"f{j}.py").write_text("x" * 1000)
        (root / "manifest.json").write_text(json.dumps({"built_at": time.time() - 7200, "steps": ["env(...)"]}))
    env = {**os.environ, "SHOAL_HOME": str(home), "SHOAL_IMAGE_GC_GRACE": "86400"}
    env.pop("SHOAL_SERVER_URL", None)
    proc = subprocess.Popen([sys.executable, "-m", "shoal.controlplane", "--state-dir", str(home)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not (home / "server.json").exists():
            time.sleep(0.02)
        os.environ.update(SHOAL_HOME=str(home))
        from shoal._client.transport import get_client

        client = get_client()

        def ms(method: str, path: str, body: dict | None = None) -> float:
            t0 = time.perf_counter()
            client.call(method, path, body)
            return (time.perf_counter() - t0) * 1000

        first = ms("GET", "/v1/images")
        listed = statistics.median(ms("GET", "/v1/images") for _ in range(args.repeat))
        dry = statistics.median(ms("POST", "/v1/images/prune", {"dry_run": True, "grace_s": 0})
                                for _ in range(args.repeat))
        pruned = ms("POST", "/v1/images/prune", {"grace_s": 0})
        print(f"{args.images} images x {args.files} files: list {first:.0f} ms first (sizes computed), "
              f"{listed:.1f} ms after; dry-run prune {dry:.1f} ms; prune all {pruned:.0f} ms")
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
