"""Image specs: ids are the hash of the step chain (local files by content), validation as Modal's."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import msgspec
import pytest

import shoal
from shoal._spec.definitions import ImageSpec
from shoal._spec.images import image_id_for, split_mounts
from shoal.controlplane.images import check_spec
from shoal.exception import InvalidError
from shoal.image import Image


def wire(image: Image) -> dict:
    return msgspec.to_builtins(image.to_wire())


def test_same_chain_same_id_and_every_difference_changes_it():
    a = Image.debian_slim("3.12").pip_install("six").apt_install("hello").env({"A": "1"})
    b = Image.debian_slim("3.12").pip_install("six").apt_install("hello").env({"A": "1"})
    assert a is not b and a.object_id == b.object_id
    assert a.object_id.startswith("im-") and len(a.object_id) == 3 + 64
    others = [
        Image.debian_slim("3.11").pip_install("six").apt_install("hello").env({"A": "1"}),
        Image.debian_slim("3.12").pip_install("six==1.17.0").apt_install("hello").env({"A": "1"}),
        Image.debian_slim("3.12").apt_install("hello").pip_install("six").env({"A": "1"}),
        Image.debian_slim("3.12").pip_install("six").apt_install("hello").env({"A": "2"}),
        Image.debian_slim("3.12").uv_pip_install("six").apt_install("hello").env({"A": "1"}),
    ]
    assert len({a.object_id, *(o.object_id for o in others)}) == 1 + len(others)


def test_images_are_immutable():
    base = Image.debian_slim("3.12")
    base_id = base.object_id
    child = base.pip_install("six")
    assert base.object_id == base_id != child.object_id
    assert len(wire(base)["steps"]) == 0 and len(wire(child)["steps"]) == 1


def test_force_build_does_not_change_the_id_but_is_sent(monkeypatch):
    monkeypatch.delenv("SHOAL_FORCE_BUILD", raising=False)
    plain = Image.debian_slim("3.12").pip_install("six")
    forced = Image.debian_slim("3.12").pip_install("six", force_build=True)
    assert plain.object_id == forced.object_id
    assert wire(forced)["steps"][0]["force"] is True and "force" not in wire(plain)["steps"][0]
    assert wire(Image.debian_slim("3.12", force_build=True))["force_base"] is True
    assert "force_base" not in wire(plain)
    monkeypatch.setenv("SHOAL_FORCE_BUILD", "1")
    assert wire(plain)["force_base"] is True
    assert wire(plain)["image_id"] == forced.object_id


def test_default_python_version_is_the_callers():
    assert wire(Image.debian_slim())["python_version"] == f"{sys.version_info.major}.{sys.version_info.minor}"
    assert wire(Image.debian_slim("3.13.0"))["python_version"] == "3.13.0"


@pytest.mark.parametrize("version", ["2.7", "3.9", "4.0", "3", "three", "3.12.1.1"])
def test_unsupported_python_versions_fail_at_once(version):
    with pytest.raises(InvalidError, match="ython"):
        Image.debian_slim(version)


def test_editing_a_local_file_changes_the_id(tmp_path):
    f = tmp_path / "config.json"
    f.write_text('{"a": 1}')
    image = Image.debian_slim("3.12").add_local_file(f, "/root/config.json")
    first = image.object_id
    assert Image.debian_slim("3.12").add_local_file(f, "/root/config.json").object_id == first
    f.write_text('{"a": 2}')
    os.utime(f, ns=(1, 1))  # a different mtime too, so the content cache sees a new file
    edited = Image.debian_slim("3.12").add_local_file(f, "/root/config.json").object_id
    assert edited != first
    assert wire(Image.debian_slim("3.12").add_local_file(f, "/root/"))["steps"][0]["remote_path"] == \
        "/root/config.json"
    # Where the file is on this machine does not matter, only its content.
    moved = tmp_path / "elsewhere.json"
    moved.write_text('{"a": 2}')
    assert Image.debian_slim("3.12").add_local_file(moved, "/root/config.json").object_id == edited


def test_local_dirs_by_content_with_ignore(tmp_path):
    d = tmp_path / "proj"
    (d / "pkg").mkdir(parents=True)
    (d / "pkg" / "a.py").write_text("A = 1\n")
    (d / "notes.md").write_text("notes\n")
    (d / "build").mkdir()
    (d / "build" / "big.bin").write_bytes(b"x" * 100)

    def make(**kw):
        return Image.debian_slim("3.12").add_local_dir(d, "/app", **kw)

    base = make().object_id
    ignored = make(ignore=["build", "*.md"]).object_id
    assert ignored != base
    (d / "build" / "big.bin").write_bytes(b"y" * 100)
    assert make(ignore=["build", "*.md"]).object_id == ignored  # changes in ignored files do not matter
    assert make().object_id != base
    assert make(ignore=lambda p: p.parts[0] == "build" or p.suffix == ".md").object_id == ignored
    (d / "pkg" / "a.py").write_text("A = 2\n")
    assert make(ignore=["build", "*.md"]).object_id != ignored
    assert make(ignore=["*", "!pkg"]).object_id == make(ignore=["build", "notes.md"]).object_id


def test_local_files_are_read_when_sent_not_when_declared(tmp_path):
    """Inside a container the caller's files are not there: declaring the image must not read them."""
    image = (Image.debian_slim("3.12").pip_install_from_requirements(str(tmp_path / "requirements.txt"))
             .add_local_file(tmp_path / "missing.txt", "/root/missing.txt"))
    with pytest.raises(InvalidError, match="requirements.txt"):
        image.to_wire()
    (tmp_path / "requirements.txt").write_text("six==1.17.0\n")
    with pytest.raises(InvalidError, match="missing.txt"):
        image.to_wire()


def test_requirements_and_pyproject_contents_are_part_of_the_id(tmp_path):
    req = tmp_path / "requirements.txt"
    req.write_text("six==1.16.0\n")
    first = Image.debian_slim("3.12").pip_install_from_requirements(str(req)).object_id
    req.write_text("six==1.17.0\n")
    assert Image.debian_slim("3.12").pip_install_from_requirements(str(req)).object_id != first
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[project]\nname = "x"\nversion = "0"\ndependencies = ["six"]\n'
                         '[project.optional-dependencies]\nextra = ["packaging"]\n')
    steps = wire(Image.debian_slim("3.12").pip_install_from_pyproject(str(pyproject), ["extra"]))["steps"]
    assert steps[0]["packages"] == ["six", "packaging"]
    with pytest.raises(InvalidError, match="nope"):
        Image.debian_slim("3.12").pip_install_from_pyproject(str(pyproject), ["nope"]).to_wire()


def test_flags_in_a_package_list_are_an_error():
    with pytest.raises(InvalidError, match="extra_options"):
        Image.debian_slim().pip_install("six", "--no-deps")
    with pytest.raises(InvalidError, match="extra_options"):
        Image.debian_slim().uv_pip_install(["-U", "six"])
    with pytest.raises(InvalidError, match="strings"):
        Image.debian_slim().pip_install(3)  # type: ignore[arg-type]
    ok = Image.debian_slim().pip_install(["six", "packaging"], "attrs", extra_options="--no-deps")
    assert wire(ok)["steps"][0]["packages"] == ["six", "packaging", "attrs"]
    assert Image.debian_slim().pip_install().object_id == Image.debian_slim().object_id
    with pytest.raises(InvalidError, match="Debian"):
        Image.debian_slim().apt_install("hello; rm -rf /")


def test_build_steps_cannot_follow_files_added_at_container_start(tmp_path):
    f = tmp_path / "f.txt"
    f.write_text("x")
    with pytest.raises(InvalidError, match="copy=True"):
        Image.debian_slim().add_local_file(f, "/root/f.txt").pip_install("six")
    Image.debian_slim().add_local_file(f, "/root/f.txt", copy=True).pip_install("six")
    Image.debian_slim().add_local_file(f, "/root/f.txt").add_local_dir(tmp_path, "/data")  # files may follow
    with pytest.raises(InvalidError, match="absolute"):
        Image.debian_slim().add_local_file(f, "relative/f.txt")
    with pytest.raises(InvalidError, match="absolute"):
        Image.debian_slim().workdir("app")


def test_trailing_copy_false_steps_are_split_off(tmp_path):
    f = tmp_path / "f.txt"
    f.write_text("x")
    steps = wire(Image.debian_slim().pip_install("six").add_local_file(f, "/a", copy=True)
                 .add_local_file(f, "/b").add_local_dir(tmp_path, "/c"))["steps"]
    build, mounts = split_mounts(steps)
    assert [s["remote_path"] for s in mounts] == ["/b", "/c"]
    assert [s["kind"] for s in build] == ["pip_install", "add_local_file"]


def test_add_local_python_source(tmp_path, monkeypatch):
    pkg = tmp_path / "mypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("X = 1\n")
    (pkg / "data.csv").write_text("a,b\n")
    (tmp_path / "single.py").write_text("Y = 2\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    image = Image.debian_slim().add_local_python_source("mypkg", "single")
    first = image.object_id
    (pkg / "data.csv").write_text("changed\n")  # not a .py file: ignored by default
    assert Image.debian_slim().add_local_python_source("mypkg", "single").object_id == first
    assert Image.debian_slim().add_local_python_source("mypkg", "single", ignore=[]).object_id != first
    with pytest.raises(InvalidError, match="not found"):
        Image.debian_slim().add_local_python_source("no_such_module_xyz").to_wire()
    with pytest.raises(InvalidError, match="module name"):
        Image.debian_slim().add_local_python_source("not a module")


def test_imports_tolerates_import_errors_locally():
    image = Image.debian_slim().pip_install("some-package-not-here")
    with image.imports():
        import some_package_not_here  # noqa: F401
    with pytest.warns(UserWarning, match="non-ImportError"), image.imports():
        raise ValueError("boom")


def test_app_and_function_check_the_image_type():
    with pytest.raises(InvalidError, match="image"):
        shoal.App(image="debian")  # type: ignore[arg-type]
    app = shoal.App()
    with pytest.raises(InvalidError, match="image"):
        app.function(image=object())
    app.function(image=Image.debian_slim())(_module_level_function)


def _module_level_function() -> None:
    pass


def test_unsupported_constructors_say_so():
    with pytest.raises(InvalidError, match="micromamba is not supported.*debian_slim"):
        Image.micromamba()
    with pytest.raises(InvalidError, match="run_function: `raw_f` must be a plain Python function"):
        Image.debian_slim().run_function(print)


def check_spec_of(wire_map: dict) -> None:
    """The control plane decodes the image with its definition, then checks what the types cannot say."""
    check_spec(msgspec.convert(wire_map, ImageSpec))


def test_the_control_plane_checks_specs(tmp_path):
    good = wire(Image.debian_slim("3.12").pip_install("six").workdir("/app"))
    check_spec_of(good)
    tampered = {**good, "steps": [{**good["steps"][0], "packages": ["evil"]}, good["steps"][1]]}
    with pytest.raises(InvalidError, match="does not match"):
        check_spec_of(tampered)
    escape = {**good, "steps": [good["steps"][0], {**good["steps"][1], "path": "/app/../../etc"}]}
    escape["image_id"] = image_id_for(escape["python_version"], escape["steps"])
    with pytest.raises(InvalidError, match="path"):
        check_spec_of(escape)
    with pytest.raises(InvalidError):
        check_spec_of({**good, "image_id": "im-../../x"})
    with pytest.raises(InvalidError):
        check_spec_of({**good, "steps": [{"kind": "rm_rf", "repr": "x"}]})


def test_pipe():
    def add_six(image: Image, version: str) -> Image:
        return image.pip_install(f"six=={version}")

    assert Image.debian_slim().pipe(add_six, "1.17.0").object_id == \
        Image.debian_slim().pip_install("six==1.17.0").object_id


def test_secrets_values_stay_out_of_the_id():
    a = Image.debian_slim().run_commands("echo", secrets=[shoal.Secret.from_dict({"TOKEN": "one"})])
    b = Image.debian_slim().run_commands("echo", secrets=[shoal.Secret.from_dict({"TOKEN": "two"})])
    c = Image.debian_slim().run_commands("echo", secrets=[shoal.Secret.from_dict({"OTHER": "one"})])
    assert a.object_id == b.object_id != c.object_id
    assert wire(a)["steps"][0]["secret_env"] == {"TOKEN": "one"}


def test_repr_names_the_steps(tmp_path: Path):
    image = Image.debian_slim("3.12").pip_install("six").apt_install("hello")
    assert repr(image) == "Image(debian_slim(python_version='3.12').pip_install('six').apt_install('hello'))"


def test_steps_on_an_image_known_by_its_id_build_on_it():
    stored_id = "im-" + "ab" * 32
    stored = Image.from_id(stored_id)
    assert stored.object_id == stored_id and wire(stored)["steps"] == []  # alone: the stored image itself
    extended = stored.pip_install("six").dockerfile_commands("ENV A=1")
    spec = wire(extended)
    assert spec["python_version"] is None and spec["steps"][0] == {
        "kind": "from_id", "image_id": stored_id, "repr": f"from_id({stored_id!r})", "force": False}
    assert extended.object_id != stored_id
    check_spec_of(spec)
    bad = {**spec, "steps": [{**spec["steps"][0], "image_id": "im-../x"}, *spec["steps"][1:]]}
    bad["image_id"] = image_id_for(None, bad["steps"])
    with pytest.raises(InvalidError, match="image_id"):
        check_spec_of(bad)
