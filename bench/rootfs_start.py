"""Cold start of a container on an OCI image root next to one of the control plane's own interpreter (host view).

    .venv/bin/python -m bench.rootfs_start [--rounds 15] [--compile]

The OCI image is the test image of tests/integration/rootfs_images.py (Debian's Python 3.11 from this machine, two
layers) with the runtime's packages linked from this environment, as the image builder does for the same Python;
`--compile` compiles their bytecode first (the directory is read-only inside: without bytecode every start
compiles them). Each round starts, alternating, one container of each with LocalBackend.start (not idle, no control
plane: the runtime stops at its first step, after importing shoal and its packages) and times start() to exit.
Prints medians and the sandbox's own setup trace (SHOAL_SANDBOX_TRACE) of the last start. Needs root.
"""

from __future__ import annotations

import argparse
import asyncio
import compileall
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shoal._spec.definitions import FunctionDefinition  # noqa: E402
from shoal.backends.base import ContainerImage, ContainerSpec  # noqa: E402
from shoal.backends.local import LocalBackend  # noqa: E402
from shoal.backends.sandbox import id_base  # noqa: E402
from shoal.controlplane.images import RUNTIME_NAMES, _copy_host_packages  # noqa: E402
from shoal.oci.store import LayerStore  # noqa: E402
from tests.integration.rootfs_images import IMAGE_PYTHON, build_tars, store_test_image  # noqa: E402


async def _once(backend: LocalBackend, image: ContainerImage | None) -> tuple[float, str]:
    out: list[str] = []
    spec = ContainerSpec(container_id=f"ta-bench{os.urandom(4).hex()}", function_id="fu-bench", app_id="ap-bench",
                         definition=FunctionDefinition(tag="bench"), env={}, image=image)
    t0 = time.perf_counter()
    handle = await backend.start(spec, lambda _c, _fd, text: out.append(text))
    await handle.wait()
    elapsed = time.perf_counter() - t0
    text = "".join(out)
    if "KeyError: 'SHOAL_CONTROL'" not in text:
        raise SystemExit(f"the runtime did not start as expected:\n{text}")
    return elapsed, next((line for line in text.splitlines() if "sandbox trace" in line), "")


async def main(rounds: int, compile_runtime: bool) -> None:
    work = Path(tempfile.mkdtemp(prefix="shoal-bench-rootfs-"))
    runtime = work / "runtime"
    runtime.mkdir(mode=0o755)
    _copy_host_packages(RUNTIME_NAMES, runtime)
    if compile_runtime:
        compileall.compile_dir(str(runtime), quiet=1)
    os.environ["SHOAL_SANDBOX_TRACE"] = "1"
    backend = LocalBackend(state_dir=work / "state", netns_pool=0)
    if backend.isolation != "sandbox":
        raise SystemExit(f"containers are not sandboxed here: {backend.availability.reason}")
    store = LayerStore(work / "store", id_shift=id_base())
    built = store_test_image(store, build_tars(work / "tars"), "python")
    oci = ContainerImage(image_id="im-bench", python=IMAGE_PYTHON, layers=[str(x) for x in store.lowerdirs(built)],
                         runtime_dir=str(runtime), env=dict(e.split("=", 1) for e in built.config.env))
    kinds = {"oci image": oci, "host view": None}
    times: dict[str, list[float]] = {k: [] for k in kinds}
    traces: dict[str, str] = {}
    try:
        for _ in range(2):  # page cache, bytecode of the host's side
            for image in kinds.values():
                await _once(backend, image)
        for _ in range(rounds):
            for name, image in kinds.items():
                elapsed, traces[name] = await _once(backend, image)
                times[name].append(elapsed)
    finally:
        backend.shutdown()
    for name, values in times.items():
        print(f"{name:10} median {statistics.median(values) * 1000:.0f} ms  min {min(values) * 1000:.0f} ms  "
              f"max {max(values) * 1000:.0f} ms  (n={rounds}{', runtime compiled' if compile_runtime else ''})")
        print(f"{'':10} {traces[name]}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--compile", action="store_true", help="compile the runtime packages' bytecode first")
    args = parser.parse_args()
    asyncio.run(main(args.rounds, args.compile))
