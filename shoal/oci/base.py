"""The base image: `debian_slim(python_version)`, a Debian bookworm root filesystem assembled from Debian's archive.

Why from the archive (docs/oci.md): it must work on a machine that reaches package archives and no container
registry. mmdebstrap (Debian's own tool for this) builds a minbase bookworm with apt, ca-certificates and the
Python, as one layer; docs, man pages and locales are left out as in Debian's slim images; apt lists are removed
(the image is bare: a build's `apt_install` runs `apt-get update` first). The result is a normal OCI image in the
layer store, cached by content: suite, mirror, package list, architecture, recipe version and, for a copied
interpreter, its exact build.

Where Python comes from:
  * 3.11 -> bookworm's own python3 (3.11.2), as Debian ships it (PEP 668 "externally managed").
  * other versions -> an interpreter installed on this machine under `pyenv root`/versions/X.Y.Z (the newest
    X.Y.Z), copied to /usr/local; the Debian packages of the shared libraries its stdlib extensions link to are
    installed, and `python3 -c 'import ssl, sqlite3, …'` is run inside the new root to prove it works there.
    pyenv builds on this machine link against bookworm's libraries, which is what makes the copy valid.
  * anything else -> BaseImageError naming the version, what exists and how to get it.
Either way `/usr/local/bin/python` and `/usr/local/bin/python3` are the image's Python.

Built once per machine: with `cache` (the builder passes `default_cache()`, SHOAL_BASE_CACHE), the base is kept
there as an OCI layout per recipe key with its layer unpacked beside it, and a store that lacks it links both
(hard links) instead of building or unpacking; a file lock makes concurrent first builds one.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from shoal.oci.layout import OCI_MANIFEST, LayoutWriter, store_image
from shoal.oci.store import Image, LayerStore

RECIPE_VERSION = 2  # bump when the recipe below changes what a base image contains
SUITE = "bookworm"
ARCH = "amd64"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEBIAN_PYTHON = "3.11"
BASE_PACKAGES = ("ca-certificates",)
# what CPython's stdlib extension modules link to (ssl, sqlite3, ctypes, lzma, bz2, readline, curses, uuid, dbm, …)
PYTHON_RUNTIME_PACKAGES = ("libbz2-1.0", "libcrypt1", "libexpat1", "libffi8", "libgdbm6", "libgdbm-compat4",
                           "liblzma5", "libncursesw6", "libnsl2", "libreadline8", "libsqlite3-0", "libssl3",
                           "libtinfo6", "libtirpc3", "libuuid1", "zlib1g")
SLIM_EXCLUDES = ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/info/*", "/usr/share/locale/*",
                 "/usr/share/lintian/*", "/usr/share/linda/*")
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_SMOKE = "import ssl, sqlite3, ctypes, lzma, bz2, zlib, uuid, decimal, hashlib, json; print('ok')"
_VERSION = re.compile(r"^3\.(\d+)(?:\.(\d+))?$")


class BaseImageError(Exception):
    """The base image cannot be built here; the message says what is missing."""


def _pyenv_root() -> Path | None:
    root = os.environ.get("PYENV_ROOT")
    if root:
        return Path(root)
    if shutil.which("pyenv"):
        out = subprocess.run(["pyenv", "root"], capture_output=True, text=True)
        if out.returncode == 0 and out.stdout.strip():
            return Path(out.stdout.strip())
    default = Path.home() / ".pyenv"
    return default if default.is_dir() else None


def find_interpreter(version: str) -> Path:
    """The prefix of the newest pyenv-installed CPython matching `version` (X.Y or X.Y.Z)."""
    m = _VERSION.match(version)
    if not m:
        raise BaseImageError(f"python_version {version!r}: expected 3.X or 3.X.Y")
    root = _pyenv_root()
    versions = root / "versions" if root else None
    found: list[tuple[tuple[int, ...], Path]] = []
    if versions and versions.is_dir():
        for d in versions.iterdir():
            parts = d.name.split(".")
            if len(parts) == 3 and all(p.isdigit() for p in parts) and (d / "bin" / "python3").exists():
                if d.name == version or ".".join(parts[:2]) == version:
                    found.append((tuple(int(p) for p in parts), d))
    if not found:
        have = sorted(d.name for d in versions.iterdir()) if versions and versions.is_dir() else []
        where = f"under {versions}" if versions else "(no pyenv on this machine)"
        raise BaseImageError(
            f"Python {version} cannot be provided on this machine: Debian {SUITE}'s python3 is {DEBIAN_PYTHON}, "
            f"and no CPython {version} is installed {where} (have: {', '.join(have) or 'none'}). Install it "
            f"with `pyenv install {version}`, or use python_version={DEBIAN_PYTHON!r}.")
    return max(found)[1]


def _recipe(python_version: str, mirror: str) -> tuple[dict, Path | None]:
    if python_version == DEBIAN_PYTHON:
        return {"python": "debian", "packages": sorted({*BASE_PACKAGES, "python3"})}, None
    prefix = find_interpreter(python_version)
    minor = ".".join(prefix.name.split(".")[:2])
    libs = sorted(prefix.glob(f"lib/libpython{minor}*.so*"))
    build = hashlib.sha256()  # the install's identity, cheaply: a reinstall changes sizes and mtimes
    for f in [prefix / "bin" / f"python{minor}", *libs]:
        if f.is_file() and not f.is_symlink():
            st = f.stat()
            build.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return {"python": prefix.name, "python_build": build.hexdigest(),
            "packages": sorted({*BASE_PACKAGES, *PYTHON_RUNTIME_PACKAGES})}, prefix


def _copy_python_hook(prefix: Path) -> list[str]:
    """mmdebstrap hooks (run with the new root as $1) that install the interpreter at /usr/local and check it."""
    minor = ".".join(prefix.name.split(".")[:2])
    lib = f"/usr/local/lib/python{minor}"
    return [
        f'cp -a {prefix}/. "$1/usr/local/"',
        f'rm -rf "$1{lib}/test" "$1{lib}/idlelib" "$1{lib}/tkinter" "$1{lib}/turtledemo"'
        f' "$1{lib}"/lib-dynload/_tkinter* "$1/usr/local/bin/idle"* "$1/usr/local/lib/pkgconfig"',
        f'rm -f "$1{lib}"/config-*/libpython*.a',  # the static library (60 MB): only for embedding at link time
        # site-packages as a fresh install has it: pip only, nothing this machine added (.pth files, tools)
        f'find "$1{lib}/site-packages" -mindepth 1 -maxdepth 1 ! -name pip ! -name "pip-*" ! -name README.txt'
        ' -exec rm -rf {} +',
        # console scripts name pyenv's path in their #! line
        f'for f in "$1"/usr/local/bin/*; do [ -f "$f" ] && [ ! -L "$f" ] &&'
        f' sed -i "1s|^#!{prefix}/bin/|#!/usr/local/bin/|" "$f" || true; done',
        f'ln -sf python{minor} "$1/usr/local/bin/python3"; ln -sf python{minor} "$1/usr/local/bin/python"',
        'chroot "$1" ldconfig',
        f'chroot "$1" /usr/local/bin/python3 -c "{_SMOKE}"',
    ]


def default_cache() -> Path:
    """The machine's base-image cache, shared by every control plane (state directory) of this machine:
    `SHOAL_BASE_CACHE`, else /var/cache/shoal/base for root, else ~/.cache/shoal/base."""
    if os.environ.get("SHOAL_BASE_CACHE"):
        return Path(os.environ["SHOAL_BASE_CACHE"])
    if os.geteuid() == 0:
        return Path("/var/cache/shoal/base")
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "shoal" / "base"


def _identity(python_version: str, mirror: str | None) -> tuple[str, str, dict, Path | None, str]:
    """(cache key, store name, recipe, interpreter to copy or None, mirror) of the base for this Python."""
    mirror = mirror or os.environ.get("SHOAL_DEBIAN_MIRROR") or DEFAULT_MIRROR
    recipe, prefix = _recipe(python_version, mirror)
    recipe.update({"suite": SUITE, "arch": ARCH, "mirror": mirror, "recipe": RECIPE_VERSION})
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:32]
    return key, f"shoal/debian-slim:{python_version}-{key}", recipe, prefix, mirror


def debian_slim(store: LayerStore, python_version: str = DEBIAN_PYTHON, *, mirror: str | None = None,
                log: Callable[[str], None] | None = None, cache: Path | None = None) -> Image:
    """The base image for this Python: from the store if there, else from `cache` (an OCI layout per recipe, so
    state directories of one machine build it once), else built now (a minute or more) and added to `cache`."""
    key, name, recipe, prefix, mirror = _identity(python_version, mirror)
    cached = store.get(name)
    if cached is not None and all(store.layer_path(x.diff_id).is_dir() for x in cached.layers):
        return cached
    if cache is None:
        return _build(store, name, recipe, prefix, mirror, log)
    layout = cache / key
    with _cache_lock(cache, key):  # one build per machine; the others wait and import it
        if not (layout / "index.json").is_file():
            image = _build(store, name, recipe, prefix, mirror, log)
            _export(store, image, layout)
            return image
    return _import(store, layout, name)


def cache_base(python_version: str, cache: Path, id_shift: int, *, log: Callable[[str], None] | None = None) -> None:
    """Makes sure `cache` holds the base for this Python, building it (in a scratch store whose unpacked layer,
    shifted by `id_shift`, the cache keeps) where it does not; a base already there is not read."""
    if (cache / _identity(python_version, None)[0] / "index.json").is_file():
        return
    with tempfile.TemporaryDirectory(prefix="shoal-base-") as tmp:
        debian_slim(LayerStore(tmp, id_shift=id_shift), python_version, log=log, cache=cache)


@contextlib.contextmanager
def _cache_lock(cache: Path, key: str) -> Iterator[None]:
    """The cache's lock for one base, once the cache is known to be this user's alone: what it holds becomes
    containers' root filesystems without being unpacked and checked again."""
    cache.mkdir(parents=True, exist_ok=True)
    st = cache.stat()
    if st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise BaseImageError(f"the base-image cache {cache} (SHOAL_BASE_CACHE) must belong to this user and be "
                             "writable by it alone: the layers it holds become containers' root filesystems")
    fd = os.open(cache / f".{key}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _link(src: Path, dst: Path) -> None:
    """dst as a hard link to src (blobs are immutable), or a copy across file systems."""
    if dst.exists():
        return
    tmp = dst.with_name(f".{dst.name}.{uuid.uuid4().hex}")  # unique: builds run in threads of one process
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def _link_tree(src: Path, dst: Path) -> None:
    """dst as a tree of hard links to src's files (a few hundred ms for the base's ~8,000 files, where unpacking
    its gzip layer takes seconds); nothing where that cannot be done (another file system: the store unpacks)."""
    work = dst.with_name(f".{dst.name}.{uuid.uuid4().hex}")
    if subprocess.run(["cp", "-al", str(src), str(work)], capture_output=True).returncode != 0:
        shutil.rmtree(work, ignore_errors=True)
        return
    try:
        os.rename(work, dst)
    except OSError:
        shutil.rmtree(work, ignore_errors=True)  # another process placed the same layer first


def _share_layers(store: LayerStore, image: Image, layout: Path) -> None:
    """Unpacked layers between the store and the cache (per uid shift: a layer's files belong to the shifted ids),
    whichever has them: a state directory that imports the base links them instead of unpacking them."""
    shared = layout / f"unpacked-{store.id_shift}"
    shared.mkdir(exist_ok=True)
    for layer in image.layers:
        mine, theirs = store.layer_path(layer.diff_id), shared / layer.diff_id.split(":", 1)[1]
        if mine.is_dir() and not theirs.is_dir():
            _link_tree(mine, theirs)
        elif theirs.is_dir() and not mine.is_dir():
            _link_tree(theirs, mine)


def _export(store: LayerStore, image: Image, layout: Path) -> None:
    """The stored image as an OCI layout at `layout` (written aside, renamed into place when complete)."""
    work = layout.with_name(f".{layout.name}.{uuid.uuid4().hex}")
    writer = LayoutWriter(work)
    for digest in image.blob_digests:
        _link(store.blob_path(digest), work / "blobs" / "sha256" / digest.split(":", 1)[1])
    writer.tag("base", {"mediaType": OCI_MANIFEST, "digest": image.manifest_digest,
                        "size": store.blob_path(image.manifest_digest).stat().st_size})
    os.rename(work, layout)
    _share_layers(store, image, layout)


def _import(store: LayerStore, layout: Path, name: str) -> Image:
    """The base image from the machine's cache into this store: blobs linked, layers linked from the cache's
    unpacked copy when it has one, else unpacked (and checked against their diff ids) by the store as for a pull."""
    digest = json.loads((layout / "index.json").read_text())["manifests"][0]["digest"]
    with store.lock():
        for blob in (layout / "blobs" / "sha256").iterdir():
            _link(blob, store.blobs / "sha256" / blob.name)
        config = store.read_json_blob(store.read_json_blob(digest)["config"]["digest"])
        for diff_id in config["rootfs"]["diff_ids"]:
            shared = layout / f"unpacked-{store.id_shift}" / diff_id.split(":", 1)[1]
            if shared.is_dir() and not store.layer_path(diff_id).is_dir():
                _link_tree(shared, store.layer_path(diff_id))
        image = store.record(name, digest)
    _share_layers(store, image, layout)  # the first store with this uid shift gives the cache its copy
    return image


def _build(store: LayerStore, name: str, recipe: dict, prefix: Path | None, mirror: str,
           log: Callable[[str], None] | None) -> Image:
    if shutil.which("mmdebstrap") is None:
        raise BaseImageError("building the Debian base image needs mmdebstrap (Debian package `mmdebstrap`)")
    if os.geteuid() != 0:
        raise BaseImageError("building the Debian base image runs mmdebstrap as root (it keeps file ownership)")
    if log is not None:
        log(f"Building {name} from {mirror} with mmdebstrap (a minute or more, once per machine)")
    work = store.scratch_dir("base-")
    try:
        rootfs = work / "rootfs"
        hooks = ['ln -sf /usr/bin/python3 "$1/usr/local/bin/python"',
                 'ln -sf /usr/bin/python3 "$1/usr/local/bin/python3"']
        if prefix is not None:
            hooks = _copy_python_hook(prefix)
        cmd = ["mmdebstrap", "--mode=root", "--variant=minbase", f"--architectures={ARCH}",
               f"--include={','.join(recipe['packages'])}", "--aptopt=Acquire::Languages \"none\"",
               *(f"--dpkgopt=path-exclude={p}" for p in SLIM_EXCLUDES),
               "--dpkgopt=path-include=/usr/share/doc/*/copyright",
               *(f"--customize-hook={h}" for h in hooks), SUITE, str(rootfs), mirror]
        started = time.monotonic()
        env = {**os.environ, "SOURCE_DATE_EPOCH": "1700000000"}  # reproducible timestamps where Debian honours it
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise BaseImageError(f"mmdebstrap failed (exit status {proc.returncode}):\n{proc.stderr[-4000:]}")
        for entry in (rootfs / "dev").iterdir():  # the runtime gives containers their /dev; layers hold no devices
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        for host_file in ("etc/resolv.conf", "etc/hostname"):  # mmdebstrap copies the host's; the runtime gives its own
            (rootfs / host_file).unlink(missing_ok=True)
        tar = work / "layer.tar"
        subprocess.run(["tar", "--numeric-owner", "--xattrs", "--xattrs-include=security.capability",
                        "--sort=name", "-C", str(rootfs), "-cf", str(tar), "."], check=True, capture_output=True)
        shutil.rmtree(rootfs)
        config = {"Env": [PATH_ENV, "LANG=C.UTF-8"], "Cmd": ["/usr/local/bin/python3"],
                  "Labels": {"org.shoal.base.recipe": json.dumps(recipe, sort_keys=True)}}
        image = store_image(store, name, [tar], config)
        if log is not None:
            log(f"built {name} in {time.monotonic() - started:.0f} s")
        return image
    finally:
        shutil.rmtree(work, ignore_errors=True)
