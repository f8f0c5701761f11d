"""Name resolution for probes: every address of a host, in the probe's IP family.

Probes resolve their target themselves (rather than letting a client library do it) so that
the `resolve` phase is timed on its own and a failure is reported as phase `dns` with a
reason from the agent's vocabulary. The resolver is injectable: tests and the demo pass a
table-driven one; the default asks the system (`getaddrinfo`, as blackbox_exporter's
default resolver does for `preferred_ip_protocol` with no fallback).

The caller's deadline bounds the wait (every probe runs under the scheduler's
`asyncio.timeout`); `getaddrinfo` itself runs in the loop's default executor.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from .base import ProbeFailure

if TYPE_CHECKING:
    from ..config import IpFamily

Resolver = Callable[[str, int], Awaitable[list[str]]]
"""`resolver(host, family)` -> addresses in preference order; family is AF_INET, AF_INET6
or AF_UNSPEC. Raises socket.gaierror like getaddrinfo does."""

_FAMILIES = {"ip4": socket.AF_INET, "ip6": socket.AF_INET6, None: socket.AF_UNSPEC}
_FAMILY_NAMES = {socket.AF_INET: "IPv4", socket.AF_INET6: "IPv6"}

# getaddrinfo error codes -> the agent's dns reasons. EAI_NODATA is not in every libc's
# socket module; -5 is glibc's value.
_GAI_REASONS = {
    socket.EAI_NONAME: "dns_nxdomain",
    getattr(socket, "EAI_NODATA", -5): "dns_no_answer",
    socket.EAI_AGAIN: "dns_timeout",
    socket.EAI_FAIL: "dns_servfail",
}


async def system_resolver(host: str, family: int) -> list[str]:
    """Resolve with the system's getaddrinfo (hosts file, nsswitch, resolv.conf)."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, None, family=family, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos if info[0] in _FAMILY_NAMES]


def ip_literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address if `host` is an IP literal (brackets and IPv6 zone allowed), else None."""
    text = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def address_family(address: str) -> int:
    """AF_INET or AF_INET6 for an IP address string."""
    literal = ip_literal(address)
    if literal is None:
        raise ValueError(f"{address!r} is not an IP address")
    return socket.AF_INET6 if literal.version == 6 else socket.AF_INET


def family_for(ip_family: IpFamily | None, source_address: str | None) -> IpFamily | None:
    """The family to resolve in: the configured one, else the source address's, else any.

    A probe bound to an IPv4 source address can only reach IPv4 destinations, so without an
    explicit `ip_family` the source address decides.
    """
    if ip_family is not None or source_address is None:
        return ip_family
    return "ip6" if address_family(source_address) == socket.AF_INET6 else "ip4"


async def resolve_addresses(host: str, *, ip_family: IpFamily | None = None,
                            resolver: Resolver = system_resolver) -> list[str]:
    """Every address of `host` in `ip_family` (None: both), in preference order, no repeats.

    An IP literal is returned as is (after a family check). Raises ProbeFailure in phase
    `dns`: dns_nxdomain, dns_no_answer, dns_timeout, dns_servfail or dns_error.
    """
    family = _FAMILIES[ip_family]
    literal = ip_literal(host)
    if literal is not None:
        literal_family = socket.AF_INET6 if literal.version == 6 else socket.AF_INET
        if family not in (socket.AF_UNSPEC, literal_family):
            raise ProbeFailure("dns", "dns_no_answer",
                               f"{host} is an {_FAMILY_NAMES[literal_family]} address but "
                               f"ip_family is {ip_family}")
        return [str(literal)]
    try:
        found = await resolver(host, family)
    except socket.gaierror as exc:
        reason = _GAI_REASONS.get(exc.errno, "dns_error")
        raise ProbeFailure("dns", reason, f"resolving {host}: {exc.strerror}") from exc
    except UnicodeError as exc:  # labels longer than 63 characters, bad IDNA
        raise ProbeFailure("dns", "dns_error", f"resolving {host}: {exc}") from exc
    addresses = list(dict.fromkeys(found))
    if not addresses:
        where = f" ({_FAMILY_NAMES[family]})" if family != socket.AF_UNSPEC else ""
        raise ProbeFailure("dns", "dns_no_answer", f"{host} has no address{where}")
    return addresses
