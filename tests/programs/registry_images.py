"""Functions on OCI images: a registry image with apt_install/run_commands/pip_install on top, a private one pulled
with a registry secret, one without Python given one by add_python, and a Dockerfile build — each reports what its
containers see. The registry addresses come from the environment (the test pushes the images it made itself).

    E2E_REGISTRY=127.0.0.1:PORT E2E_PRIVATE_REGISTRY=127.0.0.1:PORT2 REGISTRY_USERNAME=u REGISTRY_PASSWORD=p \
        shoal run registry_images.py
"""

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import shoal as modal

REGISTRY = os.environ.get("E2E_REGISTRY", "127.0.0.1:5000")  # containers re-import this module: declare only
PRIVATE = os.environ.get("E2E_PRIVATE_REGISTRY", "127.0.0.1:5001")
HERE = Path(__file__).parent

debian = (
    modal.Image.from_registry(f"{REGISTRY}/e2e/debian:v1")
    .apt_install("jq")
    .run_commands("echo hi > /etc/marker", "mkdir -p /usr/local/share/e2e && echo tool > /usr/local/share/e2e/tool")
    .env({"E2E_STAGE": "registry"})
    .workdir("/opt/work")
)
web_image = debian.pip_install("fastapi")
private = modal.Image.from_registry(
    f"{PRIVATE}/e2e/debian:v1",
    secret=modal.Secret.from_local_environ(["REGISTRY_USERNAME", "REGISTRY_PASSWORD"]),
)
added_python = modal.Image.from_registry(f"{REGISTRY}/e2e/nopython:v1", add_python="3.11")
built = (
    modal.Image.from_dockerfile(HERE / "registry_images" / "Dockerfile", context_dir=HERE / "registry_images",
                                build_args={"BASE_IMAGE": f"{REGISTRY}/e2e/debian:v1", "GREETING": "bonjour"})
    .apt_install("jq")
    .run_commands("echo from-dockerfile > /home/appuser/marker")
)
app = modal.App("program-registry-images", image=debian)


def observe() -> dict:
    """What a container sees of its root: the same report from every image."""

    def read(path: str) -> str | None:
        try:
            return Path(path).read_text().strip()
        except OSError:
            return None

    release = dict(line.split("=", 1) for line in (read("/etc/os-release") or "").splitlines() if "=" in line)
    try:
        jq = subprocess.run(["jq", "--version"], capture_output=True, text=True).stdout.strip()
    except FileNotFoundError:
        jq = None
    dpkg = read("/var/lib/dpkg/status") or ""
    return {
        "os": release.get("PRETTY_NAME", "").strip('"'), "marker": read("/etc/marker"), "jq": jq,
        "jq_package": "Package: jq\n" in dpkg, "tool": read("/usr/local/share/e2e/tool"),
        "stage": os.environ.get("E2E_STAGE"), "greeting": os.environ.get("GREETING"), "cwd": os.getcwd(),
        "python": ".".join(map(str, sys.version_info[:2])), "executable": sys.executable, "uid": os.getuid(),
        "host_only": [p for p in ("/usr/bin/skopeo", "/usr/bin/mmdebstrap", "/work") if os.path.exists(p)],
        "test_image": os.path.exists("/etc/shoal-test-image"),
    }


@app.function()
def on_registry() -> dict:
    return observe()


@app.function()
def square_with_marker(x: int) -> list:
    return [x * x, Path("/etc/marker").read_text().strip()]


@app.function(image=private)
def on_private() -> dict:
    return observe()


@app.function(image=added_python)
def on_added_python() -> dict:
    return observe()


@app.function(image=built)
def on_dockerfile() -> dict:
    seen = observe()
    seen["copied"] = Path("/srv/app/greeting.txt").read_text().strip()
    seen["built"] = Path("/srv/app/built.txt").read_text().strip()
    seen["home_marker"] = Path("/home/appuser/marker").read_text().strip()
    return seen


@app.cls(image=debian)
class Inspector:
    @modal.enter()
    def load(self):
        self.release = Path("/etc/os-release").read_text()

    @modal.method()
    def has(self, word: str) -> list:
        return [word in self.release, Path("/etc/marker").read_text().strip()]


@app.function(image=web_image)
@modal.fastapi_endpoint()
def marker_web(name: str = "x"):
    import fastapi

    return {"name": name, "marker": Path("/etc/marker").read_text().strip(), "fastapi": bool(fastapi.__version__)}


def show(label: str, report: dict) -> None:
    print(label, json.dumps(report, sort_keys=True))


@app.local_entrypoint()
def main():
    show("registry", on_registry.remote())
    print("map", json.dumps(list(square_with_marker.map(range(4)))))
    print("cls", json.dumps(Inspector().has.remote("Debian")))
    show("private", on_private.remote())
    show("add_python", on_added_python.remote())
    show("dockerfile", on_dockerfile.remote())
    with urllib.request.urlopen(marker_web.get_web_url() + "?name=web", timeout=60) as resp:
        print("web", json.dumps(json.loads(resp.read()), sort_keys=True))
