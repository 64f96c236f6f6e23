"""A deployed Server whose answers carry a version (`SERVER_APP_VERSION` in the deploying process's environment,
1 by default, passed to its containers with `env=`), for redeploys, graceful stops and the `shoal server` CLI.
`exit_grace_period=10`: a container that stops serving gets 10 s for its requests in flight. Its process is
tests/apps/server_handler.py (`/slow?release=PATH` holds a request until PATH exists)."""

import os
import subprocess
import sys
from pathlib import Path

import shoal as modal

VERSION = os.environ.get("SERVER_APP_VERSION", "1")
app = modal.App("server-versioned")

image = modal.Image.debian_slim().add_local_file(Path(__file__).parent / "server_handler.py", "/srv/handler.py")


@app.server(image=image, unauthenticated=True, min_containers=1, exit_grace_period=10,
            env={"SERVER_APP_VERSION": VERSION})
class Versioned:
    @modal.enter()
    def start(self):
        self.process = subprocess.Popen([sys.executable, "/srv/handler.py", "0.0.0.0", "8000"])
        print(f"serving version {VERSION}", flush=True)  # read back by `shoal server logs`
