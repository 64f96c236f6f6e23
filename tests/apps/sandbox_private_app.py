"""Functions run on control planes of their own by tests/integration/test_sandbox.py (rm -rf /, process mode)."""

import os
import subprocess

import shoal as modal

app = modal.App("sandbox-private")


@app.function()
def isolation() -> dict:
    with open("/proc/self/uid_map") as f:
        uid_map = f.read().split()
    return {"uid_map": uid_map, "pid": os.getpid(), "cwd": os.getcwd(),
            "source_here": os.path.exists("/root/sandbox_private_app.py")}


@app.function()
def destroy() -> dict:
    """`rm -rf /` from inside, then report what is left. Refuses unless this very process is in a user
    namespace that maps container root to an unprivileged host uid (i.e. it is sandboxed)."""
    with open("/proc/self/uid_map") as f:
        inside, outside, _count = f.read().split()[:3]
    if inside != "0" or outside == "0":
        return {"refused": True, "uid_map": [inside, outside]}
    proc = subprocess.run(["rm", "-rf", "--no-preserve-root", "/"], capture_output=True, text=True, timeout=120)
    usr_bin = len(os.listdir("/usr/bin")) if os.path.isdir("/usr/bin") else 0
    return {"rc": proc.returncode, "left": sorted(os.listdir("/")), "usr_bin": usr_bin}


@app.function()
def double(x: int) -> int:
    return 2 * x
