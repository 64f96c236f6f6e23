"""The pure parts of the sandbox's plan (shoal/backends/sandbox.py): limits, forwarded ports, visible paths."""

from __future__ import annotations

from pathlib import Path

from shoal._spec.definitions import Options
from shoal.backends.sandbox import Limits, control_plane_ports, image_layers, minimal_paths, rewrite_server_url


def test_limits_from_function_options():
    default = Limits.from_options(Options())
    assert (default.cpu_request, default.cpu_limit, default.memory_request_mib, default.memory_limit_mib) == (
        0.125, None, 128, None)
    assert not default.cpu_given
    single = Limits.from_options(Options(cpu=2.0, memory=8192))  # requests only: no hard limit
    assert (single.cpu_request, single.cpu_limit, single.memory_request_mib, single.memory_limit_mib) == (
        2.0, None, 8192, None)
    pair = Limits.from_options(Options(cpu=[0.5, 1.0], memory=[64, 128]))  # as the wire carries tuples
    assert (pair.cpu_request, pair.cpu_limit, pair.memory_request_mib, pair.memory_limit_mib) == (0.5, 1.0, 64, 128)
    assert pair.cpu_given


def test_only_the_control_planes_urls_are_forwarded():
    env = {"SHOAL_SERVER_URL": "http://127.0.0.1:4123", "WEB": "http://app--x.localhost:8080/path",
           "DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/db", "REDIS": "http://localhost:6379",
           "OTHER": "https://example.com:9999", "PLAIN": "127.0.0.1:5000", "BAD": "http://[::1:80"}
    assert control_plane_ports(env) == {4123: ("127.0.0.1", 4123)}
    replicas = {"SHOAL_SERVER_URL": "http://127.0.0.1:4123, http://localhost:4124,http://[::1:80"}
    assert control_plane_ports(replicas) == {4123: ("127.0.0.1", 4123), 4124: ("127.0.0.1", 4124)}
    assert control_plane_ports({"SHOAL_SERVER_URL": "http://10.1.2.3:4123"}) == {}


def test_a_lan_server_url_is_reached_through_loopback_inside():
    env = {"SHOAL_SERVER_URL": "http://10.1.2.3:4123"}
    forwards: dict = {}
    rewrite_server_url(env, forwards)
    assert env["SHOAL_SERVER_URL"] == "http://127.0.0.1:4123"
    assert forwards == {4123: ("10.1.2.3", 4123)}


def test_minimal_paths_drop_system_dirs_nested_and_too_broad(tmp_path: Path):
    (tmp_path / "venv" / "lib").mkdir(parents=True)
    (tmp_path / "state").mkdir()
    paths = [str(tmp_path / "venv"), str(tmp_path / "venv" / "lib"), "/usr/lib/python3", "/", "/root",
             str(tmp_path / "missing"), str(tmp_path)]
    assert minimal_paths(paths, exclude=[str(tmp_path / "state")]) == [str(tmp_path / "venv")]


def test_image_files_are_laid_out_at_their_container_paths(tmp_path: Path):
    files = tmp_path / "files"
    for d in ("app", "root/pkg", "etc", "tmp"):
        (files / d).mkdir(parents=True)
    (files / "root" / "x.py").write_text("")
    (files / "root" / "escape").symlink_to("/etc")  # would show the host's /etc: never bound
    binds, overlays = image_layers(str(tmp_path))
    assert [b[1] for b in binds] == ["/app", "/root/pkg", "/root/x.py"]
    assert all(b[2] is False for b in binds)  # read-only
    assert overlays == {"/etc": [str(files / "etc"), "/etc"]}
