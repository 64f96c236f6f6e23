"""Root filesystems made of OCI layers: the test images, build steps run on layers, containers on an OCI image."""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import shutil
import socket
import stat
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from shoal._spec.definitions import FunctionDefinition
from shoal.backends.base import ContainerImage, ContainerSpec
from shoal.backends.build_sandbox import BuildSandbox
from shoal.backends.local import LocalBackend
from shoal.backends.local_exec import sandbox_runtime
from shoal.backends.sandbox import ID_COUNT, id_base, launcher_argv, newroot_dir
from shoal.oci.layout import store_image
from shoal.oci.registry import pull, push_layout
from shoal.oci.store import LayerStore
from shoal.oci.unpack import LayerError
from shoal.oci.upper import layer_from_upper
from tests.integration.oci_registry import have_registry_tools, layer_tar, registry
from tests.integration.rootfs_images import (
    IMAGE_PYTHON,
    MARKER,
    rootfs_tars,  # noqa: F401 (a fixture)
    store_test_image,
    write_layout,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the layer store keeps ownership: it runs as root")


def test_the_test_images_have_a_root_filesystem(tmp_path, rootfs_tars) -> None:  # noqa: F811
    store = LayerStore(tmp_path / "store")
    image = store_test_image(store, rootfs_tars, "python")
    top, base = store.lowerdirs(image)
    assert (base / MARKER.lstrip("/")).is_file() and (base / "bin").is_symlink()
    assert (top / IMAGE_PYTHON.lstrip("/")).is_symlink() and (top / "usr/lib/python3.11/os.py").is_file()
    assert not (top / "usr/lib/python3.11/test").exists()
    assert (top / "usr/bin/python3.11").stat().st_uid == 0
    bare = store_test_image(store, rootfs_tars, "nopython")
    assert [x.diff_id for x in bare.layers] == [image.layers[0].diff_id]  # the same base layer, shared
    assert not (store.lowerdirs(bare)[0] / IMAGE_PYTHON.lstrip("/")).exists()


@pytest.mark.skipif(bool(have_registry_tools()), reason=have_registry_tools() or "ok")
def test_the_test_image_goes_through_a_registry(tmp_path, rootfs_tars) -> None:  # noqa: F811
    layout = write_layout(tmp_path / "layout", rootfs_tars, "python", tag="v1")
    with registry(tmp_path / "registry") as address:
        push_layout(layout, "v1", f"{address}/test/python:v1")
        store = LayerStore(tmp_path / "store")
        image = pull(store, f"{address}/test/python:v1")
    assert len(image.layers) == 2 and image.config.env[0].startswith("PATH=")
    assert (store.lowerdirs(image)[0] / "usr/bin/python3.11").is_file()


# -- build steps on layers -----------------------------------------------------------------------------------------
def _sandbox(tmp_path: Path) -> BuildSandbox:
    sandbox = BuildSandbox(str(tmp_path / "state"))
    avail = sandbox.availability()
    if avail.isolation != "sandbox":
        pytest.skip(f"no sandbox here: {avail.reason}")
    return sandbox


def _members(store: LayerStore, layer: dict) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(store.blob_path(layer["digest"]), "r:gz") as tf:
        return {m.name: m for m in tf.getmembers()}


def _tree(path: Path) -> dict[str, tuple]:
    """Every entry under `path` with its type, mode, owner and content hash: what must not change."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            st = p.lstat()
            digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() and not p.is_symlink() else ""
            out[str(p.relative_to(path))] = (st.st_mode, st.st_uid, st.st_gid, digest)
    return out


STEP = """set -e
id -u > /etc/whoami
stat -c %u:%g /etc/os-release > /etc/owner
echo new > /etc/x
rm /etc/shoal-test-image
rm -rf /usr/lib/python3.11/json && mkdir /usr/lib/python3.11/json && echo hi > /usr/lib/python3.11/json/only
echo "step output"
"""


def test_a_step_on_layers_becomes_a_layer_and_the_host_is_unchanged(tmp_path, rootfs_tars) -> None:  # noqa: F811
    sandbox = _sandbox(tmp_path)
    store = LayerStore(tmp_path / "store", id_shift=id_base())
    image = store_test_image(store, rootfs_tars, "python")
    lowers = [str(x) for x in store.lowerdirs(image)]
    before = {d: _tree(Path(d)) for d in lowers}
    upper, work = tmp_path / "upper", tmp_path / "work"
    upper.mkdir()
    work.mkdir()
    output: list[str] = []
    created: set[str] = set()
    rc = asyncio.run(sandbox.run_on_layers(lowers, str(upper), str(work), ["/bin/sh", "-c", STEP],
                                           env={"PATH": "/usr/bin:/bin"}, log=output.append, created=created))
    assert rc == 0, "".join(output)
    assert "step output" in "".join(output)
    assert "/run/shoal" in created  # made as a mountpoint in the upper: no part of the layer
    layer = layer_from_upper(store, upper, skip=created)
    members = _members(store, layer)
    assert members["etc/x"].isreg() and members["etc/x"].uid == 0 and members["etc/x"].gid == 0
    assert "etc/.wh.shoal-test-image" in members  # the deleted lower file: a whiteout
    assert "usr/lib/python3.11/json/.wh..wh..opq" in members  # a directory replaced whole: opaque
    assert not [n for n in members if n.split("/")[0] in ("proc", "sys", "dev", "run")], sorted(members)
    assert not any(n.startswith("etc/resolv.conf") for n in members)
    # the host: the layers below are as they were, and nothing appeared at the paths the step wrote
    assert {d: _tree(Path(d)) for d in lowers} == before
    assert not Path("/etc/x").exists() and not Path("/etc/whoami").exists()

    # a second step on the image plus that layer sees both changes; inside, the image's files are root's
    layer_dir = store.layer_path(layer["diff_id"])
    assert (layer_dir / "etc/x").stat().st_uid == id_base()
    upper2, work2 = tmp_path / "upper2", tmp_path / "work2"
    upper2.mkdir()
    work2.mkdir()
    output.clear()
    check = ("cat /etc/whoami /etc/owner /etc/x; ls /usr/lib/python3.11/json; test -e /etc/shoal-test-image || "
             "echo gone; python3 -c 'import json; json.dumps(1)' 2>/dev/null || echo no-json; exit 3")
    rc = asyncio.run(sandbox.run_on_layers([str(layer_dir), *lowers], str(upper2), str(work2),
                                           ["/bin/sh", "-c", check], env={"PATH": "/usr/bin:/bin"},
                                           log=output.append))
    assert rc == 3
    assert "".join(output).split() == ["0", "0:0", "new", "only", "gone", "no-json"]

    # the built image is recorded like a pulled one
    built = store.record_image("built/test:1", [*image.layers, layer], {"Env": ["PATH=/usr/bin:/bin"]})
    assert store.get("built/test:1") == built and len(built.layers) == 3
    assert store.lowerdirs(built)[0] == layer_dir and store.has_blob(built.manifest_digest)


def test_a_step_runs_as_the_images_user_and_sees_only_its_binds(tmp_path, rootfs_tars) -> None:  # noqa: F811
    sandbox = _sandbox(tmp_path)
    store = LayerStore(tmp_path / "store", id_shift=id_base())
    lowers = [str(x) for x in store.lowerdirs(store_test_image(store, rootfs_tars, "nopython"))]
    shared = tmp_path / "tool"
    shared.mkdir()
    (shared / "t").write_text("tool\n")
    upper, work = tmp_path / "upper", tmp_path / "work"
    upper.mkdir()
    work.mkdir()
    output: list[str] = []
    script = "id -u; id -g; echo $HOME; cat /opt/tool/t; touch /opt/tool/w 2>/dev/null || echo read-only; pwd"
    rc = asyncio.run(sandbox.run_on_layers(lowers, str(upper), str(work), ["/bin/sh", "-c", script],
                                           env={"PATH": "/usr/bin:/bin"}, cwd="/home/app", user="app",
                                           binds=[[str(shared), "/opt/tool", False]], network=False,
                                           log=output.append))
    assert rc == 0, "".join(output)
    assert "".join(output).split() == ["1000", "1000", "/home/app", "tool", "read-only", "/home/app"]
    rc = asyncio.run(sandbox.run_on_layers(lowers, str(upper), str(work), ["/bin/sh", "-c", "true"],
                                           env={}, user="nobody-here", log=output.append))
    assert rc == 121 and "no user 'nobody-here'" in "".join(output)


def test_symlinks_of_a_hostile_image_never_lead_the_setup_to_the_host(tmp_path, rootfs_tars) -> None:  # noqa: F811
    sandbox = _sandbox(tmp_path)
    target = tmp_path / "host-dir"
    target.mkdir()
    (target / "resolv.conf").write_text("host's\n")
    store = LayerStore(tmp_path / "store", id_shift=id_base())
    hostile = layer_tar([("symlink", "run", str(target)), ("symlink", "etc/resolv.conf", str(target / "resolv.conf")),
                         ("symlink", "etc/hosts", str(target / "hosts"))])
    image = store_image(store, "hostile", [rootfs_tars["base"], hostile])
    lowers = [str(x) for x in store.lowerdirs(image)]
    output: list[str] = []
    for i in range(2):
        upper, work = tmp_path / f"upper{i}", tmp_path / f"work{i}"
        upper.mkdir()
        work.mkdir()
        rc = asyncio.run(sandbox.run_on_layers(lowers, str(upper), str(work), ["/bin/sh", "-c", "true"], env={},
                                               log=output.append, network=i == 0))
        assert rc == 121
    assert "the image's /run is a symlink" in "".join(output)
    output.clear()
    rc = asyncio.run(sandbox.run_on_layers(lowers[1:], str(upper), str(work), ["/bin/sh", "-c", "true"], env={},
                                           binds=[[str(target), "/opt/../../escape", False]], log=output.append))
    assert rc == 121 and "without '.' or '..'" in "".join(output)
    assert not Path(newroot_dir()).parent.joinpath("escape").exists()
    assert sorted(p.name for p in target.iterdir()) == ["resolv.conf"]
    assert (target / "resolv.conf").read_text() == "host's\n"


# -- containers on an OCI image ------------------------------------------------------------------------------------
APP_SOURCE = '''import shoal

app = shoal.App("rootfs-test")


@app.function()
def where() -> str:
    import os, sys
    return f"{open('/etc/os-release').read().splitlines()[0]}|{sys.version.split()[0]}|{shoal.__file__}|{os.getuid()}"
'''


@pytest.fixture(scope="module")
def runtime_dir(tmp_path_factory) -> str:
    """The runtime's packages for the image's Python, as the image builder makes them for the host's (linked from
    the control plane's environment: Debian's 3.11 and this 3.11 share the ABI)."""
    from shoal.controlplane.images import RUNTIME_NAMES, _copy_host_packages

    target = tmp_path_factory.mktemp("runtime")
    target.chmod(0o755)  # (as the image builder's: the container's root is not the host's)
    assert not _copy_host_packages(RUNTIME_NAMES, target)
    return str(target)


def _backend(tmp_path: Path) -> LocalBackend:
    backend = LocalBackend(state_dir=tmp_path / "state", netns_pool=0)
    if backend.isolation != "sandbox":
        pytest.skip(f"containers are not sandboxed here: {backend.availability.reason}")
    return backend


def _spec(image: ContainerImage, source: Path | None = None, *, idle: bool = True) -> ContainerSpec:
    return ContainerSpec(container_id=f"ta-rootfs{secrets.token_hex(4)}", function_id="fu-rootfs", app_id="ap-rootfs",
                         definition=FunctionDefinition(tag="where"), env={"FROM_SPEC": "1"}, image=image,
                         source_dir=str(source) if source else None, idle=idle)


async def _exec(backend: LocalBackend, handle, argv: list[str]) -> str:
    """A command in the container's namespaces and root, as `shoal container exec` runs one."""
    deadline = time.monotonic() + 30
    while (runtime := sandbox_runtime(handle.pid)) is None:
        assert handle.proc.returncode is None, f"the sandbox ended: {handle.exit_reason()}"
        assert time.monotonic() < deadline, "the sandbox did not come up"
        await asyncio.sleep(0.05)
    cmd = ["nsenter", f"--target={runtime}", "--user", "--mount", "--pid", "--net", "--root", "--wd", "--", *argv]
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
                                                env={"PATH": "/usr/bin:/bin"})
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return out.decode()


def _image(store: LayerStore, tars: dict, runtime_dir: str, **config) -> ContainerImage:
    image = store_test_image(store, tars, "python", name=f"t/{secrets.token_hex(4)}",
                             config={"Env": ["PATH=/usr/local/bin:/usr/bin:/bin", "LANG=C.UTF-8", "IMAGE_VAR=yes"],
                                     **config})
    env = dict(e.split("=", 1) for e in image.config.env)
    return ContainerImage(image_id="im-rootfs", python=IMAGE_PYTHON, layers=[str(x) for x in store.lowerdirs(image)],
                          runtime_dir=runtime_dir, env=env, workdir=image.config.workdir or None,
                          user=image.config.user or None)


def test_a_container_on_an_oci_image_sees_the_image_and_its_writes_vanish(tmp_path, rootfs_tars,  # noqa: F811
                                                                         runtime_dir) -> None:
    backend = _backend(tmp_path)
    store = LayerStore(tmp_path / "store", id_shift=id_base())
    image = _image(store, rootfs_tars, runtime_dir, WorkingDir="/srv/app")
    before = {d: _tree(Path(d)) for d in image.layers}
    source = tmp_path / "src"
    source.mkdir()
    (source / "rootfs_app.py").write_text(APP_SOURCE)
    run_app = ("import sys; sys.path[:0] = ['/.shoal/sdk', '/root']; sys.path.append('/.shoal/runtime'); "
               "import shoal.runtime.worker, cloudpickle, msgpack, aiohttp, rootfs_app; "
               "print(rootfs_app.where.local())")

    async def run() -> tuple[str, str, str]:
        handle = await backend.start(_spec(image, source), None)
        try:
            first = await _exec(backend, handle, ["/bin/sh", "-c", "echo x > /etc/written && rm /etc/shoal-test-image "
                                                  "&& mkdir -p /usr/new && pwd && cat /etc/os-release && ls /root"])
            runs = await _exec(backend, handle, [IMAGE_PYTHON, "-c", run_app])
            env = (Path("/proc") / str(sandbox_runtime(handle.pid)) / "environ").read_bytes().decode()
        finally:
            handle.kill()
            await handle.wait()
        handle = await backend.start(_spec(image), None)
        try:
            second = await _exec(backend, handle, ["/bin/sh", "-c",
                                                   "ls /etc/written /usr/new 2>&1; cat /etc/shoal-test-image"])
        finally:
            handle.kill()
            await handle.wait()
            backend.shutdown()
        return first + runs, env, second

    first, env, second = asyncio.run(run())
    assert "/srv/app" in first  # the image's WorkingDir (made, as Docker does, where the image lacks it)
    assert 'PRETTY_NAME="shoal test rootfs"' in first and "rootfs_app.py" in first
    # the function's code runs on the image's Python with shoal's package from /.shoal/sdk
    assert 'PRETTY_NAME="shoal test rootfs"|3.11.2|/.shoal/sdk/shoal/__init__.py|0' in first, first
    variables = dict(v.split("=", 1) for v in env.split("\0") if "=" in v)
    assert variables["IMAGE_VAR"] == "yes" and variables["FROM_SPEC"] == "1" and variables["HOME"] == "/root"
    assert variables["PATH"] == "/usr/local/bin:/usr/bin:/bin"  # the image's, not the host's
    # the first container's writes were its own: the next one sees the image as it is
    assert "No such file" in second and "shoal test image" in second, second
    assert {d: _tree(Path(d)) for d in image.layers} == before
    assert not Path("/etc/written").exists() and not Path("/usr/new").exists()


def test_the_runtime_starts_on_the_images_python_as_its_user(tmp_path, rootfs_tars, runtime_dir) -> None:  # noqa: F811
    """Not idle: the image's Python runs shoal's runtime (here without a control plane to talk to, so it stops at
    its first step, having imported shoal and its packages from /.shoal)."""
    backend = _backend(tmp_path)
    store = LayerStore(tmp_path / "store", id_shift=id_base())
    image = _image(store, rootfs_tars, runtime_dir, User="app")
    output: list[str] = []

    async def run() -> int:
        handle = await backend.start(_spec(image, idle=False), lambda _c, _fd, text: output.append(text))
        try:
            return await asyncio.wait_for(handle.wait(), 60)
        finally:
            backend.shutdown()

    source = tmp_path / "src"
    source.mkdir()
    (source / "plain_mod.py").write_text("VALUE = 42\n")
    as_app = ("import os, sys; os.setgroups([]); os.setgid(1000); os.setuid(1000); sys.path.insert(0, '/root'); "
              "import plain_mod; print(plain_mod.VALUE)")

    async def idle() -> tuple[str, str]:
        handle = await backend.start(_spec(image, source), None)
        try:
            cwd = await _exec(backend, handle, ["/bin/sh", "-c", "pwd"])
            imported = await _exec(backend, handle, [IMAGE_PYTHON, "-c", as_app])
            assert imported.strip() == "42", imported  # the app's source, importable by the image's USER
            proc = Path("/proc") / str(sandbox_runtime(handle.pid))
            return (proc / "status").read_text(), (proc / "environ").read_bytes().decode() + cwd
        finally:
            handle.kill()
            await handle.wait()

    status, env = asyncio.run(idle())
    uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
    assert uids == [str(id_base() + 1000)] * 4  # the image's `app` user, in the container's id range
    assert "HOME=/home/app" in env.split("\0")  # its home, from /etc/passwd
    assert env.endswith("\0/root\n")  # no WorkingDir: /root, made readable for the app's source
    assert asyncio.run(run()) == 1
    text = "".join(output)
    assert '"/.shoal/sdk/shoal/runtime/worker.py"' in text and "KeyError: 'SHOAL_CONTROL'" in text, text


def test_an_oci_image_needs_the_sandbox_and_a_python(tmp_path, rootfs_tars, runtime_dir) -> None:  # noqa: F811
    store = LayerStore(tmp_path / "store", id_shift=id_base())
    image = _image(store, rootfs_tars, runtime_dir)
    plain = LocalBackend(state_dir=tmp_path / "state", isolation="process")
    with pytest.raises(RuntimeError, match="is an OCI image .* needs the sandbox"):
        asyncio.run(plain.start(_spec(image), None))
    backend = _backend(tmp_path)
    bare = store_test_image(store, rootfs_tars, "nopython")
    image = ContainerImage(image_id="im-bare", python="", layers=[str(x) for x in store.lowerdirs(bare)])

    async def idle() -> str:  # (what `shoal shell` starts): no Python needed
        handle = await backend.start(_spec(image), None)
        try:
            return await _exec(backend, handle, ["/bin/sh", "-c", "cat /etc/os-release; test -e /usr/bin/python3 || "
                                                 "echo no-python"])
        finally:
            handle.kill()
            await handle.wait()

    try:
        with pytest.raises(RuntimeError, match="has no Python: functions cannot run on it"):
            asyncio.run(backend.start(_spec(image, idle=False), None))
        out = asyncio.run(idle())
        assert 'NAME="shoal-test"' in out and "no-python" in out
    finally:
        backend.shutdown()


def test_volumes_binds_and_block_network_work_on_an_oci_image(tmp_path, rootfs_tars, runtime_dir) -> None:  # noqa: F811
    from shoal._spec.definitions import Options

    backend = _backend(tmp_path)
    store = LayerStore(tmp_path / "store", id_shift=id_base())
    image = _image(store, rootfs_tars, runtime_dir)
    version, upper, work, extra = (tmp_path / d for d in ("v1", "upper", "work", "extra"))
    for d in (version, upper, work, extra):
        d.mkdir()
    (version / "committed").write_text("in the volume\n")
    os.chown(upper, id_base(), id_base())  # as the control plane makes a volume's upper: the container root's
    (extra / "note").write_text("bound\n")
    spec = _spec(image)
    spec.volumes = [["/data/vol", str(version), str(upper), str(work)]]
    spec.binds = [(str(extra), "/mnt/extra", False)]
    spec.definition = FunctionDefinition(tag="where", options=Options(extra={"block_network": True}))
    backend.shares = [str(tmp_path)]  # shared with containers, and the backend's state directory is in it
    (tmp_path / "state").mkdir(exist_ok=True)
    (tmp_path / "state" / "secret").write_text("the control plane's\n")
    (tmp_path / "shared-note").write_text("shared\n")

    async def run() -> str:
        handle = await backend.start(spec, None)
        try:
            return await _exec(backend, handle, [
                "/bin/sh", "-c", "cat /data/vol/committed /mnt/extra/note; echo new > /data/vol/written; "
                "touch /mnt/extra/x 2>/dev/null || echo read-only; "
                "python3 -c \"import socket; socket.create_connection(('1.1.1.1', 53), timeout=2)\" 2>&1 | tail -1; "
                f"cat {tmp_path}/shared-note; cat {tmp_path}/state/secret 2>/dev/null || echo masked"])
        finally:
            handle.kill()
            await handle.wait()
            backend.shutdown()

    out = asyncio.run(run())
    assert out.splitlines()[:3] == ["in the volume", "bound", "read-only"], out
    assert "OSError" in out.splitlines()[3] or "unreachable" in out, out  # no network at all
    assert out.splitlines()[4:] == ["shared", "masked"], out  # a share, but never the control plane's state in it
    assert (upper / "written").read_text() == "new\n"  # the volume's write went to its upper, as on venv images
    assert not (version / "written").exists() and not (extra / "x").exists()


def test_an_upper_directory_becomes_an_oci_layer_exactly(tmp_path) -> None:
    """overlayfs's forms -> OCI's, nothing followed, ids back by the store's shift, the runtime's mountpoints out."""
    shift = id_base()
    store = LayerStore(tmp_path / "store", id_shift=shift)
    upper = tmp_path / "upper"
    (upper / "etc").mkdir(parents=True)
    (upper / "etc/conf").write_text("x")
    os.chown(upper / "etc/conf", shift + 5, shift + 6)
    os.link(upper / "etc/conf", upper / "etc/conf-link")
    (upper / "etc/passwd-link").symlink_to("/etc/passwd")  # tarred as a link: the host's file is never read
    os.mknod(upper / "etc/gone", stat.S_IFCHR | 0o000, os.makedev(0, 0))  # a whiteout
    (upper / "opt/new").mkdir(parents=True)
    os.setxattr(upper / "opt/new", "trusted.overlay.opaque", b"y")
    os.setxattr(upper / "etc", "trusted.overlay.origin", b"\0\1")  # overlayfs's bookkeeping: dropped
    os.setxattr(upper / "etc/conf", "user.note", b"kept")
    (upper / "run/shoal").mkdir(parents=True)  # a mountpoint of the runtime: skipped, with /run that held only it
    (upper / "etc/resolv.conf").write_text("")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(upper / "opt/new/sock"))  # a socket a process left: not a file
    sock.close()
    os.chown(upper / "opt/new", 0, 0)  # a host id outside the container's range

    layer = layer_from_upper(store, upper, skip={"/run/shoal", "/etc/resolv.conf", "/proc"})
    members = _members(store, layer)
    assert sorted(members) == ["etc", "etc/.wh.gone", "etc/conf", "etc/conf-link", "etc/passwd-link", "opt",
                               "opt/new", "opt/new/.wh..wh..opq"]
    conf = members["etc/conf"]
    assert (conf.uid, conf.gid) == (5, 6) and conf.pax_headers.get("SCHILY.xattr.user.note") == "kept"
    assert members["etc/conf-link"].islnk() and members["etc/conf-link"].linkname == "etc/conf"
    assert members["etc/passwd-link"].issym() and members["etc/passwd-link"].linkname == "/etc/passwd"
    assert not any(k.startswith("SCHILY.xattr.trusted") for m in members.values() for k in m.pax_headers)
    assert members["opt/new"].uid == 65534
    unpacked = store.layer_path(layer["diff_id"])  # and the store took it as any layer
    assert os.stat(unpacked / "etc/gone").st_rdev == 0 and stat.S_ISCHR(os.stat(unpacked / "etc/gone").st_mode)
    assert os.getxattr(unpacked / "opt/new", "trusted.overlay.opaque") == b"y"
    assert (unpacked / "etc/conf").stat().st_uid == shift + 5

    os.setxattr(upper / "etc", "trusted.overlay.redirect", b"/x")
    with pytest.raises(LayerError, match="redirect_dir=off"):
        layer_from_upper(store, upper)


def test_a_directory_swapped_for_a_link_while_the_upper_is_read_never_leads_out(tmp_path) -> None:
    """A snapshot reads the upper of a sandbox that still runs: between the listing and the read the sandbox may
    replace a directory by a symlink to a host path. The read must then fail, never take the host's file. (The
    test acts as the sandbox between tar_upper's two phases, listing and adding.)"""
    from shoal.oci import upper as upper_mod

    host = tmp_path / "host"
    host.mkdir()
    (host / "secret").write_text("the host's")
    upper = tmp_path / "upper"
    (upper / "x").mkdir(parents=True)
    (upper / "x/secret").write_text("the sandbox's")
    reader = upper_mod._Upper(upper)
    try:
        assert reader.scan() == ["x", "x/secret"]
        shutil.rmtree(upper / "x")
        (upper / "x").symlink_to(host)
        with tarfile.open(tmp_path / "layer.tar", "w") as tf, pytest.raises(OSError):
            upper_mod._add(tf, reader, "x/secret", 0, {})
    finally:
        reader.close()
    with tarfile.open(tmp_path / "layer.tar") as tf:
        assert tf.getnames() == []


def test_an_upper_of_many_and_deep_directories_is_read_with_few_descriptors(tmp_path) -> None:
    """A sandbox controls its upper's shape: thousands of directories need no descriptor each, and nesting past
    the limit is a LayerError (not a RecursionError, which the snapshot route would answer with a 500)."""
    from shoal.oci import upper as upper_mod

    wide = tmp_path / "wide"
    for i in range(2000):
        (wide / f"d{i}").mkdir(parents=True)
    before = len(os.listdir("/proc/self/fd"))
    upper_mod.tar_upper(wide, tmp_path / "wide.tar")
    assert len(os.listdir("/proc/self/fd")) == before
    with tarfile.open(tmp_path / "wide.tar") as tf:
        assert len(tf.getnames()) == 2000

    deep = tmp_path / "deep"
    deep.mkdir()
    fd = os.open(deep, os.O_RDONLY)
    for _ in range(upper_mod.MAX_DEPTH + 1):  # (relative to a descriptor: the path itself is too long to name)
        os.mkdir("d", dir_fd=fd)
        below = os.open("d", os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = below
    os.close(fd)
    with pytest.raises(LayerError, match="nested deeper"):
        upper_mod.tar_upper(deep, tmp_path / "deep.tar")


def test_gpu_driver_files_are_bound_where_the_image_allows(tmp_path, rootfs_tars) -> None:  # noqa: F811
    """(No GPU here: the driver files' mechanism with stand-ins.) A file at a plain path is bound read-only at its
    host path; one whose path crosses a symlink of the image (`/lib` -> `usr/lib`) is left out, not followed."""
    _sandbox(tmp_path)
    store = LayerStore(tmp_path / "store", id_shift=id_base())
    lowers = [str(x) for x in store.lowerdirs(store_test_image(store, rootfs_tars, "nopython"))]
    driver = tmp_path / "libfake-driver.so.1"
    driver.write_text("driver\n")
    cfg = {"mode": "root", "uid": id_base(), "gid": id_base(), "ids": ID_COUNT, "newroot": newroot_dir(),
           "hostname": "gpu", "rootfs": {"layers": lowers, "upper": None, "work": None},
           "driver_files": [str(driver), "/lib/x86_64-linux-gnu/libc.so.6"],
           "argv": ["/bin/sh", "-c", f"cat {driver}; echo x > {driver} 2>/dev/null || echo read-only"], "cwd": "/"}
    proc = subprocess.run(launcher_argv(sys.executable, cfg), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["driver", "read-only"]
    assert driver.read_text() == "driver\n"
