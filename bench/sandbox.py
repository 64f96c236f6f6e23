"""Sandboxes (`shoal.Sandbox`): start latency, exec round trip and the cost of idle sandboxes, with an OCI runtime's
start of the same root filesystem beside them, in one run: `python -m bench.sandbox`.

1. **Start.** `Sandbox.create(app=...)` then `exec("echo", "hi")` until its first stdout line, a new sandbox each
   time (terminated after), `--gap` seconds apart: first on a control plane without a warm pool, then (after
   the parts below) on the same `SHOAL_HOME` restarted with `SHOAL_SANDBOX_WARM_POOL=1` (`--warm-pool`), where
   each creation takes a warm container (its exec agent already up) that the pool refilled during the gap. A
   warm sample counts only if it was served warm (its sandbox has no container init of its own: a cold one's
   init carries `SHOAL_SANDBOX_ID`); the table says how many were. The two columns are side by side with
   their ratio, and with crun's (part 4).
2. **Exec round trip** on one running sandbox: `exec("echo", "hi")` to its first line, and `exec("true")` to
   its exit code (`.wait()`).
3. **Idle sandboxes.** N (default 50) sandboxes running `sleep`, created one after another: per sandbox, the
   memory beyond its own process: the proportional set size (PSS) of the container's init processes plus the
   control plane's RSS growth, divided by N. Then every one answers an `exec` (8 at a time); all must answer.
4. **OCI runtime** (`crun`, if installed): `crun run` of a bundle whose root is the same as a default sandbox's
   (the host's /usr and /etc read-only, the rest empty), `echo hi`, to its first line. crun 1.8 refuses this
   machine's hybrid cgroup layout, so it runs with `--cgroup-manager=disabled` in a private mount namespace
   without the cgroup2 mount (`unshare -m`; the host's mounts are not changed): no cgroup is made, which
   flatters it a little.

The control plane is a private one (temporary `SHOAL_HOME`), shut down at the end.

    python -m bench.sandbox [--reps 20] [--gap 0.5] [--warm-pool 1] [--exec-reps 200] [--idle 50]
                            [--json out.json] [--keep-home]
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # `python bench/sandbox.py`
    sys.path.insert(0, str(ROOT))

from bench import _proc  # noqa: E402

MIB = _proc.MIB
TARGETS = {"start_warm_p50_ms": 50.0, "exec_p50_ms": 5.0, "idle_mib_per_sandbox": 10.0}


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(samples_s: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in samples_s]
    return {"p50_ms": statistics.median(ms), "p90_ms": pct(ms, 0.9), "p99_ms": pct(ms, 0.99), "n": len(ms)}


class SandboxBench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.results: dict[str, Any] = {}
        self.errors: list[str] = []
        self.home = Path(tempfile.mkdtemp(prefix="shoal-bench-sandbox-"))
        os.environ["SHOAL_HOME"] = str(self.home)
        os.environ.pop("SHOAL_SERVER_URL", None)

    # -- parts -----------------------------------------------------------------------------------------------
    def _starts(self, app: Any, warm: bool) -> tuple[list[float], list[float], int]:
        """(create -> first line, create alone, how many were served warm) for `--reps` new sandboxes."""
        import shoal as modal

        samples, creates, served_warm = [], [], 0
        for _ in range(self.args.reps):
            time.sleep(self.args.gap)  # (a warm pool refills meanwhile)
            t0 = time.perf_counter()
            sb = modal.Sandbox.create(app=app)
            t1 = time.perf_counter()
            line = next(iter(sb.exec("echo", "hi").stdout))
            t2 = time.perf_counter()
            assert line == "hi\n", line
            was_warm = not self._roots({sb.object_id})  # (looked up after the clock stopped)
            served_warm += was_warm
            if was_warm == warm:
                samples.append(t2 - t0)
                creates.append(t1 - t0)
            sb.terminate()
        return samples, creates, served_warm

    def start(self, app: Any) -> None:
        samples, creates, _ = self._starts(app, warm=False)
        self.results["start_cold"] = summary(samples)
        self.results["create_only"] = summary(creates)

    def start_warm(self, app: Any) -> None:
        import shoal as modal

        modal.Sandbox.create(app=app).terminate()  # the first of its image: cold, and it fills the pool
        samples, creates, served = self._starts(app, warm=True)
        self.results["warm_served"] = {"warm": served, "of": self.args.reps}
        if not samples:
            self.results["start_warm"] = f"no creation was served warm (0 of {self.args.reps})"
            return
        self.results["start_warm"] = summary(samples)
        self.results["create_only_warm"] = summary(creates)

    def exec_round_trip(self, app: Any) -> None:
        import shoal as modal

        sb = modal.Sandbox.create(app=app)
        first_line, exit_code = [], []
        for i in range(self.args.exec_reps + 20):  # the first 20 warm up
            t0 = time.perf_counter()
            line = next(iter(sb.exec("echo", "hi").stdout))
            t1 = time.perf_counter()
            code = sb.exec("true").wait()
            t2 = time.perf_counter()
            assert line == "hi\n" and code == 0, (line, code)
            if i >= 20:
                first_line.append(t1 - t0)
                exit_code.append(t2 - t1)
        sb.terminate()
        self.results["exec_first_line"] = summary(first_line)
        self.results["exec_wait"] = summary(exit_code)

    def idle(self, app: Any) -> None:
        import shoal as modal

        cp_pid = int(json.loads((self.home / "server.json").read_text())["pid"])
        time.sleep(1)
        cp_before = _proc.rss(cp_pid)
        sandboxes = [modal.Sandbox.create("sleep", "3600", app=app) for _ in range(self.args.idle)]
        time.sleep(2)
        roots = self._roots({sb.object_id for sb in sandboxes})
        init_pss = cmd_pss = init_rss = 0
        for pid in roots.values():
            for p in [pid, *_proc.descendants(pid)]:
                try:
                    if "sandbox_init" in _proc.cmdline(p):
                        init_pss += _proc.pss(p)
                        init_rss += _proc.rss(p)
                    else:
                        cmd_pss += _proc.pss(p)
                except OSError:
                    pass
        cp_growth = max(0, _proc.rss(cp_pid) - cp_before)
        n = len(sandboxes)
        running = max(1, len(roots))  # the processes of those that started
        t0 = time.perf_counter()
        def answer(sb: Any) -> str:
            try:
                return sb.exec("echo", sb.object_id).stdout.read()
            except Exception as exc:  # noqa: BLE001 - counted and reported
                return f"{type(exc).__name__}: {exc}"

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(answer, sandboxes))
        answered = sum(a == sb.object_id + "\n" for a, sb in zip(answers, sandboxes, strict=True))
        failures = [a for a, sb in zip(answers, sandboxes, strict=True) if a != sb.object_id + "\n"]
        all_exec_s = time.perf_counter() - t0
        self.results["idle"] = {
            "sandboxes": n, "found_processes": len(roots), "answered_exec": answered,
            "all_exec_s": all_exec_s,
            "mib_per_sandbox_beyond_its_process": (init_pss / running + cp_growth / n) / MIB,
            "init_pss_mib_each": init_pss / running / MIB, "init_rss_mib_each": init_rss / running / MIB,
            "control_plane_growth_mib_each": cp_growth / n / MIB, "command_pss_mib_each": cmd_pss / running / MIB,
        }
        if answered != n:
            self.errors.append(f"only {answered} of {n} idle sandboxes answered exec; first failure: {failures[0]}")
        for sb in sandboxes:
            sb.terminate()

    @staticmethod
    def _roots(ids: set[str]) -> dict[str, int]:
        """The outermost process of each sandbox (its environment names the sandbox)."""
        found: dict[str, int] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                env = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            sid = next((v.split(b"=", 1)[1].decode() for v in env if v.startswith(b"SHOAL_SANDBOX_ID=")), None)
            if sid in ids and (sid not in found or int(entry) < found[sid]):
                found[sid] = int(entry)
        return found

    def crun(self) -> None:
        if shutil.which("crun") is None or shutil.which("unshare") is None:
            self.results["crun"] = "crun not installed"
            return
        bundle = Path(tempfile.mkdtemp(prefix="shoal-bench-crun-"))
        try:
            self._bundle(bundle)
            script = ("umount /sys/fs/cgroup/unified 2>/dev/null; "
                      f"exec crun --cgroup-manager=disabled run --bundle {bundle} \"$0\"")
            samples = []
            for i in range(self.args.reps + 3):
                t0 = time.perf_counter()
                proc = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c", script,
                                         f"shoal-bench-{os.getpid()}-{i}"], stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE)
                assert proc.stdout is not None
                line = proc.stdout.readline()
                t1 = time.perf_counter()
                _, err = proc.communicate(timeout=30)
                if line != b"hi\n":
                    raise RuntimeError(f"crun run: {line!r} {err.decode(errors='replace')[-300:]}")
                if i >= 3:
                    samples.append(t1 - t0)
            self.results["crun"] = summary(samples)
        finally:
            shutil.rmtree(bundle, ignore_errors=True)

    @staticmethod
    def _bundle(bundle: Path) -> None:
        rootfs = bundle / "rootfs"
        for d in ("usr", "etc", "tmp", "proc", "dev", "sys"):
            (rootfs / d).mkdir(parents=True)
        for link in ("bin", "lib", "lib64", "sbin"):
            if Path(f"/usr/{link}").exists():
                (rootfs / link).symlink_to(f"usr/{link}")
        subprocess.run(["crun", "spec"], cwd=bundle, check=True, capture_output=True)
        config = json.loads((bundle / "config.json").read_text())
        config["process"].update(args=["echo", "hi"], terminal=False)
        config["root"] = {"path": "rootfs", "readonly": True}
        config["mounts"] = [m for m in config["mounts"] if m.get("type") != "cgroup"] + [
            {"destination": d, "type": "bind", "source": d, "options": ["rbind", "ro", "nosuid"]}
            for d in ("/usr", "/etc")]
        config["linux"].pop("resources", None)
        (bundle / "config.json").write_text(json.dumps(config))

    # -- driver ----------------------------------------------------------------------------------------------
    def run(self) -> int:
        import shoal as modal
        from shoal._client.transport import reset_client

        started = False
        try:
            os.environ.pop("SHOAL_SANDBOX_WARM_POOL", None)
            app = modal.App.lookup("bench-sandbox", create_if_missing=True)
            started = True
            for name, part in (("start", self.start), ("exec", self.exec_round_trip), ("idle", self.idle)):
                try:
                    part(app)
                except Exception as exc:  # noqa: BLE001 - reported, the other parts go on
                    self.errors.append(f"{name}: {type(exc).__name__}: {exc}")
            # The same SHOAL_HOME (the image is built), its control plane restarted with a warm pool.
            self._shutdown()
            started = False
            os.environ["SHOAL_SANDBOX_WARM_POOL"] = str(self.args.warm_pool)
            reset_client()
            app = modal.App.lookup("bench-sandbox", create_if_missing=True)
            started = True
            try:
                self.start_warm(app)
            except Exception as exc:  # noqa: BLE001
                self.errors.append(f"start with a warm pool: {type(exc).__name__}: {exc}")
            try:
                self.crun()
            except Exception as exc:  # noqa: BLE001
                self.errors.append(f"crun: {type(exc).__name__}: {exc}")
        finally:
            if started:
                self._shutdown()
            if not self.args.keep_home:
                shutil.rmtree(self.home, ignore_errors=True)
        self.print()
        if self.args.json:
            Path(self.args.json).write_text(json.dumps({"results": self.results, "errors": self.errors}, indent=2))
        return 1 if self.errors else 0

    def _shutdown(self) -> None:
        from shoal._client.transport import get_client

        try:
            pid = int(json.loads((self.home / "server.json").read_text())["pid"])
            get_client().call("POST", "/v1/shutdown", {})
            _proc.wait_gone(pid, 15)
        except Exception as exc:  # noqa: BLE001
            self.errors.append(f"shutdown: {exc!r}")

    def print(self) -> None:
        r = self.results
        rows = []

        def timing(label: str, key: str, target: str = "") -> None:
            v = r.get(key)
            cell = f"{v['p50_ms']:.1f} ms (p90 {v['p90_ms']:.1f}, n={v['n']})" if isinstance(v, dict) else str(v)
            rows.append((label, cell, target))

        timing("create -> first line of exec('echo','hi'), no warm pool", "start_cold")
        timing("  of which Sandbox.create()", "create_only")
        served = r.get("warm_served") or {}
        timing(f"create -> first line, warm pool ({served.get('warm', 0)}/{served.get('of', 0)} served warm)",
               "start_warm", f"target p50 <= {TARGETS['start_warm_p50_ms']:g} ms")
        timing("  of which Sandbox.create()", "create_only_warm")
        timing("crun run (same root) -> first line", "crun")
        p50 = {k: r[k]["p50_ms"] for k in ("start_cold", "start_warm", "crun") if isinstance(r.get(k), dict)}
        if "start_cold" in p50 and "start_warm" in p50:
            rows.append(("  p50 no pool / warm pool", f"{p50['start_cold'] / p50['start_warm']:.1f}x", ""))
        for key, label in (("start_cold", "no pool"), ("start_warm", "warm pool")):
            if key in p50 and "crun" in p50:
                rows.append((f"  p50 {label} / crun", f"{p50[key] / p50['crun']:.1f}x", ""))
        timing("exec('echo','hi') -> first line, running sandbox", "exec_first_line",
               f"target p50 <= {TARGETS['exec_p50_ms']:g} ms")
        timing("exec('true').wait()", "exec_wait")
        idle = r.get("idle")
        if isinstance(idle, dict):
            rows.append((f"{idle['sandboxes']} idle sandboxes: MiB each beyond its process",
                         f"{idle['mib_per_sandbox_beyond_its_process']:.2f} (init PSS {idle['init_pss_mib_each']:.2f}"
                         f" + control plane {idle['control_plane_growth_mib_each']:.2f})",
                         f"target <= {TARGETS['idle_mib_per_sandbox']:g} MiB"))
            rows.append(("  answering exec", f"{idle['answered_exec']}/{idle['sandboxes']} in "
                         f"{idle['all_exec_s']:.2f} s (8 at a time)", "all"))
        width = max(len(a) for a, _, _ in rows)
        print(f"shoal sandboxes ({os.cpu_count()} CPUs, python {sys.version.split()[0]})")
        for label, cell, target in rows:
            print(f"  {label:<{width}}  {cell}" + (f"   [{target}]" if target else ""))
        for e in self.errors:
            print(f"  error: {e}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sandbox", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=20, help="sandboxes started for each start figure (20)")
    parser.add_argument("--gap", type=float, default=0.5, help="seconds between those starts (0.5)")
    parser.add_argument("--warm-pool", type=int, default=1, help="SHOAL_SANDBOX_WARM_POOL of the warm part (1)")
    parser.add_argument("--exec-reps", type=int, default=200, help="execs timed on one sandbox (200)")
    parser.add_argument("--idle", type=int, default=50, help="idle sandboxes held at once (50)")
    parser.add_argument("--json", metavar="PATH", help="also write the raw results as JSON here")
    parser.add_argument("--keep-home", action="store_true", help="keep the temporary SHOAL_HOME (server.log)")
    return SandboxBench(parser.parse_args(argv)).run()


if __name__ == "__main__":
    sys.exit(main())
