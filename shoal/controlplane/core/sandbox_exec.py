"""Execs in a sandbox through an agent that lives inside it: one small process per sandbox (stdlib Python, started
at the sandbox's first exec the way `shoal container exec` enters a container: `nsenter` into its namespaces, root
and working directory, joining its cgroups, with `no_new_privs`), which forks each command with the pipes the
control plane hands it over a unix socket (SCM_RIGHTS). A command then costs one fork and exec inside the
container, not an `nsenter` and cgroup migrations (each may wait for an RCU grace period) from the host.

The agent is the sandbox's: code in the sandbox can kill it (its execs' exit codes are then lost: reason
"exec agent died") and the next exec starts another; it counts against the sandbox's limits. Where it cannot
start (no interpreter at the path the container sees), execs go through `nsenter` each time (`NsenterProcess`).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import select
import signal
import socket
import struct
import threading
import time
from typing import Any

from ...backends import local_exec

# Runs in the sandbox as `python -I -S -c AGENT_CODE <socket fd>`: requests are length-prefixed JSON, a command's
# with its stdin, stdout and stderr attached; answers say each command's pid, then its exit status.
AGENT_CODE = r"""
import json, os, selectors, signal, socket, struct, sys
sock = socket.socket(fileno=int(sys.argv[1]))
wake_r, wake_w = os.pipe()
os.set_blocking(wake_r, False)
os.set_blocking(wake_w, False)
signal.set_wakeup_fd(wake_w)
signal.signal(signal.SIGCHLD, lambda *a: None)
procs, buf, fds_in = {}, b"", []
def send(obj):
    data = json.dumps(obj).encode()
    sock.sendall(struct.pack("!I", len(data)) + data)
def reap():
    while procs:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        i = procs.pop(pid, None)
        if i is not None:
            send({"id": i, "status": os.waitstatus_to_exitcode(status)})
def start(req, fds):
    pid = os.fork()
    if pid == 0:
        try:
            signal.set_wakeup_fd(-1)
            for s in (signal.SIGCHLD, signal.SIGPIPE, signal.SIGINT, signal.SIGTERM):
                signal.signal(s, signal.SIG_DFL)
            os.setsid()
            for n, fd in enumerate(fds):
                os.dup2(fd, n)
            if req.get("tty"):
                import fcntl, termios
                fcntl.ioctl(0, termios.TIOCSCTTY, 0)
            os.closerange(3, 1 << 16)
            if req.get("cwd"):
                os.chdir(req["cwd"])
            os.execvpe(req["argv"][0], req["argv"], req["env"])
        except BaseException as e:
            try:
                os.write(2, ("shoal exec: cannot run %r: %s\n" % (req["argv"][0], e)).encode())
            except BaseException:
                pass
        os._exit(127)
    for fd in fds:
        os.close(fd)
    procs[pid] = req["id"]
    send({"id": req["id"], "pid": pid})
sel = selectors.DefaultSelector()
sel.register(sock, selectors.EVENT_READ)
sel.register(wake_r, selectors.EVENT_READ)
while True:
    for key, _ in sel.select():
        if key.fileobj is wake_r:
            try:
                os.read(wake_r, 4096)
            except BlockingIOError:
                pass
            reap()
            continue
        msg, fds, _, _ = socket.recv_fds(sock, 1 << 20, 16)
        if not msg:
            sys.exit(0)
        buf += msg
        fds_in += fds
        while len(buf) >= 4 and len(buf) >= 4 + struct.unpack("!I", buf[:4])[0]:
            n = struct.unpack("!I", buf[:4])[0]
            req, buf = json.loads(buf[4:4 + n]), buf[4 + n:]
            if "kill" in req:
                for pid, i in list(procs.items()):
                    if i == req["kill"]:
                        try:
                            os.killpg(pid, req.get("sig", 9))
                        except OSError:
                            pass
                continue
            mine, fds_in = fds_in[:3], fds_in[3:]
            start(req, mine)
        reap()
"""
def agent_python(backend: Any, image: Any) -> str:
    """The interpreter the agent runs with, as the container sees it: the image's; without an image the control
    plane's (every sandbox sees it read-only); "" for an OCI image without Python (its root is the image alone)."""
    if image is not None and image.python:
        return image.python
    if image is None or getattr(image, "layers", None) is None:
        return getattr(backend, "python", "")
    return ""


LOST = -1000  # status of a command whose agent died before saying how it ended
START_S = 30.0  # how long an agent may take to say it started a command
DRAIN_S = 2.0  # how long a terminal is still read after its command exited, while output may be on its way
MAX_REPORT = 4096  # the largest report an agent sends ({"id", "pid"} or {"id", "status"}) is far smaller


class AgentProcess:
    """A command the agent started: pipes to its stdin and from its stdout and stderr, its exit status."""

    def __init__(self, agent: Agent, cid: int, stdin: asyncio.StreamWriter, stdout: asyncio.StreamReader,
                 stderr: asyncio.StreamReader) -> None:
        self.agent, self.cid = agent, cid
        self.stdin, self.stdout, self.stderr = stdin, stdout, stderr
        self.started: asyncio.Future = asyncio.get_running_loop().create_future()
        self.ended: asyncio.Future = asyncio.get_running_loop().create_future()
        self.returncode: int | None = None
        self.tty_slave: int | None = None  # held until it exits: a master whose slaves all closed may drop output
        self.tty_done: threading.Event | None = None  # set once it exited: its terminal's reader may stop

    def exited(self, status: int) -> None:
        if self.tty_slave is not None:
            os.close(self.tty_slave)
            self.tty_slave = None
            if self.tty_done is not None:
                self.tty_done.set()
            if isinstance(self.stdin, TtyWriter):  # once its reader has read to the end
                master = self.stdin.master
                self.agent.spawn(_close_after(self.stdout, master))
        if not self.ended.done():
            self.ended.set_result(status)

    async def wait(self) -> int:
        self.returncode = await self.ended
        return self.returncode

    def kill_group(self) -> None:
        if not self.ended.done():
            self.agent.spawn(self.agent.send({"kill": self.cid, "sig": int(signal.SIGKILL)}))


async def _close_after(reader: asyncio.StreamReader, fd: int) -> None:
    while not reader.at_eof():
        await asyncio.sleep(0.05)
    os.close(fd)


class NsenterProcess:
    """The same, for a command run through `nsenter` from the host (no agent)."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.stdin, self.stdout, self.stderr = process.stdin, process.stdout, process.stderr

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    async def wait(self) -> int:
        return await self.process.wait()

    def kill_group(self) -> None:
        if self.process.returncode is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


async def _reader(loop: asyncio.AbstractEventLoop, fd: int) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", 0))
    return reader


async def _writer(loop: asyncio.AbstractEventLoop, fd: int) -> asyncio.StreamWriter:
    transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, os.fdopen(fd, "wb", 0))
    return asyncio.StreamWriter(transport, protocol, None, loop)


def _tty_reader(master: int, done: threading.Event) -> asyncio.StreamReader:
    """A terminal's output, read by a thread (the event loop's pipe transport gets EIO from a container's pty
    master at once). It ends at EIO (every slave closed, everything written read), or once `done` is set (the
    command exited and the control plane let go of the slave) and nothing more came for DRAIN_S: the kernel hands
    a slave's writes to the master asynchronously, so output written just before the exit can arrive after it (on
    a loaded machine, later than one poll), and a process left in the background may hold the slave open."""
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()

    def pump() -> None:
        poller = select.poll()  # (not select(): a control plane with many sandboxes has descriptors past 1023)
        poller.register(master, select.POLLIN)
        quiet_since: float | None = None
        try:
            while True:
                if not poller.poll(50):
                    if done.is_set():
                        quiet_since = quiet_since or time.monotonic()
                        if time.monotonic() - quiet_since >= DRAIN_S:
                            return
                    continue
                data = os.read(master, 65536)
                if not data:
                    return
                quiet_since = None
                loop.call_soon_threadsafe(reader.feed_data, data)
        except OSError:
            pass
        finally:
            loop.call_soon_threadsafe(reader.feed_eof)

    loop.run_in_executor(None, pump)
    return reader


class TtyWriter:
    """What StdinPipe uses of a StreamWriter, for a terminal's master (blocking writes in a thread); closing it
    closes the master once its reader is done too (the reader's EIO comes first)."""

    def __init__(self, master: int) -> None:
        self.master = master
        self.pending = bytearray()

    def write(self, data: bytes) -> None:
        self.pending += data

    async def drain(self) -> None:
        data, self.pending = bytes(self.pending), bytearray()
        view = memoryview(data)
        while view:
            n = await asyncio.to_thread(os.write, self.master, view)
            view = view[n:]

    def close(self) -> None:
        """The master stays open for the reader; it is closed when the process's terminal is (`closed_tty`)."""


def _ended_reader() -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    reader.feed_eof()
    return reader


class Agent:
    def __init__(self, sock: socket.socket, reader: asyncio.StreamReader, process: asyncio.subprocess.Process
                 ) -> None:
        self.sock = sock  # the control plane's end, for requests (sendmsg, with descriptors)
        self.reader = reader
        self.writer: asyncio.StreamWriter | None = None
        self.process = process
        self.ids = itertools.count(1)
        self.running: dict[int, AgentProcess] = {}
        self.alive = True
        self.served = False  # it started a command once
        self._tasks: set[asyncio.Task] = set()
        self._sending = asyncio.Lock()  # one request at a time: a frame waiting out a full buffer is not interleaved
        self.task = asyncio.get_running_loop().create_task(self._read())

    def spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @classmethod
    async def start(cls, target: local_exec.ExecTarget, python: str) -> Agent:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        argv = local_exec.command_argv(target, [python, "-I", "-S", "-c", AGENT_CODE, str(theirs.fileno())],
                                       pty=False)
        try:
            process = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL, pass_fds=(theirs.fileno(),), cwd=target.cwd or "/",
                env={"PATH": target.env.get("PATH", local_exec._SYSTEM_PATH)}, start_new_session=True,
                preexec_fn=(lambda: local_exec.prepare_process(target)) if target.sandboxed else None)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        reader, writer = await asyncio.open_unix_connection(sock=ours.dup())
        agent = cls(ours, reader, process)
        agent.writer = writer  # held: a collected writer closes the connection
        return agent

    async def send(self, obj: dict[str, Any], fds: list[int] | tuple[()] = ()) -> None:
        """One request (its descriptors go with its first bytes); the socket is non-blocking (shared with the
        reader), so a full buffer is waited out, and meanwhile no other request's bytes may go between this one's
        (the agent would read a garbled length and wait for bytes that never come: every exec hangs). A socket the
        agent closed raises OSError, and the agent counts as dead."""
        data = json.dumps(obj).encode()
        frame = struct.pack("!I", len(data)) + data
        async with self._sending:
            while frame:
                try:
                    n = socket.send_fds(self.sock, [frame], list(fds)) if fds else self.sock.send(frame)
                except BlockingIOError:
                    await asyncio.sleep(0.001)
                    continue
                except OSError as exc:
                    if isinstance(exc, ConnectionError) or self.sock.fileno() < 0:
                        self.alive = False  # (its reader says so too, once it reads the end)
                    raise
                frame, fds = frame[n:], ()

    async def run(self, argv: list[str], env: dict[str, str], cwd: str | None,
                  tty: tuple[int, int] | None = None) -> AgentProcess:
        """Start `argv` in the sandbox with pipes for its stdin, stdout and stderr; with `tty` (master and slave
        of a pseudo-terminal from the container's devpts: `local_exec.open_pty`, both taken over here), the slave
        is all three and its controlling terminal, and its output comes on stdout."""
        loop = asyncio.get_running_loop()
        theirs: list[int] = []
        try:
            if tty is None:
                in_r, in_w = os.pipe()
                out_r, out_w = os.pipe()
                err_r, err_w = os.pipe()
                theirs = [in_r, out_w, err_w]
                stdout, stderr = await _reader(loop, out_r), await _reader(loop, err_r)
                stdin = await _writer(loop, in_w)
            else:
                master, slave = tty
                theirs = [slave, slave, slave]
                done = threading.Event()
                stdout, stderr = _tty_reader(master, done), _ended_reader()
                stdin = TtyWriter(master)  # type: ignore[assignment]
            cid = next(self.ids)
            proc = AgentProcess(self, cid, stdin, stdout, stderr)
            self.running[cid] = proc
            try:
                await self.send({"id": cid, "argv": argv, "env": env, "cwd": cwd, "tty": tty is not None}, theirs)
            except BaseException:  # (the agent is gone: the caller may start another and ask again)
                self.running.pop(cid, None)
                stdin.close()
                if tty is not None:  # its reader ends at the hangup (the slave is closed below), then the master
                    done.set()
                    self.spawn(_close_after(stdout, master))
                raise
            if tty is not None:
                proc.tty_slave, proc.tty_done, theirs = tty[1], done, []
        finally:
            for fd in set(theirs):
                os.close(fd)
        try:
            await asyncio.wait_for(asyncio.shield(proc.started), START_S)
        except asyncio.TimeoutError:  # a stopped or hostile agent: never wait on it again
            self.close()
            raise OSError("the sandbox's exec agent did not answer") from None
        return proc

    async def _read(self) -> None:
        """The agent's reports. It runs on the sandbox's own interpreter, which the sandbox may have replaced:
        anything but a small, well-formed report ends it (the exec then falls back)."""
        try:
            while True:
                head = await self.reader.readexactly(4)
                size = struct.unpack("!I", head)[0]
                if size > MAX_REPORT:
                    break
                msg = json.loads(await self.reader.readexactly(size))
                proc = self.running.get(msg["id"])
                if proc is None:
                    continue
                if "pid" in msg and not proc.started.done():
                    if type(msg["pid"]) is not int:
                        break
                    self.served = True
                    proc.started.set_result(msg["pid"])
                if "status" in msg:
                    if type(msg["status"]) is not int:
                        break
                    self.running.pop(msg["id"], None)
                    proc.exited(msg["status"])
        except (asyncio.IncompleteReadError, ConnectionError, ValueError, TypeError, KeyError):
            pass
        finally:
            self.alive = False
            for proc in self.running.values():
                if not proc.started.done():
                    proc.started.set_exception(OSError("the sandbox's exec agent died"))
                proc.exited(LOST)
            self.running.clear()
            self.sock.close()

    def close(self) -> None:
        self.alive = False
        self.task.cancel()
        if self.process.returncode is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
