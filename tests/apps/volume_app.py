"""Functions that mount a Volume (tests/integration/test_volumes.py). Each test uses its own file names, so
they share one volume per control plane."""

import errno
import os

import shoal as modal

app = modal.App("volumes")
vol = modal.Volume.from_name("volume-app-data", create_if_missing=True)


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return None


@app.function(volumes={"/data": vol})
def writer_session(inbox: modal.Queue, outbox: modal.Queue, name: str) -> str:
    """Writes /data/<name> without committing, commits when told, and ends when told."""
    with open(f"/data/{name}", "w") as f:
        f.write("from A")
    outbox.put("written")
    assert inbox.get(timeout=60) == "commit"
    vol.commit()
    outbox.put("committed")
    assert inbox.get(timeout=60) == "done"
    return "ok"


@app.function(volumes={"/data": vol})
def reader_session(inbox: modal.Queue, outbox: modal.Queue, name: str) -> str:
    """Reports what it sees of /data/<name> whenever asked; reloads when told to."""
    outbox.put(("start", _read(f"/data/{name}")))
    while True:
        cmd = inbox.get(timeout=60)
        if cmd == "done":
            return "ok"
        if cmd == "reload":
            vol.reload()
        outbox.put((cmd, _read(f"/data/{name}")))


@app.function(volumes={"/data": vol}, single_use_containers=True)
def write_then_fail(name: str) -> None:
    os.makedirs("/data/failed", exist_ok=True)
    with open(f"/data/failed/{name}", "w") as f:
        f.write("written before the error")
    raise ValueError("deliberate failure after writing")


@app.function(volumes={"/data": vol})
def read(path: str) -> str | None:
    return _read(f"/data/{path}")


@app.function(volumes={"/data": vol})
def write_commit(path: str, text: str) -> list[str]:
    os.makedirs(os.path.dirname(f"/data/{path}"), exist_ok=True)
    with open(f"/data/{path}", "w") as f:
        f.write(text)
    vol.commit()
    return sorted(os.listdir(os.path.dirname(f"/data/{path}")))


@app.function(volumes={"/data": vol})
def edit_tree(prefix: str) -> None:
    """Deletes a file and a directory that came from the volume, replaces a directory, makes an empty one."""
    os.remove(f"/data/{prefix}/gone.txt")
    import shutil

    shutil.rmtree(f"/data/{prefix}/olddir")
    shutil.rmtree(f"/data/{prefix}/replaced")
    os.makedirs(f"/data/{prefix}/replaced")
    with open(f"/data/{prefix}/replaced/new.txt", "w") as f:
        f.write("new")
    os.makedirs(f"/data/{prefix}/empty")
    with open(f"/data/{prefix}/kept.txt", "a") as f:
        f.write(" + appended")
    vol.commit()


@app.function(volumes={"/data": vol.read_only()})
def try_write_read_only(name: str) -> tuple[str | None, str]:
    try:
        with open(f"/data/{name}", "w") as f:
            f.write("nope")
    except OSError as exc:
        return _read(f"/data/{name}"), errno.errorcode.get(exc.errno, str(exc.errno))
    return _read(f"/data/{name}"), "written"


@app.function(volumes={"/data": vol})
def reload_while_open(name: str) -> str:
    f = open(f"/data/{name}", "w")  # noqa: SIM115 - kept open on purpose
    try:
        vol.reload()
    except modal.exception.ConflictError as exc:
        return f"busy: {exc}"
    finally:
        f.close()
    return "reloaded"


@app.function(volumes={"/data": vol.read_only()})
def read_only_reload(name: str, inbox: modal.Queue, outbox: modal.Queue) -> tuple[str | None, str | None]:
    before = _read(f"/data/{name}")
    outbox.put("started")
    assert inbox.get(timeout=60) == "go"
    vol.reload()
    return before, _read(f"/data/{name}")
