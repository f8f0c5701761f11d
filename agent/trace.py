"""Path traces: which routers answer, hop by hop, on the way to a probe's target.

`trace(host)` sends probes with increasing TTL (IPv6: hop limit) towards one address of
`host` and reads who answers:

- method "udp" (default, unprivileged, the way tracepath works): a UDP datagram socket with
  IP_RECVERR / IPV6_RECVERR. A router that drops a probe because its TTL ran out sends ICMP
  time-exceeded; the kernel queues it on the socket's error queue (read with MSG_ERRQUEUE)
  as a `sock_extended_err` whose offender (SO_EE_OFFENDER) is the router's address. The
  destination answers a probe to a closed port with port-unreachable: reached. Probes go to
  ports `port`, `port`+1, ... (one per probe), which also matches each reply to its probe.
- method "icmp": echo requests on an ICMP datagram socket (SOCK_DGRAM, IPPROTO_ICMP[V6]),
  allowed when the agent's group is in net.ipv4.ping_group_range; time-exceeded arrives on
  the error queue as above, the echo reply on the socket itself. Else a raw ICMP socket
  (CAP_NET_RAW), whose packets are parsed (`parse_raw_icmp`, matched by echo identifier
  and sequence). Neither permitted: the trace has a clear `error`, it does not raise.

Per TTL, `probes_per_hop` probes go out together; the hop ends when all were answered or
after `hop_timeout_s`. Everything is non-blocking on the event loop (a reader callback on
the socket, no threads). Bounds, checked after each hop (`stop_reason`):

- "reached": the destination answered;
- "unreachable": a router answered with an ICMP unreachable (the hop's `error` says which);
- "loop": the same address answered at 3 consecutive TTLs, or a cycle of addresses
  (A B A B, A B C A B C...) repeated twice;
- "silent": `SILENT_HOPS_LIMIT` (5) consecutive hops without any answer;
- "max_hops": `max_hops` TTLs were tried;
- "deadline": `total_timeout_s` ran out.

A name that resolves to nothing, a socket the kernel refuses, a send that fails: the
result's `error` says so (`cannot resolve 'x': ...`), `hops` holds what was measured.

Entry point for tests and operators (JSON keys fixed: hops[ttl, address, sent, received,
rtt_seconds, error], reached, stop_reason, error):

    python -m probenet.agent.trace HOST [--method udp|icmp] [--max-hops N] [--probes N]
        [--hop-timeout 1s] [--source ADDR] [--port N] [--family ip4|ip6] --json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import ipaddress
import json
import os
import socket
import struct
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from probenet.v1 import probenet_pb2 as pb

__all__ = [
    "ExtendedError",
    "TraceHop",
    "TraceResult",
    "detect_loop",
    "parse_extended_err",
    "parse_raw_icmp",
    "stop_reason",
    "trace",
]

TraceMethod = Literal["udp", "icmp"]

SILENT_HOPS_LIMIT = 5
"""Consecutive hops without any answer after which a trace stops ("silent")."""
DEFAULT_PORT = 33434
MAX_HOPS_LIMIT = 64

# <linux/errqueue.h>, <linux/in.h>, <linux/in6.h>
SO_EE_ORIGIN_LOCAL = 1
SO_EE_ORIGIN_ICMP = 2
SO_EE_ORIGIN_ICMP6 = 3
IP_RECVERR = 11
IPV6_RECVERR = 25
_SOL_IP = 0
_SOL_IPV6 = 41
_EE = struct.Struct("=IBBBBII")

_ICMP4_UNREACH = {0: "net_unreachable", 1: "host_unreachable", 2: "protocol_unreachable",
                  3: "port_unreachable", 4: "fragmentation_needed",
                  5: "source_route_failed", 6: "net_unknown", 7: "host_unknown",
                  9: "admin_prohibited", 10: "admin_prohibited", 13: "admin_prohibited"}
_ICMP6_UNREACH = {0: "net_unreachable", 1: "admin_prohibited", 2: "beyond_scope",
                  3: "host_unreachable", 4: "port_unreachable", 5: "admin_prohibited",
                  6: "admin_prohibited"}


# --------------------------------------------------------------------------- pure parts


@dataclass(frozen=True, slots=True)
class ExtendedError:
    """One `sock_extended_err` from the error queue, with its offender's address."""

    errno: int
    origin: int
    type: int
    code: int
    info: int
    data: int
    offender: str  # "" when the kernel gave none

    @property
    def time_exceeded(self) -> bool:
        """ICMP time exceeded (IPv4 type 11, IPv6 type 3)."""
        return ((self.origin == SO_EE_ORIGIN_ICMP and self.type == 11) or
                (self.origin == SO_EE_ORIGIN_ICMP6 and self.type == 3))

    @property
    def unreachable(self) -> str:
        """The unreachable kind ("port_unreachable", "admin_prohibited"...), "" if none."""
        if self.origin == SO_EE_ORIGIN_ICMP and self.type == 3:
            return _ICMP4_UNREACH.get(self.code, f"unreachable_code_{self.code}")
        if self.origin == SO_EE_ORIGIN_ICMP6 and self.type == 1:
            return _ICMP6_UNREACH.get(self.code, f"unreachable_code_{self.code}")
        return ""

    def describe(self) -> str:
        """A short name for an error that is neither time exceeded nor unreachable."""
        if self.origin == SO_EE_ORIGIN_LOCAL:
            return f"local_error_{errno.errorcode.get(self.errno, self.errno)}".lower()
        return f"icmp_type_{self.type}_code_{self.code}"


def _sockaddr_address(raw: bytes) -> str:
    """The address of a sockaddr_in / sockaddr_in6 ("" if none or unknown)."""
    if len(raw) < 2:
        return ""
    family = struct.unpack_from("=H", raw)[0]
    if family == socket.AF_INET and len(raw) >= 8:
        return socket.inet_ntop(socket.AF_INET, raw[4:8])
    if family == socket.AF_INET6 and len(raw) >= 24:
        return socket.inet_ntop(socket.AF_INET6, raw[8:24])
    return ""


def parse_extended_err(data: bytes) -> ExtendedError:
    """Parse `struct sock_extended_err` followed by the offender's sockaddr.

    Layout: errno u32, origin u8, type u8, code u8, pad u8, info u32, data u32 (native byte
    order), then SO_EE_OFFENDER (a sockaddr_in or sockaddr_in6, family AF_UNSPEC or absent
    when there is none). Raises ValueError when `data` is too short.
    """
    if len(data) < _EE.size:
        raise ValueError(f"sock_extended_err needs {_EE.size} bytes, got {len(data)}")
    err, origin, type_, code, _pad, info, extra = _EE.unpack_from(data)
    return ExtendedError(err, origin, type_, code, info, extra,
                         _sockaddr_address(data[_EE.size:]))


@dataclass(frozen=True, slots=True)
class TraceHop:
    """What answered at one TTL."""

    ttl: int
    address: str = ""  # "" when nothing answered
    sent: int = 0
    received: int = 0
    rtts: tuple[float, ...] = ()  # seconds, one per reply
    error: str = ""  # an ICMP error other than time exceeded (e.g. "host_unreachable")

    def to_json(self) -> dict[str, object]:
        """The JSON shape of the module entry point."""
        return {"ttl": self.ttl, "address": self.address, "sent": self.sent,
                "received": self.received, "rtt_seconds": list(self.rtts),
                "error": self.error}


def detect_loop(addresses: Sequence[str]) -> bool:
    """Whether the answering addresses (in TTL order, "" = silent) end in a loop.

    A loop: the same address at 3 consecutive TTLs, or a cycle of 2..8 distinct addresses
    repeated twice in a row at the end.
    """
    if len(addresses) >= 3 and addresses[-1] and addresses[-1] == addresses[-2] == \
            addresses[-3]:
        return True
    for period in range(2, 9):
        if len(addresses) < 2 * period:
            break
        tail = addresses[-2 * period:]
        first, second = tail[:period], tail[period:]
        if first == second and all(first) and len(set(first)) == period:
            return True
    return False


def stop_reason(hops: Sequence[TraceHop], destination: str, max_hops: int, *,
                silent_limit: int = SILENT_HOPS_LIMIT) -> str:
    """Why a trace stops after `hops` ("" when it goes on to the next TTL)."""
    if not hops:
        return ""
    last = hops[-1]
    checks = (
        ("reached", bool(last.address) and _same_address(last.address, destination)),
        ("unreachable", bool(last.error)),
        ("loop", detect_loop([hop.address for hop in hops])),
        ("silent", len(hops) >= silent_limit and
         all(h.received == 0 for h in hops[-silent_limit:])),
        ("max_hops", last.ttl >= max_hops),
    )
    return next((reason for reason, hit in checks if hit), "")


def _same_address(a: str, b: str) -> bool:
    try:
        return ipaddress.ip_address(a) == ipaddress.ip_address(b)
    except ValueError:
        return a == b


@dataclass(frozen=True, slots=True)
class TraceResult:
    """One path trace; `error` set when no (complete) trace could be taken."""

    target: str
    address: str = ""  # the address traced ("" when nothing resolved)
    method: str = "udp"
    max_hops: int = 30
    probes_per_hop: int = 3
    hops: tuple[TraceHop, ...] = ()
    reached: bool = False
    stop_reason: str = ""
    error: str = ""
    duration_seconds: float = 0.0

    def to_json(self) -> dict[str, object]:
        """The JSON of `python -m probenet.agent.trace --json` (keys fixed)."""
        return {"hops": [hop.to_json() for hop in self.hops], "reached": self.reached,
                "stop_reason": self.stop_reason, "error": self.error}

    def to_proto(self, trigger: str = "") -> pb.PathTrace:
        """The wire PathTrace (`trigger`: "failure" or "baseline")."""
        from probenet.v1 import probenet_pb2 as pb  # noqa: PLC0415 - keep the CLI light

        return pb.PathTrace(
            trigger=trigger, method=self.method, max_hops=self.max_hops,
            probes_per_hop=self.probes_per_hop, reached=self.reached,
            stop_reason=self.stop_reason,
            hops=[pb.TraceHop(ttl=h.ttl, address=h.address, sent=h.sent,
                              received=h.received, rtt_seconds=list(h.rtts), error=h.error)
                  for h in self.hops])


# --------------------------------------------------------------------------- sockets


@dataclass(slots=True)
class _Probe:
    ttl: int
    sent_at: float
    rtt: float | None = None
    address: str = ""
    error: str = ""


@dataclass(slots=True)
class _Session:
    """One socket of a trace, its probes in flight and the reader that matches replies."""

    sock: socket.socket
    family: int
    method: str
    loop: asyncio.AbstractEventLoop
    pending: dict[int, _Probe] = field(default_factory=dict)  # key: port or echo seq
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    raw: bool = False  # a raw ICMP socket (CAP_NET_RAW): replies parsed from packets
    ident: int = 0  # the echo identifier of a raw socket's requests

    def on_readable(self) -> None:
        now = self.loop.time()
        for _ in range(256):
            try:
                data, ancdata, _flags, name = self.sock.recvmsg(512, 512, socket.MSG_ERRQUEUE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break
            self._error_reply(data, ancdata, name, now)
        if self.method == "icmp":
            for _ in range(256):
                try:
                    data, name = self.sock.recvfrom(1024)
                except OSError:
                    break
                if self.raw:
                    self._raw_reply(data, name, now)
                else:
                    self._echo_reply(data, name, now)
        self.wake.set()

    def _raw_reply(self, data: bytes, name: object, now: float) -> None:
        parsed = parse_raw_icmp(data, self.family, self.ident)
        if parsed is None:
            return
        what, seq, error = parsed
        probe = self.pending.get(seq)
        if probe is None or probe.rtt is not None:
            return
        probe.rtt = now - probe.sent_at
        probe.address = name[0] if isinstance(name, tuple) else ""
        probe.error = error if what == "error" else ""

    def _key_of_sent(self, data: bytes, name: object) -> int | None:
        if self.method == "udp":
            if isinstance(name, tuple) and len(name) >= 2:
                return int(name[1])
            return None
        if len(data) >= 8:
            return int(struct.unpack_from("!H", data, 6)[0])
        return None

    def _error_reply(self, data: bytes, ancdata: list[tuple[int, int, bytes]], name: object,
                     now: float) -> None:
        for level, kind, payload in ancdata:
            if (level, kind) not in {(_SOL_IP, IP_RECVERR), (_SOL_IPV6, IPV6_RECVERR)}:
                continue
            try:
                ee = parse_extended_err(payload)
            except ValueError:
                continue
            key = self._key_of_sent(data, name)
            probe = self.pending.get(key) if key is not None else None
            if probe is None or probe.rtt is not None:
                continue
            probe.rtt = now - probe.sent_at
            probe.address = ee.offender
            if not ee.time_exceeded:
                probe.error = ee.unreachable or ee.describe()

    def _echo_reply(self, data: bytes, name: object, now: float) -> None:
        if len(data) < 8:
            return
        echo_reply = 0 if self.family == socket.AF_INET else 129
        if data[0] != echo_reply:
            return
        probe = self.pending.get(struct.unpack_from("!H", data, 6)[0])
        if probe is None or probe.rtt is not None:
            return
        probe.rtt = now - probe.sent_at
        probe.address = name[0] if isinstance(name, tuple) else ""
        probe.error = ""


# family: (echo reply, time exceeded, unreachable, echo request, IP protocol)
_RAW_TYPES: dict[int, tuple[int, int, int, int, int]] = {
    socket.AF_INET: (0, 11, 3, 8, 1), socket.AF_INET6: (129, 3, 1, 128, 58)}


def _quoted_echo(inner: bytes, family: int, proto: int) -> bytes:
    """The quoted first bytes of the original packet's ICMP part (b"" if not ICMP)."""
    if family == socket.AF_INET:
        if len(inner) < 20 or inner[9] != proto:
            return b""
        return inner[(inner[0] & 0x0F) * 4:]
    if len(inner) < 40 or inner[6] != proto:
        return b""
    return inner[40:]


def parse_raw_icmp(data: bytes, family: int, ident: int) -> tuple[str, int, str] | None:
    """Read a packet from a raw ICMP socket, if it answers one of our echo requests.

    Returns ("echo_reply" | "time_exceeded" | "error", sequence, unreachable kind) for a
    reply to an echo request with identifier `ident`, else None. IPv4 packets start with
    the IP header, IPv6 ones with the ICMPv6 header; errors quote the original IP header
    and the first 8 bytes of our echo request.
    """
    reply, exceeded, unreach, request, proto = _RAW_TYPES[family]
    if family == socket.AF_INET:
        data = data[(data[0] & 0x0F) * 4:] if len(data) >= 20 else b""
    if len(data) < 8:
        return None
    type_, code = data[0], data[1]
    if type_ == reply:
        quoted = data
        what, error = "echo_reply", ""
    elif type_ in {exceeded, unreach}:
        quoted = _quoted_echo(data[8:], family, proto)
        if len(quoted) < 8 or quoted[0] != request:
            return None
        names = _ICMP4_UNREACH if family == socket.AF_INET else _ICMP6_UNREACH
        what, error = (("time_exceeded", "") if type_ == exceeded else
                       ("error", names.get(code, f"unreachable_code_{code}")))
    else:
        return None
    ident_got, seq = struct.unpack_from("!HH", quoted, 4)
    return (what, seq, error) if ident_got == ident else None


def _checksum(packet: bytes) -> int:
    if len(packet) % 2:
        packet += b"\0"
    total: int = sum(struct.unpack(f"!{len(packet) // 2}H", packet))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def _open_icmp(family: int) -> tuple[socket.socket, bool]:
    """An ICMP datagram socket, else a raw one; (socket, raw)."""
    proto = socket.IPPROTO_ICMP if family == socket.AF_INET else socket.IPPROTO_ICMPV6
    try:
        return socket.socket(family, socket.SOCK_DGRAM, proto), False
    except PermissionError:
        pass
    try:
        return socket.socket(family, socket.SOCK_RAW, proto), True
    except PermissionError as exc:
        raise PermissionError(
            exc.errno, "icmp datagram sockets are not permitted for this group "
            "(net.ipv4.ping_group_range) and raw sockets need CAP_NET_RAW; "
            "use method udp") from None


def _open_socket(method: str, family: int, source: str | None) -> tuple[socket.socket, bool]:
    """A non-blocking socket with the error queue on, and whether it is raw.

    OSError when not permitted.
    """
    raw = False
    if method == "icmp":
        sock, raw = _open_icmp(family)
    else:
        sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        if family == socket.AF_INET:
            sock.setsockopt(_SOL_IP, IP_RECVERR, 1)
        else:
            sock.setsockopt(_SOL_IPV6, IPV6_RECVERR, 1)
        if source:
            sock.bind((source, 0))
    except OSError:
        sock.close()
        raise
    return sock, raw


def _set_ttl(sock: socket.socket, family: int, ttl: int) -> None:
    if family == socket.AF_INET:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
    else:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, ttl)


_PENDING_ERRORS = {errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ECONNREFUSED, errno.EMSGSIZE,
                   errno.EACCES, errno.EPROTO}


def _send(session: _Session, address: str, key: int) -> str:
    """Send one probe; "" when sent (or lost), else why sending is impossible.

    With IP_RECVERR a queued ICMP error is also reported by the next send (sk_err): the
    error queue is drained first, and a send that only reports such an error is retried.
    """
    if session.method == "udp":
        packet, dest = b"probenet-trace", (address, key)
    else:
        echo = 8 if session.family == socket.AF_INET else 128
        packet = struct.pack("!BBHHH", echo, 0, 0, session.ident, key) + b"probenet-trace"
        if session.raw and session.family == socket.AF_INET:  # the kernel sums ICMPv6
            packet = packet[:2] + struct.pack("!H", _checksum(packet)) + packet[4:]
        dest = (address, 0)
    for attempt in range(3):
        session.on_readable()
        try:
            session.sock.sendto(packet, dest)
        except BlockingIOError:
            return ""  # counted as sent and lost
        except OSError as exc:
            if exc.errno in _PENDING_ERRORS and attempt < 2:
                continue
            if exc.errno in _PENDING_ERRORS:
                return ""
            return exc.strerror or str(exc)
        return ""
    return ""


async def _system_resolve(host: str, family: int) -> list[str]:
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, None, family=family, type=socket.SOCK_DGRAM)
    return [str(info[4][0]) for info in infos]


def _summarise(ttl: int, probes: list[_Probe]) -> TraceHop:
    answered = [p for p in probes if p.rtt is not None]
    addresses = [p.address for p in answered if p.address]
    address = max(set(addresses), key=addresses.count) if addresses else ""
    errors = [p.error for p in answered if p.error and p.address == address]
    return TraceHop(ttl=ttl, address=address, sent=len(probes), received=len(answered),
                    rtts=tuple(round(p.rtt, 9) for p in answered if p.rtt is not None),
                    error=errors[0] if errors and errors[0] != "port_unreachable" else "")


@dataclass(frozen=True, slots=True)
class _Bounds:
    max_hops: int
    probes_per_hop: int
    hop_timeout_s: float
    deadline: float
    port: int


def _check_arguments(method: str, *, max_hops: int, probes_per_hop: int, hop_timeout_s: float,
                     total_timeout_s: float, port: int) -> None:
    if method not in {"udp", "icmp"}:
        raise ValueError(f"method: expected udp or icmp, got {method!r}")
    if not 1 <= max_hops <= MAX_HOPS_LIMIT:
        raise ValueError(f"max_hops: expected 1..{MAX_HOPS_LIMIT}, got {max_hops}")
    if not 1 <= probes_per_hop <= 10:
        raise ValueError(f"probes_per_hop: expected 1..10, got {probes_per_hop}")
    if hop_timeout_s <= 0 or total_timeout_s <= 0:
        raise ValueError("hop_timeout_s and total_timeout_s must be positive")
    top = 65535 - MAX_HOPS_LIMIT * 10
    if not 1 <= port <= top:
        raise ValueError(f"port: expected 1..{top}, got {port}")


async def _resolve(host: str, family: str | None, deadline: float,
                   resolver: Callable[[str, int], Awaitable[list[str]]] | None,
                   ) -> tuple[str, str]:
    """(address, "") or ("", why not)."""
    fam = {"ip4": socket.AF_INET, "ip6": socket.AF_INET6}.get(family or "", socket.AF_UNSPEC)
    loop = asyncio.get_running_loop()
    try:
        addresses = [str(ipaddress.ip_address(host.strip("[]")))]
    except ValueError:
        try:
            async with asyncio.timeout(max(deadline - loop.time(), 0.001)):
                addresses = await (resolver or _system_resolve)(host, fam)
        except (OSError, TimeoutError, UnicodeError, ValueError) as exc:
            return "", f"cannot resolve {host!r}: {exc or 'timed out'}"
    if fam != socket.AF_UNSPEC:
        addresses = [a for a in addresses
                     if (ipaddress.ip_address(a).version == 4) == (fam == socket.AF_INET)]
    if not addresses:
        return "", f"cannot resolve {host!r}: no address{' of family ' + family if family else ''}"
    return addresses[0], ""


async def _wait_hop(session: _Session, probes: list[_Probe], until: float) -> None:
    loop = session.loop
    while any(p.rtt is None for p in probes):
        remaining = until - loop.time()
        if remaining <= 0:
            return
        session.wake.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(remaining):
                await session.wake.wait()


async def _walk(session: _Session, address: str,
                bounds: _Bounds) -> tuple[list[TraceHop], str, str]:
    """Send TTL by TTL; (hops, stop_reason, error)."""
    loop = session.loop
    hops: list[TraceHop] = []
    counter = 0
    for ttl in range(1, bounds.max_hops + 1):
        if loop.time() >= bounds.deadline:
            return hops, "deadline", ""
        _set_ttl(session.sock, session.family, ttl)
        probes: list[_Probe] = []
        for _ in range(bounds.probes_per_hop):
            counter += 1
            key = bounds.port + counter - 1 if session.method == "udp" else counter
            probe = _Probe(ttl, loop.time())
            session.pending[key] = probe
            probes.append(probe)
            failure = _send(session, address, key)
            if failure:
                return hops, "", f"cannot send to {address}: {failure}"
        await _wait_hop(session, probes, min(loop.time() + bounds.hop_timeout_s,
                                             bounds.deadline))
        hops.append(_summarise(ttl, probes))
        reason = stop_reason(hops, address, bounds.max_hops)
        if reason:
            return hops, reason, ""
    return hops, "deadline", ""


async def trace(host_or_address: str, *, method: TraceMethod = "udp", max_hops: int = 30,
                probes_per_hop: int = 3, hop_timeout_s: float = 1.0,
                total_timeout_s: float = 30.0, source_address: str | None = None,
                family: Literal["ip4", "ip6"] | None = None, port: int = DEFAULT_PORT,
                resolver: Callable[[str, int], Awaitable[list[str]]] | None = None,
                ) -> TraceResult:
    """Trace the path to `host_or_address`; never raises for network conditions.

    Raises ValueError only for arguments out of range (method, max_hops 1..64,
    probes_per_hop 1..10, positive timeouts, port). `resolver(host, family)` replaces the
    system resolver (tests); `port` is the first UDP destination port.
    """
    _check_arguments(method, max_hops=max_hops, probes_per_hop=probes_per_hop,
                     hop_timeout_s=hop_timeout_s, total_timeout_s=total_timeout_s, port=port)
    loop = asyncio.get_running_loop()
    started = loop.time()
    deadline = started + total_timeout_s

    def done(address: str = "", hops: tuple[TraceHop, ...] = (), reason: str = "",
             error: str = "") -> TraceResult:
        return TraceResult(target=host_or_address, address=address, method=method,
                           max_hops=max_hops, probes_per_hop=probes_per_hop, hops=hops,
                           reached=reason == "reached", stop_reason=reason, error=error,
                           duration_seconds=loop.time() - started)

    address, problem = await _resolve(host_or_address, family, deadline, resolver)
    if problem:
        return done(error=problem)
    af = socket.AF_INET if ipaddress.ip_address(address).version == 4 else socket.AF_INET6
    try:
        sock, raw = _open_socket(method, af, source_address)
    except OSError as exc:
        return done(address, error=f"cannot open a {method} trace socket: "
                    f"{exc.strerror or exc}")
    session = _Session(sock, af, method, loop, raw=raw,
                       ident=(os.getpid() ^ id(sock)) & 0xFFFF)
    loop.add_reader(sock.fileno(), session.on_readable)
    try:
        hops, reason, error = await _walk(session, address, _Bounds(
            max_hops, probes_per_hop, hop_timeout_s, deadline, port))
    finally:
        loop.remove_reader(sock.fileno())
        sock.close()
    return done(address, tuple(hops), reason, error)


# --------------------------------------------------------------------------- entry point


def _duration(text: str) -> float:
    from probenet.configfile import parse_duration  # noqa: PLC0415

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m probenet.agent.trace HOST ... --json`; exit 0 reached, 1 not, 2 error."""
    parser = argparse.ArgumentParser(prog="python -m probenet.agent.trace",
                                     description="Trace the path to HOST.")
    parser.add_argument("host")
    parser.add_argument("--method", choices=["udp", "icmp"], default="udp")
    parser.add_argument("--max-hops", type=int, default=30)
    parser.add_argument("--probes", type=int, default=3)
    parser.add_argument("--hop-timeout", type=_duration, default=1.0)
    parser.add_argument("--total-timeout", type=_duration, default=30.0)
    parser.add_argument("--source", default=None)
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--family", choices=["ip4", "ip6"], default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    try:
        result = asyncio.run(trace(
            args.host, method=args.method, max_hops=args.max_hops,
            probes_per_hop=args.probes, hop_timeout_s=args.hop_timeout,
            total_timeout_s=args.total_timeout, source_address=args.source,
            family=args.family, port=args.port))
    except ValueError as exc:
        parser.error(str(exc))
    out = sys.stdout
    if args.json:
        out.write(json.dumps(result.to_json()) + "\n")
    else:
        for hop in result.hops:
            rtts = " ".join(f"{r * 1000:.3f}ms" for r in hop.rtts)
            out.write(f"{hop.ttl:2d}  {hop.address or '*'}  {hop.received}/{hop.sent}  {rtts}"
                      f"{'  ' + hop.error if hop.error else ''}\n")
        out.write(f"stop: {result.stop_reason or '-'}"
                  f"{'  error: ' + result.error if result.error else ''}\n")
    if result.error:
        return 2
    return 0 if result.reached else 1


if __name__ == "__main__":
    sys.exit(main())
