"""A `@modal.sessioned()` Server used as Modal's docs show (`shoal run server_session_app.py`): each session is
pinned to one container, kept while the session lives, and its token gets 410 once the session has ended."""

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import shoal as modal

app = modal.App("server-sessions")

image = modal.Image.debian_slim().add_local_file(Path(__file__).parent / "server_handler.py", "/srv/handler.py")


@app.server(image=image, scaledown_window=2)  # authenticated (the default): a session token is enough
@modal.sessioned()
class Chat:
    @modal.enter()
    def start(self):
        self.process = subprocess.Popen([sys.executable, "/srv/handler.py", "0.0.0.0", "8000"])


def get(url: str, token: str | None = None) -> tuple[int, dict]:
    headers = {"Modal-Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, {"error": exc.read().decode(errors="replace")}


@app.local_entrypoint()
def main() -> None:
    url = Chat.get_url()
    first = Chat.sessions.start(idle_timeout=60)  # waits for a container
    print("credentials", first.session_id.startswith("ss-"), bool(first.token))
    answers = [get(url, first.token) for _ in range(10)]
    print("statuses", sorted({status for status, _ in answers}), *[b["error"] for s, b in answers if s != 200][:1])
    seen = {body.get("container") for _, body in answers}
    print("pinned", len(seen))
    print("without a token", get(url)[0])
    time.sleep(5)  # past the scaledown window: the session keeps its container
    print("kept", get(url, first.token)[1]["container"] in seen)
    print("unknown token", get(url, "st-not-a-session")[0])
    Chat.sessions.terminate(first.token)
    print("terminated", get(url, first.token)[0])
    Chat.sessions.terminate(first.token)  # an ended session: no error
    idle = Chat.sessions.start(idle_timeout=1)
    time.sleep(2.5)
    print("idle", get(url, idle.token)[0])
