"""A real Docker registry (Debian's `docker-registry`, distribution 2.8) on loopback, and images made here.

Shared by tests/integration/test_oci*.py and bench/ (images.py, oci_serve.py): nothing is fetched from a public
registry.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import socket
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

REGISTRY_BIN = "/usr/bin/docker-registry"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def registry(workdir: Path, *, users: dict[str, str] | None = None,
             extra_config: list[str] | None = None) -> Iterator[str]:
    """Runs a registry on 127.0.0.1:<free port> with its storage under `workdir`; yields `127.0.0.1:PORT`.
    With `users`, it asks for Basic auth (htpasswd, bcrypt)."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    config = [
        "version: 0.1",
        "log:", "  level: error", "  accesslog:", "    disabled: true",
        "storage:", "  filesystem:", f"    rootdirectory: {workdir / 'data'}", "  delete:", "    enabled: true",
        "http:", f"  addr: 127.0.0.1:{port}",
    ]
    if users:
        lines = [subprocess.run(["htpasswd", "-Bbn", u, p], check=True, capture_output=True, text=True).stdout.strip()
                 for u, p in users.items()]
        (workdir / "htpasswd").write_text("\n".join(lines) + "\n")
        config += ["auth:", "  htpasswd:", "    realm: shoal-test", f"    path: {workdir / 'htpasswd'}"]
    config += extra_config or []
    (workdir / "config.yml").write_text("\n".join(config) + "\n")
    log = open(workdir / "registry.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([REGISTRY_BIN, "serve", str(workdir / "config.yml")], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=2).close()
                break
            except urllib.error.HTTPError:
                break  # 401: up, and asking for auth
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    logged = (workdir / 'registry.log').read_text()
                    raise RuntimeError(f'docker-registry did not start: {logged}') from None
                time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def have_registry_tools() -> str:
    """'' when the registry, skopeo and htpasswd are installed, else what is missing (for a skip reason)."""
    missing = [t for t in (REGISTRY_BIN, "skopeo", "htpasswd") if shutil.which(t) is None]
    return f"missing: {', '.join(missing)}" if missing else ""


def layer_tar(entries: list[tuple]) -> bytes:
    """An uncompressed layer tar. Entries: ("dir", name[, mode]), ("file", name, data[, mode, uid, gid]),
    ("symlink", name, target), ("hardlink", name, target), ("chr", name), ("raw", TarInfo, data|None)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for kind, name, *rest in entries:
            if kind == "raw":
                tf.addfile(name, io.BytesIO(rest[0]) if rest[0] is not None else None)
                continue
            info = tarfile.TarInfo(name)
            info.mtime = 1_700_000_000
            if kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, rest[0] if rest else 0o755
                tf.addfile(info)
            elif kind == "file":
                data = rest[0]
                info.size, info.mode = len(data), rest[1] if len(rest) > 1 else 0o644
                if len(rest) > 2:
                    info.uid, info.gid = rest[2], rest[3]
                tf.addfile(info, io.BytesIO(data))
            elif kind in ("symlink", "hardlink"):
                info.type = tarfile.SYMTYPE if kind == "symlink" else tarfile.LNKTYPE
                info.linkname = rest[0]
                tf.addfile(info)
            elif kind == "chr":
                info.type = tarfile.CHRTYPE
                tf.addfile(info)
    return buf.getvalue()


def random_layer(name: str, size: int, files: int = 8) -> bytes:
    """A layer of incompressible files (so transfer and unpack costs are real)."""
    per = size // files
    return layer_tar([("dir", name)] + [("file", f"{name}/f{i}", os.urandom(per)) for i in range(files)])


class _TokenServer:
    """A token server for the registry's bearer-token auth (the Docker token spec, as Docker Hub's auth.docker.io):
    Basic credentials in, a JWT (RS256, its certificate in the `x5c` header) granting the requested scope out."""

    def __init__(self, workdir: Path, users: dict[str, str], service: str, issuer: str) -> None:
        import datetime

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import NameOID

        self.users, self.service, self.issuer = users, service, issuer
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)])
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(self.key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .sign(self.key, hashes.SHA256()))
        self.cert_der = cert.public_bytes(serialization.Encoding.DER)
        self.bundle = workdir / "token-ca.pem"
        self.bundle.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self.requests: list[tuple[str, str]] = []  # (user or "", scope) of every token asked for

    def token(self, user: str, scopes: list[str]) -> str:
        import base64
        import json

        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        def b64(data: bytes) -> str:
            return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            repo, _, actions = rest.rpartition(":")
            if user:  # anonymous users get a token with no access at all
                access.append({"type": kind, "name": repo, "actions": actions.split(",")})
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(self.cert_der).decode()]}
        claims = {"iss": self.issuer, "sub": user, "aud": self.service, "exp": now + 300, "nbf": now - 10,
                  "iat": now, "jti": os.urandom(8).hex(), "access": access}
        signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
        signature = self.key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{b64(signature)}"

    @contextlib.contextmanager
    def serving(self) -> Iterator[str]:
        import base64
        import http.server
        import json
        import threading
        import urllib.parse

        server_self = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                query = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)
                user = ""
                auth = self.headers.get("Authorization", "")
                if auth.startswith("Basic "):
                    u, _, p = base64.b64decode(auth[6:]).decode().partition(":")
                    if server_self.users.get(u) != p:
                        self.send_response(401)
                        self.end_headers()
                        return
                    user = u
                scopes = query.get("scope", [])
                server_self.requests.append((user, " ".join(scopes)))
                body = json.dumps({"token": server_self.token(user, scopes)}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        thread = threading.Thread(target=httpd.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{httpd.server_address[1]}/token"
        finally:
            httpd.shutdown()
            httpd.server_close()


@contextlib.contextmanager
def token_registry(workdir: Path, users: dict[str, str]) -> Iterator[tuple[str, _TokenServer]]:
    """A registry that asks for bearer tokens (`WWW-Authenticate: Bearer realm=…,service=…,scope=…`) from a token
    server of ours; yields (`127.0.0.1:PORT`, the token server, whose `requests` the tests read)."""
    workdir.mkdir(parents=True, exist_ok=True)
    tokens = _TokenServer(workdir, users, service="shoal-test-registry", issuer="shoal-test-issuer")
    with tokens.serving() as realm:
        auth = ["auth:", "  token:", f"    realm: {realm}", "    service: shoal-test-registry",
                "    issuer: shoal-test-issuer", f"    rootcertbundle: {tokens.bundle}"]
        with registry(workdir, extra_config=auth) as address:
            yield address, tokens
