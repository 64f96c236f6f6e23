"""Process memory from /proc (Linux): VmRSS sampling, peak reset, and process trees."""

from __future__ import annotations

import os
import re
import socket
import threading
import time

MIB = 1024 * 1024


def status(pid: int | str = "self") -> dict[str, int]:
    """The `kB` fields of /proc/<pid>/status, in bytes."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            parts = value.split()
            if len(parts) == 2 and parts[1] == "kB":
                out[key] = int(parts[0]) * 1024
    return out


def rss(pid: int | str = "self") -> int:
    return status(pid).get("VmRSS", 0)


def reset_peak_rss() -> bool:
    """Reset VmHWM of this process (`echo 5 > /proc/self/clear_refs`); False where the kernel refuses."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class RssSampler(threading.Thread):
    """Samples this process's VmRSS every `interval` seconds and keeps the peak."""

    def __init__(self, interval: float = 0.01) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.interval = interval
        self.baseline = rss()
        self.peak = self.baseline
        self.samples = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        with open("/proc/self/status", "rb") as f:
            while not self._stop_event.is_set():
                f.seek(0)
                for line in f.read().splitlines():
                    if line.startswith(b"VmRSS:"):
                        value = int(line.split()[1]) * 1024
                        self.peak = max(self.peak, value)
                        break
                self.samples += 1
                self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()
        self.peak = max(self.peak, rss())


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
    except OSError:
        return ""


def descendants(root: int) -> list[int]:
    """Every live process below `root` (children, grandchildren, ...)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(name))
    out, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not os.path.exists(f"/proc/{pid}"):
            return True
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except OSError:
            return True
        time.sleep(0.05)
    return False


def pss(pid: int | str = "self") -> int:
    """Proportional set size (shared pages split between their users), in bytes; 0 where unavailable."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def cpu_s(pid: int) -> float:
    """utime + stime of one process, in seconds (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_WRK_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def parse_wrk(out: str) -> dict:
    """The figures of one `wrk --latency` run's output: requests/s, requests, p50/p99 [ms], socket errors (their
    line, or None), non-2xx/3xx answers."""
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    if not (rps and total and p50 and p99):
        raise RuntimeError(f"cannot read wrk's output:\n{out}")
    errors = re.search(r"Socket errors: (.*)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": float(rps.group(1)), "requests": int(total.group(1)), "p50_ms": wrk_ms(p50.group(1)),
            "p99_ms": wrk_ms(p99.group(1)), "socket_errors": errors.group(1) if errors else None,
            "non_2xx": int(non2xx.group(1)) if non2xx else 0}


def wrk_ms(text: str) -> float:
    """One of wrk's latency figures ("512.00us", "1.20ms", "2s") in milliseconds."""
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not m:
        raise ValueError(f"cannot read wrk's latency {text!r}")
    return float(m.group(1)) * _WRK_UNITS[m.group(2)]
