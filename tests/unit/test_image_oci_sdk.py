"""OCI images in the SDK: `from_registry`, `from_aws_ecr`, `from_gcp_artifact_registry`, `from_dockerfile` and
`dockerfile_commands` — validation at the call, the wire steps (docs/images.md), and ids that follow the content
of the Dockerfile and of its build context, never where the project lies."""

from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path

import msgspec
import pytest

from shoal._spec.definitions import ImageSpec
from shoal._spec.images import BASE_KINDS, BUILD_KINDS, image_id_for, split_mounts
from shoal.controlplane.images import check_spec
from shoal.exception import InvalidError
from shoal.image import AUTO_DOCKERIGNORE, Image
from shoal.secret import Secret


def wire(image: Image) -> dict:
    return msgspec.to_builtins(image.to_wire())


def context_names(image: Image, step: int = 0) -> list[str]:
    spec, blobs = image._resolve()
    sha = spec.steps[step]["context_sha"]
    with tarfile.open(fileobj=io.BytesIO(blobs[sha]())) as tar:
        return sorted(tar.getnames())


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project with a Dockerfile that copies a directory and a file; the working directory is the project."""
    root = tmp_path / "proj"
    (root / "src" / "pkg").mkdir(parents=True)
    (root / "src" / "pkg" / "a.py").write_text("A = 1\n")
    (root / "src" / "pkg" / "a.pyc").write_bytes(b"junk")
    (root / "requirements.txt").write_text("six\n")
    (root / "unrelated.txt").write_text("not copied\n")
    (root / "Dockerfile").write_text("FROM python:3.12-slim\nARG SRC=src\nCOPY ${SRC} /app/src\n"
                                     "COPY requirements.txt /app/\nRUN pip install -r /app/requirements.txt\n")
    monkeypatch.chdir(root)
    return root


# -- from_registry and friends ----------------------------------------------------------------------------------
def test_from_registry_wire_shape():
    image = Image.from_registry("127.0.0.1:5000/team/app:v1", add_python="3.12",
                                setup_dockerfile_commands=["RUN echo hi"])
    spec = wire(image)
    assert spec["python_version"] is None
    base, setup = spec["steps"]
    assert base == {"kind": "from_registry", "tag": "127.0.0.1:5000/team/app:v1", "registry": "generic",
                    "add_python": "3.12", "force": False, "repr": base["repr"]}
    assert setup["kind"] == "dockerfile_commands" and setup["commands"] == ["RUN echo hi"]
    assert setup["context_sha"] is None
    assert spec["image_id"] == image_id_for(None, spec["steps"]) == image_id_for("", spec["steps"])
    assert repr(image).startswith("Image(from_registry('127.0.0.1:5000/team/app:v1'")
    assert BASE_KINDS == {"from_registry", "from_dockerfile", "from_id"} and "dockerfile_commands" in BUILD_KINDS


def test_from_registry_by_digest_and_force():
    digest = "sha256:" + "a" * 64
    spec = wire(Image.from_registry(f"python@{digest}", force_build=True))
    assert spec["steps"][0]["tag"] == f"python@{digest}" and spec["steps"][0]["force"] is True
    assert Image.from_registry(f"python@{digest}", force_build=True).object_id == \
        Image.from_registry(f"python@{digest}").object_id


def test_other_build_steps_follow_a_base_step():
    image = (Image.from_registry("python:3.12-slim").apt_install("curl").pip_install("six")
             .run_commands("echo ok").env({"A": "1"}).workdir("/app").add_local_file(__file__, "/app/t.py"))
    kinds = [s["kind"] for s in wire(image)["steps"]]
    assert kinds == ["from_registry", "apt_install", "pip_install", "run_commands", "env", "workdir",
                     "add_local_file"]
    build, mounts = split_mounts(wire(image)["steps"])
    assert [s["kind"] for s in mounts] == ["add_local_file"] and build[0]["kind"] == "from_registry"


@pytest.mark.parametrize("tag", ["", "Python:3.12", "python:3.12 ", "python:bad tag", "python@sha256:xyz", 42])
def test_bad_tags_are_refused_at_the_call(tag):
    with pytest.raises(InvalidError, match="from_registry: `tag`"):
        Image.from_registry(tag)


@pytest.mark.parametrize("version", ["3.9", "2.7", "3.12.1", "3", "latest", 3.12])
def test_add_python_must_be_a_supported_major_minor(version):
    with pytest.raises(InvalidError, match="add_python"):
        Image.from_registry("python:3.12-slim", add_python=version)
    with pytest.raises(InvalidError, match="add_python"):
        Image.from_dockerfile("Dockerfile", add_python=version)


def test_from_registry_rejects_unknown_keywords_and_bad_setup_commands():
    with pytest.raises(InvalidError, match="unexpected keyword argument.*bogus"):
        Image.from_registry("python:3.12", bogus=1)
    with pytest.raises(InvalidError, match="setup_dockerfile_commands"):
        Image.from_registry("python:3.12", setup_dockerfile_commands="RUN true")
    with pytest.raises(InvalidError, match="must not contain FROM"):
        Image.from_registry("python:3.12", setup_dockerfile_commands=["FROM alpine"])


def test_registry_secrets_are_sent_unhashed_and_checked_for_their_keys():
    creds = Secret.from_dict({"REGISTRY_USERNAME": "u", "REGISTRY_PASSWORD": "p1"})
    other = Secret.from_dict({"REGISTRY_USERNAME": "u", "REGISTRY_PASSWORD": "p2"})
    a = Image.from_registry("127.0.0.1:5000/private/img:v1", secret=creds)
    b = Image.from_registry("127.0.0.1:5000/private/img:v1", secret=other)
    assert wire(a)["steps"][0]["secret_env"] == {"REGISTRY_USERNAME": "u", "REGISTRY_PASSWORD": "p1"}
    assert a.object_id == b.object_id  # values never enter the id
    assert a.object_id != Image.from_registry("127.0.0.1:5000/private/img:v1").object_id  # names do
    assert "secret_env" not in wire(Image.from_registry("python:3.12"))["steps"][0]
    with pytest.raises(InvalidError, match="lacks REGISTRY_PASSWORD"):
        Image.from_registry("python:3.12", Secret.from_dict({"REGISTRY_USERNAME": "u"}))
    with pytest.raises(InvalidError, match="shoal.Secret"):
        Image.from_registry("python:3.12", {"REGISTRY_USERNAME": "u"})


def test_a_container_reimporting_a_registry_image_with_the_callers_secret_values_gets_no_error(monkeypatch):
    """A container imports the module again without the caller's environment: the secret's values are not there,
    and the image is not built there, so declaring it must not fail (as Modal's)."""
    monkeypatch.delenv("REGISTRY_USERNAME", raising=False)
    monkeypatch.delenv("REGISTRY_PASSWORD", raising=False)
    with pytest.raises(InvalidError, match="REGISTRY_USERNAME"):  # on the caller's side: a clear error
        Secret.from_local_environ(["REGISTRY_USERNAME", "REGISTRY_PASSWORD"])
    monkeypatch.setenv("SHOAL_CONTAINER_ID", "ta-test")
    secret = Secret.from_local_environ(["REGISTRY_USERNAME", "REGISTRY_PASSWORD"])
    assert secret.env() == {}
    Image.from_registry("127.0.0.1:5000/private/img:v1", secret=secret)
    Image.from_registry("127.0.0.1:5000/private/img:v1",
                        secret=Secret.from_dict({"REGISTRY_USERNAME": "", "REGISTRY_PASSWORD": ""}))
    with pytest.raises(InvalidError, match="from_aws_ecr needs `secret`"):  # what needs no value is still checked
        Image.from_aws_ecr("123.dkr.ecr.eu-west-1.amazonaws.com/app:v1")


def test_a_named_registry_secret_is_sent_by_name_for_the_control_plane_to_read():
    image = Image.from_registry("127.0.0.1:5000/private/img:v1", secret=Secret.from_name("regcreds"))
    step = wire(image)["steps"][0]
    assert step["secret_names"] == ["regcreds"] and "secret_env" not in step
    assert image.object_id != Image.from_registry("127.0.0.1:5000/private/img:v1",
                                                  secret=Secret.from_name("other")).object_id  # the name is hashed
    built = Image.from_dockerfile("Dockerfile", registry_secret=Secret.from_name("regcreds"),
                                  secrets=[Secret.from_name("build"), Secret.from_dict({"A": "1"})])
    assert built._steps[0]["secret_names"] == ["build", "regcreds"]
    assert built._steps[0]["secret_env"] == {"A": "1"}
    step = wire(Image.debian_slim().run_commands("true", secrets=[Secret.from_name("build")]))["steps"][0]
    assert step["secret_names"] == ["build"] and step["secret_env"] == {}


def test_cloud_registries_need_their_keys():
    ecr = Secret.from_dict({"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s", "AWS_REGION": "eu-west-1"})
    step = wire(Image.from_aws_ecr("123.dkr.ecr.eu-west-1.amazonaws.com/app:v1", ecr))["steps"][0]
    assert step["registry"] == "aws_ecr" and step["secret_env"]["AWS_REGION"] == "eu-west-1"
    with pytest.raises(InvalidError, match="from_aws_ecr needs `secret`"):
        Image.from_aws_ecr("123.dkr.ecr.eu-west-1.amazonaws.com/app:v1")
    with pytest.raises(InvalidError, match="lacks AWS_SECRET_ACCESS_KEY"):
        Image.from_aws_ecr("123.dkr.ecr.eu-west-1.amazonaws.com/app:v1",
                           Secret.from_dict({"AWS_ACCESS_KEY_ID": "k"}))
    gcp = Secret.from_dict({"SERVICE_ACCOUNT_JSON": "{}"})
    step = wire(Image.from_gcp_artifact_registry("europe-docker.pkg.dev/p/r/app:v1", gcp))["steps"][0]
    assert step["registry"] == "gcp" and step["secret_env"] == {"SERVICE_ACCOUNT_JSON": "{}"}
    with pytest.raises(InvalidError, match="SERVICE_ACCOUNT_JSON"):
        Image.from_gcp_artifact_registry("europe-docker.pkg.dev/p/r/app:v1")


# -- dockerfile_commands ----------------------------------------------------------------------------------------
def test_dockerfile_commands_on_debian_slim_need_a_rootfs_control_plane(monkeypatch):
    """The SDK cannot know what the control plane makes of debian_slim: the control plane checks."""
    spec = msgspec.convert(wire(Image.debian_slim().dockerfile_commands("RUN true")), ImageSpec)
    monkeypatch.setenv("SHOAL_DEBIAN_SLIM", "venv")
    with pytest.raises(InvalidError, match="dockerfile_commands needs a root-filesystem image: debian_slim images "
                                           "are virtual environments on this control plane"):
        check_spec(spec)
    monkeypatch.setenv("SHOAL_DEBIAN_SLIM", "rootfs")
    assert check_spec(spec) is spec
    monkeypatch.setenv("SHOAL_DEBIAN_SLIM", "docker")
    with pytest.raises(ValueError, match="SHOAL_DEBIAN_SLIM='docker': expected 'rootfs', 'venv' or 'auto'"):
        check_spec(spec)


def test_dockerfile_commands_are_checked_at_the_call():
    base = Image.from_registry("python:3.12-slim")
    assert base.dockerfile_commands() is base
    with pytest.raises(InvalidError, match="line 2 of the commands: HEALTHCHECK is not supported"):
        base.dockerfile_commands("RUN true", "HEALTHCHECK CMD true")
    with pytest.raises(InvalidError, match="must not contain FROM"):
        base.dockerfile_commands(["RUN true", "FROM alpine"])
    with pytest.raises(InvalidError, match="outside the build context"):
        base.dockerfile_commands("COPY ../secret /x")
    with pytest.raises(InvalidError, match="build_args"):
        base.dockerfile_commands("RUN true", build_args={"A": 1})
    with pytest.raises(InvalidError, match="context_files"):
        base.dockerfile_commands("COPY a /a", context_files=["a"])
    with pytest.raises(InvalidError, match="arguments must be strings"):
        base.dockerfile_commands(42)


def test_dockerfile_commands_wire_and_context(project):
    (project / "notes.txt").write_text("notes\n")
    image = Image.from_registry("python:3.12-slim").dockerfile_commands(
        ["ENV A=1", "COPY src/pkg /app/pkg", "COPY extra.cfg /etc/extra.cfg"],
        context_files={"/extra.cfg": str(project / "notes.txt")}, env={"B": "2"},
        secrets=[Secret.from_dict({"TOKEN": "t"})])
    step = wire(image)["steps"][1]
    assert step["commands"] == ["ENV A=1", "COPY src/pkg /app/pkg", "COPY extra.cfg /etc/extra.cfg"]
    assert step["env"] == {"B": "2"} and step["secret_env"] == {"TOKEN": "t"}
    assert len(step["context_sha"]) == 64
    assert context_names(image, 1) == ["extra.cfg", "src/pkg/a.py", "src/pkg/a.pyc"]


def test_dockerfile_commands_without_local_files_read_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    image = Image.from_registry("python:3.12-slim").dockerfile_commands("RUN echo hi", "ENV X=1")
    spec, blobs = image._resolve()
    assert spec.steps[1]["context_sha"] is None and blobs == {}


# -- from_dockerfile --------------------------------------------------------------------------------------------
def test_declaring_reads_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    image = Image.from_dockerfile(tmp_path / "missing" / "Dockerfile")  # fine until the app starts
    with pytest.raises(InvalidError, match="cannot read"):
        image.to_wire()


def test_from_dockerfile_wire_and_context(project):
    image = Image.from_dockerfile("Dockerfile", build_args={"SRC": "src"}, env={"E": "1"},
                                  secrets=[Secret.from_dict({"PIP_TOKEN": "t"})],
                                  registry_secret=Secret.from_dict({"REGISTRY_USERNAME": "u",
                                                                    "REGISTRY_PASSWORD": "p"}))
    spec = wire(image)
    step = spec["steps"][0]
    assert spec["python_version"] is None and step["kind"] == "from_dockerfile"
    assert step["dockerfile"] == (project / "Dockerfile").read_text()
    assert step["build_args"] == {"SRC": "src"} and step["env"] == {"E": "1"}
    assert step["secret_env"] == {"REGISTRY_USERNAME": "u", "REGISTRY_PASSWORD": "p", "PIP_TOKEN": "t"}
    assert step["force"] is False
    # only what COPY names: not unrelated.txt, not the Dockerfile
    assert context_names(image) == ["requirements.txt", "src/pkg/a.py", "src/pkg/a.pyc"]
    without_secret = Image.from_dockerfile("Dockerfile", build_args={"SRC": "src"}, env={"E": "1"},
                                           secrets=[Secret.from_dict({"PIP_TOKEN": "other"})],
                                           registry_secret=Secret.from_dict({"REGISTRY_USERNAME": "u",
                                                                             "REGISTRY_PASSWORD": "x"}))
    assert without_secret.object_id == image.object_id


def test_the_dockerignore_and_ignore(project):
    (project / ".dockerignore").write_text("# compiled\n**/*.pyc\n")
    assert context_names(Image.from_dockerfile("Dockerfile")) == ["requirements.txt", "src/pkg/a.py"]
    (project / "Dockerfile.dockerignore").write_text("src/pkg/a.py\n")  # the Dockerfile's own wins
    assert context_names(Image.from_dockerfile("Dockerfile")) == ["requirements.txt", "src/pkg/a.pyc"]
    assert context_names(Image.from_dockerfile("Dockerfile", ignore=[])) == [
        "requirements.txt", "src/pkg/a.py", "src/pkg/a.pyc"]
    assert context_names(Image.from_dockerfile("Dockerfile", ignore=lambda p: p.name == "a.pyc")) == [
        "requirements.txt", "src/pkg/a.py"]
    assert repr(AUTO_DOCKERIGNORE) == "AUTO_DOCKERIGNORE"
    with pytest.raises(InvalidError, match="ignore"):
        Image.from_dockerfile("Dockerfile", ignore="*.pyc")


def test_context_dir_and_a_dockerfile_elsewhere(project, tmp_path, monkeypatch):
    elsewhere = tmp_path / "docker"
    elsewhere.mkdir()
    shutil.move(project / "Dockerfile", elsewhere / "Dockerfile")
    monkeypatch.chdir(tmp_path)
    image = Image.from_dockerfile(elsewhere / "Dockerfile", context_dir=project)
    assert context_names(image) == ["requirements.txt", "src/pkg/a.py", "src/pkg/a.pyc"]
    with pytest.raises(InvalidError, match="'src' \\(line 3\\) matches no file"):
        Image.from_dockerfile(elsewhere / "Dockerfile").to_wire()  # the context is the working directory


def test_ids_follow_the_dockerfile_and_the_context(project, tmp_path, monkeypatch):
    first = Image.from_dockerfile("Dockerfile").object_id
    assert Image.from_dockerfile("Dockerfile").object_id == first
    (project / "unrelated.txt").write_text("changed\n")  # not in the context: same image
    assert Image.from_dockerfile("Dockerfile").object_id == first
    (project / "src" / "pkg" / "a.py").write_text("A = 2\n")  # a context file changed
    second = Image.from_dockerfile("Dockerfile").object_id
    assert second != first
    (project / "Dockerfile").write_text((project / "Dockerfile").read_text() + "ENV X=1\n")
    third = Image.from_dockerfile("Dockerfile").object_id
    assert third not in (first, second)
    assert Image.from_dockerfile("Dockerfile", build_args={"SRC": "src/pkg"}).object_id != third
    # moving the project changes nothing
    moved = tmp_path / "somewhere" / "else"
    moved.parent.mkdir()
    shutil.move(project, moved)
    monkeypatch.chdir(moved)
    assert Image.from_dockerfile("Dockerfile").object_id == third


def test_bad_dockerfiles_name_the_line(project):
    (project / "Dockerfile").write_text("FROM python:3.12\nHEALTHCHECK CMD true\n")
    with pytest.raises(InvalidError, match="from_dockerfile: Dockerfile line 2: HEALTHCHECK is not supported"):
        Image.from_dockerfile("Dockerfile").to_wire()
    (project / "Dockerfile").write_text("FROM python:3.12\nCOPY ../outside /x\n")
    with pytest.raises(InvalidError, match="outside the build context"):
        Image.from_dockerfile("Dockerfile").to_wire()


def test_from_dockerfile_checks_its_arguments_at_the_call():
    with pytest.raises(InvalidError, match="`path`"):
        Image.from_dockerfile(42)
    with pytest.raises(InvalidError, match="build_args"):
        Image.from_dockerfile("Dockerfile", build_args={"A": None})
    with pytest.raises(InvalidError, match="context_dir"):
        Image.from_dockerfile("Dockerfile", context_dir=3)
    with pytest.raises(InvalidError, match="lacks REGISTRY_USERNAME"):
        Image.from_dockerfile("Dockerfile", registry_secret=Secret.from_dict({"X": "1"}))


def test_a_dockerfile_without_copy_has_no_context(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("Dockerfile").write_text("FROM alpine:3.20\nRUN echo hi\n")
    spec, blobs = Image.from_dockerfile("Dockerfile").pip_install("six")._resolve()
    assert spec.steps[0]["context_sha"] is None and blobs == {}
