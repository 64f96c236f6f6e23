"""A Server with two containers and no autoscaling target (`min_containers=2`): requests are spread over the pool,
and those with the same `Modal-Session-ID` header go to the same container. Its process is
tests/apps/server_handler.py, which answers its container id."""

import subprocess
import sys
from pathlib import Path

import shoal as modal

app = modal.App("server-sticky")

image = modal.Image.debian_slim().add_local_file(Path(__file__).parent / "server_handler.py", "/srv/handler.py")


@app.server(image=image, unauthenticated=True, min_containers=2)
class Sticky:
    @modal.enter()
    def start(self):
        self.process = subprocess.Popen([sys.executable, "/srv/handler.py", "0.0.0.0", "8000"])
