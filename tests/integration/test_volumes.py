"""Volumes against a real control plane: the committed-state API from the client, and mounts in real
(sandboxed) containers with Modal's commit/reload semantics."""

from __future__ import annotations

import asyncio
import io
import json
import os
import time
import uuid
from pathlib import Path

import pytest

import shoal
from shoal.exception import AlreadyExistsError, InvalidError, NotFoundError
from shoal.types import FileEntryType

from ..conftest import ControlPlane, _use_home, run_cli


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def sandboxed(home: Path) -> bool:
    log = (home / "server.log").read_text() if (home / "server.log").exists() else ""
    return "isolation=process" not in log


@pytest.fixture
def vol(control_plane) -> shoal.Volume:
    with shoal.Volume.ephemeral() as v:
        yield v


@pytest.fixture(scope="module")
def volumes(control_plane):
    if not sandboxed(control_plane.home):
        pytest.skip("volumes are mounted only in sandboxed containers (this control plane: isolation=process)")
    import volume_app

    with volume_app.app.run(quiet=True):
        yield volume_app


def wait_for(fn, timeout: float = 20.0, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = fn()
        except NotFoundError:
            value = None
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


# -- the committed state, from the client ----------------------------------------------------------------------
def test_batch_upload_listdir_read_file(vol: shoal.Volume, tmp_path: Path) -> None:
    local = tmp_path / "tree"
    (local / "sub").mkdir(parents=True)
    (local / "a.txt").write_text("alpha")
    (local / "sub" / "b.bin").write_bytes(bytes(range(256)) * 10)
    big = tmp_path / "big.bin"
    big.write_bytes(b"x" * (3 * 1024 * 1024 + 17))  # several chunks
    with vol.batch_upload() as batch:
        batch.put_directory(local, "/dir")
        batch.put_file(big, "/big.bin")
        batch.put_file(io.BytesIO(b"from a file object"), "nested/deep/obj.txt", mode=0o600)
    top = {e.path: e for e in vol.listdir("/")}
    assert set(top) == {"dir", "big.bin", "nested"}
    assert top["dir"].type == FileEntryType.DIRECTORY and top["big.bin"].type == FileEntryType.FILE
    assert top["big.bin"].size == 3 * 1024 * 1024 + 17 and top["big.bin"].mtime > 0
    assert sorted(e.path for e in vol.listdir("/dir", recursive=True)) == ["dir/a.txt", "dir/sub", "dir/sub/b.bin"]
    assert [e.path for e in vol.iterdir("nested")] == ["nested/deep", "nested/deep/obj.txt"]
    assert b"".join(vol.read_file("dir/a.txt")) == b"alpha"
    assert b"".join(vol.read_file("/dir/sub/b.bin")) == bytes(range(256)) * 10
    chunks = list(vol.read_file("big.bin"))
    assert len(chunks) > 1 and b"".join(chunks) == big.read_bytes()
    out = io.BytesIO()
    assert vol.read_file_into_fileobj("nested/deep/obj.txt", out) == len(b"from a file object")
    assert out.getvalue() == b"from a file object"
    with pytest.raises(FileNotFoundError):
        b"".join(vol.read_file("missing.txt"))
    with pytest.raises(NotFoundError):
        vol.listdir("/missing")


def test_batch_upload_refuses_to_overwrite_unless_forced(vol: shoal.Volume) -> None:
    with vol.batch_upload() as batch:
        batch.put_file(io.BytesIO(b"one"), "f.txt")
    with pytest.raises(FileExistsError), vol.batch_upload() as batch:
        batch.put_file(io.BytesIO(b"two"), "f.txt")
        batch.put_file(io.BytesIO(b"other"), "g.txt")
    assert b"".join(vol.read_file("f.txt")) == b"one"
    assert [e.path for e in vol.listdir("/")] == ["f.txt"]  # all or nothing
    with vol.batch_upload(force=True) as batch:
        batch.put_file(io.BytesIO(b"two"), "f.txt")
    assert b"".join(vol.read_file("f.txt")) == b"two"
    with pytest.raises(RuntimeError), vol.batch_upload() as batch:  # an error in the block uploads nothing
        batch.put_file(io.BytesIO(b"three"), "h.txt")
        raise RuntimeError("abandon")
    assert [e.path for e in vol.listdir("/")] == ["f.txt"]


def test_remove_file(vol: shoal.Volume) -> None:
    with vol.batch_upload() as batch:
        for name in ("a.txt", "d/b.txt", "d/e/c.txt"):
            batch.put_file(io.BytesIO(name.encode()), name)
    vol.remove_file("a.txt")
    with pytest.raises(InvalidError):
        vol.remove_file("d")  # a non-empty directory needs recursive=True
    vol.remove_file("/d/", recursive=True)
    assert vol.listdir("/") == []
    with pytest.raises(FileNotFoundError):
        vol.remove_file("a.txt")


def test_copy_files(vol: shoal.Volume) -> None:
    with vol.batch_upload() as batch:
        batch.put_file(io.BytesIO(b"1"), "one.txt")
        batch.put_file(io.BytesIO(b"2"), "two.txt")
        batch.put_file(io.BytesIO(b"3"), "tree/three.txt")
    vol.copy_files(["one.txt"], "uno.txt")
    vol.copy_files(["one.txt", "two.txt"], "both")
    with pytest.raises(InvalidError):
        vol.copy_files(["tree"], "tree2")
    vol.copy_files(["tree"], "tree2", recursive=True)
    listing = sorted(e.path for e in vol.listdir("/", recursive=True))
    assert listing == ["both", "both/one.txt", "both/two.txt", "one.txt", "tree", "tree/three.txt", "tree2",
                       "tree2/three.txt", "two.txt", "uno.txt"]
    assert b"".join(vol.read_file("both/two.txt")) == b"2"
    with vol.batch_upload(force=True) as batch:  # the copies are independent of the original from now on
        batch.put_file(io.BytesIO(b"changed"), "one.txt")
    assert b"".join(vol.read_file("uno.txt")) == b"1"
    with pytest.raises(FileNotFoundError):
        vol.copy_files(["nope.txt"], "x.txt")


def test_named_volumes_objects_and_rename(control_plane) -> None:
    name = unique("v")
    shoal.Volume.objects.create(name)
    with pytest.raises(AlreadyExistsError):
        shoal.Volume.objects.create(name)
    shoal.Volume.objects.create(name, allow_existing=True)
    assert name in [v.name for v in shoal.Volume.objects.list()]
    with shoal.Volume.from_name(name).batch_upload() as batch:
        batch.put_file(io.BytesIO(b"kept"), "k.txt")
    new = unique("renamed")
    shoal.Volume.rename(name, new)
    assert b"".join(shoal.Volume.from_name(new).read_file("k.txt")) == b"kept"
    with pytest.raises(NotFoundError):
        shoal.Volume.from_name(name).listdir("/")
    shoal.Volume.objects.delete(new)
    with pytest.raises(NotFoundError):
        shoal.Volume.from_name(new).listdir("/")
    with pytest.raises(InvalidError):
        shoal.Volume.from_name(name, version=3)


def test_aio_forms(vol: shoal.Volume) -> None:
    async def main() -> tuple:
        async with vol.batch_upload() as batch:
            batch.put_file(io.BytesIO(b"async"), "a/x.txt")
        names = [e.path for e in await vol.listdir.aio("/", recursive=True)]
        walked = [e.path async for e in vol.iterdir.aio("a")]
        data = b"".join([chunk async for chunk in vol.read_file.aio("a/x.txt")])
        await vol.copy_files.aio(["a/x.txt"], "y.txt")
        await vol.remove_file.aio("a", recursive=True)
        return names, walked, data, [e.path for e in await vol.listdir.aio("/")]

    assert asyncio.run(main()) == (["a", "a/x.txt"], ["a/x.txt"], b"async", ["y.txt"])


def test_process_isolation_refuses_mounts_but_serves_the_api(tmp_path: Path) -> None:
    previous = os.environ.get("SHOAL_HOME")
    cp = ControlPlane(tmp_path / "home", env={"SHOAL_ISOLATION": "process"}).start()
    _use_home(cp.home)
    try:
        app = shoal.App("process-volumes")
        v = shoal.Volume.from_name("pv", create_if_missing=True)

        @app.function(volumes={"/data": v}, serialized=True)
        def uses_volume() -> int:
            return 1

        with pytest.raises(InvalidError, match="'pv'.*sandbox"), app.run(quiet=True):
            pass
        with v.batch_upload() as batch:
            batch.put_file(io.BytesIO(b"x"), "x.txt")
        assert b"".join(v.read_file("x.txt")) == b"x"
    finally:
        cp.stop()
        if previous:
            _use_home(Path(previous))


def test_commit_outside_a_container_is_refused(vol: shoal.Volume) -> None:
    with pytest.raises(InvalidError, match="inside a container"):
        vol.commit()


def test_mount_options_are_validated(control_plane) -> None:
    app = shoal.App("bad-volumes")
    v = shoal.Volume.from_name("whatever")
    with pytest.raises(InvalidError):
        app.function(volumes={"relative": v})(lambda: None)
    with pytest.raises(InvalidError):
        app.function(volumes={"/data": "not a volume"})(lambda: None)
    with pytest.raises(InvalidError):
        app.function(volumes={"/data": v, "/data/sub": v})(lambda: None)

    def f() -> None:
        pass

    with_app_volumes = shoal.App("app-volumes", volumes={"/data/": v})
    fn = with_app_volumes.function(serialized=True, volumes={"/ro": v.read_only()})(f)
    mounts = fn._options.extra["volumes"]
    assert list(mounts) == ["/data", "/ro"] and mounts["/ro"]._read_only and not mounts["/data"]._read_only


# -- mounted in containers --------------------------------------------------------------------------------------
def test_commit_and_reload_across_two_containers(volumes) -> None:
    name = unique("shared") + ".txt"
    to_a, from_a = shoal.Queue.from_name(unique("qa"), create_if_missing=True), \
        shoal.Queue.from_name(unique("qa"), create_if_missing=True)
    to_b, from_b = shoal.Queue.from_name(unique("qb"), create_if_missing=True), \
        shoal.Queue.from_name(unique("qb"), create_if_missing=True)
    b = volumes.reader_session.spawn(to_b, from_b, name)
    assert from_b.get(timeout=60) == ("start", None)
    a = volumes.writer_session.spawn(to_a, from_a, name)
    assert from_a.get(timeout=60) == "written"
    to_b.put("check")
    assert from_b.get(timeout=30) == ("check", None)  # A has not committed
    assert [e.path for e in volumes.vol.listdir("/") if e.path == name] == []
    to_a.put("commit")
    assert from_a.get(timeout=30) == "committed"
    assert b"".join(volumes.vol.read_file(name)) == b"from A"  # visible to the API at once
    to_b.put("check")
    assert from_b.get(timeout=30) == ("check", None)  # B still sees the state it started with
    to_b.put("reload")
    assert from_b.get(timeout=30) == ("reload", "from A")
    to_a.put("done")
    to_b.put("done")
    assert a.get(timeout=30) == "ok" and b.get(timeout=30) == "ok"


def test_writes_are_committed_when_the_container_exits_after_an_error(volumes) -> None:
    name = unique("failed")
    with pytest.raises(ValueError, match="deliberate"):
        volumes.write_then_fail.remote(name)
    got = wait_for(lambda: [e.path for e in volumes.vol.listdir("failed") if e.path == f"failed/{name}"])
    assert got == [f"failed/{name}"]
    assert b"".join(volumes.vol.read_file(f"failed/{name}")) == b"written before the error"


def test_new_container_sees_committed_files_and_api_uploads(volumes) -> None:
    name = unique("up")
    with volumes.vol.batch_upload() as batch:
        batch.put_file(io.BytesIO(b"uploaded"), f"{name}/in.txt")
    assert volumes.read.remote(f"{name}/in.txt") == "uploaded"  # containers started before: reload needed
    assert volumes.write_commit.remote(f"{name}/out.txt", "written") == ["in.txt", "out.txt"]
    assert b"".join(volumes.vol.read_file(f"{name}/out.txt")) == b"written"


def test_deletions_and_replaced_directories_are_committed(volumes) -> None:
    p = unique("tree")
    with volumes.vol.batch_upload() as batch:
        for rel in ("gone.txt", "kept.txt", "olddir/x.txt", "olddir/sub/y.txt", "replaced/old.txt"):
            batch.put_file(io.BytesIO(rel.encode()), f"{p}/{rel}")
    volumes.edit_tree.remote(p)
    listing = sorted(e.path for e in volumes.vol.listdir(p, recursive=True))
    assert listing == [f"{p}/empty", f"{p}/kept.txt", f"{p}/replaced", f"{p}/replaced/new.txt"]
    assert b"".join(volumes.vol.read_file(f"{p}/kept.txt")) == b"kept.txt + appended"


def test_read_only_volume_rejects_writes(volumes) -> None:
    name = unique("ro") + ".txt"
    with volumes.vol.batch_upload() as batch:
        batch.put_file(io.BytesIO(b"original"), name)
    assert volumes.try_write_read_only.remote(name) == ("original", "EROFS")
    assert b"".join(volumes.vol.read_file(name)) == b"original"


def test_read_only_mount_reloads(volumes) -> None:
    name = unique("ro-reload") + ".txt"
    inbox = shoal.Queue.from_name(unique("q"), create_if_missing=True)
    outbox = shoal.Queue.from_name(unique("q"), create_if_missing=True)
    call = volumes.read_only_reload.spawn(name, inbox, outbox)
    assert outbox.get(timeout=60) == "started"
    with volumes.vol.batch_upload() as batch:
        batch.put_file(io.BytesIO(b"arrived later"), name)
    inbox.put("go")
    assert call.get(timeout=60) == (None, "arrived later")


def test_reload_with_open_files_is_refused(volumes) -> None:
    result = volumes.reload_while_open.remote(unique("open") + ".txt")
    assert result.startswith("busy:") and "volume busy" in result


def test_volume_survives_a_control_plane_kill(private_control_plane: ControlPlane) -> None:
    if not sandboxed(private_control_plane.home):
        pytest.skip("volumes are mounted only in sandboxed containers")
    import volume_restart_app as m

    with m.app.run(quiet=True, detach=True):
        m.write_commit.remote("kill/committed.txt", "committed before the kill")
        outbox = shoal.Queue.from_name(unique("q"), create_if_missing=True)
        m.hold_uncommitted.spawn("kill/uncommitted.txt", outbox)
        assert outbox.get(timeout=60) == "written"
        with m.vol.batch_upload() as batch:
            batch.put_file(io.BytesIO(b"uploaded before the kill"), "kill/uploaded.txt")
        left = list((private_control_plane.home / "volumes").glob("*/work/*"))
        assert left  # the waiting container's overlay
        private_control_plane.kill()
    private_control_plane.start()
    _use_home(private_control_plane.home)
    v = shoal.Volume.from_name("volume-restart-data")
    assert b"".join(v.read_file("kill/committed.txt")) == b"committed before the kill"
    assert b"".join(v.read_file("kill/uploaded.txt")) == b"uploaded before the kill"
    # The container died with the control plane: what it had not committed is committed at the restart.
    assert b"".join(v.read_file("kill/uncommitted.txt")) == b"left uncommitted"
    assert not any(p.exists() for p in left)


def test_cli_put_ls_get_round_trip(control_plane, tmp_path: Path) -> None:
    name = unique("cli")
    assert run_cli("volume", "create", name).returncode == 0
    (tmp_path / "up" / "sub").mkdir(parents=True)
    (tmp_path / "up" / "one.txt").write_text("one")
    (tmp_path / "up" / "sub" / "two.txt").write_text("two")
    (tmp_path / "single.txt").write_text("single")
    r = run_cli("volume", "put", name, str(tmp_path / "up"), "/stuff")
    assert r.returncode == 0, r.stderr
    assert run_cli("volume", "put", name, str(tmp_path / "single.txt")).returncode == 0
    r = run_cli("volume", "put", name, str(tmp_path / "single.txt"))
    assert r.returncode != 0 and "exists" in (r.stderr + r.stdout)
    assert run_cli("volume", "put", name, str(tmp_path / "single.txt"), "-f").returncode == 0
    r = run_cli("volume", "ls", name, "--json")
    assert r.returncode == 0, r.stderr
    assert sorted(e["path"] for e in json.loads(r.stdout)) == ["single.txt", "stuff"]
    r = run_cli("volume", "ls", name, "stuff")
    assert "one.txt" in r.stdout and "sub" in r.stdout
    r = run_cli("volume", "get", name, "/stuff", str(tmp_path / "down"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "down" / "stuff" / "sub" / "two.txt").read_text() == "two"
    r = run_cli("volume", "get", name, "single.txt", "-")
    assert r.stdout == "single"
    assert run_cli("volume", "get", name, "single.txt", str(tmp_path / "down")).returncode == 0
    assert (tmp_path / "down" / "single.txt").read_text() == "single"
    assert run_cli("volume", "get", name, "single.txt", str(tmp_path / "down")).returncode != 0  # exists
    assert run_cli("volume", "get", name, "single.txt", str(tmp_path / "down"), "--force").returncode == 0
    assert run_cli("volume", "cp", name, "single.txt", "copy.txt").returncode == 0
    assert run_cli("volume", "rm", name, "stuff").returncode != 0  # a directory needs -r
    assert run_cli("volume", "rm", name, "stuff", "-r").returncode == 0
    r = run_cli("volume", "ls", name, "--json")
    assert sorted(e["path"] for e in json.loads(r.stdout)) == ["copy.txt", "single.txt"]
    r = run_cli("volume", "list", "--json")
    assert name in [v["name"] for v in json.loads(r.stdout)]
    assert run_cli("volume", "delete", name, "-y").returncode == 0
    assert run_cli("volume", "ls", name).returncode != 0
