"""Every write route the SDK or CLI may send again (transport.py resends any request whose connection failed) is
done once per idempotency key: the same request sent twice with the same `Idempotency-Key`, the second marked
`Shoal-Retry` as a resend after a lost reply is, has one effect and gets the same answer — also when the control
plane was SIGKILLed between the two. Raw HTTP with the admin token, as the SDK sends it.
"""

from __future__ import annotations

import http.client
import urllib.parse
import uuid
from typing import Any

import msgpack
import pytest

from ..conftest import ControlPlane, wait_for


class Wire:
    """Raw requests to a control plane with its admin token."""

    def __init__(self, cp: ControlPlane) -> None:
        self.cp = cp
        self.token = (cp.home / "token").read_text().strip()

    def send(self, method: str, path: str, body: Any = None, key: str | None = None, resend: bool = False,
             raw: bytes | None = None) -> tuple[int, Any]:
        parts = urllib.parse.urlsplit(self.cp.url)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)
        headers = {"Authorization": f"Bearer {self.token}"}
        data = raw
        if body is not None:
            data = msgpack.packb(body)
            headers["Content-Type"] = "application/msgpack"
        if key is not None:
            headers["Idempotency-Key"] = key
        if resend:
            headers["Shoal-Retry"] = "1"
        try:
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            payload = resp.read()
        finally:
            conn.close()
        return resp.status, msgpack.unpackb(payload) if payload else None

    def ok(self, method: str, path: str, body: Any = None, key: str | None = None, resend: bool = False,
           raw: bytes | None = None) -> Any:
        status, answer = self.send(method, path, body, key, resend, raw)
        assert status == 200, (method, path, status, answer)
        return answer

    def twice(self, method: str, path: str, body: Any = None) -> Any:
        """Send, then send again as a resend with the same key: the same answer both times."""
        key = uuid.uuid4().hex
        first = self.ok(method, path, body, key)
        assert self.ok(method, path, body, key, resend=True) == first, (method, path)
        return first


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def apps_named(w: Wire, name: str) -> list[dict]:
    return [a for a in w.ok("GET", "/v1/apps")["apps"] if a["name"] == name]


def versions(w: Wire, ref: str) -> list[int]:
    return [v["version"] for v in w.ok("GET", f"/v1/apps/{ref}/history")["versions"]]


@pytest.fixture
def wire(control_plane: ControlPlane) -> Wire:
    return Wire(control_plane)


def test_resent_app_creations_and_registrations_are_done_once(wire: Wire) -> None:
    name = unique("idem-app")
    app_id = wire.twice("POST", "/v1/apps", {"name": name, "detach": True})["app_id"]
    assert [a["app_id"] for a in apps_named(wire, name)] == [app_id]  # no second, orphaned app
    # A registration that makes a version (`shoal serve`'s reloads): one version.
    got = wire.twice("POST", f"/v1/apps/{app_id}/functions", {"functions": [], "strategy": "recreate"})
    assert got["version"] == 1 and versions(wire, app_id) == [1]
    assert wire.ok("POST", f"/v1/apps/{app_id}/functions", {"functions": [], "strategy": "recreate"},
                   uuid.uuid4().hex)["version"] == 2  # another key is another registration
    wire.twice("POST", f"/v1/apps/{app_id}/stop", {})  # stopping a stopped app answers the same
    assert wait_for(lambda: apps_named(wire, name)[0]["state"] == "stopped")  # (the row is written after)
    # Another key is another app.
    other = wire.ok("POST", "/v1/apps", {"name": name, "detach": True}, uuid.uuid4().hex)["app_id"]
    assert other != app_id and len(apps_named(wire, name)) == 2
    wire.ok("POST", f"/v1/apps/{other}/stop", {})
    # `App.lookup(create_if_missing=True)`: the app it created, "created" both times.
    looked = unique("idem-lookup")
    got = wire.twice("POST", "/v1/apps/lookup", {"name": looked, "create_if_missing": True})
    assert got["created"] is True and [a["app_id"] for a in apps_named(wire, looked)] == [got["app_id"]]
    wire.ok("POST", f"/v1/apps/{got['app_id']}/stop", {})


def test_resent_deploys_and_rollbacks_are_done_once(wire: Wire) -> None:
    name = unique("idem-deploy")
    first = wire.twice("POST", "/v1/apps/deploy", {"name": name, "functions": []})
    assert first["created"] is True and first["version"] == 1
    assert versions(wire, name) == [1] and len(apps_named(wire, name)) == 1
    assert wire.ok("POST", "/v1/apps/deploy", {"name": name, "functions": []}, uuid.uuid4().hex)["version"] == 2
    back = wire.twice("POST", f"/v1/apps/{name}/rollback", {})
    assert back["version"] == 3 and back["rolled_back_to"] == 1 and back["app_id"] == first["app_id"]
    assert versions(wire, name) == [1, 2, 3]
    wire.ok("POST", f"/v1/apps/{first['app_id']}/stop", {})


def test_resent_object_and_secret_creations_are_done_once(wire: Wire) -> None:
    eph = wire.twice("POST", "/v1/objects", {"kind": "dict"})
    assert eph["created"] is True
    assert wire.ok("POST", "/v1/objects", {"kind": "dict"}, uuid.uuid4().hex)["object_id"] != eph["object_id"]
    # `Queue.objects.create(name)`: the resend is not an AlreadyExistsError.
    named = {"kind": "queue", "name": unique("idem-q"), "create_if_missing": True, "must_create": True,
             "allow_existing": False}
    assert wire.twice("POST", "/v1/objects", named)["created"] is True
    assert wire.send("POST", "/v1/objects", named, uuid.uuid4().hex)[0] == 409  # another creation is refused
    # `Secret.objects.create(name)`, then an update resent after a later update: the later one stays.
    secret = unique("idem-secret")
    assert wire.twice("POST", "/v1/secrets", {"name": secret, "env": {"A": "1"}}) == {"created": True}
    assert wire.send("POST", "/v1/secrets", {"name": secret, "env": {"A": "1"}}, uuid.uuid4().hex)[0] == 409
    update = uuid.uuid4().hex
    wire.ok("POST", f"/v1/secrets/{secret}/update", {"env": {"A": "2"}}, update)
    wire.ok("POST", f"/v1/secrets/{secret}/update", {"env": {"A": "3"}}, uuid.uuid4().hex)
    wire.ok("POST", f"/v1/secrets/{secret}/update", {"env": {"A": "2"}}, update, resend=True)
    assert secret_env(wire.cp, secret) == {"A": "3"}
    # A proxy token: one token, whose secret is the last answer's (the first one's was lost with its reply).
    key = uuid.uuid4().hex
    lost = wire.ok("POST", "/v1/proxy-tokens", {"scope": ["idem"]}, key)
    again = wire.ok("POST", "/v1/proxy-tokens", {"scope": ["idem"]}, key, resend=True)
    listed = {t["token_id"] for t in wire.ok("GET", "/v1/proxy-tokens")["tokens"]}
    assert again["token_id"] in listed and lost["token_id"] not in listed
    wire.ok("DELETE", f"/v1/proxy-tokens/{again['token_id']}")


def secret_env(cp: ControlPlane, name: str) -> dict[str, str]:
    """The secret's environment as stored (read beside the running control plane), decrypted with its key."""
    import json
    import sqlite3

    from cryptography.fernet import Fernet

    if cp.schema is None:
        with sqlite3.connect(cp.home / "state.db") as db:
            data = db.execute("SELECT data FROM secrets WHERE name=?", (name,)).fetchone()[0]
    else:
        import psycopg
        from psycopg import sql

        with psycopg.connect(cp.env["SHOAL_DATABASE_URL"], autocommit=True) as conn:
            data = conn.execute(sql.SQL("SELECT data FROM {}.secrets WHERE name=%s").format(
                sql.Identifier(cp.schema)), (name,)).fetchone()[0]
    return json.loads(Fernet((cp.home / "secrets.key").read_bytes().strip()).decrypt(bytes(data)))


def test_resent_volume_changes_are_done_once(wire: Wire) -> None:
    name = unique("idem-vol")
    vid = wire.ok("POST", "/v1/objects", {"kind": "volume", "name": name, "create_if_missing": True})["object_id"]
    upload_id = wire.twice("POST", f"/v1/volumes/{vid}/uploads", {})["upload_id"]
    wire.ok("PUT", f"/v1/volumes/{vid}/uploads/{upload_id}/0", raw=b"hello")
    wire.ok("PUT", f"/v1/volumes/{vid}/uploads/{upload_id}/0", raw=b"hello", resend=True)  # (a PUT: same bytes)
    committed = wire.twice("POST", f"/v1/volumes/{vid}/uploads/{upload_id}/commit", {"files": [[0, "/a.txt", 0o644]]})
    copied = wire.twice("POST", f"/v1/volumes/{vid}/copy", {"src_paths": ["/a.txt"], "dst_path": "/b.txt"})
    removed = wire.twice("POST", f"/v1/volumes/{vid}/remove", {"path": "/a.txt"})
    assert committed["version"] < copied["version"] < removed["version"]  # one version each
    listing = wire.ok("GET", f"/v1/volumes/{vid}/entries?path=/")
    assert listing["version"] == removed["version"]
    assert [e[0] for e in listing["entries"]] == ["b.txt"]
    new = unique("idem-vol")
    assert wire.twice("POST", "/v1/volumes/rename", {"old_name": name, "new_name": new}) == {"ok": True}
    wire.ok("DELETE", f"/v1/objects/{vid}")


def test_resent_deletes_and_stops_answer_as_the_first(wire: Wire) -> None:
    """A delete resent after it landed: ok, not 404 (the same request without the resend mark is a 404)."""
    oid = wire.ok("POST", "/v1/objects", {"kind": "dict"})["object_id"]
    secret = unique("idem-secret")
    wire.ok("POST", "/v1/secrets", {"name": secret, "env": {"A": "1"}})
    token = wire.ok("POST", "/v1/proxy-tokens", {"scope": []})["token_id"]
    for path in (f"/v1/objects/{oid}", f"/v1/secrets/{secret}", f"/v1/proxy-tokens/{token}"):
        assert wire.ok("DELETE", path) == {"ok": True}
        assert wire.ok("DELETE", path, resend=True) == {"ok": True}
        assert wire.send("DELETE", path)[0] == 404
    # A container stopped and gone: its stop resent answers it stopped.
    gone = wire.ok("POST", "/v1/containers/ct-gone0000000/stop", {}, uuid.uuid4().hex, resend=True)
    assert gone["ok"] and gone["state"] == "dead"
    assert wire.send("POST", "/v1/containers/ct-gone0000000/stop", {}, uuid.uuid4().hex)[0] == 404


def test_resent_creations_across_a_sigkill_are_done_once(private_control_plane: ControlPlane) -> None:
    """Each creating write committed, its reply lost as the control plane dies (SIGKILL), then sent again to
    the restarted control plane: the first answer, one effect."""
    cp = private_control_plane
    w = Wire(cp)
    app, deployed, secret, vol = unique("idem-app"), unique("idem-deploy"), unique("idem-secret"), unique("idem-vol")
    w.ok("POST", "/v1/apps/deploy", {"name": deployed, "functions": []})
    w.ok("POST", "/v1/apps/deploy", {"name": deployed, "functions": []})
    vid = w.ok("POST", "/v1/objects", {"kind": "volume", "name": vol, "create_if_missing": True})["object_id"]
    upload_id = w.ok("POST", f"/v1/volumes/{vid}/uploads", {})["upload_id"]
    w.ok("PUT", f"/v1/volumes/{vid}/uploads/{upload_id}/0", raw=b"x")
    w.ok("POST", f"/v1/volumes/{vid}/uploads/{upload_id}/commit", {"files": [[0, "/x", 0o644]]})
    renamed = unique("idem-vol")
    sends = [  # (method, path, body)
        ("POST", "/v1/apps", {"name": app, "detach": True}),
        ("POST", "/v1/objects", {"kind": "queue"}),
        ("POST", "/v1/objects", {"kind": "dict", "name": unique("idem-d"), "create_if_missing": True,
                                 "must_create": True, "allow_existing": False}),
        ("POST", "/v1/secrets", {"name": secret, "env": {"A": "1"}}),
        ("POST", "/v1/apps/deploy", {"name": deployed, "functions": []}),
        ("POST", f"/v1/apps/{deployed}/rollback", {"version": 1}),
        ("POST", f"/v1/volumes/{vid}/remove", {"path": "/x"}),
        ("POST", "/v1/volumes/rename", {"old_name": vol, "new_name": renamed}),
    ]
    keys = [uuid.uuid4().hex for _ in sends]
    first = [w.ok(method, path, body, key) for (method, path, body), key in zip(sends, keys, strict=True)]
    cp.kill()
    cp.start()
    again = [w.ok(method, path, body, key, resend=True) for (method, path, body), key in zip(sends, keys, strict=True)]
    assert again == first
    assert [a["app_id"] for a in apps_named(w, app)] == [first[0]["app_id"]]
    assert first[4]["version"] == 3 and first[5]["version"] == 4 and versions(w, deployed) == [1, 2, 3, 4]
    assert w.ok("GET", f"/v1/volumes/{vid}/entries?path=/")["entries"] == []
    assert [o["name"] for o in w.ok("GET", "/v1/objects?kind=volume")["objects"]] == [renamed]


def test_a_resent_shell_start_starts_one_container(wire: Wire) -> None:
    """`shoal shell`'s container lives in memory only: its key is kept there too (idempotency.Recent)."""
    import chaos_app

    with chaos_app.app.run(quiet=True):
        fid = chaos_app.square.object_id
        shell = wire.twice("POST", f"/v1/functions/{fid}/shell", {})
        shells = [c["container_id"] for c in wire.ok("GET", "/v1/containers")["containers"]
                  if c["function_id"] == fid and c["state"] == "shell"]
        assert shells == [shell["container_id"]]
