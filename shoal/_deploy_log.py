"""Following a deploy's image builds in its app's log, for `shoal deploy` and `App.deploy()` with output shown."""

from __future__ import annotations

import threading
from urllib.parse import quote

from ._client.transport import get_client
from ._output import LogPrinter, StartProgress

POLL_S = 0.25  # how often a deploy looks for its new app, and how long each read of its log waits
FINISH_WAIT_S = 5.0  # at most this long for the last read once the deploy returned


class DeployLogFollower(threading.Thread):
    """Prints the image builds of a deploy as they happen. The deploy is one request that creates the app (when
    there is none of that name) and builds its images, so the app is found by name (before the request when it
    is deployed already, while it runs otherwise) and its log read from there, keeping only the builds' lines
    (not the output of the containers the deployed version still runs)."""

    def __init__(self, name: str, progress: StartProgress) -> None:
        super().__init__(name="shoal-deploy-logs", daemon=True)
        self.name_ = name
        self.printer = LogPrinter()
        self.printer.watcher = progress
        self._done = threading.Event()
        self._final_app_id: str | None = None
        self.after = -1  # the last entry read
        self.app_id = self._deployed_app()
        if self.app_id is not None:
            try:
                self.after = get_client().call("GET", f"/v1/apps/{self.app_id}/logs?after=-1&timeout=0")["last"]
            except Exception:  # noqa: BLE001 - then its log is not followed: output only
                self.app_id = None

    def _deployed_app(self) -> str | None:
        """The id of the running deployed app of this name, if there is one now."""
        try:
            info = get_client().call("GET", f"/v1/apps/{quote(self.name_, safe='')}/info")
        except Exception:  # noqa: BLE001 - none (yet), or this token may not ask
            return None
        if info.get("mode") == "deployed" and info.get("state") == "running":
            return info["app_id"]
        return None

    def run(self) -> None:
        client = get_client()
        while self.app_id is None:
            if self._done.wait(POLL_S):
                self.app_id = self._final_app_id  # created, built and registered while we looked
                if self.app_id is None:
                    return
            else:
                self.app_id = self._deployed_app()
        while True:
            final = self._done.is_set()  # a read that starts after the deploy returned has all of its builds
            try:
                resp = client.call("GET", f"/v1/apps/{self.app_id}/logs?after={self.after}"
                                          f"&timeout={0 if final else POLL_S}")
            except Exception:  # noqa: BLE001 - output only
                return
            for entry in resp["entries"]:
                if entry["container_id"].startswith("im-"):
                    self.printer.write(entry)
            self.after = resp.get("last", self.after)
            if final:
                return

    def finish(self, app_id: str | None) -> None:
        """The deploy request returned (with the app's id, unless it failed): print what its builds logged."""
        self._final_app_id = app_id
        self._done.set()
        self.join(timeout=FINISH_WAIT_S)
