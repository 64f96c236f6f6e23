"""What the steps of an OCI image run (pure functions of the step), and COPY's source matching."""

from __future__ import annotations

import datetime
import re
import tarfile

import pytest

from shoal.controlplane.oci_credentials import signed_headers
from shoal.controlplane.oci_files import _glob_regex, _match, _relocate_runpath
from shoal.controlplane.oci_steps import SCRATCH_INSIDE, apt_script, check_oci_step, exec_form, uv_command
from shoal.exception import InvalidError


def test_pip_steps_use_the_images_python_and_say_why_its_system_packages_may_change():
    args, files, env = uv_command({"kind": "pip_install", "packages": ["six==1.17.0"], "requirements": ["a==1\n"],
                                   "index_url": "https://idx/simple", "pre": True, "extra_options": "--no-deps"},
                                  "/usr/bin/python3")
    assert args[:6] == ["pip", "install", "--compile-bytecode", "--python", "/usr/bin/python3",
                        "--break-system-packages"]
    assert ["-r", f"{SCRATCH_INSIDE}/requirements-0.txt"] == args[7:9] and files == {"requirements-0.txt": "a==1\n"}
    assert args[-5:] == ["--index-url", "https://idx/simple", "--prerelease", "allow", "--no-deps"] and env == {}


def test_uv_sync_installs_into_the_pythons_own_prefix():
    args, files, env = uv_command({"kind": "uv_sync", "pyproject": "[project]", "lock": "lock", "frozen": True,
                                   "groups": ["dev"]}, "/usr/local/bin/python3")
    assert args[:4] == ["sync", "--compile-bytecode", "--project", SCRATCH_INSIDE] and "--frozen" in args
    assert args[-2:] == ["--group", "dev"] and files == {"pyproject.toml": "[project]", "uv.lock": "lock"}
    assert env == {"UV_PROJECT_ENVIRONMENT": "/usr/local"}


def test_apt_quotes_package_names_and_the_forms_of_commands():
    script = apt_script(["jq", "libx;rm -rf /"])
    assert "apt-get update && " in script and "'libx;rm -rf /'" in script
    assert exec_form("echo hi") == ["/bin/sh", "-c", "echo hi"] and exec_form(("a", "b")) == ["a", "b"]


def test_oci_step_fields_are_checked():
    check_oci_step({"kind": "from_registry", "repr": "r", "tag": "python:3.12", "registry": "aws_ecr"}, True)
    with pytest.raises(InvalidError, match="'tag'"):
        check_oci_step({"kind": "from_registry", "repr": "r", "tag": "UPPER/case"}, True)
    with pytest.raises(InvalidError, match="debian_slim images are virtual environments on this control plane"):
        check_oci_step({"kind": "dockerfile_commands", "repr": "d", "commands": []}, False)
    with pytest.raises(InvalidError, match="'add_python'"):
        check_oci_step({"kind": "run_commands", "repr": "r", "commands": [], "add_python": "3.12"}, True)


def test_copy_sources_match_as_docker_matches_them():
    members = {name: tarfile.TarInfo(name) for name in ("a.txt", "b.txt", "src/m.py", "src/pkg/n.py", "srcx")}
    assert _match(members, "") == [(n, n) for n in sorted(members)]  # "." : the whole context
    assert _match(members, "a.txt") == [("a.txt", "a.txt")]
    assert _match(members, "src") == [("src/m.py", "m.py"), ("src/pkg/n.py", "pkg/n.py")]  # a directory's contents
    assert _match(members, "*.txt") == [("a.txt", "a.txt"), ("b.txt", "b.txt")]
    assert _match(members, "s*") == [("src/m.py", "src/m.py"), ("src/pkg/n.py", "src/pkg/n.py"), ("srcx", "srcx")]
    assert _match(members, "missing") == []
    assert re.fullmatch(_glob_regex("*.py"), "m.py") and not re.fullmatch(_glob_regex("*.py"), "src/m.py")
    assert re.fullmatch(_glob_regex("a?[^x].py"), "abc.py") and not re.fullmatch(_glob_regex("a?[^x].py"), "abx.py")


def test_the_interpreters_runpath_is_made_relative_in_place():
    elf = b"\x7fELF....\0/root/.pyenv/versions/3.12.1/lib\0other\0"
    out = _relocate_runpath(elf, "/root/.pyenv/versions/3.12.1/lib")
    assert len(out) == len(elf) and b"\0$ORIGIN/../lib\0" in out and b"pyenv" not in out
    assert _relocate_runpath(elf, "/nowhere") == elf


def test_ecr_requests_are_signed_as_botocore_signs_them():
    """Vectors computed with botocore's SigV4Auth (service ecr) for the same request, keys and time."""
    now = datetime.datetime(2026, 12, 7, 13, 0, 0, tzinfo=datetime.timezone.utc)
    for token, signature in (("", "71335f912885fecaf30377d77f30fa2a78a12bc271857ded84afad2b32155d65"),
                             ("SESSIONTOKEN", "6b820cce9cc5bc6592f8e01bb36de4ba75042d788c43609b75a95eee3e4cac92")):
        headers = signed_headers("api.ecr.eu-west-1.amazonaws.com", "eu-west-1", b"{}", "AKIDEXAMPLE",
                                 "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token, now)
        assert headers["x-amz-date"] == "20261207T130000Z"
        assert headers["authorization"].endswith(f"Signature={signature}")
        assert ("x-amz-security-token;" in headers["authorization"]) == bool(token)
