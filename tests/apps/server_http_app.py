"""Servers whose process is tests/apps/server_handler.py (a threaded stdlib HTTP server that reports its container
id), started by `@modal.enter()`: authenticated by default, capped by `max_concurrency`, never listening, listening
on 127.0.0.1 only, and one whose process can be killed from outside (`GET /die`)."""

import subprocess
import sys
from pathlib import Path

import shoal as modal

app = modal.App("server-http")

image = modal.Image.debian_slim().add_local_file(Path(__file__).parent / "server_handler.py", "/srv/handler.py")


def serve(host: str = "0.0.0.0", port: int = 8000) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "/srv/handler.py", host, str(port)])


@app.server(image=image)  # authenticated: Modal-Key / Modal-Secret, else 401
class Private:
    @modal.enter()
    def start(self):
        self.process = serve()


@app.server(image=image, unauthenticated=True, max_concurrency=2, max_containers=1)
class Capped:
    @modal.enter()
    def start(self):
        self.process = serve()


@app.server(image=image, unauthenticated=True)
class Mortal:
    """Its process ends on `GET /die`; health checks find the port closed and replace the container."""

    @modal.enter()
    def start(self):
        self.process = serve()


@app.server(image=image, unauthenticated=True, startup_timeout=2)
class NeverListens:
    @modal.enter()
    def start(self):
        pass


@app.server(image=image, unauthenticated=True, startup_timeout=2)
class LoopbackOnly:
    @modal.enter()
    def start(self):
        self.process = serve("127.0.0.1")
