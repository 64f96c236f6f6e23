"""What a container's outbound network costs (docs/sandbox.md, "Network"): a cold start with and without it,
and a 100 MiB download from a "remote host" (bench/remote_host.py: a network namespace on this machine) by a
container and by the host directly. Needs root, `ip` and pasta.

    python -m bench.container_network [--repeat 15] [--mib 100]

Cold start: each call goes to a new container (`single_use_containers=True`, no warm pool), on control planes with
`SHOAL_CONTAINER_NETWORK=none` (loopback only, as before pasta), with pasta started by each container
(`SHOAL_NETNS_POOL=0`), and with the default (namespaces and pasta made ahead: backends/netpool.py).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import urllib.request

import shoal

app = shoal.App("bench-network")


@app.function(single_use_containers=True)
def ping(x: int) -> int:
    return x


@app.function()
def download(url: str) -> tuple[int, float]:
    return _download(url)


def _download(url: str) -> tuple[int, float]:
    t0 = time.perf_counter()
    n = 0
    with urllib.request.urlopen(url, timeout=60) as r:
        while chunk := r.read(1 << 20):
            n += len(chunk)
    return n, time.perf_counter() - t0


def _control_plane(network: str) -> None:
    from shoal._client.transport import reset_client

    os.environ["SHOAL_HOME"] = tempfile.mkdtemp(prefix="shoal-bench-net-")
    os.environ["SHOAL_WARM_POOL"] = "0"
    os.environ["SHOAL_CONTAINER_NETWORK"] = network
    reset_client()


def _shutdown() -> None:
    from shoal._client.transport import get_client, reset_client

    get_client().call("POST", "/v1/shutdown", {})
    reset_client()


def cold_starts(network: str, repeat: int) -> list[float]:
    """`network`: "none", or "egress" with `SHOAL_NETNS_POOL` (namespaces made ahead) after a colon."""
    network, _, pool = network.partition(":")
    os.environ["SHOAL_NETNS_POOL"] = pool or "2"
    _control_plane(network)
    try:
        with app.run(quiet=True):
            ping.remote(-1)
            samples = []
            for i in range(repeat):
                time.sleep(0.5)
                t0 = time.perf_counter()
                ping.remote(i)
                samples.append(time.perf_counter() - t0)
            return samples
    finally:
        _shutdown()


def sandbox_starts(repeat: int) -> dict[str, list[float]]:
    """The sandbox alone, as the local backend starts one (no control plane, no runtime): `true` in a fresh
    sandbox, without and with pasta, interleaved. Returns seconds per run, by network."""
    import subprocess
    import sys

    from shoal.backends import egress
    from shoal.backends.sandbox import ID_COUNT, id_base, launcher_argv, minimal_paths, newroot_dir

    own = [sys.prefix, sys.base_prefix, os.path.dirname(os.path.dirname(os.path.realpath(sys.executable)))]
    base = {"mode": "root" if os.geteuid() == 0 else "rootless", "uid": id_base(), "gid": id_base(),
            "ids": ID_COUNT, "newroot": newroot_dir(), "hostname": "bench", "ro": minimal_paths(own),
            "argv": ["/bin/true"], "cwd": "/"}
    rules = egress.egress_rules(None, [], egress.host_addresses())
    net = {"net": {"pasta": [egress.find_pasta(), *egress.PASTA_ARGS], "rules": rules}, "resolv": egress.resolv_conf()}
    out: dict[str, list[float]] = {"none": [], "egress": []}
    for _ in range(repeat):
        for name, extra in (("none", {}), ("egress", net)):
            t0 = time.perf_counter()
            subprocess.run(launcher_argv(sys.executable, {**base, **extra}), check=True, env={"PATH": "/usr/bin:/bin"})
            out[name].append(time.perf_counter() - t0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--mib", type=int, default=100)
    args = parser.parse_args()
    from bench import remote_host

    for name, samples in sandbox_starts(args.repeat * 2).items():
        print(f"sandbox start and exit of `true`, {name}: median {statistics.median(samples) * 1e3:.1f} ms, "
              f"p10 {sorted(samples)[len(samples) // 10] * 1e3:.1f} ms", flush=True)
    remote = remote_host.make()
    try:
        for network in ("none", "egress:0", "egress:2") * 2:  # interleaved: the machine's load drifts
            s = cold_starts(network, args.repeat)
            print(f"cold start, network {network}: median {statistics.median(s) * 1e3:.1f} ms, "
                  f"p10 {sorted(s)[len(s) // 10] * 1e3:.1f} ms ({len(s)} calls)", flush=True)
        url = remote.url(f"/bytes/{args.mib << 20}")
        _control_plane("egress")
        try:
            with app.run(quiet=True):
                download.remote(remote.url())
                for _ in range(3):
                    n, dt = _download(url)
                    print(f"{args.mib} MiB, host directly:        {dt:.2f} s ({n / dt / 2**20:.0f} MiB/s)", flush=True)
                    n, dt = download.remote(url)
                    print(f"{args.mib} MiB, container via pasta: {dt:.2f} s ({n / dt / 2**20:.0f} MiB/s)", flush=True)
        finally:
            _shutdown()
    finally:
        remote.remove()


if __name__ == "__main__":
    main()
