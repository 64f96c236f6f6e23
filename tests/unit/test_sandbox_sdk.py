"""The Sandbox SDK without a control plane: argument checks at call time (naming the parameter, as Modal's do) and
the requests its plans send (the wire contract of docs/sandboxes.md), driven with answers of the contract's
shape."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Generator
from typing import Any

import pytest

import shoal
from shoal import Probe, Sandbox, Secret, Tunnel, Volume
from shoal.container_process import ContainerProcess
from shoal.exception import (
    DeprecationError,
    InvalidError,
    NotFoundError,
    NotImplementedWarning,
    SandboxFilesystemError,
    SandboxFilesystemNotFoundError,
    SandboxFilesystemPermissionError,
    SandboxTerminatedError,
    SandboxTimeoutError,
)
from shoal.io_streams import StreamReader, StreamWriter
from shoal.sandbox import ARG_MAX_BYTES, create_body, exec_body, snapshot_image
from shoal.stream_type import StreamType


class FakeApp(shoal.App):
    """A running app as `app.run()` leaves it (an id from the control plane)."""

    def __init__(self, app_id: str = "ap-1") -> None:
        super().__init__("sb-test")
        shoal.App._instances.discard(self)  # not a definition (as `App.lookup` leaves it)
        self._app_id = app_id


def drive(plan: Generator[Any, Any, Any], answer: Callable[[str, str, Any], Any]) -> tuple[Any, list[tuple]]:
    """Run a plan, answering each request with `answer(method, path, body)` (an exception is thrown in)."""
    sent: list[tuple] = []
    try:
        request = next(plan)
        while True:
            sent.append(request)
            try:
                response = answer(*request)
            except Exception as exc:  # noqa: BLE001 - handed to the plan, as the transport does
                request = plan.throw(exc)
            else:
                request = plan.send(response)
    except StopIteration as done:
        return done.value, sent


def drive_iter(plan: Generator[Any, Any, Any], answer: Callable[[str, str, Any], Any]) -> list[Any]:
    from shoal._client.aio import Emit

    items: list[Any] = []
    request = next(plan)
    try:
        while True:
            if isinstance(request, Emit):
                items.extend(request.items)
                request = next(plan)
            else:
                request = plan.send(answer(*request))
    except StopIteration:
        return items


def plan_of(bound: Any, *args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
    """The plan behind a bound SDK method (`sb.wait` → its generator)."""
    return bound._method.__wrapped__(bound._obj, *args, **kwargs)


# -- names -----------------------------------------------------------------------------------------------------------
def test_modal_import_paths_exist() -> None:
    import shoal.container_process
    import shoal.io_streams
    import shoal.sandbox
    import shoal.stream_type

    assert shoal.Sandbox is shoal.sandbox.Sandbox
    assert shoal.Probe is shoal.sandbox.Probe and shoal.Tunnel is shoal.sandbox.Tunnel
    assert shoal.container_process.ContainerProcess is ContainerProcess
    assert {t.name for t in shoal.stream_type.StreamType} == {"PIPE", "STDOUT", "DEVNULL"}
    assert shoal.io_streams.StreamReader is StreamReader and shoal.io_streams.StreamWriter is StreamWriter
    assert "Sandbox" in shoal.__all__ and "Probe" in shoal.__all__
    assert callable(Sandbox.create.aio) and callable(Sandbox.from_id.aio) and callable(Sandbox.list.aio)


# -- Sandbox.create validation ------------------------------------------------------------------------------------
def test_create_body_has_the_contract_fields() -> None:
    body = create_body(
        ["python", "-c", "print(1)"], app=FakeApp(), name="runner-1", tags={"user": "u1"},
        env={"A": "1"}, secrets=[Secret.from_dict({"B": "2", "A": "0"}), Secret.from_name("api-key")],
        timeout=600, idle_timeout=30, workdir="/work", cpu=0.5, memory=(128, 256), gpu="t4",
        outbound_cidr_allowlist=["10.0.0.0/8", "192.168.1.1"], encrypted_ports=[8888], unencrypted_ports=[22],
        pty=False, readiness_probe=Probe.with_tcp(8888, interval_ms=50),
        volumes={"/data": Volume.from_name("vol-a"), "/ro": Volume.from_name("vol-b").read_only()})
    assert body["app_id"] == "ap-1" and body["name"] == "runner-1" and body["tags"] == {"user": "u1"}
    assert body["command"] == ["python", "-c", "print(1)"]
    assert body["env"] == {"B": "2", "A": "1"}  # env= wins over an unnamed secret's value
    assert body["secret_names"] == ["api-key"]
    assert (body["timeout"], body["idle_timeout"], body["workdir"]) == (600, 30, "/work")
    assert (body["cpu"], body["memory"], body["gpu"]) == (0.5, [128, 256], "T4")
    assert body["outbound_cidr_allowlist"] == ["10.0.0.0/8", "192.168.1.1/32"]
    assert (body["encrypted_ports"], body["unencrypted_ports"], body["h2_ports"]) == ([8888], [22], [])
    assert body["readiness_probe"] == {"tcp_port": 8888, "interval_ms": 50}
    assert body["volumes"] == [{"path": "/data", "volume_name": "vol-a", "read_only": False},
                               {"path": "/ro", "volume_name": "vol-b", "read_only": True}]
    assert body["block_network"] is False and body["pty"] is False


def test_create_defaults() -> None:
    body = create_body([], app=FakeApp())
    assert body["command"] == [] and body["timeout"] == 300 and body["idle_timeout"] is None
    assert body["env"] == {} and body["secret_names"] == [] and body["volumes"] == []
    assert create_body([], app=FakeApp(), timeout=None)["timeout"] == 300


def test_app_is_required_outside_a_container(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SHOAL_CONTAINER_ID", raising=False)
    with pytest.raises(InvalidError, match="require an App"):
        create_body(["true"])
    with pytest.raises(InvalidError, match="not been initialized"):
        create_body(["true"], app=shoal.App("never-run"))
    with pytest.raises(InvalidError, match="`app` must be a modal.App"):
        create_body(["true"], app="my-app")


def test_inside_a_container_the_app_may_be_left_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOAL_CONTAINER_ID", "ta-x")
    monkeypatch.setenv("SHOAL_APP_ID", "ap-own")  # set by the container's runtime
    assert create_body(["true"])["app_id"] == "ap-own"
    assert create_body(["true"], app=shoal.App("hydrated"))["app_id"] == "ap-own"
    assert create_body(["true"], app=FakeApp("ap-other"))["app_id"] == "ap-other"


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"timeout": 0}, "`timeout` must be between 1 and 86400"),
    ({"timeout": 86401}, "`timeout` must be between"),
    ({"timeout": "5"}, "`timeout` must be a number"),
    ({"idle_timeout": -1}, "`idle_timeout` must be between"),
    ({"workdir": "relative/dir"}, "`workdir` must be an absolute path"),
    ({"name": "bad name!"}, "Invalid Sandbox name"),
    ({"tags": {"a": 1}}, "`tags` must be a dict of str to str"),
    ({"env": ["A=1"]}, "`env` must be a dict"),
    ({"env": {"1BAD": "x"}}, "invalid secret key"),
    ({"secrets": ["api-key"]}, "`secrets` must contain modal.Secret"),
    ({"image": "python:3.12"}, "`image` must be a shoal.Image"),
    ({"cpu": -1}, "`cpu` must be positive"),
    ({"memory": 1.5}, "`memory` is in MiB"),
    ({"gpu": "TPU"}, "unknown GPU type"),
    ({"encrypted_ports": [0]}, "`encrypted_ports` must be a port number"),
    ({"unencrypted_ports": 8080}, "`unencrypted_ports` must be a list"),
    ({"h2_ports": [70000]}, "`h2_ports` must be a port number"),
    ({"encrypted_ports": [80], "unencrypted_ports": [80]}, "both encrypted and unencrypted"),
    ({"outbound_cidr_allowlist": ["not-a-cidr"]}, "`outbound_cidr_allowlist`: 'not-a-cidr' is not a CIDR"),
    ({"outbound_cidr_allowlist": "10.0.0.0/8"}, "must be a list of CIDR strings"),
    ({"block_network": True, "outbound_cidr_allowlist": ["10.0.0.0/8"]}, "cannot be used when `block_network`"),
    ({"block_network": "yes"}, "`block_network` must be a bool"),
    ({"pty": 1}, "`pty` must be a bool"),
    ({"readiness_probe": 8080}, "`readiness_probe` must be a modal.Probe"),
    ({"volumes": {"data": Volume.from_name("v")}}, "must be an absolute path"),
    ({"network_file_systems": {"/n": object()}}, "`network_file_systems` is not offered"),
    ({"volumes": {"/v": Volume(object_id="vo-1")}}, "a sandbox mounts named volumes"),
])
def test_create_rejects_bad_arguments_naming_them(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidError, match=message.replace("(", r"\(").replace(")", r"\)")):
        create_body(["true"], app=FakeApp(), **kwargs)


def test_command_arguments_are_strings_within_arg_max() -> None:
    with pytest.raises(InvalidError, match="every argument must be a str, got int"):
        create_body(["sleep", 10], app=FakeApp())
    with pytest.raises(InvalidError, match="at most 65536 bytes"):
        create_body(["echo", "x" * (ARG_MAX_BYTES + 1)], app=FakeApp())
    with pytest.raises(InvalidError, match="NUL"):
        create_body(["echo", "a\x00b"], app=FakeApp())


def test_create_validates_before_any_request(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bad arguments fail at the call, before a control plane is looked for."""
    monkeypatch.delenv("SHOAL_CONTAINER_ID", raising=False)
    with pytest.raises(InvalidError, match="`timeout` must be between"):
        Sandbox.create("true", app=FakeApp(), timeout=-5)
    with pytest.raises(DeprecationError, match="pty_info"):
        Sandbox.create("true", app=FakeApp(), pty_info=object())
    with pytest.raises(InvalidError, match="outbound_cidr_allowlist` only"):
        Sandbox.create("true", app=FakeApp(), cidr_allowlist=["10.0.0.0/8"], outbound_cidr_allowlist=["1.1.1.1"])


def test_options_shoal_does_not_enforce_warn_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from shoal import sandbox

    monkeypatch.delenv("SHOAL_CONTAINER_ID", raising=False)
    monkeypatch.setattr(sandbox, "_warned", set())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        create_body(["true"], app=FakeApp(), not_enforced={"region": "us-east", "cloud": None})
        create_body(["true"], app=FakeApp(), not_enforced={"region": "eu-west"})
    messages = [str(w.message) for w in caught if issubclass(w.category, NotImplementedWarning)]
    assert messages == ["shoal records `region=` of Sandbox.create but does not enforce it"]


def test_probe_constructors() -> None:
    assert Probe.with_exec("curl", "-f", "localhost", interval_ms=20).to_wire() == {
        "exec_argv": ["curl", "-f", "localhost"], "interval_ms": 20}
    with pytest.raises(InvalidError, match="port number"):
        Probe.with_tcp(0)
    with pytest.raises(InvalidError, match="needs a command"):
        Probe.with_exec()
    with pytest.raises(InvalidError, match="`interval_ms` must be a positive integer"):
        Probe.with_tcp(80, interval_ms=0)


# -- exec validation --------------------------------------------------------------------------------------------
def _exec(*args: Any, **kwargs: Any) -> dict[str, Any]:
    defaults = dict(stdout=StreamType.PIPE, stderr=StreamType.PIPE, timeout=None, workdir=None, env=None,
                    secrets=None, text=True, bufsize=-1, pty=False)
    return exec_body(args, **{**defaults, **kwargs})


def test_exec_body() -> None:
    body = _exec("bash", "-c", "echo $X", env={"X": "1"}, timeout=5, workdir="/tmp",
                 secrets=[Secret.from_name("s1")])
    assert body == {"argv": ["bash", "-c", "echo $X"], "workdir": "/tmp", "env": {"X": "1"},
                    "secret_names": ["s1"], "timeout": 5, "pty": False}


@pytest.mark.parametrize(("args", "kwargs", "message"), [
    ((), {}, "needs a command"),
    (("ls", 1), {}, "every argument must be a str"),
    (("ls",), {"stdout": "pipe"}, "`stdout` must be a modal.stream_type.StreamType"),
    (("ls",), {"stderr": None}, "`stderr` must be"),
    (("ls",), {"bufsize": 0}, "`bufsize` must be -1"),
    (("ls",), {"bufsize": 1, "text": False}, "only allowed with `text=True`"),
    (("ls",), {"timeout": 0}, "`timeout` must be between"),
    (("ls",), {"workdir": "tmp"}, "`workdir` must be an absolute path"),
    (("ls",), {"text": "yes"}, "`text` must be a bool"),
])
def test_exec_rejects_bad_arguments(args: tuple, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidError, match=message):
        _exec(*args, **kwargs)


# -- the process: wait, poll, returncode, terminate -------------------------------------------------------------
@pytest.mark.parametrize(("reason", "code", "returncode", "error"), [
    ("exited", 3, 3, None),
    ("timeout", None, 124, SandboxTimeoutError),
    ("idle_timeout", None, 124, SandboxTimeoutError),
    ("terminated", None, 137, SandboxTerminatedError),
    ("control plane restarted", None, 137, SandboxTerminatedError),
    ("oom", -9, 137, None),
    ("exited", -15, 143, None),
])
def test_wait_follows_modals_termination_semantics(reason: str, code: int | None, returncode: int,
                                                   error: type | None) -> None:
    answers = iter([{"returncode": None, "reason": None}, {"returncode": code, "reason": reason}])
    sb = Sandbox("sb-1")
    if error is None:
        drive(plan_of(sb.wait), lambda *_: next(answers))
    else:
        with pytest.raises(error):
            drive(plan_of(sb.wait), lambda *_: next(answers))
    assert sb.returncode == returncode
    # already ended: no request, and raise_on_termination=False never raises
    assert drive(plan_of(sb.wait, raise_on_termination=False), lambda *_: pytest.fail("no request"))[1] == []


def test_wait_long_polls_and_poll_does_not_wait() -> None:
    sb = Sandbox("sb-2")
    result, sent = drive(plan_of(sb.poll), lambda *_: {"returncode": None})
    assert result is None and sent == [("GET", "/v1/sandboxes/sb-2/wait?timeout=0", None)]
    answers = iter([{"returncode": None}, {"returncode": 0, "reason": "exited"}])
    _, sent = drive(plan_of(sb.wait), lambda *_: next(answers))
    assert [s[1] for s in sent] == ["/v1/sandboxes/sb-2/wait?timeout=50"] * 2
    assert sb.returncode == 0 and drive(plan_of(sb.poll), lambda *_: pytest.fail("no request"))[0] == 0


def test_terminate_with_and_without_wait() -> None:
    sb = Sandbox("sb-3")
    result, sent = drive(plan_of(sb.terminate), lambda *_: {})
    assert result is None and sent == [("POST", "/v1/sandboxes/sb-3/terminate", {})]
    answers = iter([{}, {"returncode": None, "reason": "terminated"}])
    result, sent = drive(plan_of(sb.terminate, wait=True), lambda *_: next(answers))
    assert result == 137 and sb.returncode == 137


def test_detached_sandbox_refuses_further_use() -> None:
    sb = Sandbox("sb-4")
    sb.detach()
    with pytest.raises(InvalidError, match="detached"):
        drive(plan_of(sb.poll), lambda *_: {})


def test_from_id_and_info_of_an_ended_sandbox() -> None:
    plan = Sandbox.from_id.__wrapped__("sb-9")
    sb, sent = drive(plan, lambda *_: {"sandbox_id": "sb-9", "state": "terminated", "returncode": 0,
                                       "reason": "exited", "tags": {}})
    assert sent == [("GET", "/v1/sandboxes/sb-9", None)] and sb.returncode == 0 and sb.object_id == "sb-9"
    with pytest.raises(InvalidError, match="sandbox id"):
        Sandbox.from_id("ta-123")


def test_from_name_and_list_queries() -> None:
    sb, sent = drive(Sandbox.from_name.__wrapped__("my-app", "runner"),
                     lambda *_: {"sandbox_id": "sb-7", "state": "running"})
    assert sent[0][1] == "/v1/sandboxes/by-name?app_name=my-app&name=runner" and sb.returncode is None
    with pytest.raises(InvalidError, match="Invalid Sandbox name"):
        Sandbox.from_name("my-app", "a b")
    seen = []
    listing = {"sandboxes": [{"sandbox_id": "sb-1", "state": "running"}, {"sandbox_id": "sb-2", "state": "pending"},
                             {"sandbox_id": "sb-3", "state": "terminated"}]}
    items = drive_iter(Sandbox.list.__wrapped__(app_id="ap-1", tags={"user": "a b", "k": "v"}),
                       lambda m, p, b: seen.append(p) or listing)
    assert seen == ["/v1/sandboxes?app_id=ap-1&tag=user%3Da%20b&tag=k%3Dv"]
    assert [s.object_id for s in items] == ["sb-1", "sb-2"]


def test_tags() -> None:
    sb = Sandbox("sb-5")
    _, sent = drive(plan_of(sb.set_tags, {"a": "1"}), lambda *_: {})
    assert sent == [("PUT", "/v1/sandboxes/sb-5/tags", {"tags": {"a": "1"}})]
    assert drive(plan_of(sb.get_tags), lambda *_: {"tags": {"a": "1"}})[0] == {"a": "1"}
    with pytest.raises(InvalidError, match="`tags`"):
        drive(plan_of(sb.set_tags, {"a": 1}), lambda *_: {})


def test_exec_returns_a_container_process() -> None:
    sb = Sandbox("sb-6")
    proc, sent = drive(plan_of(sb.exec, "echo", "hi"), lambda *_: {"exec_id": "ex-1"})
    assert sent[0][:2] == ("POST", "/v1/sandboxes/sb-6/exec") and sent[0][2]["argv"] == ["echo", "hi"]
    assert isinstance(proc, ContainerProcess) and proc.returncode is None
    answers = iter([{"returncode": None}, {"returncode": 2}])
    code, sent = drive(plan_of(proc.wait), lambda *_: next(answers))
    assert code == 2 == proc.returncode and sent[0][1] == "/v1/execs/ex-1/wait?timeout=50"
    killed = ContainerProcess("ex-2")
    assert drive(plan_of(killed.wait), lambda *_: {"returncode": -9})[0] == 137  # SIGKILL, as a shell says


# -- streams ----------------------------------------------------------------------------------------------------
class Output:
    """Answers output long-polls from a list of chunks; the last one carries eof."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self.offsets: list[int] = []

    def __call__(self, method: str, path: str, body: Any) -> dict[str, Any]:
        offset = int(path.split("offset=")[1].split("&")[0])
        self.offsets.append(offset)
        done = sum(len(c) for c in self.chunks[:len(self.offsets) - 1])
        assert offset == done, "each poll asks from where the last answer ended"
        chunk = self.chunks[len(self.offsets) - 1]
        return {"data": chunk, "offset": offset + len(chunk), "eof": len(self.offsets) == len(self.chunks)}


def test_reader_iterates_lines_as_they_arrive_and_read_returns_the_rest() -> None:
    reader = StreamReader("/v1/sandboxes/sb-1", "stdout")
    out = Output([b"he", b"llo\nwor", b"ld\nlast", b""])
    items = drive_iter(reader._items(), out)
    assert items == ["hello\n", "world\n", "last"] and out.offsets == [0, 2, 9, 16]
    reader2 = StreamReader("/v1/execs/ex-1", "stderr")
    text, sent = drive(plan_of(reader2.read), Output([b"a\n", "é".encode()[:1], "é".encode()[1:] + b"\n"]))
    assert text == "a\né\n" and sent[0][1] == "/v1/execs/ex-1/output?fd=stderr&offset=0&timeout=50"
    assert reader2.file_descriptor == 2


def test_binary_reader_yields_chunks() -> None:
    reader = StreamReader("/v1/execs/ex-1", "stdout", text=False)
    assert drive_iter(reader._items(), Output([b"\x00\x01", b"\xff\n", b""])) == [b"\x00\x01", b"\xff\n"]
    line_reader = StreamReader("/v1/execs/ex-1", "stdout", text=False, by_line=True)
    assert drive_iter(line_reader._items(), Output([b"a\nb", b"c\n", b""])) == [b"a\n", b"bc\n"]


def test_devnull_reader_reads_nothing() -> None:
    reader = StreamReader("/v1/execs/ex-1", "stdout", stream_type=StreamType.DEVNULL)
    assert drive(plan_of(reader.read), lambda *_: pytest.fail("no request"))[0] == ""


def test_writer_sends_buffered_data_with_offsets_on_drain() -> None:
    writer = StreamWriter("/v1/sandboxes/sb-1")
    writer.write("print(1)\n")
    writer.write(b"x")
    assert drive(plan_of(writer.drain), lambda m, p, b: {"offset": b["offset"] + len(b["data"])})[1] == [
        ("POST", "/v1/sandboxes/sb-1/stdin", {"offset": 0, "data": b"print(1)\nx", "eof": False})]
    writer.write(b"more")
    writer.write_eof()
    with pytest.raises(ValueError, match="Stdin is closed"):
        writer.write("late")
    _, sent = drive(plan_of(writer.drain), lambda m, p, b: {"offset": b["offset"] + len(b["data"])})
    assert sent == [("POST", "/v1/sandboxes/sb-1/stdin", {"offset": 10, "data": b"more", "eof": True})]
    assert drive(plan_of(writer.drain), lambda *_: pytest.fail("nothing left to send"))[1] == []
    with pytest.raises(TypeError):
        StreamWriter("/x").write(123)  # type: ignore[arg-type]


def test_writer_takes_what_the_control_plane_acknowledged() -> None:
    """A chunk the control plane took in part (or already had) is resent from where it stopped."""
    writer = StreamWriter("/v1/execs/ex-1")
    writer.write(b"abcdef")
    answers = iter([{"offset": 4}, {"offset": 6}])
    _, sent = drive(plan_of(writer.drain), lambda *_: next(answers))
    assert [(b["offset"], b["data"]) for _, _, b in sent] == [(0, b"abcdef"), (4, b"ef")]


# -- tunnels, filesystem, snapshots --------------------------------------------------------------------------------
def test_tunnels() -> None:
    sb = Sandbox("sb-8")
    wire = {"tunnels": {"8888": {"url": "http://sb-8-8888.localhost:8080", "host": "sb-8-8888.localhost",
                                 "port": 8080, "unencrypted_host": "127.0.0.1", "unencrypted_port": 40001}}}
    tunnels, sent = drive(plan_of(sb.tunnels), lambda *_: wire)
    assert sent[0][1] == "/v1/sandboxes/sb-8/tunnels?timeout=50"
    t = tunnels[8888]
    assert t.url == "http://sb-8-8888.localhost:8080" and t.tls_socket == ("sb-8-8888.localhost", 8080)
    assert t.tcp_socket == ("127.0.0.1", 40001)
    with pytest.raises(InvalidError, match="no unencrypted socket"):
        _ = Tunnel("h", 443).tcp_socket
    assert Tunnel("h.example", 443).url == "https://h.example"


def test_filesystem_requests_and_errors(tmp_path) -> None:
    sb = Sandbox("sb-10")
    fs = sb.filesystem
    _, sent = drive(plan_of(fs.write_text, "hi", "/tmp/a.txt"), lambda *_: {})
    assert sent == [("POST", "/v1/sandboxes/sb-10/fs/write", {"path": "/tmp/a.txt", "data": b"hi", "parents": True})]
    assert drive(plan_of(fs.read_text, "/tmp/a.txt"), lambda *_: {"data": b"hi"})[0] == "hi"
    entries, _ = drive(plan_of(fs.list_files, "/tmp"), lambda *_: {"entries": [
        {"name": "a.txt", "type": "file", "size": 2}, {"name": "d", "type": "directory"}]})
    assert [(e.path, e.is_dir, e.size) for e in entries] == [("a.txt", False, 2), ("d", True, 0)]

    def missing(*_: Any) -> Any:
        raise NotFoundError("no such file: /nope")

    with pytest.raises(FileNotFoundError):
        drive(plan_of(fs.read_bytes, "/nope"), missing)
    with pytest.raises(SandboxFilesystemNotFoundError):
        drive(plan_of(fs.stat, "/nope"), missing)

    def denied(*_: Any) -> Any:
        raise shoal.exception.PermissionDeniedError("`path`: Permission denied: /root/x")

    def not_empty(*_: Any) -> Any:
        raise InvalidError("`path`: Directory not empty: /d")

    with pytest.raises(PermissionError):
        drive(plan_of(fs.write_text, "x", "/root/x"), denied)
    with pytest.raises(SandboxFilesystemPermissionError):
        drive(plan_of(fs.read_text, "/root/x"), denied)
    with pytest.raises(SandboxFilesystemError, match="not empty"):
        drive(plan_of(fs.remove, "/d"), not_empty)
    with pytest.raises(InvalidError, match="absolute path"):
        drive(plan_of(fs.read_bytes, "relative"), missing)
    with pytest.raises(TypeError):
        drive(plan_of(fs.write_bytes, "text", "/x"), missing)
    target = tmp_path / "sub" / "out.bin"
    drive(plan_of(fs.copy_to_local, "/x", target), lambda *_: {"data": b"\x00\x01"})
    assert target.read_bytes() == b"\x00\x01"
    _, sent = drive(plan_of(fs.copy_from_local, target, "/y"), lambda *_: {})
    assert sent[0][2]["data"] == b"\x00\x01"
    _, sent = drive(plan_of(fs.remove, "/d", recursive=True), lambda *_: {})
    assert sent[0][1:] == ("/v1/sandboxes/sb-10/fs/remove", {"path": "/d", "recursive": True})


def test_snapshot_is_an_image_by_id() -> None:
    sb = Sandbox("sb-11")
    snap = "im-" + "5" * 64
    image, sent = drive(plan_of(sb.snapshot_filesystem), lambda *_: {"image_id": snap})
    assert sent == [("POST", "/v1/sandboxes/sb-11/snapshot", {})]
    assert isinstance(image, shoal.Image) and image.object_id == snap
    assert repr(image) == f"Image.from_id({snap!r})"
    extended = snapshot_image(snap).pip_install("requests")  # built on the snapshot
    assert extended.object_id != snap and extended.to_wire().steps[0]["image_id"] == snap
    with pytest.raises(InvalidError, match="image_id"):
        shoal.Image.from_id("im-x")


def test_wait_until_ready_needs_a_probe() -> None:
    with pytest.raises(InvalidError, match="readiness_probe"):
        drive(plan_of(Sandbox("sb-12").wait_until_ready), lambda *_: {})


def test_wait_until_ready_repeats_the_check_in_the_sandbox_within_one_exec() -> None:
    sb = Sandbox("sb-13", _probe=Probe.with_exec("test", "-f", "/ready", interval_ms=250))
    answers = iter([{"exec_id": "ex-9"}, {"returncode": None}, {"returncode": 0}])
    _, sent = drive(plan_of(sb.wait_until_ready, timeout=30), lambda *_: next(answers))
    body = sent[0][2]
    assert sent[0][1] == "/v1/sandboxes/sb-13/exec" and body["timeout"] == 30
    assert body["argv"][:2] == ["sh", "-c"] and "sleep 0.25" in body["argv"][2]
    assert body["argv"][3:] == ["probe", "test", "-f", "/ready"]
    late = Sandbox("sb-14", _probe=Probe.with_tcp(80))
    answers = iter([{"exec_id": "ex-10"}, {"returncode": -9}, {"returncode": None}])
    with pytest.raises(shoal.exception.TimeoutError, match="not ready after 2s"):
        drive(plan_of(late.wait_until_ready, timeout=2), lambda *_: next(answers))


def test_not_a_sandbox_id() -> None:
    with pytest.raises(InvalidError, match="sb-"):
        Sandbox("ex-1")


def test_sandboxes_pickle_by_id() -> None:
    import pickle

    sb = Sandbox("sb-15", _probe=Probe.with_tcp(8080))
    copy = pickle.loads(pickle.dumps(sb))
    assert copy.object_id == "sb-15" and copy._probe == Probe.with_tcp(8080) and copy.stdout._offset == 0
    assert pickle.loads(pickle.dumps(ContainerProcess("ex-3"))).object_id == "ex-3"
    t = Tunnel("h", 80, _url="http://h:80")
    assert pickle.loads(pickle.dumps(t)).url == "http://h:80"
