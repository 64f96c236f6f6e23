"""An app for the chaos tests: the control plane is SIGKILLed while a client uses it (tests/integration/test_chaos.py).
Run as a script it is that client: `python chaos_app.py OUT_DIR` runs a mixed workload inside `app.run()` until
OUT_DIR/stop exists, logging each acknowledged write to OUT_DIR/acks, then writes what it saw to OUT_DIR/result.json."""

import json
import queue
import sys
import threading
import time
import traceback
from pathlib import Path

import shoal as modal

app = modal.App("chaos")


@app.function()
def square(x: int) -> int:
    return x * x


@app.function()
def triple(x: int) -> int:
    return 3 * x


@app.function()
def mark(path: str, x: int) -> int:
    """Leaves a line per run: how often an input ran."""
    with open(path, "a") as f:
        f.write(f"{x}\n")
    return x


class Workload:
    def __init__(self, out: Path) -> None:
        self.out = out
        self.lock = threading.Lock()
        self.acks = open(out / "acks", "a", buffering=1)
        self.errors: list[str] = []
        self.maps = {"inputs": 0, "bad": []}
        self.spawned: list[tuple[int, str]] = []
        self.spawn_results: dict[str, int] = {}
        self.put_acked: list[int] = []  # queue items whose put_many returned
        self.got: list[int] = []  # queue items taken by get_many
        self.dict_acked: dict[str, int] = {}
        self.producing = True

    def stopping(self) -> bool:
        return (self.out / "stop").exists()

    def ack(self, kind: str) -> None:
        with self.lock:
            self.acks.write(f"{time.time()} {kind}\n")

    def run(self, name: str, body) -> threading.Thread:
        def guarded() -> None:
            try:
                body()
            except Exception:  # noqa: BLE001 - reported in the result
                self.errors.append(f"{name}: {traceback.format_exc()}")

        t = threading.Thread(target=guarded, name=name)
        t.start()
        return t

    def mapper(self) -> None:
        start = 0
        while not self.stopping():
            xs = range(start, start + 2000)
            results = list(square.map(xs))
            if results != [x * x for x in xs]:
                self.maps["bad"].append([start, len(results)])
            self.maps["inputs"] += len(xs)
            start += len(xs)
            self.ack("map")

    def spawner(self) -> None:
        i = 0
        while not self.stopping():
            call = triple.spawn(i)
            self.spawned.append((i, call.object_id))
            self.ack("spawn")
            i += 1
            time.sleep(0.02)

    def producer(self, q: modal.Queue) -> None:
        n = 0
        while not self.stopping():
            batch = list(range(n, n + 50))
            n += 50
            q.put_many(batch)  # (blocks while the partition is full: the consumer goes on until this ends)
            self.put_acked.extend(batch)
            self.ack("put")
        self.producing = False

    def consumer(self, q: modal.Queue) -> None:
        while self.producing:
            try:
                items = q.get_many(100, timeout=0.5)
            except queue.Empty:
                continue
            self.got.extend(items)
            if items:
                self.ack("get")

    def dict_writer(self, d: modal.Dict) -> None:
        i = 0
        while not self.stopping():
            d[f"k{i}"] = i
            self.dict_acked[f"k{i}"] = i
            self.ack("dict")
            i += 1

    def main(self) -> None:
        with app.run(quiet=True):
            q = modal.Queue.from_name("chaos-q", create_if_missing=True)
            d = modal.Dict.from_name("chaos-d", create_if_missing=True)
            threads = [self.run("map", self.mapper), self.run("spawn", self.spawner),
                       self.run("put", lambda: self.producer(q)), self.run("get", lambda: self.consumer(q)),
                       self.run("dict", lambda: self.dict_writer(d))]
            (self.out / "started").write_text("1")
            for t in threads:
                t.join()
            # What is left in the queue, and every spawned call's result, after the last kill.
            while items := q.get_many(1000, block=False):
                self.got.extend(items)
            for _, call_id in self.spawned:
                self.spawn_results[call_id] = modal.FunctionCall.from_id(call_id).get(timeout=120)
            stored = dict(d.items())
        json.dump({"errors": self.errors, "maps": self.maps, "spawned": self.spawned,
                   "spawn_results": self.spawn_results, "put_acked": self.put_acked,
                   "got": self.got, "dict_acked": self.dict_acked, "dict_stored": stored},
                  open(self.out / "result.json", "w"))


if __name__ == "__main__":
    import faulthandler
    import signal

    faulthandler.register(signal.SIGUSR1, all_threads=True)  # the test asks for the threads' stacks if it hangs
    Workload(Path(sys.argv[1])).main()
