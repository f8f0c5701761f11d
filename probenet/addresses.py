"""Network addresses written `host:port`: the one splitter and formatter of agent and collector.

A host is a host name or an IP address. In `host:port` an IPv6 address is written in
brackets (`[::1]:7070`), as in URLs; `split_host_port` returns the host without them and
`format_host_port` puts them back. Ports are 1-65535, except in listen addresses, where 0
asks the kernel to pick one (`split_listen`). Every malformed address raises ValueError
with a message that names the whole address and what is wrong with it (config validators
turn it into a `file:line:col` error).
"""

from __future__ import annotations

import ipaddress
import re

__all__ = [
    "format_host",
    "format_host_port",
    "is_host",
    "is_loopback_host",
    "split_host_port",
    "split_listen",
]

_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")
_MAX_PORT = 65535


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def is_host(text: str) -> bool:
    """Whether `text` is an IP address (unbracketed) or a host name (a trailing dot allowed)."""
    if _is_ip(text):
        return True
    name = text.removesuffix(".")
    return bool(name) and len(name) <= 253 and all(
        _HOST_LABEL.fullmatch(label) for label in name.split("."))


def split_host_port(value: str, *, default_port: int | None = None,
                    allow_port_zero: bool = False) -> tuple[str, int]:
    """Split `host:port` or `[v6]:port` into (host, port); raise ValueError naming the fault.

    With `default_port`, the port may be left out: `host`, `[v6]` and a bare IPv6 address
    take it. `allow_port_zero` accepts port 0 (a listen address: the kernel picks the port).
    """
    host, sep, port_text = value, "", ""
    if value.startswith("["):
        close = value.find("]")
        if close < 0:
            raise ValueError(f"invalid address {value!r}: missing ']'")
        host, rest = value[1:close], value[close + 1:]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"invalid address {value!r}: expected [host]:port")
            sep, port_text = ":", rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            msg = f"invalid address {value!r}: {host!r} is not an IPv6 address"
            raise ValueError(msg) from None
    elif value.count(":") == 1:
        host, sep, port_text = value.partition(":")
    elif value.count(":") > 1:
        if default_port is not None and _is_ip(value):
            return value, default_port  # a bare IPv6 address
        raise ValueError(f"invalid address {value!r}: write an IPv6 address as [addr]:port")
    if not sep:
        if default_port is None:
            raise ValueError(f"invalid address {value!r}: expected host:port")
        port = default_port
    else:
        lowest = 0 if allow_port_zero else 1
        # isascii: str.isdigit() also accepts digits of other scripts, and superscripts.
        if not (port_text.isascii() and port_text.isdigit() and len(port_text) <= 5
                and lowest <= int(port_text) <= _MAX_PORT):
            raise ValueError(
                f"invalid port {port_text!r} in {value!r}: expected {lowest}-{_MAX_PORT}")
        port = int(port_text)
    if not host:
        raise ValueError(f"invalid address {value!r}: the host is missing")
    if not is_host(host):
        raise ValueError(f"invalid host {host!r} in {value!r}")
    return host, port


def split_listen(value: str) -> tuple[str, int]:
    """Split a listen address: `split_host_port` with port 0 (pick a free one) allowed."""
    return split_host_port(value, allow_port_zero=True)


def format_host(host: str) -> str:
    """`host` as written before `:port` or in a URL: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host else host


def format_host_port(host: str, port: int) -> str:
    """`host:port`, with brackets around an IPv6 address (the inverse of split_host_port)."""
    return f"{format_host(host)}:{port}"


def is_loopback_host(host: str) -> bool:
    """True for `localhost`, 127.0.0.0/8 and ::1; false for every other name or address."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
