"""The one small interface between the control plane and wherever containers run.

The control plane decides *what* runs (a `ContainerSpec`); a backend only starts it, reports its output and
exit, and stops it. Backends never make scheduling decisions.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .._spec.definitions import FunctionDefinition
    from .sandbox import Availability

OutputSink = Callable[[str, str, str], None]  # (container_id, fd, text)
RawSink = Callable[[str, bytes], None]  # (fd, bytes as written): a sandbox's output, undecoded


class Unschedulable(Exception):  # noqa: N818 - a state, not a failure of ours
    """The backend cannot start this container now (no matching GPU, no room); the reason is shown to users
    and the control plane tries again later."""


@dataclass
class ContainerImage:
    """A built image as a backend needs it."""

    image_id: str
    python: str  # the interpreter containers of this image run (a path the sandbox makes visible)
    root: str | None = None  # the image's own directory (venv, unpacked apt packages, copied files)
    env: dict[str, str] = field(default_factory=dict)  # ENV steps and PATH/LD_LIBRARY_PATH additions
    workdir: str | None = None
    # An OCI image (docs/sandbox.md "Root filesystem from layers"): containers run with the image as their root.
    # `python` is then a path inside the image ("" where it has none: functions cannot run on it), `env` its
    # config's Env plus ENV steps, `workdir` its WorkingDir.
    layers: list[str] | None = None  # its layer directories, top first; None: a venv image
    runtime_dir: str | None = None  # host dir of the runtime's packages for the image's Python (read-only inside)
    user: str | None = None  # USER of the image config (None/"": root)


@dataclass
class ContainerSpec:
    container_id: str
    function_id: str
    app_id: str
    definition: FunctionDefinition  # the function's definition as registered (options, tag, module, …)
    env: dict[str, str]  # variables set by the control plane (ids, tokens, addresses) and secrets
    image: ContainerImage | None = None  # None: the control plane's own interpreter
    source_dir: str | None = None  # the app's source, importable inside the container (at /root)
    gpus: list[str] = field(default_factory=list)  # device indices assigned to this container
    binds: list[tuple[str, str, bool]] = field(default_factory=list)  # extra (host path, container path, rw)
    # Volumes (controlplane/volumes.py): [container path, version dir, upper dir, work dir]; upper/work None: read-only
    volumes: list[list] = field(default_factory=list)
    idle: bool = False  # run nothing (not the runtime) until stopped: `shoal shell` execs into it
    # Network (sandboxed containers; docs/sandbox.md): outbound traffic only to these CIDRs (the definition's
    # `block_network=True`, in options.extra, means no network at all, not even the control plane's URL).
    outbound_cidr_allowlist: list[str] | None = None
    # A `shoal.Sandbox` (controlplane/core/sandboxes.py): run `command` instead of the runtime (a bare name is
    # looked up on the container's PATH), with a pipe as its stdin (`stdin`: the handle's `stdin` writer), and
    # its output as bytes to `raw_output` instead of the text sink.
    command: list[str] | None = None
    stdin: bool = False
    raw_output: RawSink | None = None
    # On an OCI image: the container's writable layer in this host directory (`upper/`, `work/`, and
    # `mountpoints`, the paths the setup made there) instead of a private tmpfs, so the control plane can read it
    # (a sandbox's snapshot). The caller removes it once the container ended.
    rootfs_dir: str | None = None


class ContainerHandle(Protocol):
    """A started container, as the control plane sees it."""

    pid: int  # its process on its machine (a sandbox's supervisor): what `shoal container exec` enters
    sandboxed: bool
    isolation: str | None  # "sandbox" or "process" where the handle knows better than its backend (Ray)
    node_id: str | None  # the cluster node it runs on (None: this machine)
    cgroup: Any  # its cgroups (`sandbox.ContainerCgroup`, `.dirs`) when it has its own, else None

    async def wait(self) -> int: ...  # exit code (negative: killed by that signal), after output is drained
    def exit_reason(self) -> str | None: ...  # why it ended, when the backend knows better (an OOM kill)
    def kill(self) -> None: ...
    def terminate(self) -> None: ...
    # A connected non-blocking socket to the container's own `port` (web traffic: the ingress proxy). The
    # local backend connects to 127.0.0.1:port inside the container's network namespace; the Ray backend to a
    # forwarder the container's actor opens on its node.
    async def web_connect(self, port: int) -> socket.socket: ...


class Backend(Protocol):
    """What the control plane uses of a backend (controlplane/core.py holds one)."""

    name: str  # "local", "ray"
    isolation: str  # containers' isolation: "sandbox" or "process" (Ray: what the nodes were asked for)
    availability: Availability | None  # this machine's isolation probe; None where sandboxes are elsewhere
    volumes_unsupported: str | None  # why containers here cannot mount volumes; None: they can
    control_ip: str  # the address containers reach the control plane at (over TCP where not local)
    forward_ports: dict[int, tuple[str, int]]  # host ports containers may reach (the ingress proxy's)

    def capacity(self) -> int: ...
    async def start(self, spec: ContainerSpec, on_output: OutputSink | None) -> ContainerHandle: ...
    def shutdown(self) -> None: ...  # the control plane exits: release what the backend holds
