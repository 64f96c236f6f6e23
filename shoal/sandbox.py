"""`Sandbox`: a container that runs a command nobody reviewed (agent-generated code, a REPL, a dev server), driven
from outside: `Sandbox.create(*cmd, app=...)`, `.exec(...)`, its standard streams, tunnels to its ports, its files.

Everything goes through the control plane's `/v1/sandboxes` routes (docs/sandboxes.md): the SDK validates
arguments where they are given, naming the parameter, and the control plane runs the container, keeps the output
and the exit status (durable), enforces `timeout` / `idle_timeout` and confines the process.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from ._client.aio import Emit, Plan, rpc, rpc_iter
from ._client.transport import get_client
from ._spec.limits import MAX_WAIT_S, TIMEOUT_S, name_problem
from .container_process import ContainerProcess
from .exception import (
    DeprecationError,
    InvalidError,
    NotImplementedWarning,
    SandboxTerminatedError,
    SandboxTimeoutError,
    TimeoutError,  # noqa: A004 - Modal's name, shoal's class
)
from .io_streams import StreamReader, StreamWriter, check_stream_type
from .sandbox_fs import FileIO, SandboxFilesystem, check_remote_path
from .stream_type import StreamType

__all__ = ["ContainerProcess", "Probe", "Sandbox", "SandboxFilesystem", "StreamType", "Tunnel"]

ARG_MAX_BYTES = 2**16  # a command's arguments together, as Modal bounds them
RETURNCODE_TIMEOUT = 124  # `returncode` of a sandbox ended by `timeout` / `idle_timeout` (as `timeout(1)`)
RETURNCODE_TERMINATED = 137  # … ended by `terminate()` (SIGKILL's status)
# Ends that count as termination: `terminate()`, and a control plane restart the process did not outlive.
TERMINATED_REASONS = ("terminated", "control plane restarted")
PORT_RANGE = (1, 65535)
# Options of Sandbox.create shoal accepts but does not act on: each warns once per process.
NOT_ENFORCED = ("region", "cloud", "runtime", "custom_domain", "proxy", "outbound_domain_allowlist",
                "inbound_cidr_allowlist", "include_oidc_identity_token", "experimental_options")
_warned: set[str] = set()


# -- small objects ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Probe:
    """A readiness check for `Sandbox.create(readiness_probe=...)` / `wait_until_ready()`: a TCP port that
    accepts connections, or a command that exits 0."""

    tcp_port: int | None = None
    exec_argv: tuple[str, ...] | None = None
    interval_ms: int = 100

    @classmethod
    def with_tcp(cls, port: int, *, interval_ms: int = 100) -> Probe:
        _check_port(port, "Probe.with_tcp port")
        _check_interval(interval_ms)
        return cls(tcp_port=port, interval_ms=interval_ms)

    @classmethod
    def with_exec(cls, *argv: str, interval_ms: int = 100) -> Probe:
        if not argv:
            raise InvalidError("Probe.with_exec needs a command (its arguments)")
        _check_args(argv, "Probe.with_exec")
        _check_interval(interval_ms)
        return cls(exec_argv=tuple(argv), interval_ms=interval_ms)

    def to_wire(self) -> dict[str, Any]:
        if self.tcp_port is not None:
            return {"tcp_port": self.tcp_port, "interval_ms": self.interval_ms}
        return {"exec_argv": list(self.exec_argv or ()), "interval_ms": self.interval_ms}


@dataclass(frozen=True)
class Tunnel:
    """A port of a sandbox reachable from outside it, through the control plane's ingress: `.url` for HTTP(S),
    `.tls_socket` / `.tcp_socket` as (host, port)."""

    host: str
    port: int
    unencrypted_host: str | None = None
    unencrypted_port: int | None = None
    _url: str | None = field(default=None, repr=False, compare=False)

    @property
    def url(self) -> str:
        if self._url:
            return self._url
        return f"https://{self.host}" + ("" if self.port == 443 else f":{self.port}")

    @property
    def tls_socket(self) -> tuple[str, int]:
        return self.host, self.port

    @property
    def tcp_socket(self) -> tuple[str, int]:
        if not self.unencrypted_host or not self.unencrypted_port:
            raise InvalidError("this tunnel has no unencrypted socket: list the port in `unencrypted_ports=`")
        return self.unencrypted_host, self.unencrypted_port


def _tunnel(wire: dict[str, Any]) -> Tunnel:
    return Tunnel(host=wire.get("host", ""), port=int(wire.get("port") or 0),
                  unencrypted_host=wire.get("unencrypted_host"),
                  unencrypted_port=int(wire["unencrypted_port"]) if wire.get("unencrypted_port") else None,
                  _url=wire.get("url"))


# -- validation (pure: unit-tested) ------------------------------------------------------------------------------
def _check_port(port: Any, what: str) -> int:
    if not isinstance(port, int) or isinstance(port, bool) or not PORT_RANGE[0] <= port <= PORT_RANGE[1]:
        raise InvalidError(f"`{what}` must be a port number between 1 and 65535, got {port!r}")
    return port


def _check_interval(interval_ms: Any) -> None:
    if not isinstance(interval_ms, int) or isinstance(interval_ms, bool) or interval_ms < 1:
        raise InvalidError(f"`interval_ms` must be a positive integer, got {interval_ms!r}")


def _check_args(args: Sequence[Any], what: str) -> list[str]:
    for a in args:
        if not isinstance(a, str):
            raise InvalidError(f"{what}: every argument must be a str, got {type(a).__name__} {a!r}")
        if "\x00" in a:
            raise InvalidError(f"{what}: an argument contains a NUL character")
    total = sum(len(a.encode("utf-8", "surrogateescape")) for a in args)
    if total > ARG_MAX_BYTES:
        raise InvalidError(f"{what}: total length of the arguments must be at most {ARG_MAX_BYTES} bytes "
                           f"(ARG_MAX), got {total} bytes")
    return list(args)


def _check_seconds(name: str, value: Any, *, allow_none: bool = True) -> int | None:
    if value is None and allow_none:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value != value:
        raise InvalidError(f"`{name}` must be a number of seconds, got {value!r}")
    lo, hi = TIMEOUT_S
    if not lo <= value <= hi:
        raise InvalidError(f"`{name}` must be between {lo} and {hi} seconds, got {value}")
    return int(value)


def _check_workdir(workdir: Any) -> str | None:
    if workdir is None:
        return None
    if not isinstance(workdir, (str, os.PathLike)) or not str(workdir).startswith("/"):
        raise InvalidError(f"`workdir` must be an absolute path, got: {workdir!r}")
    return str(workdir)


def _check_env(env: Any) -> dict[str, str]:
    if env is None:
        return {}
    if not isinstance(env, dict):
        raise InvalidError(f"`env` must be a dict of str to str, got {type(env).__name__}")
    from .secret import Secret

    return {k: v for k, v in Secret(env).env().items() if v is not None}  # Secret checks the keys and values


def _split_secrets(secrets: Any) -> tuple[list[str], dict[str, str]]:
    """Named secrets (resolved by the control plane when the process starts) and the values of unnamed ones."""
    from ._options import check_secrets

    names: list[str] = []
    values: dict[str, str] = {}
    for s in check_secrets(secrets):
        if s.name:
            names.append(s.name)
        else:
            values.update({k: v for k, v in s.env().items() if v is not None})
    return names, values


def _check_ports(name: str, ports: Any) -> list[int]:
    if ports is None:
        return []
    if isinstance(ports, (str, bytes)) or not isinstance(ports, Sequence):
        raise InvalidError(f"`{name}` must be a list of port numbers, got {ports!r}")
    return [_check_port(p, name) for p in ports]


def _check_cidrs(name: str, cidrs: Any) -> list[str] | None:
    if cidrs is None:
        return None
    if isinstance(cidrs, str) or not isinstance(cidrs, Sequence):
        raise InvalidError(f"`{name}` must be a list of CIDR strings, got {cidrs!r}")
    import ipaddress  # here: containers import the SDK, and rarely this

    out = []
    for c in cidrs:
        try:
            out.append(str(ipaddress.ip_network(c, strict=False)))
        except (TypeError, ValueError) as exc:
            raise InvalidError(f"`{name}`: {c!r} is not a CIDR block ({exc})") from None
    return out


def _check_tags(tags: Any) -> dict[str, str]:
    if tags is None:
        return {}
    if not isinstance(tags, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in tags.items()):
        raise InvalidError(f"`tags` must be a dict of str to str, got {tags!r}")
    return dict(tags)


def _warn_not_enforced(given: dict[str, Any]) -> None:
    for name in NOT_ENFORCED:
        value = given.get(name)
        if value not in (None, False, {}, [], ()) and name not in _warned:
            _warned.add(name)
            warnings.warn(f"shoal records `{name}=` of Sandbox.create but does not enforce it",
                          NotImplementedWarning, stacklevel=4)


def _in_container() -> bool:
    return "SHOAL_CONTAINER_ID" in os.environ


def _app_id(app: Any) -> str:
    """The app a new sandbox belongs to: `app`'s, or inside a function's container that function's app."""
    from .app import App

    own = os.environ.get("SHOAL_APP_ID") if _in_container() else None
    if app is not None and not isinstance(app, App):
        raise InvalidError(f"`app` must be a modal.App, got {type(app).__name__}")
    if app is not None and app.app_id is not None:
        return app.app_id
    if own:
        return own
    if app is None:
        raise InvalidError(
            "Sandboxes require an App when created outside of a container. Run an ephemeral App "
            "(`with app.run(): ...`) or reference a deployed one:\n\n"
            "    app = modal.App.lookup('sandbox-app', create_if_missing=True)\n"
            "    sb = modal.Sandbox.create(..., app=app)")
    raise InvalidError("App has not been initialized yet: create the sandbox inside `with app.run():`, or use "
                       "a deployed app (`modal.App.lookup('sandbox-app', create_if_missing=True)`)")


def create_body(args: Sequence[Any], *, app: Any = None, name: str | None = None, tags: Any = None,
                image: Any = None, env: Any = None, secrets: Any = None, network_file_systems: Any = None,
                timeout: Any = 300, idle_timeout: Any = None, workdir: Any = None, gpu: Any = None,
                cpu: Any = None, memory: Any = None, block_network: bool = False,
                outbound_cidr_allowlist: Any = None, volumes: Any = None, pty: bool = False,
                encrypted_ports: Any = (), h2_ports: Any = (), unencrypted_ports: Any = (),
                readiness_probe: Any = None, not_enforced: dict[str, Any] | None = None) -> dict[str, Any]:
    """`Sandbox.create`'s arguments, checked as Modal checks them, as the body of `POST /v1/sandboxes` (without
    the image and the volumes' ids, which need the control plane). Raises InvalidError naming the parameter."""
    from ._options import _check_resource, parse_gpu
    from .image import check_image

    command = _check_args(args, "Sandbox.create")
    if name is not None and (problem := name_problem(name, "Sandbox")):
        raise InvalidError(problem)
    check_image(image, "Sandbox.create")
    if network_file_systems:
        raise InvalidError("`network_file_systems` is not offered by shoal: use `volumes={path: modal.Volume}`")
    if not isinstance(block_network, bool):
        raise InvalidError(f"`block_network` must be a bool, got {block_network!r}")
    allowlist = _check_cidrs("outbound_cidr_allowlist", outbound_cidr_allowlist)
    if block_network and allowlist is not None:
        raise InvalidError("`outbound_cidr_allowlist` cannot be used when `block_network` is enabled")
    if not isinstance(pty, bool):
        raise InvalidError(f"`pty` must be a bool, got {pty!r}")
    if readiness_probe is not None and not isinstance(readiness_probe, Probe):
        raise InvalidError(f"`readiness_probe` must be a modal.Probe (Probe.with_tcp / Probe.with_exec), "
                           f"got {type(readiness_probe).__name__}")
    _check_resource("cpu", cpu, float)
    _check_resource("memory", memory, int)
    secret_names, secret_env = _split_secrets(secrets)
    mounts = {}
    if volumes:
        from .volume import check_mounts

        mounts = check_mounts(volumes)
        for path, vol in mounts.items():
            if not vol.name:
                raise InvalidError(f"`volumes`: {path!r}: a sandbox mounts named volumes "
                                   "(modal.Volume.from_name(name, create_if_missing=True))")
    encrypted = _check_ports("encrypted_ports", encrypted_ports)
    h2 = _check_ports("h2_ports", h2_ports)
    unencrypted = _check_ports("unencrypted_ports", unencrypted_ports)
    for port in set(encrypted + h2) & set(unencrypted):
        raise InvalidError(f"port {port} is listed as both encrypted and unencrypted")
    body: dict[str, Any] = {
        "app_id": _app_id(app),
        "name": name,
        "tags": _check_tags(tags),
        "command": command,
        "env": {**secret_env, **_check_env(env)},
        "secret_names": secret_names,
        "timeout": _check_seconds("timeout", timeout) or 300,
        "idle_timeout": _check_seconds("idle_timeout", idle_timeout),
        "workdir": _check_workdir(workdir),
        "cpu": list(cpu) if isinstance(cpu, tuple) else cpu,
        "memory": list(memory) if isinstance(memory, tuple) else memory,
        "gpu": (parse_gpu(gpu) or [None])[0],
        "block_network": block_network,
        "outbound_cidr_allowlist": allowlist,
        "encrypted_ports": encrypted,
        "h2_ports": h2,
        "unencrypted_ports": unencrypted,
        "pty": pty,
        "readiness_probe": readiness_probe.to_wire() if readiness_probe else None,
        "volumes": [{"path": path, "volume_name": vol.name, "read_only": vol._read_only}
                    for path, vol in mounts.items()],
    }
    _warn_not_enforced(not_enforced or {})
    return body


def exec_body(args: Sequence[Any], *, stdout: Any, stderr: Any, timeout: Any, workdir: Any, env: Any,
              secrets: Any, text: Any, bufsize: Any, pty: Any) -> dict[str, Any]:
    """`Sandbox.exec`'s arguments checked, as the body of `POST /v1/sandboxes/{id}/exec`."""
    if not args:
        raise InvalidError("Sandbox.exec needs a command: sb.exec('python', '-c', 'print(1)')")
    argv = _check_args(args, "Sandbox.exec")
    check_stream_type(stdout, "stdout")
    check_stream_type(stderr, "stderr")
    if not isinstance(text, bool):
        raise InvalidError(f"`text` must be a bool, got {text!r}")
    if bufsize not in (-1, 1):
        raise InvalidError(f"`bufsize` must be -1 (binary buffered) or 1 (line-buffered), got {bufsize!r}")
    if bufsize == 1 and not text:
        raise InvalidError("`bufsize=1` (line-buffered) is only allowed with `text=True`")
    if not isinstance(pty, bool):
        raise InvalidError(f"`pty` must be a bool, got {pty!r}")
    secret_names, secret_env = _split_secrets(secrets)
    return {"argv": argv, "workdir": _check_workdir(workdir), "env": {**secret_env, **_check_env(env)},
            "secret_names": secret_names, "timeout": _check_seconds("timeout", timeout), "pty": pty}


def shell_code(returncode: int | None) -> int:
    """An exit status as a shell reports it: a process killed by signal N (the control plane's -N) is 128 + N."""
    if returncode is None:
        return -1
    return 128 - int(returncode) if returncode < 0 else int(returncode)


# -- the sandbox ---------------------------------------------------------------------------------------------------
class Sandbox:
    """A running (or ended) sandbox. Made by `Sandbox.create`, `Sandbox.from_id`, `Sandbox.from_name` or
    `Sandbox.list`, never constructed directly."""

    def __init__(self, sandbox_id: str, *, _info: dict[str, Any] | None = None,
                 _probe: Probe | None = None) -> None:
        if not isinstance(sandbox_id, str) or not sandbox_id.startswith("sb-"):
            raise InvalidError(f"not a sandbox id: {sandbox_id!r} (sandbox ids start with 'sb-')")
        self._object_id = sandbox_id
        self._base = f"/v1/sandboxes/{sandbox_id}"
        self._returncode: int | None = None
        self._reason: str | None = None
        self._probe = _probe
        self._detached = False
        self._tunnels: dict[int, Tunnel] | None = None
        self.stdout = StreamReader(self._base, "stdout")
        self.stderr = StreamReader(self._base, "stderr")
        self.stdin = StreamWriter(self._base)
        self.filesystem = SandboxFilesystem(self)
        if _info:
            self._set_info(_info)

    def __repr__(self) -> str:
        return f"Sandbox({self._object_id})"

    def __reduce__(self) -> tuple:
        """Pickled by id (into a Queue, a Dict, a function's arguments): the copy reads the streams from the start."""
        return (Sandbox, (self._object_id,), {"_probe": self._probe})

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._probe = state.get("_probe")

    @property
    def object_id(self) -> str:
        return self._object_id

    def _set_info(self, info: dict[str, Any]) -> None:
        if info.get("state") == "terminated" or info.get("returncode") is not None:
            self._set_result(info.get("returncode"), info.get("reason"))

    def _set_result(self, returncode: int | None, reason: str | None) -> None:
        self._reason = reason or "exited"
        if self._reason in ("timeout", "idle_timeout"):
            self._returncode = RETURNCODE_TIMEOUT
        elif self._reason in TERMINATED_REASONS:
            self._returncode = RETURNCODE_TERMINATED
        else:
            self._returncode = shell_code(returncode)

    def _path(self, tail: str = "") -> str:
        if self._detached:
            raise InvalidError(f"{self._object_id} was detached: get it again with Sandbox.from_id")
        return self._base + tail

    # -- creating and finding --------------------------------------------------------------------------------
    @staticmethod
    @rpc
    def create(
        *args: str,
        app: Any = None,
        name: str | None = None,
        tags: dict[str, str] | None = None,
        image: Any = None,
        env: dict[str, str | None] | None = None,
        secrets: Sequence[Any] | None = None,
        network_file_systems: dict[Any, Any] = {},  # noqa: B006 - Modal's signature
        timeout: int | None = 300,
        idle_timeout: int | None = None,
        workdir: str | None = None,
        gpu: str | list[str] | None = None,
        cloud: str | None = None,
        region: str | Sequence[str] | None = None,
        cpu: float | tuple[float, float] | None = None,
        memory: int | tuple[int, int] | None = None,
        runtime: str | None = None,
        block_network: bool = False,
        outbound_cidr_allowlist: Sequence[str] | None = None,
        outbound_domain_allowlist: Sequence[str] | None = None,
        inbound_cidr_allowlist: Sequence[str] | None = None,
        volumes: dict[Any, Any] = {},  # noqa: B006 - Modal's signature
        pty: bool = False,
        encrypted_ports: Sequence[int] = [],  # noqa: B006
        h2_ports: Sequence[int] = [],  # noqa: B006
        unencrypted_ports: Sequence[int] = [],  # noqa: B006
        custom_domain: str | None = None,
        proxy: Any = None,
        include_oidc_identity_token: bool = False,
        readiness_probe: Probe | None = None,
        verbose: bool = False,
        experimental_options: dict[str, Any] | None = None,
        client: Any = None,
        environment_name: str | None = None,
        pty_info: Any = None,
        cidr_allowlist: Sequence[str] | None = None,
    ) -> Plan:
        """Start `args` (default: nothing but staying up until `timeout`) in a new container of `image`
        (default `Image.debian_slim()`); returns once it runs. `app=` is required outside a container."""
        if pty_info is not None:
            raise DeprecationError("`pty_info` is no longer supported: use `pty=True`")
        if cidr_allowlist is not None:
            if outbound_cidr_allowlist is not None:
                raise InvalidError("give `outbound_cidr_allowlist` only (`cidr_allowlist` is its old name)")
            warnings.warn("`cidr_allowlist` is deprecated: use `outbound_cidr_allowlist`", DeprecationWarning,
                          stacklevel=3)
            outbound_cidr_allowlist = cidr_allowlist
        body = create_body(
            args, app=app, name=name, tags=tags, image=image, env=env, secrets=secrets,
            network_file_systems=network_file_systems, timeout=timeout, idle_timeout=idle_timeout, workdir=workdir,
            gpu=gpu, cpu=cpu, memory=memory, block_network=block_network,
            outbound_cidr_allowlist=outbound_cidr_allowlist, volumes=volumes, pty=pty,
            encrypted_ports=encrypted_ports, h2_ports=h2_ports, unencrypted_ports=unencrypted_ports,
            readiness_probe=readiness_probe,
            not_enforced=dict(region=region, cloud=cloud, runtime=runtime, custom_domain=custom_domain, proxy=proxy,
                              outbound_domain_allowlist=outbound_domain_allowlist,
                              inbound_cidr_allowlist=inbound_cidr_allowlist,
                              include_oidc_identity_token=include_oidc_identity_token,
                              experimental_options=experimental_options))
        from .image import wire_for

        client_ = get_client()
        body["image"] = wire_for(image, client_, set())  # uploads the image's local files it refers to
        if volumes:
            from .volume import check_mounts

            for entry, vol in zip(body["volumes"], check_mounts(volumes).values(), strict=True):
                entry["volume_id"] = yield from vol._resolve()
        resp = yield ("POST", "/v1/sandboxes", body)
        return Sandbox(resp["sandbox_id"], _probe=readiness_probe)

    @staticmethod
    @rpc
    def from_id(sandbox_id: str, client: Any = None) -> Plan:
        """The sandbox with this `sb-` id (running or ended); NotFoundError if there is none."""
        if not isinstance(sandbox_id, str) or not sandbox_id.startswith("sb-"):
            raise InvalidError(f"Sandbox.from_id takes a sandbox id ('sb-...'), got {sandbox_id!r}")
        info = yield ("GET", f"/v1/sandboxes/{sandbox_id}", None)
        return Sandbox(sandbox_id, _info=info)

    @staticmethod
    @rpc
    def from_name(app_name: str, name: str, *, environment_name: str | None = None,
                  include_terminated: bool = False, client: Any = None) -> Plan:
        """The running sandbox called `name` in the deployed app `app_name` (NotFoundError if none)."""
        for value, what in ((app_name, "App"), (name, "Sandbox")):
            if problem := name_problem(value, what):
                raise InvalidError(problem)
        query = f"app_name={quote(app_name)}&name={quote(name)}"
        if include_terminated:
            query += "&include_terminated=1"
        info = yield ("GET", f"/v1/sandboxes/by-name?{query}", None)
        return Sandbox(info["sandbox_id"], _info=info)

    @staticmethod
    @rpc_iter
    def list(*, app_id: str | None = None, tags: dict[str, str] | None = None, client: Any = None
             ) -> Generator[Any, Any, None]:
        """The running sandboxes (of `app_id`, having all of `tags`), newest first."""
        query = []
        if app_id is not None:
            if not isinstance(app_id, str):
                raise InvalidError(f"`app_id` must be a str, got {app_id!r}")
            query.append(f"app_id={quote(app_id)}")
        for k, v in _check_tags(tags).items():
            query.append(f"tag={quote(f'{k}={v}', safe='')}")
        resp = yield ("GET", "/v1/sandboxes" + ("?" + "&".join(query) if query else ""), None)
        yield Emit([Sandbox(info["sandbox_id"], _info=info) for info in resp.get("sandboxes", [])
                    if info.get("state") != "terminated"])

    # -- the process -------------------------------------------------------------------------------------------
    @property
    def returncode(self) -> int | None:
        """None while running; the exit code once ended (124 after a timeout, 137 after `terminate()`)."""
        return self._returncode

    def _wait_once(self, wait: float) -> Plan:
        resp = yield ("GET", self._path(f"/wait?timeout={wait:g}"), None)
        if resp.get("returncode") is not None or resp.get("reason"):
            self._set_result(resp.get("returncode"), resp.get("reason"))

    @rpc
    def wait(self, raise_on_termination: bool = True) -> Plan:
        """Wait for the sandbox to end. Raises SandboxTimeoutError if its `timeout` / `idle_timeout` ended it and
        SandboxTerminatedError if it was terminated, unless `raise_on_termination=False`."""
        while self._returncode is None:
            yield from self._wait_once(MAX_WAIT_S)
        if raise_on_termination:
            if self._reason in ("timeout", "idle_timeout"):
                raise SandboxTimeoutError(f"{self._object_id} reached its {self._reason.replace('_', ' ')}")
            if self._reason in TERMINATED_REASONS:
                raise SandboxTerminatedError(f"{self._object_id} was terminated ({self._reason})")

    @rpc
    def poll(self) -> Plan:
        """The return code if the sandbox has ended, else None (does not wait)."""
        if self._returncode is None:
            yield from self._wait_once(0)
        return self._returncode

    @rpc
    def terminate(self, *, wait: bool = False) -> Plan:
        """End the sandbox (its processes are killed); with `wait=True`, return once it has ended (its
        return code)."""
        yield ("POST", self._path("/terminate"), {})
        if wait:
            while self._returncode is None:
                yield from self._wait_once(MAX_WAIT_S)
            return self._returncode
        return None

    def detach(self) -> None:
        """Stop using this object (the sandbox keeps running): later calls on it raise InvalidError."""
        self._detached = True

    @rpc
    def exec(self, *args: str, stdout: StreamType = StreamType.PIPE, stderr: StreamType = StreamType.PIPE,
             timeout: int | None = None, workdir: str | None = None, env: dict[str, str | None] | None = None,
             secrets: Sequence[Any] | None = None, text: bool = True, bufsize: int = -1, pty: bool = False,
             pty_info: Any = None, _pty_info: Any = None) -> Plan:
        """Run a command in the sandbox; returns its ContainerProcess at once (its output streams as written).
        `timeout` kills this command only."""
        body = exec_body(args, stdout=stdout, stderr=stderr, timeout=timeout, workdir=workdir, env=env,
                         secrets=secrets, text=text, bufsize=bufsize, pty=pty)
        resp = yield ("POST", self._path("/exec"), body)
        return ContainerProcess(resp["exec_id"], text=text, by_line=bufsize == 1, stdout=stdout, stderr=stderr)

    # -- tags -----------------------------------------------------------------------------------------------------
    @rpc
    def set_tags(self, tags: dict[str, str], *, client: Any = None) -> Plan:
        """Replace the sandbox's tags (what `Sandbox.list(tags=...)` filters on)."""
        yield ("PUT", self._path("/tags"), {"tags": _check_tags(tags)})

    @rpc
    def get_tags(self) -> Plan:
        info = yield ("GET", self._path(), None)
        return dict(info.get("tags") or {})

    # -- networking -----------------------------------------------------------------------------------------------
    @rpc
    def tunnels(self, timeout: int = 50) -> Plan:
        """{port: Tunnel} for the ports given in `encrypted_ports` / `unencrypted_ports` / `h2_ports`."""
        if self._tunnels is None:
            resp = yield ("GET", self._path(f"/tunnels?timeout={float(timeout):g}"), None)
            self._tunnels = {int(port): _tunnel(t) for port, t in (resp.get("tunnels") or {}).items()}
        return dict(self._tunnels)

    @rpc
    def wait_until_ready(self, *, timeout: int = 300) -> Plan:
        """Wait until the sandbox's `readiness_probe` passes (its TCP port accepts connections, or its command
        exits 0). TimeoutError after `timeout` seconds."""
        probe = self._probe
        if probe is None:
            raise InvalidError("wait_until_ready() needs the sandbox to be created with a `readiness_probe` "
                               "(modal.Probe.with_tcp(port) or modal.Probe.with_exec(*argv)) by this object")
        # One exec that repeats the check inside the sandbox every interval, bounded by `timeout`: no waiting
        # here between tries, the same in the blocking and the async form.
        check = list(probe.exec_argv) if probe.exec_argv else _tcp_probe_argv(probe.tcp_port or 0)
        argv = ["sh", "-c", f'until "$@" >/dev/null 2>&1; do sleep {probe.interval_ms / 1000:g}; done', "probe",
                *check]
        seconds = _check_seconds("timeout", timeout, allow_none=False)
        resp = yield ("POST", self._path("/exec"), {"argv": argv, "env": {}, "secret_names": [],
                                                    "timeout": seconds, "pty": False})
        process = ContainerProcess(resp["exec_id"])
        while process.returncode is None:
            yield from process._wait_once(MAX_WAIT_S)
        if process.returncode == 0:
            return
        yield from self._wait_once(0)
        if self._returncode is not None:
            raise SandboxTerminatedError(f"{self._object_id} ended before it was ready")
        raise TimeoutError(f"{self._object_id} was not ready after {timeout}s")

    # -- files ------------------------------------------------------------------------------------------------------
    @rpc
    def snapshot_filesystem(self, timeout: int = 55, *, ttl: int = 2592000) -> Plan:
        """An Image of the sandbox's root filesystem as it is now: new sandboxes (and functions) can start from
        it."""
        resp = yield ("POST", self._path("/snapshot"), {})
        return snapshot_image(resp["image_id"])

    def snapshot_directory(self, path: str, *, timeout: int = 55, ttl: int = 2592000) -> Any:
        raise InvalidError("Sandbox.snapshot_directory is not offered by shoal: use snapshot_filesystem()")

    def mount_image(self, path: str, image: Any) -> None:
        raise InvalidError("Sandbox.mount_image is not offered by shoal: start a sandbox from the image instead")

    def unmount_image(self, path: str) -> None:
        raise InvalidError("Sandbox.unmount_image is not offered by shoal")

    @rpc
    def reload_volumes(self, *, timeout: int = 55) -> Plan:
        """Show the volumes' latest committed state inside the sandbox (`Volume.reload()` for each)."""
        yield ("POST", self._path("/reload-volumes"), {})

    def open(self, path: str, mode: str = "r") -> FileIO:
        """A file handle on a file in the sandbox (read at open, written back at `close()`/`flush()`)."""
        return FileIO(self, check_remote_path(path, "open"), mode)


def _tcp_probe_argv(port: int) -> list[str]:
    """A command that exits 0 once something listens on `port` inside the sandbox, whatever tools its image
    has (Python, bash's /dev/tcp, or nc)."""
    script = (f"if command -v python3 >/dev/null 2>&1; then exec python3 -c 'import socket; "
              f"socket.create_connection((\"127.0.0.1\", {port}), 1)' 2>/dev/null; "
              f"elif command -v bash >/dev/null 2>&1; then exec bash -c ': </dev/tcp/127.0.0.1/{port}' "
              f"2>/dev/null; else exec nc -z 127.0.0.1 {port}; fi")
    return ["sh", "-c", script]


def snapshot_image(image_id: str) -> Any:
    """An Image that is a stored snapshot (no build steps of its own)."""
    from .image import Image

    return Image.from_id(image_id)
