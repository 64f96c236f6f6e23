"""shoal.oci.registry.parse_reference: Docker's reference normalisation, and which registries get plain HTTP."""

from __future__ import annotations

import pytest

from shoal.oci.registry import Reference, RegistryError, parse_reference

D = "sha256:" + "a" * 64


@pytest.mark.parametrize(("ref", "expected"), [
    ("python", Reference("docker.io", "library/python", "latest")),
    ("python:3.11-slim", Reference("docker.io", "library/python", "3.11-slim")),
    ("nvidia/cuda:12.4.1-devel-ubuntu22.04", Reference("docker.io", "nvidia/cuda", "12.4.1-devel-ubuntu22.04")),
    ("ghcr.io/org/img", Reference("ghcr.io", "org/img", "latest")),
    ("127.0.0.1:5000/a/b:v1", Reference("127.0.0.1:5000", "a/b", "v1")),
    ("localhost/img:v1", Reference("localhost", "img", "v1")),
    (f"registry.example.com:443/x@{D}", Reference("registry.example.com:443", "x", "", D)),
    (f"python:3.11@{D}", Reference("docker.io", "library/python", "3.11", D)),
    ("[::1]:5000/img:v2", Reference("[::1]:5000", "img", "v2")),
])
def test_normalisation(ref: str, expected: Reference) -> None:
    assert parse_reference(ref) == expected


def test_str_is_the_full_reference() -> None:
    assert str(parse_reference("python:3.11")) == "docker.io/library/python:3.11"
    assert str(parse_reference(f"h.io/x@{D}")) == f"h.io/x@{D}"


@pytest.mark.parametrize(("ref", "loopback"), [
    ("127.0.0.1:5000/x", True), ("127.1.2.3/x", True), ("localhost:5000/x", True), ("[::1]:5000/x", True),
    ("10.0.0.1:5000/x", False), ("ghcr.io/x", False), ("python", False),
])
def test_only_loopback_registries_are_plain_http(ref: str, loopback: bool) -> None:
    assert parse_reference(ref).loopback is loopback


@pytest.mark.parametrize(("ref", "message"), [
    ("", "invalid image reference"),
    ("Python:3.11", "lowercase"),
    ("a b", "invalid image reference"),
    ("python@sha256:xyz", "not a sha256 digest"),
    ("python:bad/tag", "bad registry"),
    ("python:-bad", "bad tag"),
    ("bad_host!:5000/x", "bad registry"),
])
def test_bad_references_are_clear_errors(ref: str, message: str) -> None:
    with pytest.raises(RegistryError, match=message):
        parse_reference(ref)
