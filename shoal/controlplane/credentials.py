"""The credentials the control plane's API takes, always as `Authorization: Bearer <credential>`:

- the admin token (`SHOAL_HOME/token`): the CLI and the SDK outside containers;
- a container's own credential, `shoal-ctr.<container id>.<secret>`: made when the container is launched (its
  random container token, which also opens its frame stream), given to it as `SHOAL_TOKEN`, and void once the
  container has ended (it is looked up among the containers running now). Nothing of it is stored: a control
  plane that restarts has killed its containers (recovery starts new ones);
- a forwarded identity, `shoal-fwd.<identity>.<mac>`: what one replica passes to another with a container's
  request it forwards (controlplane/replicas.py), signed with the admin token the replicas share, since the
  container's credential means nothing to a replica that does not run it;
- the node pull credential, `shoal-pull.<mac>`: what Ray nodes pull images from the control plane's read-only
  registry with (`/v2/`, controlplane/oci_serve.py), derived from the admin token, so nodes never hold the
  admin token. It opens nothing but `/v2/`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

from .access import Identity

__all__ = ["bearer", "container_credential", "forwarded", "is_pull_credential", "parse_container", "pull_credential",
           "verify_forwarded"]

CONTAINER = "shoal-ctr."
FORWARDED = "shoal-fwd."
PULL = "shoal-pull."


def bearer(header: str) -> str | None:
    """The credential of an `Authorization` header; None unless it is `Bearer <credential>` (the scheme's name is
    case-insensitive, RFC 9110 §11.1)."""
    scheme, _, credential = header.partition(" ")
    if scheme.lower() != "bearer" or not credential or " " in credential:
        return None
    return credential


def container_credential(container_id: str, secret: str) -> str:
    return f"{CONTAINER}{container_id}.{secret}"


def parse_container(credential: str) -> tuple[str, str] | None:
    """(container id, secret) of a container's credential, else None."""
    if not credential.startswith(CONTAINER):
        return None
    container_id, dot, secret = credential[len(CONTAINER):].partition(".")
    return (container_id, secret) if dot and container_id and secret else None


def _mac(key: bytes, payload: str) -> str:
    return hmac.new(key, payload.encode(), hashlib.sha256).hexdigest()


def forwarded(identity: Identity, key: bytes) -> str:
    """A container's identity as one replica vouches for it to another."""
    payload = base64.urlsafe_b64encode(json.dumps({
        "c": identity.container_id, "a": identity.app_id, "f": identity.function,
        "s": sorted(identity.secrets), "k": sorted(identity.created)}).encode()).decode()
    return f"{FORWARDED}{payload}.{_mac(key, payload)}"


def verify_forwarded(credential: str, key: bytes) -> Identity | None:
    """The identity a replica vouched for, if `credential` is one signed with `key`."""
    if not credential.startswith(FORWARDED):
        return None
    payload, _, mac = credential[len(FORWARDED):].rpartition(".")
    if not payload or not hmac.compare_digest(mac.encode(), _mac(key, payload).encode()):  # (str: ASCII only)
        return None
    try:
        d = json.loads(base64.urlsafe_b64decode(payload))
        return Identity(container_id=str(d["c"]), app_id=str(d["a"]), function=str(d["f"]),
                        secrets=frozenset(map(str, d["s"])), created=frozenset(map(str, d["k"])))
    except (ValueError, KeyError, TypeError):
        return None


def pull_credential(key: bytes) -> str:
    """The read-only image pull credential of the control plane whose admin token is `key`."""
    return PULL + _mac(key, "oci-pull-v1")


def is_pull_credential(credential: str, key: bytes) -> bool:
    return credential.isascii() and hmac.compare_digest(credential.encode(), pull_credential(key).encode())
