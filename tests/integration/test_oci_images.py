"""OCI images built by the control plane's ImageBuilder, in-process: a real registry on loopback, images the tests
make themselves (tests/integration/rootfs_images.py), build steps run in real build containers on the layers.

What a built image holds is read back through its layer directories as overlayfs stacks them
(oci_files.resolve), and through build steps that run in it."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest

from shoal._spec.definitions import FunctionDefinition, ImageSpec
from shoal._spec.images import BUILDER_VERSION, image_id_for
from shoal.backends.base import ContainerSpec
from shoal.backends.local import LocalBackend
from shoal.backends.local_exec import sandbox_runtime
from shoal.controlplane.images import ImageBuilder, check_spec
from shoal.controlplane.oci_credentials import registry_credentials
from shoal.controlplane.oci_files import resolve
from shoal.exception import ImageBuildError, InvalidError
from shoal.image import Image
from shoal.oci.layout import LayoutWriter
from shoal.oci.registry import RegistryAuthError, push_layout
from tests.integration.debian_image import LAYOUT_TAG, debian_oci_layout  # noqa: F401 (a fixture)
from tests.integration.oci_registry import have_registry_tools, layer_tar, registry
from tests.integration.rootfs_images import rootfs_tars, write_layout  # noqa: F401 (a fixture)
from tests.integration.test_images import Recorder

pytestmark = pytest.mark.skipif(bool(have_registry_tools()), reason=have_registry_tools() or "ok")


# -- specs as the SDK sends them (contract §1) ---------------------------------------------------------------------
def base(tag: str, **kw: Any) -> dict[str, Any]:
    return {"kind": "from_registry", "repr": f"from_registry({tag!r})", "tag": tag, "registry": "generic",
            "add_python": None, **kw}


def run(*commands: str, **kw: Any) -> dict[str, Any]:
    return {"kind": "run_commands", "repr": f"run_commands({', '.join(map(repr, commands))})",
            "commands": list(commands), **kw}


def spec(*steps: dict[str, Any], force_base: bool = False) -> ImageSpec:
    wire = ImageSpec(image_id=image_id_for(None, list(steps)), builder=BUILDER_VERSION, python_version=None,
                     steps=list(steps))
    if force_base:
        wire.force_base = True
    return wire


def build(builder: ImageBuilder, wire: ImageSpec) -> tuple[Any, str]:
    log = Recorder()
    return asyncio.run(builder.ensure(wire, log)), log.text


def read(image: Any, path: str) -> bytes | None:
    """A file of the built image, as its containers see it; None when it has none."""
    _, host = resolve([Path(p) for p in image.layers], path)
    return host.read_bytes() if host is not None and host.is_file() else None


def put_blob(builder: ImageBuilder, data: bytes) -> str:
    sha = hashlib.sha256(data).hexdigest()
    builder.blob_dir.mkdir(parents=True, exist_ok=True)
    (builder.blob_dir / sha).write_bytes(data)
    return sha


def context_tar(files: dict[str, bytes]) -> bytes:
    """A build context as the SDK packs it: regular files only, no owners or times."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


# -- registries and the images in them -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def reg(tmp_path_factory, rootfs_tars):  # noqa: F811
    """A registry with the test images: `test/python:v1`, and `test/nopython:v1` (with libm, as any glibc
    distribution has: what a copied interpreter needs besides libc)."""
    tmp = tmp_path_factory.mktemp("oci-images-reg")
    with registry(tmp / "registry") as address:
        layout = write_layout(tmp / "python", rootfs_tars, "python", tag="v1")
        push_layout(layout, "v1", f"{address}/test/python:v1")
        writer = LayoutWriter(tmp / "nopython")
        libm = os.path.realpath("/lib/x86_64-linux-gnu/libm.so.6")
        lib = layer_tar([("dir", "usr"), ("dir", "usr/lib"), ("dir", "usr/lib/x86_64-linux-gnu"),
                         ("file", "usr/lib/x86_64-linux-gnu/libm.so.6", Path(libm).read_bytes(), 0o644)])
        layers = [writer.add_layer(rootfs_tars["base"]), writer.add_layer(lib)]
        writer.tag("v1", writer.add_image(layers, {"Env": ["PATH=/usr/local/bin:/usr/bin:/bin"], "Cmd": ["/bin/sh"]}))
        push_layout(tmp / "nopython", "v1", f"{address}/test/nopython:v1")
        writer = LayoutWriter(tmp / "empty")
        writer.tag("v1", writer.add_image([writer.add_layer(layer_tar([("dir", "etc"), ("file", "etc/x", b"x")]))]))
        push_layout(tmp / "empty", "v1", f"{address}/test/empty:v1")
        yield address


@pytest.fixture(scope="module")
def private_reg(tmp_path_factory, rootfs_tars):  # noqa: F811
    tmp = tmp_path_factory.mktemp("oci-images-private")
    with registry(tmp / "registry", users={"builder": "s3cret"}) as address:
        layout = write_layout(tmp / "python", rootfs_tars, "python", tag="v1")
        push_layout(layout, "v1", f"{address}/private/python:v1", credentials=("builder", "s3cret"))
        yield address


@pytest.fixture
def builder(tmp_path) -> ImageBuilder:
    return ImageBuilder(tmp_path / "state")


# -- specs ---------------------------------------------------------------------------------------------------------
def test_check_spec_accepts_oci_steps_and_names_bad_fields(monkeypatch):
    check_spec(spec(base("127.0.0.1:5000/team/app:v1", add_python="3.12"), run("true"),
                    {"kind": "dockerfile_commands", "repr": "dockerfile_commands(...)", "commands": ["RUN true"]}))
    check_spec(spec({"kind": "from_dockerfile", "repr": "from_dockerfile('Dockerfile')", "dockerfile": "FROM x\n",
                     "context_sha": "a" * 64, "build_args": {"V": "1"}, "add_python": None}))
    bad = [
        (base("Not A Ref"), "'tag'"),
        (base("127.0.0.1:5000/a:v1", registry="dockerhub"), "'registry'"),
        (base("127.0.0.1:5000/a:v1", add_python="python3"), "'add_python'"),
        ({"kind": "from_dockerfile", "repr": "from_dockerfile()", "dockerfile": "FROM x", "context_sha": "../x"},
         "'context_sha'"),
    ]
    for step, field in bad:
        with pytest.raises(InvalidError, match=field):
            check_spec(spec(step))
    with pytest.raises(InvalidError, match="cannot contain FROM"):
        check_spec(spec(base("127.0.0.1:5000/a:v1"), {"kind": "dockerfile_commands", "repr": "d()",
                                                      "commands": ["FROM other"]}))
    with pytest.raises(InvalidError, match="invalid image step"):  # a base step is only ever the first
        check_spec(spec(base("127.0.0.1:5000/a:v1"), base("127.0.0.1:5000/b:v1")))
    venv = [{"kind": "dockerfile_commands", "repr": "dockerfile_commands(['RUN true'])", "commands": ["RUN true"]}]
    monkeypatch.setenv("SHOAL_DEBIAN_SLIM", "venv")
    with pytest.raises(InvalidError, match="debian_slim images are virtual environments"):
        check_spec(ImageSpec(image_id=image_id_for("3.11", venv), builder=BUILDER_VERSION, python_version="3.11",
                             steps=venv))


def test_registry_credentials_per_registry_kind():
    tag = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/app:v1"
    assert registry_credentials(base("r.example/a:v1")) is None
    assert registry_credentials(base("r.example/a:v1", secret_env={"REGISTRY_USERNAME": "u",
                                                                   "REGISTRY_PASSWORD": "p"})) == ("u", "p")
    assert registry_credentials(base("r.example/a:v1", registry="gcp",
                                     secret_env={"SERVICE_ACCOUNT_JSON": "{}"})) == ("_json_key", "{}")
    assert registry_credentials(base(tag, registry="aws_ecr", secret_env={"REGISTRY_PASSWORD": "t"})) == ("AWS", "t")
    with pytest.raises(RegistryAuthError, match="AWS_ACCESS_KEY_ID"):
        registry_credentials(base(tag, registry="aws_ecr", secret_env={}))


# -- bases ---------------------------------------------------------------------------------------------------------
def test_from_registry_builds_once_and_is_a_cache_hit(builder, reg):
    wire = spec(base(f"{reg}/test/python:v1"))
    image, text = build(builder, wire)
    assert "=> Step 0: from_registry(" in text and f"Pulling {reg}/test/python:v1" in text
    assert image.python == "/usr/bin/python3" and image.root is None
    assert all(os.path.isdir(d) for d in image.layers) and len(image.layers) == 2
    assert image.env["PATH"].startswith("/usr/local/sbin") and image.env["LANG"] == "C.UTF-8"
    assert os.path.isdir(image.runtime_dir) and os.path.isdir(os.path.join(image.runtime_dir, "cloudpickle"))
    record = json.loads((builder.dir / wire.image_id / "manifest.json").read_text())
    assert record["kind"] == "oci" and record["python_version"] == "3.11" and record["libc"] == "glibc"
    assert read(image, "/etc/shoal-test-image") == b"shoal test image\n"
    again, text = build(ImageBuilder(builder.dir.parent), wire)  # another control plane on the same state
    assert again == image and text == ""


def test_from_registry_auth_and_digest(builder, private_reg, reg):
    tag = f"{private_reg}/private/python:v1"
    right = {"REGISTRY_USERNAME": "builder", "REGISTRY_PASSWORD": "s3cret"}
    image, _ = build(builder, spec(base(tag, secret_env=right)))
    assert read(image, "/etc/shoal-test-image") == b"shoal test image\n"
    # pulled with credentials: neither a build without them nor one with wrong ones gets it from the store
    with pytest.raises(ImageBuildError) as info:
        build(builder, spec(base(tag)))
    message = str(info.value)
    assert "failed at step 0, from_registry(" in message and tag in message and "requires credentials" in message
    with pytest.raises(ImageBuildError, match="refused the credentials"):
        build(builder, spec(base(tag, secret_env={**right, "REGISTRY_PASSWORD": "wrong"}), run("true")))
    pulled = builder.oci.store.get(f"{tag} (with credentials)")
    digest_tag = f"{private_reg}/private/python@{pulled.manifest_digest}"
    by_digest, _ = build(builder, spec(base(digest_tag, secret_env=right)))
    assert by_digest.layers == image.layers  # the same layers, shared in the store
    anonymous, _ = build(builder, spec(base(f"{reg}/test/python:v1")))
    assert anonymous.layers == image.layers


def test_add_python_on_an_image_without_python(builder, reg):
    # the image has glibc and libm only: ctypes (libffi), ssl, zlib, sqlite3... need the libraries add_python brings
    imports = "import sys, ctypes, ssl, hashlib, zlib, bz2, lzma, sqlite3, uuid; print(sys.version_info[:2])"
    wire = spec(base(f"{reg}/test/nopython:v1", add_python="3.12"),
                run(f"python3 -c '{imports}' > /version.txt", "python --version"))
    image, text = build(builder, wire)
    assert image.python == "/usr/local/bin/python3"
    assert read(image, "/version.txt") == b"(3, 12)\n" and "Python 3.12." in text, text
    assert read(image, "/usr/local/lib/python3.12/lib-dynload/.libs/libffi.so.8") is not None
    assert read(image, "/usr/local/lib/python3.12/lib-dynload/.libs/libc.so.6") is None  # glibc is the image's
    record = json.loads((builder.dir / wire.image_id / "manifest.json").read_text())
    assert record["python_version"] == "3.12"
    assert read(image, "/usr/local/lib/python3.12/site-packages/pip/__init__.py") is not None
    assert not Path("/version.txt").exists()


def test_add_python_needs_glibc_in_the_image(builder, reg):
    with pytest.raises(ImageBuildError, match="add_python needs an image with glibc.*ld-linux"):
        build(builder, spec(base(f"{reg}/test/empty:v1", add_python="3.12")))


def test_no_python_without_add_python_is_a_clear_error(builder, reg):
    with pytest.raises(ImageBuildError, match="pip_install needs Python in the image.*add_python"):
        build(builder, spec(base(f"{reg}/test/nopython:v1"),
                            {"kind": "pip_install", "repr": "pip_install('six')", "packages": ["six"]}))


# -- steps ---------------------------------------------------------------------------------------------------------
def test_dockerfile_with_copy_arg_run_env_workdir_user(builder, reg):
    dockerfile = "\n".join([
        "ARG BASE=test/python:v1",
        f"FROM {reg}/${{BASE}}",
        "ARG GREETING=hello",
        "ENV APP_HOME=/app",
        "WORKDIR $APP_HOME",
        "COPY config.txt ./",
        "COPY src/ /app/src/",
        "COPY --chown=app:app owned.txt /home/app/",
        "COPY --chmod=755 tool.sh /bin/",
        "RUN echo \"$GREETING from $(cat config.txt)\" > /app/greeting.txt && id -u > /app/uid.txt",
        "USER app",
        "RUN id -u > /tmp/uid.txt && echo $HOME >> /tmp/uid.txt",
        'CMD ["python3", "-m", "http.server"]',
    ])
    context = context_tar({"config.txt": b"the context", "src/m.py": b"print(1)\n", "src/pkg/n.py": b"",
                           "owned.txt": b"mine", "unused.txt": b"x", "tool.sh": b"#!/bin/sh\necho tool\n"})
    step = {"kind": "from_dockerfile", "repr": "from_dockerfile('Dockerfile')", "dockerfile": dockerfile,
            "context_sha": put_blob(builder, context), "build_args": {"GREETING": "bonjour"}, "add_python": None}
    image, text = build(builder, spec(step))
    assert "Dockerfile line 10: RUN" in text
    assert read(image, "/app/greeting.txt") == b"bonjour from the context\n"
    assert read(image, "/app/uid.txt") == b"0\n" and read(image, "/tmp/uid.txt") == b"1000\n/home/app\n"
    assert read(image, "/app/src/m.py") == b"print(1)\n" and read(image, "/app/src/pkg/n.py") == b""
    assert read(image, "/app/unused.txt") is None
    # /bin is the image's symlink to usr/bin: the file went there, and /bin stayed a symlink
    assert read(image, "/usr/bin/tool.sh") == b"#!/bin/sh\necho tool\n"
    assert resolve([Path(p) for p in image.layers], "/bin", follow=False)[1].is_symlink()
    assert resolve([Path(p) for p in image.layers], "/usr/bin/tool.sh")[1].stat().st_mode & 0o777 == 0o755
    owned = resolve([Path(p) for p in image.layers], "/home/app/owned.txt")[1]
    assert (owned.stat().st_uid - builder.oci.id_shift, owned.stat().st_gid - builder.oci.id_shift) == (1000, 1000)
    assert image.workdir == "/app" and image.user == "app" and image.env["APP_HOME"] == "/app"
    assert "GREETING" not in image.env  # an ARG is for the build only
    record = json.loads((builder.dir / image.image_id / "manifest.json").read_text())
    assert record["config"]["Cmd"] == ["python3", "-m", "http.server"]


def test_dockerfile_commands_on_a_registry_image(builder, reg):
    commands = ["ARG WHO=nobody", "ENV GREETING=hi", "RUN echo \"$GREETING $WHO $EXTRA\" > /greeting.txt",
                "COPY notes.txt /srv/", 'ENTRYPOINT ["/bin/sh"]']
    step = {"kind": "dockerfile_commands", "repr": "dockerfile_commands([...])", "commands": commands,
            "context_sha": put_blob(builder, context_tar({"notes.txt": b"n"})), "build_args": {"WHO": "you"},
            "env": {"EXTRA": "extra"}}
    image, text = build(builder, spec(base(f"{reg}/test/python:v1"), step))
    assert read(image, "/greeting.txt") == b"hi you extra\n" and read(image, "/srv/notes.txt") == b"n"
    assert "command 3: RUN" in text
    assert image.env["GREETING"] == "hi" and "EXTRA" not in image.env and "WHO" not in image.env
    record = json.loads((builder.dir / image.image_id / "manifest.json").read_text())
    assert record["config"]["Entrypoint"] == ["/bin/sh"] and "Cmd" not in record["config"]


def test_run_commands_change_the_image_and_never_the_host(builder, reg):
    marker = "/etc/shoal-oci-build-test"
    assert not os.path.exists(marker)
    image, _ = build(builder, spec(base(f"{reg}/test/python:v1"),
                                   run(f"echo written > {marker}", "rm /etc/os-release", "mkdir -p /opt/tool")))
    assert read(image, marker) == b"written\n" and read(image, "/etc/os-release") is None
    assert os.path.isdir(resolve([Path(p) for p in image.layers], "/opt/tool")[1])
    assert not os.path.exists(marker) and os.path.exists("/etc/os-release")


def fetch_weights(path: str, text: str) -> None:
    """A run_function body: runs in the build container with the image's Python, shoal's runtime beside it."""
    import sys

    import cloudpickle  # the runtime's copy (the image has none): after the image's own packages on sys.path

    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(f"{text} {sys.version_info[:2]} {os.getuid()} {bool(cloudpickle)}")


def test_run_function_on_a_registry_image_writes_a_layer_and_leaves_no_mountpoints(builder, reg):
    from tests.integration.test_run_function import ensure

    image, log = ensure(builder, Image.from_registry(f"{reg}/test/python:v1").run_function(
        fetch_weights, args=("/opt/model/weights", "w8")))
    assert read(image, "/opt/model/weights") == b"w8 (3, 11) 0 True"
    layers = [Path(p) for p in image.layers]
    assert resolve(layers, "/.shoal")[1] is None and resolve(layers, "/.shoal/build")[1] is None  # no mountpoints
    assert not os.path.exists("/opt/model/weights")
    assert "run_function(" in log


def test_secrets_reach_the_step_and_stay_out_of_the_image(builder, reg):
    secret = "s3cret-value-7f1c"
    image, _ = build(builder, spec(base(f"{reg}/test/python:v1"),
                                   run('printf %s "$TOKEN" | wc -c > /checked', secret_env={"TOKEN": secret})))
    assert read(image, "/checked").strip() == str(len(secret)).encode() and "TOKEN" not in image.env
    for layer in image.layers:
        for dirpath, _, names in os.walk(layer):
            for name in names:
                path = os.path.join(dirpath, name)
                assert os.path.islink(path) or secret.encode() not in Path(path).read_bytes(), path
    assert secret not in (builder.dir / image.image_id / "manifest.json").read_text()


def test_hostile_names_in_a_local_tree_stay_out(builder, reg, tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, kind in (("ok.txt", tarfile.REGTYPE), ("../../escape.txt", tarfile.REGTYPE),
                           ("/abs.txt", tarfile.REGTYPE), ("link", tarfile.SYMTYPE)):
            info = tarfile.TarInfo(name)
            info.type, info.size = kind, 0 if kind == tarfile.SYMTYPE else 2
            info.linkname = "/etc" if kind == tarfile.SYMTYPE else ""
            tar.addfile(info, io.BytesIO(b"x\n") if kind == tarfile.REGTYPE else None)
    step = {"kind": "add_local_dir", "repr": "add_local_dir('d', '/data', copy=True)", "remote_path": "/data",
            "copy": True, "sha": put_blob(builder, buf.getvalue())}
    image, _ = build(builder, spec(base(f"{reg}/test/python:v1"), step))
    assert read(image, "/data/ok.txt") == b"x\n"
    for path in ("/escape.txt", "/data/escape.txt", "/abs.txt", "/data/abs.txt", "/data/link"):
        assert resolve([Path(p) for p in image.layers], path, follow=False)[1] is None, path
    assert not Path("/escape.txt").exists() and not Path("/abs.txt").exists()


def test_changing_a_step_rebuilds_from_that_step_only(builder, reg):
    def steps(last: str) -> list[dict[str, Any]]:
        return [base(f"{reg}/test/python:v1"), run("cat /proc/sys/kernel/random/uuid > /one"),
                run("cat /proc/sys/kernel/random/uuid > /two"), run(f"echo {last} > /three")]

    first, _ = build(builder, spec(*steps("a")))
    second, text = build(builder, spec(*steps("b")))
    assert second.layers[1:] == first.layers[1:]  # the base and steps 1 and 2: the same layers (top first)
    assert second.layers[0] != first.layers[0] and text.count("(cached)") == 2
    assert read(second, "/one") == read(first, "/one") and read(second, "/three") == b"b\n"
    forced, text = build(builder, spec(*steps("b"), force_base=True))
    assert text.count("(cached)") == 0 and read(forced, "/one") != read(first, "/one")


def test_images_built_at_once_run_a_shared_step_once(builder, reg):
    """Two images of one app on the same first steps, built in parallel (as an app's images are): the shared step
    runs once, the other build waits for its layer."""
    shared = run("cat /proc/sys/kernel/random/uuid > /shared", "sleep 1")
    a, b = spec(base(f"{reg}/test/python:v1"), shared, run("echo a > /own")), \
        spec(base(f"{reg}/test/python:v1"), shared, run("echo b > /own"))
    logs = Recorder(), Recorder()

    async def both():
        return await asyncio.gather(builder.ensure(a, logs[0]), builder.ensure(b, logs[1]))

    first, second = asyncio.run(both())
    assert read(first, "/shared") == read(second, "/shared") and first.layers[1] == second.layers[1]
    assert (read(first, "/own"), read(second, "/own")) == (b"a\n", b"b\n")
    assert sorted(log.text.count("(cached)") for log in logs) == [0, 1]


def test_a_failing_step_names_itself_and_ends_with_its_output(builder, reg):
    wire = spec(base(f"{reg}/test/python:v1"), run("echo fine"), run("echo preparing", "echo boom >&2; exit 3"))
    with pytest.raises(ImageBuildError) as info:
        build(builder, wire)
    message = str(info.value)
    assert message.startswith(f"Image build for {wire.image_id} failed at step 2, run_commands('echo preparing', ")
    assert "(exit status 3)" in message and message.rstrip().endswith("boom")
    assert not (builder.dir / wire.image_id / "manifest.json").exists()


def test_env_workdir_and_local_files(builder, reg, tmp_path):
    tree = context_tar({"pkg/__init__.py": b"X = 1\n", "pkg/data.txt": b"data"})
    steps = [base(f"{reg}/test/python:v1"),
             {"kind": "env", "repr": "env(...)", "vars": {"TOOL_HOME": "/opt/tool", "PATH": "/opt/tool/bin:$PATH"}},
             {"kind": "workdir", "repr": "workdir('/srv/app')", "path": "/srv/app"},
             {"kind": "add_local_dir", "repr": "add_local_dir('src', '/srv/app/src', copy=True)",
              "remote_path": "/srv/app/src", "copy": True, "sha": put_blob(builder, tree)},
             run("python3 -c 'import sys; sys.path.insert(0, \"src\"); import pkg; print(pkg.X)' > out.txt; "
                 "echo $TOOL_HOME >> out.txt")]

    def with_file(content: bytes) -> ImageSpec:
        return spec(*steps, {"kind": "add_local_file", "repr": "add_local_file('c.txt', '/etc/c.txt')",
                             "remote_path": "/etc/c.txt", "copy": False, "sha": put_blob(builder, content),
                             "mode": 0o600})

    image, _ = build(builder, with_file(b"one"))
    assert read(image, "/srv/app/out.txt") == b"1\n/opt/tool\n" and read(image, "/etc/c.txt") == b"one"
    assert image.workdir == "/srv/app" and image.env["PATH"].startswith("/opt/tool/bin:/usr/local/sbin")
    second, text = build(builder, with_file(b"two"))
    assert "(cached)" in text and read(second, "/etc/c.txt") == b"two" and second.layers[1:] == image.layers[1:]


def test_pip_install_with_the_images_python_and_a_container_on_the_result(builder, reg, tmp_path):
    wire = spec(base(f"{reg}/test/python:v1"),
                {"kind": "pip_install", "repr": "pip_install('six==1.17.0')", "packages": ["six==1.17.0"]},
                run("python3 -c 'import six; print(six.__version__)' > /six.txt"))
    image, _ = build(builder, wire)
    assert read(image, "/six.txt") == b"1.17.0\n"
    backend = LocalBackend(state_dir=tmp_path / "backend", netns_pool=0)
    code = ("import sys; sys.path[:0] = ['/.shoal/sdk']; sys.path.append('/.shoal/runtime'); "
            "import six, cloudpickle, shoal.runtime.worker; print('ran', six.__version__, sys.version_info[:2])")

    async def in_container() -> str:
        handle = await backend.start(ContainerSpec(
            container_id="ta-ocibuild1", function_id="fu-ocibuild", app_id="ap-ocibuild",
            definition=FunctionDefinition(tag="f"), env={}, image=image, idle=True), None)
        try:
            deadline = time.monotonic() + 30
            while (pid := sandbox_runtime(handle.pid)) is None:
                assert time.monotonic() < deadline, handle.exit_reason()
                await asyncio.sleep(0.05)
            proc = await asyncio.create_subprocess_exec(
                "nsenter", f"--target={pid}", "--user", "--mount", "--pid", "--root", "--wd", "--", image.python,
                "-c", code, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env={"PATH": "/usr/bin"})
            return (await asyncio.wait_for(proc.communicate(), 60))[0].decode()
        finally:
            handle.kill()
            await handle.wait()
            backend.shutdown()

    assert asyncio.run(in_container()).strip() == "ran 1.17.0 (3, 11)"


# -- Debian: apt_install -------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def debian_reg(tmp_path_factory, debian_oci_layout):  # noqa: F811
    """Debian bookworm (tests/integration/debian_image.py: built from Debian's archive with mmdebstrap, a minute
    or more, once per run) pushed to a registry on loopback."""
    tmp = tmp_path_factory.mktemp("debian")
    with registry(tmp / "registry") as address:
        push_layout(debian_oci_layout, LAYOUT_TAG, f"{address}/debian:v1")
        yield address


@pytest.mark.slow
def test_apt_install_installs_a_debian_package_in_the_image(builder, debian_reg):
    wire = spec(base(f"{debian_reg}/debian:v1"),
                {"kind": "apt_install", "repr": "apt_install('jq')", "packages": ["jq"]},
                run("echo '{\"a\": 41}' | jq '.a + 1' > /answer.txt"))
    t0 = time.monotonic()
    image, text = build(builder, wire)
    print(f"apt_install('jq') on debian_slim: {time.monotonic() - t0:.1f} s")
    assert read(image, "/answer.txt") == b"42\n"
    assert "Setting up jq" in text
    assert read(image, "/var/lib/dpkg/info/jq.list") is not None
    assert not os.path.exists("/answer.txt")


# -- through the SDK and a real control plane ----------------------------------------------------------------------
APP = '''
import shoal as modal

image = (modal.Image.from_registry("{tag}").pip_install("six==1.17.0")
         .dockerfile_commands("ENV GREETING=hello", "RUN echo built > /etc/built.txt"))
app = modal.App("oci-images-e2e", image=image)


@app.function()
def where():
    import os
    import sys

    import six
    return six.__version__, sys.version_info[:2], os.environ["GREETING"], open("/etc/built.txt").read().strip()


if __name__ == "__main__":
    with app.run():
        print("RESULT", where.remote())
'''


def test_an_app_on_a_registry_image_builds_it_and_runs_there(control_plane, reg, tmp_path):
    from tests.conftest import run_script

    script = tmp_path / "oci_app.py"
    script.write_text(APP.format(tag=f"{reg}/test/python:v1"))
    proc = run_script(script, timeout=600)
    assert "RESULT ('1.17.0', (3, 11), 'hello', 'built')" in proc.stdout, proc.stdout + proc.stderr
    assert "=> Step 1: pip_install('six==1.17.0')" in proc.stderr  # the build's output reached the caller
    again = run_script(script, timeout=300)
    assert "RESULT ('1.17.0', (3, 11), 'hello', 'built')" in again.stdout, again.stdout + again.stderr
    assert "Building image" not in again.stderr  # built once


NAMED_SECRET_APP = '''
import shoal as modal

image = modal.Image.from_registry("{tag}", secret=modal.Secret.from_name("{secret}")).run_commands(
    "echo $REGISTRY_USERNAME > /etc/build-user", secrets=[modal.Secret.from_name("{secret}")])
app = modal.App("oci-named-secret", image=image)


@app.function()
def marker():
    return open("/etc/shoal-test-image").read().strip() + " " + open("/etc/build-user").read().strip()


if __name__ == "__main__":
    with app.run():
        print("RESULT", marker.remote())
'''


def test_a_named_registry_secret_is_read_by_the_control_plane(control_plane, private_reg, tmp_path):
    """`from_registry(tag, secret=Secret.from_name(...))`, as Modal programs write it: the control plane reads the
    named secret's REGISTRY_USERNAME/REGISTRY_PASSWORD when it builds (and a build step's named `secrets`); a
    missing one is a clear error."""
    from shoal.secret import Secret
    from tests.conftest import run_script

    Secret.objects.create("oci-private-creds", {"REGISTRY_USERNAME": "builder", "REGISTRY_PASSWORD": "s3cret"},
                          allow_existing=True)
    script = tmp_path / "named.py"
    script.write_text(NAMED_SECRET_APP.format(tag=f"{private_reg}/private/python:v1", secret="oci-private-creds"))
    proc = run_script(script, timeout=600)
    assert "RESULT shoal test image builder" in proc.stdout, proc.stdout + proc.stderr
    script.write_text(NAMED_SECRET_APP.format(tag=f"{private_reg}/private/python:v1", secret="no-such-secret"))
    proc = run_script(script, timeout=300)
    assert proc.returncode != 0 and "secret 'no-such-secret' not found" in proc.stderr, proc.stderr


VENV_NAMED_SECRET_APP = '''
import shoal as modal

image = modal.Image.debian_slim().run_commands("echo $BUILD_TOKEN > /root/token.txt",
                                               secrets=[modal.Secret.from_name("venv-build-secret")])
app = modal.App("venv-named-secret", image=image)


@app.function()
def token():
    return open("/root/token.txt").read().strip()


if __name__ == "__main__":
    with app.run():
        print("RESULT", token.remote())
'''


def test_a_named_secret_reaches_a_venv_images_build_step(control_plane, tmp_path):
    from shoal.secret import Secret
    from tests.conftest import run_script

    Secret.objects.create("venv-build-secret", {"BUILD_TOKEN": "t0k3n"}, allow_existing=True)
    script = tmp_path / "venv_named.py"
    script.write_text(VENV_NAMED_SECRET_APP)
    proc = run_script(script, timeout=600)
    assert "RESULT t0k3n" in proc.stdout, proc.stdout + proc.stderr
