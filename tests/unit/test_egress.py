"""Where a container's outbound traffic may go (shoal/backends/egress.py): the rules' order and content."""

from __future__ import annotations

import ipaddress

import pytest

from shoal.backends.egress import BLOCKED, DNS_ADDRESS, egress_rules, host_addresses, late_host_rules, parse_cidrs


def verdict(rules: list, address: str, udp_port: int = 0) -> str:
    """What the kernel does with the rules installed in order (first match wins; none: the main table)."""
    ip = ipaddress.ip_address(address)
    for action, cidr, port in rules:
        net = ipaddress.ip_network(cidr)
        if net.version == ip.version and ip in net and (not port or port == udp_port):
            return action
    return "allow"


HOST = parse_cidrs(["192.0.2.2/32", "198.18.0.1/32", "127.0.0.1/32", "fd00::2/128"], "host")


def test_by_default_the_internet_but_not_the_host_or_private_ranges():
    rules = egress_rules(None, [], HOST)
    for ok in ("1.1.1.1", "198.18.0.2", "2606:4700::1111"):
        assert verdict(rules, ok) == "allow", ok
    for no in ("127.0.0.1", "10.1.2.3", "172.20.0.1", "192.168.0.1", "169.254.169.254", "100.64.0.1", "0.0.0.0",
               "224.0.0.1", "255.255.255.255", "::1", "fd00::2", "fe80::1", "::ffff:10.0.0.1", "198.18.0.1",
               "192.0.2.2"):
        assert verdict(rules, no) == "block", no
    assert verdict(rules, DNS_ADDRESS, 53) == "allow"  # pasta's DNS forwarder, UDP 53 only
    assert verdict(rules, DNS_ADDRESS, 80) == "block"


def test_the_installation_opens_a_range():
    rules = egress_rules(None, parse_cidrs(["10.5.0.0/16", "198.18.0.1"], "x"), HOST)
    assert verdict(rules, "10.5.1.1") == "allow"
    assert verdict(rules, "198.18.0.1") == "allow"
    assert verdict(rules, "10.6.0.1") == "block"


def test_an_allow_list_restricts_egress_and_opens_only_what_lies_inside_a_blocked_range():
    allow = parse_cidrs(["203.0.113.0/24", "10.9.0.0/16", "0.0.0.0/0"], "outbound_cidr_allowlist")
    rules = egress_rules(allow, [], HOST)
    assert verdict(rules, "203.0.113.7") == "allow"
    assert verdict(rules, "10.9.1.1") == "allow"  # named inside 10/8
    assert verdict(rules, "10.8.0.1") == "block"  # 0.0.0.0/0 does not open the private ranges
    assert verdict(rules, "127.0.0.1") == "block" and verdict(rules, "198.18.0.1") == "block"
    narrow = egress_rules(parse_cidrs(["203.0.113.0/24"], "x"), parse_cidrs(["10.0.0.0/8"], "y"), HOST)
    assert verdict(narrow, "8.8.8.8") == "block" and verdict(narrow, "2606:4700::1111") == "block"
    assert verdict(narrow, "10.1.1.1") == "block"  # the installation's range is not on the allow-list
    assert verdict(narrow, DNS_ADDRESS, 53) == "allow"
    inside = egress_rules(parse_cidrs(["10.1.0.0/16"], "x"), parse_cidrs(["10.0.0.0/8"], "y"), HOST)
    assert verdict(inside, "10.1.2.3") == "allow" and verdict(inside, "10.2.0.1") == "block"


def test_bad_cidrs_name_the_setting():
    with pytest.raises(ValueError, match="outbound_cidr_allowlist: 'nope'"):
        parse_cidrs(["nope"], "outbound_cidr_allowlist")


def test_host_addresses_include_loopback():
    found = host_addresses()
    assert ipaddress.ip_network("127.0.0.1/32") in found
    assert all(any(a.subnet_of(b) for b in BLOCKED if b.version == a.version) or a.prefixlen in (32, 128)
               for a in found)


def test_host_addresses_that_appear_later_are_blocked_unless_opened() -> None:
    new = [ipaddress.ip_network("198.19.201.1/32"), ipaddress.ip_network("10.1.2.3/32"),
           ipaddress.ip_network("203.0.113.7/32")]
    assert late_host_rules(None, [], new) == [("block", "198.19.201.1/32", 0), ("block", "203.0.113.7/32", 0)]
    # (10.1.2.3 lies in a range blocked from the start.) What the installation opens stays open:
    assert late_host_rules(None, [ipaddress.ip_network("203.0.113.0/24")], new) == [("block", "198.19.201.1/32", 0)]
    # An allow-list naming the address itself opens it; a broad one does not.
    assert late_host_rules([ipaddress.ip_network("198.19.201.1/32")], [], new[:1]) == []
    assert late_host_rules([ipaddress.ip_network("198.0.0.0/8")], [], new[:1]) == [("block", "198.19.201.1/32", 0)]
