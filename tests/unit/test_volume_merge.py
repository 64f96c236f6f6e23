"""The merge of a container's overlay upper directory into a new volume version (shoal/controlplane/volume_fs.py),
on real directories: whiteouts are real 0:0 character devices (os.mknod, as root), opaque directories carry
the real xattr, and one test lets the kernel's overlayfs write the upper directory itself."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from shoal.controlplane import volume_fs as vfs
from shoal.controlplane.volumes import VolumeStorage, commit_upper, load_manifest

root_only = pytest.mark.skipif(os.geteuid() != 0 or sys.platform != "linux",
                               reason="whiteouts (mknod) and trusted xattrs need root on Linux")


def tree(root: Path) -> dict[str, str]:
    """{relative path: content, 'dir' or '-> target'} of everything below `root`."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = "-> " + os.readlink(p)
            elif p.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = p.read_text()
    return out


def write(root: Path, files: dict[str, str]) -> None:
    for rel, content in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if content == "dir":
            p.mkdir(exist_ok=True)
        else:
            p.write_text(content)


def whiteout(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mknod(path, stat.S_IFCHR | 0o000, os.makedev(0, 0))


def opaque_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    os.setxattr(path, "trusted.overlay.opaque", b"y")


def merge(upper: Path, base: Path, target: Path, manifest: dict | None = None) -> dict:
    vfs.clone_tree(str(base), str(target))
    changes, gone = vfs.scan_upper(str(upper), manifest or {})
    return vfs.apply_upper(str(upper), str(target), changes, gone, manifest or {}, None)


@pytest.fixture
def base(tmp_path: Path) -> Path:
    b = tmp_path / "v0"
    b.mkdir()
    write(b, {"keep.txt": "keep", "edit.txt": "old", "gone.txt": "gone", "olddir/a.txt": "a", "olddir/sub/b.txt": "b",
              "replaced/old.txt": "old", "f2d": "was a file", "d2f/x.txt": "x"})
    return b


def test_clone_tree_hard_links_files_and_copies_directories(base: Path, tmp_path: Path) -> None:
    os.chmod(base / "olddir", 0o750)
    copy = tmp_path / "copy"
    vfs.clone_tree(str(base), str(copy))
    assert tree(copy) == tree(base)
    assert os.stat(copy / "keep.txt").st_ino == os.stat(base / "keep.txt").st_ino
    assert os.stat(copy / "olddir").st_ino != os.stat(base / "olddir").st_ino
    assert stat.S_IMODE(os.stat(copy / "olddir").st_mode) == 0o750


@root_only
def test_new_changed_and_deleted_entries(base: Path, tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    write(upper, {"new.txt": "new", "newdir/n.txt": "n", "empty": "dir", "edit.txt": "edited"})
    whiteout(upper / "gone.txt")
    whiteout(upper / "olddir")  # a whole directory of the version removed
    (upper / "link").symlink_to("keep.txt")
    target = tmp_path / "v1"
    merge(upper, base, target)
    assert tree(target) == {"keep.txt": "keep", "edit.txt": "edited", "new.txt": "new", "newdir": "dir",
                            "newdir/n.txt": "n", "empty": "dir", "link": "-> keep.txt", "replaced": "dir",
                            "replaced/old.txt": "old", "f2d": "was a file", "d2f": "dir", "d2f/x.txt": "x"}
    # The base version is untouched: changed files are new inodes, never writes into shared ones.
    assert (base / "edit.txt").read_text() == "old" and (base / "gone.txt").exists()
    assert os.stat(target / "edit.txt").st_ino != os.stat(base / "edit.txt").st_ino
    assert os.stat(target / "keep.txt").st_ino == os.stat(base / "keep.txt").st_ino


@root_only
def test_opaque_directory_replaces_the_versions(base: Path, tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    opaque_dir(upper / "replaced")
    write(upper, {"replaced/new.txt": "new"})
    target = tmp_path / "v1"
    merge(upper, base, target)
    assert {k: v for k, v in tree(target).items() if k.startswith("replaced")} == {
        "replaced": "dir", "replaced/new.txt": "new"}


@root_only
def test_type_changes(base: Path, tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    opaque_dir(upper / "f2d")  # overlayfs marks a directory made over a whiteout opaque
    write(upper, {"f2d/inside.txt": "inside", "d2f": "now a file"})
    target = tmp_path / "v1"
    merge(upper, base, target)
    t = tree(target)
    assert t["f2d"] == "dir" and t["f2d/inside.txt"] == "inside"
    assert t["d2f"] == "now a file" and "d2f/x.txt" not in t


@root_only
def test_a_second_commit_applies_only_what_changed_since_the_first(base: Path, tmp_path: Path) -> None:
    storage = VolumeStorage(tmp_path / "volumes", None)
    vid = "vo-test"
    storage.ensure(vid)
    shutil.rmtree(storage.version_dir(vid, 0))
    shutil.copytree(base, storage.version_dir(vid, 0))
    gen = tmp_path / "work" / "g0"
    upper = gen / "upper"
    write(upper, {"mine.txt": "mine v1", "edit.txt": "A's edit"})
    n, manifest = commit_upper(storage, vid, gen, {})
    assert n == 1 and load_manifest(gen) == manifest
    assert commit_upper(storage, vid, gen, manifest) == (None, manifest)  # nothing new: no version

    # Another container replaces edit.txt (a new version on top of A's).
    other = tmp_path / "other"
    write(other, {"edit.txt": "B's edit"})
    n2, _ = storage.new_version(vid, lambda stage: vfs.apply_upper(
        str(other), stage, *vfs.scan_upper(str(other), {}), {}, None))
    assert n2 == 2

    # A changes only mine.txt: its older edit.txt must not come back.
    (upper / "mine.txt").write_text("mine v2")
    n3, manifest = commit_upper(storage, vid, gen, manifest)
    t = tree(storage.version_dir(vid, n3))
    assert n3 == 3 and t["mine.txt"] == "mine v2" and t["edit.txt"] == "B's edit"

    # A removes a file only it had (no whiteout: it was never in A's lower layer): the removal is committed...
    (upper / "mine.txt").unlink()
    n4, manifest = commit_upper(storage, vid, gen, manifest)
    assert "mine.txt" not in tree(storage.version_dir(vid, n4))
    # ...but not over a file someone else has put there since.
    write(upper, {"again.txt": "A"})
    n5, manifest = commit_upper(storage, vid, gen, manifest)

    def replace_again(stage: str) -> None:
        Path(stage, "again.txt").unlink()  # a new inode, as every change makes
        Path(stage, "again.txt").write_text("B")

    storage.new_version(vid, replace_again)
    (upper / "again.txt").unlink()
    n7, manifest = commit_upper(storage, vid, gen, manifest)
    assert tree(storage.version_dir(vid, n7))["again.txt"] == "B"

    storage.collect(vid, set())
    assert sorted(os.listdir(storage.dir(vid) / "versions")) == [str(n7)]


def test_a_failed_change_leaves_the_volume_as_it_was(tmp_path: Path) -> None:
    storage = VolumeStorage(tmp_path / "volumes", None)
    storage.ensure("vo-x")

    def boom(stage: str) -> None:
        Path(stage, "half.txt").write_text("half")
        raise vfs.VolumePathError("no")

    with pytest.raises(vfs.VolumePathError):
        storage.new_version("vo-x", boom)
    assert storage.current("vo-x") == 0
    assert os.listdir(storage.dir("vo-x") / "tmp") == []
    assert os.listdir(storage.version_dir("vo-x", 0)) == []


def test_paths_resolve_inside_the_volume(tmp_path: Path) -> None:
    root = tmp_path / "v"
    write(root, {"d/f.txt": "f"})
    (root / "abs").symlink_to("/etc")
    (root / "up").symlink_to("../../..")
    (root / "rel").symlink_to("d")
    assert vfs.resolve(str(root), "/../../etc/passwd") == str(root / "etc" / "passwd")
    assert vfs.resolve(str(root), "abs/passwd") == str(root / "etc" / "passwd")  # / is the volume's root
    assert vfs.resolve(str(root), "up/x") == str(root / "x")
    assert vfs.resolve(str(root), "rel/f.txt") == str(root / "d" / "f.txt")
    assert vfs.resolve(str(root), "rel", follow_last=False) == str(root / "rel")
    with pytest.raises(vfs.VolumePathError):
        list(vfs.listdir(str(root), "abs", False))  # /etc of the volume does not exist
    assert [e[0] for e in vfs.listdir(str(root), "/", False)] == ["abs", "d", "rel", "up"]


def test_api_changes(tmp_path: Path) -> None:
    root = tmp_path / "v"
    write(root, {"a.txt": "a", "d/b.txt": "b"})
    staged = tmp_path / "staged"
    staged.write_text("uploaded")
    vfs.place_file(str(root), str(staged), "new/dir/c.txt", 0o640, None, force=False)
    assert (root / "new/dir/c.txt").read_text() == "uploaded"
    assert stat.S_IMODE(os.stat(root / "new/dir/c.txt").st_mode) == 0o640
    staged.write_text("again")
    with pytest.raises(vfs.VolumePathError) as info:
        vfs.place_file(str(root), str(staged), "a.txt", 0o644, None, force=False)
    assert info.value.kind == "FileExistsError"
    vfs.copy(str(root), ["a.txt", "d"], "both", recursive=True, owner=None)
    assert tree(root / "both") == {"a.txt": "a", "d": "dir", "d/b.txt": "b"}
    with pytest.raises(vfs.VolumePathError):
        vfs.copy(str(root), ["d"], "d/inside", recursive=True, owner=None)
    vfs.remove(str(root), "both", recursive=True)
    with pytest.raises(vfs.VolumePathError):
        vfs.remove(str(root), "d", recursive=False)
    with pytest.raises(vfs.VolumePathError):
        vfs.remove(str(root), "/", recursive=True)
    assert sorted(tree(root)) == ["a.txt", "d", "d/b.txt", "new", "new/dir", "new/dir/c.txt"]


OVERLAY_SCRIPT = r"""
import os, shutil, sys
lower, upper, work, merged = sys.argv[1:5]
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
opts = f"lowerdir={lower},upperdir={upper},workdir={work},redirect_dir=off,metacopy=off,index=off".encode()
if libc.mount(b"overlay", merged.encode(), b"overlay", 0, opts) != 0:
    sys.exit(f"mount failed: {os.strerror(ctypes.get_errno())}")
m = merged
os.remove(f"{m}/gone.txt")
shutil.rmtree(f"{m}/olddir")
shutil.rmtree(f"{m}/replaced")
os.makedirs(f"{m}/replaced")
open(f"{m}/replaced/new.txt", "w").write("new")
open(f"{m}/edit.txt", "a").write(" + more")
os.makedirs(f"{m}/brand/new")
open(f"{m}/brand/new/file.txt", "w").write("file")
os.chmod(f"{m}/keep.txt", 0o600)
os.remove(f"{m}/f2d")
os.makedirs(f"{m}/f2d")
shutil.rmtree(f"{m}/d2f")
open(f"{m}/d2f", "w").write("now a file")
libc.umount2(merged.encode(), 0)
"""


@root_only
def test_merge_of_what_overlayfs_itself_wrote(base: Path, tmp_path: Path) -> None:
    """The container side for real: overlayfs (in a private mount namespace) writes the upper directory."""
    if not shutil.which("unshare"):
        pytest.skip("needs unshare(1)")
    upper, work, merged = tmp_path / "upper", tmp_path / "work", tmp_path / "merged"
    for d in (upper, work, merged):
        d.mkdir()
    proc = subprocess.run(["unshare", "-m", sys.executable, "-c", OVERLAY_SCRIPT, str(base), str(upper), str(work),
                           str(merged)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"overlayfs unavailable here: {proc.stderr.strip()[-200:]}")
    target = tmp_path / "v1"
    merge(upper, base, target)
    assert tree(target) == {"keep.txt": "keep", "edit.txt": "old + more", "replaced": "dir",
                            "replaced/new.txt": "new", "brand": "dir", "brand/new": "dir",
                            "brand/new/file.txt": "file", "f2d": "dir", "d2f": "now a file"}
    assert stat.S_IMODE(os.stat(target / "keep.txt").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(base / "keep.txt").st_mode) == 0o644
    assert (base / "edit.txt").read_text() == "old"
