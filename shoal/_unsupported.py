"""Names of Modal's `__all__` that shoal does not offer (yet): using one raises an error that says so and names
what to use instead, rather than a bare AttributeError that reads like a typo (`shoal.__getattr__`)."""

from __future__ import annotations

from .exception import Error

UNSUPPORTED: dict[str, str] = {
    "SandboxSnapshot": "sandbox memory snapshots (`SandboxSnapshot`) are not offered: "
                       "`sb.snapshot_filesystem()` gives an Image new sandboxes can start from",
    "Cluster": "shoal does not run multi-container clusters (`@modal.clustered`): each call runs in one container",
    "clustered": "shoal does not run multi-container clusters (`@modal.clustered`): each call runs in one container",
    "NetworkFileSystem": "NetworkFileSystem (deprecated by Modal) is not offered: use `modal.Volume` "
                         "(`Volume.from_name(...)` mounted with `volumes={path: vol}`, `vol.commit()` after writes)",
    "forward": "`modal.forward` (a tunnel from a container to your machine) is not offered: serve the port with "
               "`@modal.web_server(port)` and reach it at `get_web_url()`",
    "interact": "`modal.interact()` is not offered: use `shoal shell` or `shoal container exec CONTAINER_ID bash`",
    "Client": "shoal has no Client object: the SDK reaches the control plane named by SHOAL_SERVER_URL (or the one "
              "under SHOAL_HOME); leave `client=` arguments out",
    "FilePatternMatcher": "FilePatternMatcher is not offered: pass `ignore=` a list of glob patterns or a callable "
                          "taking a Path",
    "SchedulerPlacement": "placement is not offered: use `region=` (enforced on a Ray cluster)",
    "Proxy": "static egress proxies (`modal.Proxy`) are not offered: containers use this machine's network",
    "CloudBucketMount": "cloud bucket mounts are not offered: use `modal.Volume`, or read the bucket with its "
                        "client library inside the function",
    "Workspace": "shoal has one workspace: manage proxy tokens with `shoal workspace proxy-tokens`",
    "Environment": "shoal has one environment (`main`): there is nothing to manage",
    "billing": "shoal has no billing: it runs on your machines",
    "experimental": "`modal.experimental` is not offered by shoal",
}


class UnsupportedFeatureError(Error, NotImplementedError):
    """A Modal feature shoal does not offer; the message names the alternative."""


def unsupported(name: str) -> UnsupportedFeatureError | None:
    message = UNSUPPORTED.get(name)
    return UnsupportedFeatureError(f"modal.{name}: {message}") if message else None
