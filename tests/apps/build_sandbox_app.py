"""An image whose build commands write where a host-root build would change the host (for
tests/integration/test_image_build_sandbox.py)."""

import os
from pathlib import Path

import shoal as modal

MARK = os.environ.get("SHOAL_TEST_BUILD_MARK", "shoal-build-mark")
image = modal.Image.debian_slim().run_commands(
    f"echo built-in-sandbox > /etc/{MARK}",
    f"touch /root/{MARK}; id -u > /root/{MARK}.uid",
    f"mkdir -p /opt/{MARK} && echo tool > /opt/{MARK}/tool.txt",
    f"cp /usr/bin/true /root/{MARK}.suid && chmod 4755 /root/{MARK}.suid",  # set-user-id: cleared after the step
    # A .pth file runs whenever the image's Python starts: the host must never start it.
    f"echo \"import os; open('/var/tmp/{MARK}.pth-ran', 'w')\" > "
    f"$(python -c 'import sysconfig; print(sysconfig.get_paths()[\"purelib\"])')/zz_{MARK}.pth",
)
app = modal.App("build-sandbox", image=image)


@app.function()
def look(mark: str) -> dict:
    """What containers of the image see of what its build wrote."""
    def read(p: str) -> str | None:
        return Path(p).read_text() if os.path.exists(p) else None

    return {"etc": read(f"/etc/{mark}"), "root": os.path.exists(f"/root/{mark}"),
            "uid": read(f"/root/{mark}.uid"), "opt": read(f"/opt/{mark}/tool.txt"),
            "suid": bool(os.stat(f"/root/{mark}.suid").st_mode & 0o4000)}
