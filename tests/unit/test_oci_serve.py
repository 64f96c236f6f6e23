"""The pure parts of the control plane's image registry and of Ray nodes' pulls from it."""

from __future__ import annotations

import base64

import pytest

from shoal.backends.ray_images import ImageUnavailableError, diff_id_of, pull_reference
from shoal.controlplane.credentials import is_pull_credential, pull_credential
from shoal.controlplane.oci_serve import candidate_names, credential_of, tags_of

DIGEST = "sha256:" + "a" * 64


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_the_credential_comes_as_bearer_or_as_basics_password() -> None:
    assert credential_of("Bearer abc") == "abc"
    assert credential_of("bearer abc") == "abc"
    assert credential_of(_basic("shoal-node", "shoal-pull.x")) == "shoal-pull.x"
    assert credential_of(_basic("anyone", "p:with:colons")) == "p:with:colons"
    for header in ("", "Bearer", "Bearer ", "Basic !!!", _basic("user", ""), "Basic " +
                   base64.b64encode(b"no-colon").decode(), "Digest abc"):
        assert credential_of(header) is None, header


def test_the_pull_credential_is_derived_from_the_admin_token() -> None:
    cred = pull_credential(b"admin-token")
    assert cred.startswith("shoal-pull.") and "admin-token" not in cred
    assert cred == pull_credential(b"admin-token") != pull_credential(b"other-token")
    assert is_pull_credential(cred, b"admin-token")
    assert not is_pull_credential(cred, b"other-token")
    assert not is_pull_credential("admin-token", b"admin-token")


def test_a_tag_names_a_record_in_a_few_ways_and_tags_list_inverts_them() -> None:
    assert candidate_names("shoal/im-1", "latest") == ["shoal/im-1:latest", "shoal/im-1", "im-1:latest", "im-1"]
    assert candidate_names("shoal/im-1", "v2") == ["shoal/im-1:v2", "im-1:v2"]
    assert candidate_names("team/app", "v1") == ["team/app:v1"]
    assert tags_of(["im-1", "shoal/im-1:v2", "im-10", "other:v1", "im-1:bad tag"], "shoal/im-1") == ["latest", "v2"]
    assert tags_of(["team/app:v1", "team/app"], "team/app") == ["latest", "v1"]


def test_the_pull_reference_and_when_plain_http_is_allowed() -> None:
    assert pull_reference("http://127.0.0.1:8000", "im-1", DIGEST) == (f"127.0.0.1:8000/shoal/im-1@{DIGEST}", True)
    assert pull_reference("http://10.0.0.5:8000/", "im-1", DIGEST) == (f"10.0.0.5:8000/shoal/im-1@{DIGEST}", True)
    assert pull_reference("https://cp.example.com", "im-1", DIGEST) == (f"cp.example.com/shoal/im-1@{DIGEST}", False)
    assert pull_reference("http://[::1]:9000", "im-1", DIGEST)[0] == f"[::1]:9000/shoal/im-1@{DIGEST}"
    with pytest.raises(ImageUnavailableError, match="not an http"):
        pull_reference("unix:/tmp/x.sock", "im-1", DIGEST)


def test_a_layer_directory_is_named_by_its_diff_id() -> None:
    assert diff_id_of("/home/x/oci/layers/" + "b" * 64) == "sha256:" + "b" * 64
    with pytest.raises(ImageUnavailableError, match="not a layer directory"):
        diff_id_of("/home/x/oci/layers/../../etc")
