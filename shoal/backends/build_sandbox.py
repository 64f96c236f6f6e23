"""Image build steps that run code (`run_commands`, and uv for every package step: building a source package runs
its code) run in the same sandbox as containers, never on the host as root.

Until images have a root filesystem of their own, a build container sees what a container of the image sees
(docs/sandbox.md), with the image's own directory writable: the image's root at its path (its venv, so
`pip install` in a command lands in the image), the image's `files/<dir>` at `/<dir>` (`/root`, `/opt`, a
workdir), and the host's system directories (`/etc`, `/usr`, …) as overlays whose upper layer is the image's
`files/<dir>`: a command that writes `/etc/x` writes the image's `files/etc/x`, which the image's containers see
at `/etc/x` (image_layers). It has outbound network like a container (package archives), the directories the
installation shares with containers (SHOAL_SANDBOX_SHARE), what the builder adds for a step (uv and its cache),
and nothing else of the host.
"""

from __future__ import annotations

import asyncio
import codecs
import os
import signal
import stat
import sys
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

from . import egress
from .sandbox import (
    ID_COUNT,
    ISOLATION_ENV,
    SYSTEM_DIRS,
    Availability,
    id_base,
    interpreter_paths,
    launcher_argv,
    minimal_paths,
    newroot_dir,
    probe,
    shares_from_env,
    under,
    wanted_isolation,
)

ALWAYS_WRITABLE = ("root", "opt", "srv")  # besides what the image already has in files/ (created if missing)


class BuildSetupError(Exception):
    """A build sandbox cannot be set up as the image's files stand (the message says why)."""


class BuildSandbox:
    """Plans one sandboxed build command at a time; asks the kernel once whether sandboxes work here."""

    def __init__(self, state_dir: str) -> None:
        self.state_dir = os.path.realpath(state_dir)
        self._availability: Availability | None = None
        self._paths: dict[str, list[str]] = {}
        self.shares = shares_from_env()
        self._made: dict[str, set[str]] = {}  # image root -> mountpoints made in its files/ (removed by tidy)

    def availability(self) -> Availability:
        if self._availability is None:
            if wanted_isolation() == "process":
                self._availability = Availability("process", reason=f"{ISOLATION_ENV}=process")
            else:
                py = sys.executable
                own = [sys.prefix, sys.base_prefix, os.path.dirname(os.path.dirname(os.path.realpath(py)))]
                self._availability = probe(py, minimal_paths(own, [self.state_dir]))
        return self._availability

    def argv(self, image_root: str, base_python: str, command: list[str], cwd: str, *, rw: Sequence[str] = (),
             ro: Sequence[str] = (), network: bool = True) -> list[str]:
        """The launcher's argv that runs `command` (with the environment the launcher is given) in a build
        sandbox of the image at `image_root`, whose venv was made from the host's `base_python`; `cwd` is a path
        inside. `rw`/`ro`: more host paths it sees at their own path (the image's runtime packages, a step's tool
        and cache); `network=False`: no outbound network.

        What the image's Python needs besides its root is the base interpreter's installation and shoal's
        package, asked of that interpreter (the host's own, started on the host once per builder) rather than of
        the image's, whose .pth files the build writes."""
        avail = self.availability()
        root = os.path.realpath(image_root)
        files = os.path.join(root, "files")
        if base_python not in self._paths:
            self._paths[base_python] = interpreter_paths(base_python, [self.state_dir], [])
        ro_paths = [*(p for p in [*self._paths[base_python], *ro] if not under(p, root))]
        rw_paths = [root, *self.shares, *rw]
        for name in ALWAYS_WRITABLE:
            os.makedirs(os.path.join(files, name), exist_ok=True)
        binds: list[list] = []
        volumes: list[list] = []
        work = os.path.join(root, "build", "overlay-work")
        for name in sorted(os.listdir(files)):
            src = os.path.join(files, name)
            if os.path.islink(src) or not os.path.isdir(src) or name in ("tmp", "proc", "sys", "dev", "run"):
                continue
            if "/" + name not in SYSTEM_DIRS:
                binds.append([src, "/" + name, True])
        for d in SYSTEM_DIRS:
            if os.path.isdir(d) and not os.path.islink(d):
                upper = os.path.join(files, d.lstrip("/"))
                os.makedirs(upper, exist_ok=True)
                if avail.mode == "root":
                    # The merged directory's owner is its upper layer's: the build's root may add entries to
                    # /etc, /usr, … (what lies below stays the host's, read-only to it).
                    os.chown(upper, id_base(), id_base())
                os.makedirs(os.path.join(work, d.lstrip("/")), exist_ok=True)
                volumes.append([d, d, upper, os.path.join(work, d.lstrip("/"))])
        bound = {dst for _, dst, _ in binds}
        self._made.setdefault(root, set()).update(_mountpoints(files, bound, [*ro_paths, *rw_paths]))
        mask = sorted({self.state_dir} if any(under(self.state_dir, p) for p in [*ro_paths, *rw_paths]) else set())
        cfg: dict[str, Any] = {
            "mode": avail.mode, "uid": id_base(), "gid": id_base(), "ids": ID_COUNT, "newroot": newroot_dir(),
            "hostname": "build", "ro": ro_paths, "rw": rw_paths, "binds": binds, "mask": mask, "volumes": volumes,
            "argv": command, "cwd": cwd,
        }
        pasta = egress.find_pasta() if network and egress.wanted() else None
        if pasta:
            cfg["net"] = egress.net_config(pasta, None, egress.installation_allowed(), egress.host_addresses())
            cfg["resolv"] = egress.resolv_conf()
        return launcher_argv(sys.executable, cfg)

    def layers_cfg(self, layers: Sequence[str], upper: str, work: str, argv: list[str], *, cwd: str = "/",
                   user: str | None = None, network: bool = True, binds: Sequence[Sequence[Any]] = (),
                   record: str | None = None) -> dict[str, Any]:
        """The sandbox config of a build command on an OCI image (run_on_layers)."""
        avail = self.availability()
        if avail.isolation != "sandbox":
            raise BuildSetupError(f"build steps of an OCI image run in a sandbox, and containers cannot be sandboxed "
                                  f"here ({avail.reason}); they never run on the host")
        if not layers:
            raise BuildSetupError("an OCI image has at least one layer")
        for path in (upper, work):
            if not os.path.isdir(path) or os.path.islink(path):
                raise BuildSetupError(f"{path}: the step's upper and work directories must exist")
        cfg: dict[str, Any] = {
            "mode": avail.mode, "uid": id_base(), "gid": id_base(), "ids": ID_COUNT, "newroot": newroot_dir(),
            "hostname": "build", "rw": list(self.shares), "binds": [[str(s), str(d), bool(w)] for s, d, w in binds],
            "mask": [self.state_dir] if any(under(self.state_dir, p) for p in self.shares) else [],
            "rootfs": {"layers": [str(x) for x in layers], "upper": upper, "work": work, "record": record},
            "argv": list(argv), "cwd": cwd or "/", "user": user or None,
        }
        pasta = egress.find_pasta() if network and egress.wanted() else None
        if pasta:
            cfg["net"] = egress.net_config(pasta, None, egress.installation_allowed(), egress.host_addresses())
            cfg["resolv"] = egress.resolv_conf()
        return cfg

    async def run_on_layers(self, layers: Sequence[str], upper: str, work: str, argv: list[str], *,
                            env: dict[str, str], cwd: str = "/", user: str | None = None, network: bool = True,
                            binds: Sequence[Sequence[Any]] = (), log: Callable[[str], None] | None = None,
                            created: set[str] | None = None) -> int:
        """Runs `argv` in a build sandbox whose root is overlay(`layers` (top first), `upper`): what it changes
        stays in `upper` (host directories the caller owns; `work` is overlayfs's scratch on the same
        filesystem), which shoal/oci/upper.py then turns into the step's layer. It sees the image's files and
        nothing of the host's but `binds` ([host path, container path, writable]) and the installation's shares;
        /proc, /sys, /dev, /dev/shm, /run/shoal and the DNS file are its own. `network`: outbound network under
        the containers' egress rules. Output (stdout and stderr together) goes to `log` as it is produced;
        returns the exit status (121: the sandbox could not be set up, its reason in the output). `created`
        receives the paths the sandbox made as mountpoints in the upper (the layer's `skip`)."""
        fd, record = tempfile.mkstemp(prefix="shoal-mountpoints-")
        os.close(fd)
        try:
            cfg = await asyncio.to_thread(self.layers_cfg, layers, upper, work, argv, cwd=cwd, user=user,
                                          network=network, binds=binds, record=record)
            rc = await _stream([*launcher_argv(sys.executable, cfg)], env, log)
            if created is not None:
                with open(record) as f:
                    created.update(line.strip() for line in f if line.strip())
            return rc
        finally:
            os.unlink(record)

    def tidy(self, image_root: str) -> None:
        """After a step: the mountpoints argv made in the image's files/ go again, where the build left them empty
        (they are no part of the image)."""
        for path in sorted(self._made.pop(os.path.realpath(image_root), ()), key=len, reverse=True):
            try:
                if os.path.isdir(path) and not os.path.islink(path):
                    os.rmdir(path)
                elif os.path.isfile(path) and not os.path.islink(path) and os.path.getsize(path) == 0:
                    os.unlink(path)
            except OSError:
                pass  # the build put something there: the image's now


def _mountpoints(files: str, bound: set[str], paths: list[str]) -> list[str]:
    """Make, in the image's `files/`, the mountpoints of host `paths` the sandbox shows inside a directory it binds
    writable from there (an interpreter under /root/.pyenv, a state directory under /root, under a workdir):
    the sandbox's setup cannot create entries in such an idmapped mount, and must never meet a symlink a build
    left on the way (it would follow it on the host). Returns what it made."""
    made: list[str] = []
    for path in paths:
        parts = path.strip("/").split("/")
        if len(parts) < 2 or "/" + parts[0] not in bound:
            continue
        cur = os.path.join(files, parts[0])
        for depth, part in enumerate(parts[1:], start=2):
            cur = os.path.join(cur, part)
            last = depth == len(parts)
            try:
                st = os.lstat(cur)
            except FileNotFoundError:
                if last and not os.path.isdir(path):
                    os.close(os.open(cur, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, 0o644))
                else:
                    os.mkdir(cur, 0o755)
                made.append(cur)
                continue
            if stat.S_ISLNK(st.st_mode) or not (stat.S_ISDIR(st.st_mode) or last):
                inside = "/" + os.path.relpath(cur, files)
                raise BuildSetupError(f"the image's {inside} is a {'symlink' if stat.S_ISLNK(st.st_mode) else 'file'}"
                                      f", and the build needs {path} of the host there (its interpreter, shoal's "
                                      "own files or its state directory): leave that path alone in build steps")
    return made


async def _stream(argv: list[str], env: dict[str, str], log: Callable[[str], None] | None) -> int:
    """Runs the launcher, passing its output (stdout and stderr in order) to `log` as produced; the exit status.
    Cancelled (the build's client went away), the sandbox is killed."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env=env, cwd="/", start_new_session=True)
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    try:
        assert proc.stdout is not None
        while chunk := await proc.stdout.read(65536):
            text = decoder.decode(chunk)
            if text and log is not None:
                log(text)
        return await proc.wait()
    finally:
        if proc.returncode is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
