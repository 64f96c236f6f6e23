"""Functions for tests/integration/test_sandbox.py: what a sandboxed container can and cannot see or do."""

import os
import socket
import time
from pathlib import Path

import shoal as modal

app = modal.App("sandbox")


def _error(exc: BaseException) -> str:
    return type(exc).__name__


@app.function()
def isolation() -> dict:
    """What the container looks like from inside."""
    with open("/proc/self/uid_map") as f:
        uid_map = f.read().split()
    return {
        "uid": os.getuid(), "uid_map": uid_map, "pid": os.getpid(), "hostname": socket.gethostname(),
        "root": sorted(os.listdir("/")), "cwd": os.getcwd(), "home": os.environ.get("HOME"),
        "pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
        "net": sorted(os.listdir("/sys/class/net")) if os.path.isdir("/sys/class/net") else None,
        "source_here": os.path.exists("/root/sandbox_app.py"),
    }


@app.function()
def read(path: str) -> str:
    """The file's text, or the name of the error reading it."""
    try:
        return Path(path).read_text()
    except OSError as exc:
        return _error(exc)


@app.function()
def write(path: str, text: str = "x") -> str:
    try:
        Path(path).write_text(text)
        return "ok"
    except OSError as exc:
        return _error(exc)


@app.function(single_use_containers=True)
def tmp_write_and_list(name: str) -> list:
    """Writes /tmp/<name>, then lists /tmp."""
    Path("/tmp", name).write_text(name)
    return sorted(os.listdir("/tmp"))


@app.function(max_containers=2)
def hold_port_8000(marker_dir: str) -> dict:
    """Listen on 0.0.0.0:8000, then wait until the other container listens too (files in `marker_dir`)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("0.0.0.0", 8000))
    s.listen(1)
    me = os.environ["SHOAL_CONTAINER_ID"]
    Path(marker_dir, f"bound-{me}").write_text("1")
    deadline = time.monotonic() + 60
    while len(list(Path(marker_dir).glob("bound-*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    both = len(list(Path(marker_dir).glob("bound-*"))) >= 2
    s.close()
    return {"container": me, "both_listening": both}


@app.function(memory=(64, 128))
def allocate(mib: int) -> int:
    data = b"\x01" * (mib * 1024 * 1024)  # written, so resident
    return len(data)


@app.function(memory=(64, 256))
def allocate_within_limit(mib: int) -> int:
    data = b"\x01" * (mib * 1024 * 1024)
    return len(data)


@app.function()
def double(x: int) -> int:
    return 2 * x


@app.function()
def nested(x: int) -> int:
    """A `.remote()` from inside a sandboxed container, through the control plane's URL."""
    return double.remote(x) + 1


@app.function(secrets=[modal.Secret.from_dict({"SANDBOX_SECRET": "only-mine-4711"})])
def secret_holder(seconds: float) -> str:
    """Holds its secret in its environment for a while."""
    time.sleep(seconds)
    return os.environ["SANDBOX_SECRET"]


@app.function()
def look_for_secret(value: str) -> dict:
    """Another function's container: its own environment, and every process environment it can read."""
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if value.encode() in Path(f"/proc/{pid}/environ").read_bytes():
                    found.append(int(pid))
            except OSError:
                pass
    return {"in_env": value in "".join(os.environ.values()), "in_processes": found}


@app.function(gpu="H100")
def needs_h100() -> str:
    return os.environ.get("CUDA_VISIBLE_DEVICES", "")
