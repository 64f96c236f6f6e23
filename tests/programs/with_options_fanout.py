"""Fan one function out over variants made with with_options: each shard gets its own env, secret, Volume and
limits, runs in its own pool, and writes its part to the shard's Volume.

    shoal run with_options_fanout.py
"""

import os

import shoal as modal

app = modal.App("program-fanout")
volumes = [modal.Volume.from_name(f"program-fanout-{i}", create_if_missing=True) for i in range(3)]


@app.function(timeout=120)
def work(n: int) -> str:
    shard = os.environ["SHARD"]
    with open("/out/part.txt", "w") as f:
        f.write(f"shard {shard}: {sum(range(n))} ({os.environ.get('TOKEN', 'no token')})\n")
    volumes[int(shard)].commit()
    return shard


@app.local_entrypoint()
def main():
    calls = []
    for i, vol in enumerate(volumes):
        variant = work.with_options(
            env={"SHARD": str(i)},
            secrets=[modal.Secret.from_dict({"TOKEN": f"t{i}"}), modal.Secret.from_dict({"SHARD": str(i)})],
            volumes={"/out": vol}, timeout=60, max_containers=1, retries=1,
        )
        calls.append(variant.spawn(10 * (i + 1)))
    print("shards", modal.FunctionCall.gather(*calls))
    for vol in volumes:
        print(b"".join(vol.read_file("part.txt")).decode().strip())
