"""Small OCI images with a real root filesystem, made from this machine's own Debian files: no network, no registry.

`python` image (two layers, bottom first):
  1. base: merged-/usr symlinks, /etc (passwd, group, os-release naming the test image, a marker file),
     /bin/sh (dash) and a few coreutils with the shared libraries `ldd` lists, the C and C++ runtime libraries
     (libc6, libgcc-s1, libstdc++6 as in Debian's images: wheels link to libpthread & co.), empty /tmp /root
     /proc /sys /dev
  2. python: Debian's /usr/bin/python3.11 and /usr/lib/python3.11 (no test/idle/tkinter/config), with the
     libraries it and its extension modules link to
`nopython` image: layer 1 alone.

The tars are built once per test run and shared by pytest-xdist workers (a directory next to the workers' base
temp dirs, guarded by a file lock); `store_test_image` puts an image into a LayerStore, `write_layout` writes an
OCI layout directory for `skopeo copy oci:DIR:TAG docker://127.0.0.1:PORT/...` (tests/integration/oci_registry.py).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import os
import re
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from shoal.oci.layout import LayoutWriter, store_image
from shoal.oci.store import Image, LayerStore

RECIPE = 3  # bump when what goes into the tars changes
PYTHON_BIN = "/usr/bin/python3.11"
PYTHON_LIB = "/usr/lib/python3.11"
PYTHON_VERSION = "3.11"
IMAGE_PYTHON = "/usr/bin/python3"  # the image's Python, inside it
MARKER = "/etc/shoal-test-image"  # a file only the test images have
OS_RELEASE = 'PRETTY_NAME="shoal test rootfs"\nNAME="shoal-test"\nID=shoal-test\n'
# the shared libraries of Debian's libc6 (no gconv modules), libgcc-s1 and libstdc++6, as a Debian image has them
SYSTEM_LIBS = ("ld-linux-x86-64.so.2", "libc.so.6", "libm.so.6", "libdl.so.2", "libpthread.so.0", "librt.so.1",
               "libutil.so.1", "libresolv.so.2", "libanl.so.1", "libnss_files.so.2", "libnss_dns.so.2",
               "libgcc_s.so.1", "libstdc++.so.6")
TOOLS = ("sh", "dash", "ls", "cat", "echo", "mkdir", "rm", "rmdir", "touch", "id", "env", "sleep", "stat",
         "readlink", "true", "false", "mv", "cp", "chmod", "chown", "ln", "head", "tail", "wc", "grep", "sed",
         "[", "test", "uname", "whoami", "printf", "sort", "tr", "dd", "find", "du", "df", "pwd", "basename",
         "dirname", "tee", "mknod", "hostname")
_SKIP_STDLIB = re.compile(r"^(test|idlelib|tkinter|turtledemo|lib2to3|ensurepip|config-.*|pydoc_data)$")
_SKIP_DYNLOAD = re.compile(r"^(_test|_tkinter|xxlimited|_xxtestfuzz|_ctypes_test)")
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CONFIG = {"Env": [PATH_ENV, "LANG=C.UTF-8"], "Cmd": ["/bin/sh"]}
MTIME = 1_700_000_000
_MULTIARCH = f"{os.uname().machine}-linux-gnu"


def unavailable() -> str:
    """'' when this machine can make the images, else why not (for a skip reason)."""
    if os.geteuid() != 0:
        return "the layer store keeps ownership: it runs as root"
    missing = [p for p in (PYTHON_BIN, PYTHON_LIB, "/usr/bin/ldd", "/bin/sh") if not os.path.exists(p)]
    return f"missing on this machine: {', '.join(missing)}" if missing else ""


class _TarBuilder:
    """A deterministic layer tar of host paths, owned by root, symlinks on the way (merged /usr) kept as symlinks."""

    def __init__(self) -> None:
        self.buf = io.BytesIO()
        self.tf = tarfile.open(fileobj=self.buf, mode="w", format=tarfile.PAX_FORMAT)  # noqa: SIM115
        self.done: set[str] = set()

    def _info(self, name: str, st: os.stat_result | None = None) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name.lstrip("/"))
        info.mtime = MTIME
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        if st is not None:
            info.mode = stat.S_IMODE(st.st_mode)
        return info

    def directory(self, path: str, mode: int = 0o755) -> None:
        parent = os.path.dirname(path.rstrip("/"))
        if parent not in ("", "/"):
            self.directory(parent)
        if path in self.done:
            return
        self.done.add(path)
        info = self._info(path)
        info.type, info.mode = tarfile.DIRTYPE, mode
        self.tf.addfile(info)

    def data(self, path: str, content: bytes, mode: int = 0o644) -> None:
        self.directory(os.path.dirname(path))
        self.done.add(path)
        info = self._info(path)
        info.size, info.mode = len(content), mode
        self.tf.addfile(info, io.BytesIO(content))

    def symlink(self, path: str, target: str) -> None:
        self.directory(os.path.dirname(path))
        if path in self.done:
            return
        self.done.add(path)
        info = self._info(path)
        info.type, info.linkname = tarfile.SYMTYPE, target
        self.tf.addfile(info)

    def host(self, path: str) -> None:
        """Adds the host's `path` as the container sees it: every symlink on the way becomes a symlink entry and
        its target is added too, so `/lib64/ld-linux…` resolves inside the image as on the host."""
        path = os.path.normpath(path)
        walked = ""
        for part in path.strip("/").split("/"):
            walked = f"{walked}/{part}"
            st = os.lstat(walked)
            if stat.S_ISLNK(st.st_mode):
                target = os.readlink(walked)
                self.symlink(walked, target)
                rest = path[len(walked):]
                self.host(os.path.join(os.path.dirname(walked), target) + rest)
                return
        if path in self.done:
            return
        st = os.lstat(path)
        if stat.S_ISDIR(st.st_mode):
            self.directory(path, stat.S_IMODE(st.st_mode))
            return
        self.directory(os.path.dirname(path))
        self.done.add(path)
        info = self._info(path, st)
        info.size = st.st_size
        info.mtime = int(st.st_mtime)  # as on the host: bytecode in __pycache__ is checked against it
        with open(path, "rb") as f:
            self.tf.addfile(info, f)

    def tree(self, root: str, skip_dir: re.Pattern[str] | None = None,
             skip_file: re.Pattern[str] | None = None) -> None:
        for dirpath, dirnames, filenames in os.walk(root):
            if dirpath == root and skip_dir is not None:
                dirnames[:] = [d for d in dirnames if not skip_dir.match(d)]
            dirnames.sort()
            self.host(dirpath)
            for name in sorted(filenames):
                if skip_file is not None and skip_file.match(name):
                    continue
                self.host(os.path.join(dirpath, name))
            for name in dirnames:
                if os.path.islink(os.path.join(dirpath, name)):
                    self.host(os.path.join(dirpath, name))

    def close(self) -> bytes:
        self.tf.close()
        return self.buf.getvalue()


def _libraries(binaries: list[str]) -> list[str]:
    """The shared libraries `ldd` lists for these binaries (and the dynamic loader)."""
    found: set[str] = set()
    for chunk in range(0, len(binaries), 50):
        out = subprocess.run(["ldd", *binaries[chunk:chunk + 50]], capture_output=True, text=True).stdout
        for line in out.splitlines():
            m = re.search(r"(?:=>\s*)?(/\S+)\s+\(0x", line)
            if m:
                found.add(m.group(1))
    return sorted(found)


def _base_tar() -> bytes:
    t = _TarBuilder()
    for link, target in (("/bin", "usr/bin"), ("/lib", "usr/lib"), ("/lib64", "usr/lib64"), ("/sbin", "usr/sbin")):
        t.directory(f"/{target}")
        t.symlink(link, target)
    for d, mode in (("/tmp", 0o1777), ("/var/tmp", 0o1777), ("/root", 0o700), ("/home", 0o755), ("/proc", 0o555),
                    ("/sys", 0o555), ("/dev", 0o755), ("/run", 0o755), ("/usr/local/bin", 0o755),
                    ("/home/app", 0o755)):
        t.directory(d, mode)
    t.data("/etc/passwd", b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n"
                          b"nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n")
    t.data("/etc/group", b"root:x:0:\napp:x:1000:\nnogroup:x:65534:\n")
    t.data("/etc/os-release", OS_RELEASE.encode())
    t.data(MARKER, b"shoal test image\n")
    tools = [p for p in (f"/usr/bin/{name}" for name in TOOLS) if os.path.exists(p)]
    libs = [p for p in (f"/usr/lib/{_MULTIARCH}/{name}" for name in SYSTEM_LIBS) if os.path.exists(p)]
    for path in [*tools, *libs, *_libraries([os.path.realpath(p) for p in tools])]:
        t.host(path)
    return t.close()


def _python_tar(base: set[str]) -> bytes:
    t = _TarBuilder()
    t.done |= base  # what layer 1 holds already: directories are not repeated, libraries not copied twice
    t.tree(PYTHON_LIB, skip_dir=_SKIP_STDLIB, skip_file=None)
    dynload = os.path.join(PYTHON_LIB, "lib-dynload")
    for name in sorted(os.listdir(dynload)):
        if not _SKIP_DYNLOAD.match(name):
            t.host(os.path.join(dynload, name))
    t.host(PYTHON_BIN)
    t.symlink(IMAGE_PYTHON, os.path.basename(PYTHON_BIN))
    if os.path.isdir("/etc/python3.11"):  # Debian's sitecustomize.py is a symlink to it
        t.tree("/etc/python3.11")
    exts = [os.path.join(dynload, n) for n in os.listdir(dynload) if n.endswith(".so") and not _SKIP_DYNLOAD.match(n)]
    for lib in _libraries([PYTHON_BIN, *exts]):
        t.host(lib)
    return t.close()


def _base_paths(tar: bytes) -> set[str]:
    with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
        return {"/" + m.name for m in tf.getmembers()}


def _cache_key() -> str:
    h = hashlib.sha256(str(RECIPE).encode())
    for p in (PYTHON_BIN, *(f"/usr/bin/{t}" for t in TOOLS)):
        with contextlib.suppress(OSError):
            st = os.stat(p)
            h.update(f"{p}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def build_tars(cache_dir: Path) -> dict[str, Path]:
    """The layer tars ({"base": …, "python": …}) under `cache_dir`, built unless a previous caller built them."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    out = cache_dir / f"rootfs-{_cache_key()}"
    paths = {"base": out / "base.tar", "python": out / "python.tar"}
    fd = os.open(cache_dir / ".rootfs.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if not all(p.is_file() for p in paths.values()):
            out.mkdir(exist_ok=True)
            base = _base_tar()
            python = _python_tar(_base_paths(base))
            for key, data in (("base", base), ("python", python)):
                tmp = paths[key].with_suffix(".tmp")
                tmp.write_bytes(data)
                os.replace(tmp, paths[key])
    finally:
        os.close(fd)
    return paths


def image_tars(tars: dict[str, Path], kind: str) -> list[Path]:
    """The layer tars of the image `kind` ("python" or "nopython"), bottom first."""
    if kind == "python":
        return [tars["base"], tars["python"]]
    if kind == "nopython":
        return [tars["base"]]
    raise ValueError(f"kind {kind!r}: expected 'python' or 'nopython'")


def store_test_image(store: LayerStore, tars: dict[str, Path], kind: str = "python", *,
                     name: str | None = None, config: dict | None = None) -> Image:
    """Records the test image in the store (layers unpacked: `store.lowerdirs(image)` are its directories)."""
    return store_image(store, name or f"shoal-test/{kind}:latest", list(image_tars(tars, kind)),
                       config if config is not None else CONFIG)


def write_layout(root: Path, tars: dict[str, Path], kind: str = "python", *, tag: str = "latest",
                 config: dict | None = None) -> Path:
    """An OCI image layout directory holding the test image as `tag`; push it with
    `skopeo copy --dest-tls-verify=false oci:ROOT:TAG docker://127.0.0.1:PORT/NAME:TAG`."""
    writer = LayoutWriter(root)
    layers = [writer.add_layer(t) for t in image_tars(tars, kind)]
    writer.tag(tag, writer.add_image(layers, config if config is not None else CONFIG))
    return root


@pytest.fixture(scope="session")
def rootfs_tars(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The test images' layer tars, built once per run (shared by xdist workers: their base temp dirs' parent)."""
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    return build_tars(shared / "rootfs-images")
