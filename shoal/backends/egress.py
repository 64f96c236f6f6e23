"""Where a sandboxed container's outbound traffic may go (see docs/sandbox.md, "Network").

Containers reach the internet through pasta (a user-space network stack, the `passt` package) attached to their
network namespace; what they must not reach is decided here as an ordered list of policy-routing rules that the
sandbox's supervisor installs in that namespace before any of the container's code runs. The namespace belongs to
the host's user namespace (or, rootless, to one the container's is a child of), so the container's root cannot
change them.

Never reachable unless allowed: the host itself (its loopback and every address of its interfaces: pasta's
sockets are the host's) and private, link-local, shared and multicast ranges. A CIDR in the installation's
`SHOAL_CONTAINER_ALLOW_CIDRS`, or one that a container's `outbound_cidr_allowlist` names inside a blocked range,
opens that range; an allow-list otherwise restricts egress to its own CIDRs (and DNS).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import shutil
import time
from collections.abc import Iterable

log = logging.getLogger("shoal.sandbox")

NETWORK_ENV = "SHOAL_CONTAINER_NETWORK"  # "egress" (the default) or "none": no container has outbound network
ALLOW_ENV = "SHOAL_CONTAINER_ALLOW_CIDRS"  # comma- or space-separated CIDRs containers may reach anyway
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

BLOCKED = tuple(ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.168.0.0/16", "224.0.0.0/4", "240.0.0.0/4",
    "::/128", "::1/128", "::ffff:0:0/96", "64:ff9b::/96", "fc00::/7", "fe80::/10", "ff00::/8",
))
# What the container's /etc/resolv.conf names: pasta answers UDP port 53 there with the host's first resolver
# (which is often itself on a blocked address: a LAN router, 127.0.0.53).
DNS_ADDRESS = "169.254.53.53"
PASTA_ARGS = (
    "-q", "-f", "--config-net", "--no-map-gw",  # the gateway's address is the gateway, not the host's loopback
    "-t", "none", "-u", "none", "-T", "none", "-U", "none",  # no port forwarding either way
    "--dns-forward", DNS_ADDRESS,
    "--no-dhcp", "--no-dhcpv6", "--no-ra",  # --config-net sets addresses and routes itself: ~10 ms less to start
)

# A rule: (action, CIDR, udp port or 0); "allow" routes it as usual (through pasta), "block" refuses it with
# EACCES. The first matching rule wins; traffic no rule matches is allowed.
Rule = tuple[str, str, int]


def parse_cidrs(values: Iterable[str], what: str) -> list[Network]:
    """CIDRs (or bare addresses) from configuration; a bad one is a ValueError naming `what`."""
    out = []
    for v in values:
        try:
            out.append(ipaddress.ip_network(str(v).strip(), strict=False))
        except ValueError as exc:
            raise ValueError(f"{what}: {v!r} is not an IP network in CIDR notation ({exc})") from None
    return out


def installation_allowed() -> list[Network]:
    raw = os.environ.get(ALLOW_ENV) or ""
    return parse_cidrs(raw.replace(",", " ").split(), ALLOW_ENV)


_host_cache: tuple[float, list[Network]] = (0.0, [])
HOST_CACHE_S = 2.0  # (a machine with a large routing table has a large fib_trie)


def host_addresses(fresh: bool = False) -> list[Network]:
    """Every address of this machine's interfaces (IPv4 from /proc/net/fib_trie, IPv6 from /proc/net/if_inet6):
    a connection from pasta to any of them would reach the host's own services. Read again after 2 s."""
    global _host_cache
    if fresh or time.monotonic() - _host_cache[0] > HOST_CACHE_S:
        _host_cache = (time.monotonic(), _read_host_addresses())
    return list(_host_cache[1])


def _read_host_addresses() -> list[Network]:
    found: set[Network] = set()
    try:
        prev = ""
        with open("/proc/net/fib_trie") as f:
            for line in f:
                if "/32 host LOCAL" in line and prev:
                    found.add(ipaddress.ip_network(prev))
                parts = line.split()
                if len(parts) >= 2 and parts[0] in ("|--", "+--"):
                    prev = parts[1].split("/")[0] if parts[0] == "|--" else ""
    except (OSError, ValueError):
        pass
    try:
        with open("/proc/net/if_inet6") as f:
            for line in f:
                h = line.split()[0]
                found.add(ipaddress.ip_network(":".join(h[i:i + 4] for i in range(0, 32, 4))))
    except (OSError, ValueError, IndexError):
        pass
    return sorted(found, key=lambda n: (n.version, n))


def _meet(a: Network, b: Network) -> Network | None:
    """The intersection of two CIDRs (one contains the other, or they are disjoint)."""
    if a.version != b.version:
        return None
    if a.subnet_of(b):  # type: ignore[arg-type]
        return a
    if b.subnet_of(a):  # type: ignore[arg-type]
        return b
    return None


def egress_rules(allowlist: list[Network] | None, installation: list[Network],
                 host: list[Network]) -> list[Rule]:
    """The ordered rules for one container (pure: tested in tests/unit/test_egress.py).

    `allowlist` None: everything but the blocked ranges and the host's addresses (less what the installation
    allows). An allow-list: only its CIDRs (a blocked range only where an entry lies inside it, or the
    installation allows it) and DNS."""
    blocked = [*BLOCKED, *(h for h in host if not any(h.subnet_of(b) for b in BLOCKED if b.version == h.version))]
    rules: list[Rule] = [("allow", f"{DNS_ADDRESS}/32", 53)]
    opened = _opened(allowlist, installation, blocked)
    rules += [("allow", str(n), 0) for n in dict.fromkeys(opened)]
    rules += [("block", str(n), 0) for n in blocked]
    if allowlist is not None:
        rules += [("allow", str(n), 0) for n in dict.fromkeys(allowlist)]
        rules += [("block", "0.0.0.0/0", 0), ("block", "::/0", 0)]
    return rules


def net_config(pasta: str, allowlist: list[Network] | None, installation: list[Network],
               host: list[Network]) -> dict:
    """The sandbox's `net` setting: pasta's argv and the container's rules (egress_rules)."""
    return {"pasta": [pasta, *PASTA_ARGS], "rules": egress_rules(allowlist, installation, host)}


def _opened(allowlist: list[Network] | None, installation: list[Network], blocked: list[Network]) -> list[Network]:
    """What is allowed ahead of the blocked ranges: the installation's CIDRs (within the allow-list, if any), and
    allow-list entries that lie inside a blocked range."""
    if allowlist is None:
        return list(installation)
    inside = [a for a in allowlist if any(_meet(a, b) == a for b in blocked)]
    return inside + [m for i in installation for a in allowlist if (m := _meet(i, a)) is not None]


def late_host_rules(allowlist: list[Network] | None, installation: list[Network],
                    appeared: list[Network]) -> list[Rule]:
    """Rules for host addresses that appeared after a container started (an interface brought up later: its
    address would reach the host's services through pasta): blocked as they would have been at its start, ahead
    of its other rules, unless what it is allowed opens them."""
    def within(h: Network, nets: Iterable[Network]) -> bool:
        return any(h.version == n.version and h.subnet_of(n) for n in nets)  # type: ignore[arg-type]

    opened = _opened(allowlist, installation, [*BLOCKED, *appeared])
    return [("block", str(h), 0) for h in appeared if not within(h, BLOCKED) and not within(h, opened)]


_said_no_pasta = False


def wanted() -> bool:
    """Whether the installation gives containers outbound network (`SHOAL_CONTAINER_NETWORK`)."""
    value = (os.environ.get(NETWORK_ENV) or "egress").strip().lower()
    if value not in ("egress", "none"):
        raise ValueError(f"{NETWORK_ENV} must be 'egress' or 'none', not {value!r}")
    return value == "egress"


def find_pasta() -> str | None:
    """pasta's path, or None (said once: containers then have no outbound network, as before)."""
    global _said_no_pasta
    path = shutil.which("pasta", path=os.environ.get("PATH", "") + os.pathsep + "/usr/bin:/usr/sbin:/bin")
    if path is None and not _said_no_pasta:
        _said_no_pasta = True
        log.warning("pasta not found (install the passt package): containers have no outbound network")
    return path


def resolv_conf() -> str:
    """The container's /etc/resolv.conf: pasta's DNS address, with the host's search domains and options."""
    lines = [f"nameserver {DNS_ADDRESS}"]
    try:
        with open("/etc/resolv.conf") as f:
            lines += [ln.rstrip() for ln in f if ln.split()[:1] in (["search"], ["domain"], ["options"])]
    except OSError:
        pass
    return "\n".join(lines) + "\n"
