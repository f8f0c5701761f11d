"""`host:port` addresses: one splitter and formatter for agent and collector (a table)."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from probenet.addresses import (
    format_host,
    format_host_port,
    is_host,
    is_loopback_host,
    split_host_port,
    split_listen,
)

# (address, keyword arguments, (host, port))
SPLITS = [
    ("127.0.0.1:80", {}, ("127.0.0.1", 80)),
    ("0.0.0.0:7070", {}, ("0.0.0.0", 7070)),
    ("example.com:443", {}, ("example.com", 443)),
    ("example.com.:443", {}, ("example.com.", 443)),
    ("my_host-1.internal:65535", {}, ("my_host-1.internal", 65535)),
    ("xn--bcher-kva.example:1", {}, ("xn--bcher-kva.example", 1)),
    ("[::1]:7070", {}, ("::1", 7070)),
    ("[2001:db8::10]:53", {}, ("2001:db8::10", 53)),
    ("[fe80::1%eth0]:80", {}, ("fe80::1%eth0", 80)),
    ("[::ffff:127.0.0.1]:80", {}, ("::ffff:127.0.0.1", 80)),
    # listen addresses: port 0 lets the kernel pick
    ("127.0.0.1:0", {"allow_port_zero": True}, ("127.0.0.1", 0)),
    ("[::1]:0", {"allow_port_zero": True}, ("::1", 0)),
    ("localhost:0", {"allow_port_zero": True}, ("localhost", 0)),
    ("[::]:9464", {"allow_port_zero": True}, ("::", 9464)),
    # a default port (a DNS server): the port may be left out
    ("ns.example", {"default_port": 53}, ("ns.example", 53)),
    ("1.2.3.4", {"default_port": 53}, ("1.2.3.4", 53)),
    ("1.2.3.4:5353", {"default_port": 53}, ("1.2.3.4", 5353)),
    ("::1", {"default_port": 53}, ("::1", 53)),
    ("2001:db8::1", {"default_port": 53}, ("2001:db8::1", 53)),
    ("[::1]", {"default_port": 53}, ("::1", 53)),
    ("[::1]:5353", {"default_port": 53}, ("::1", 5353)),
    # ambiguous without brackets, and an IPv6 address: it takes the default port
    ("::1:80", {"default_port": 53}, ("::1:80", 53)),
]


@pytest.mark.parametrize(("text", "kwargs", "expected"), SPLITS,
                         ids=[f"{s[0]}-{sorted(s[1])}" for s in SPLITS])
def test_splits(text, kwargs, expected):
    assert split_host_port(text, **kwargs) == expected


# (address, keyword arguments, the whole message)
REFUSED = [
    ("example.com", {}, "invalid address 'example.com': expected host:port"),
    ("", {}, "invalid address '': expected host:port"),
    ("[::1]", {}, "invalid address '[::1]': expected host:port"),
    ("::1:80", {}, "invalid address '::1:80': write an IPv6 address as [addr]:port"),
    ("fe80::1::2", {"default_port": 53},
     "invalid address 'fe80::1::2': write an IPv6 address as [addr]:port"),
    ("[::1]7070", {}, "invalid address '[::1]7070': expected [host]:port"),
    ("[::1:80", {}, "invalid address '[::1:80': missing ']'"),
    ("[example.com]:80", {},
     "invalid address '[example.com]:80': 'example.com' is not an IPv6 address"),
    ("[127.0.0.1]:80", {},
     "invalid address '[127.0.0.1]:80': '127.0.0.1' is not an IPv6 address"),
    (":80", {}, "invalid address ':80': the host is missing"),
    ("", {"default_port": 53}, "invalid address '': the host is missing"),
    ("a b:80", {}, "invalid host 'a b' in 'a b:80'"),
    ("-bad.example:80", {}, "invalid host '-bad.example' in '-bad.example:80'"),
    ("a..b:80", {}, "invalid host 'a..b' in 'a..b:80'"),
    (f"{'x' * 64}.com:80", {}, f"invalid host '{'x' * 64}.com' in '{'x' * 64}.com:80'"),
    ("host:0", {}, "invalid port '0' in 'host:0': expected 1-65535"),
    ("host:65536", {}, "invalid port '65536' in 'host:65536': expected 1-65535"),
    ("host:65536", {"allow_port_zero": True},
     "invalid port '65536' in 'host:65536': expected 0-65535"),
    ("host:", {}, "invalid port '' in 'host:': expected 1-65535"),
    ("host:port", {}, "invalid port 'port' in 'host:port': expected 1-65535"),
    ("host:-1", {}, "invalid port '-1' in 'host:-1': expected 1-65535"),
    ("host: 80", {}, "invalid port ' 80' in 'host: 80': expected 1-65535"),
    ("host:123456", {}, "invalid port '123456' in 'host:123456': expected 1-65535"),
    # str.isdigit() accepts these; int() reads the first, and fails on the second
    ("host:\u0668\u0660", {},
     "invalid port '\u0668\u0660' in 'host:\u0668\u0660': expected 1-65535"),
    ("host:\u00b2", {}, "invalid port '\u00b2' in 'host:\u00b2': expected 1-65535"),
]


@pytest.mark.parametrize(("text", "kwargs", "message"), REFUSED,
                         ids=[f"{r[0]!r}-{sorted(r[1])}" for r in REFUSED])
def test_refuses_naming_what_is_wrong(text, kwargs, message):
    with pytest.raises(ValueError) as caught:
        split_host_port(text, **kwargs)
    assert str(caught.value) == message


def test_a_listen_address_allows_port_zero_and_nothing_else_more():
    assert split_listen("[::1]:0") == ("::1", 0)
    assert split_listen("collector.example:7070") == ("collector.example", 7070)
    with pytest.raises(ValueError, match="expected 0-65535"):
        split_listen("127.0.0.1:70000")
    with pytest.raises(ValueError, match="expected host:port"):
        split_listen("localhost")


def test_a_host_name_may_be_253_characters_long_not_more():
    longest = ".".join(["a" * 63] * 3 + ["b" * 61])
    assert len(longest) == 253
    assert is_host(longest)
    assert is_host(longest + ".")
    assert not is_host(longest + "b")


@pytest.mark.parametrize(("host", "expected"), [
    ("127.0.0.1", "127.0.0.1"), ("example.com", "example.com"), ("::1", "[::1]"),
    ("fe80::1%eth0", "[fe80::1%eth0]"),
])
def test_format_host_brackets_ipv6(host, expected):
    assert format_host(host) == expected
    assert format_host_port(host, 80) == f"{expected}:80"


@given(st.ip_addresses(), st.integers(min_value=1, max_value=65535))
def test_format_and_split_are_inverses(address, port):
    host = str(address)
    assert split_host_port(format_host_port(host, port)) == (host, port)
    assert ipaddress.ip_address(split_listen(format_host_port(host, 0))[0]) == address


@pytest.mark.parametrize(("host", "loopback"), [
    ("localhost", True), ("LocalHost", True), ("127.0.0.1", True), ("127.9.9.9", True),
    ("::1", True), ("0.0.0.0", False), ("::", False), ("10.0.0.1", False),
    ("collector.example", False), ("localhost.example", False),
])
def test_loopback_hosts(host, loopback):
    assert is_loopback_host(host) is loopback
