"""The `icmp` probe: `count` echo requests `spacing` apart; loss ratio and round-trip times.

Target: a host name or address, IPv4 or IPv6 (`ip_family` picks one for a name). Success =
at least one reply and a loss ratio of at most `max_loss`. Reports `pb.IcmpDetails` (sent,
received, rtt min/avg/max/stddev) on every run that got as far as sending.

Sockets, in order of preference (one fresh socket per run, bound to the source address):

- **datagram** (`SOCK_DGRAM`, `IPPROTO_ICMP`/`IPPROTO_ICMPV6`): unprivileged "ping
  sockets", allowed when the process's group is inside `net.ipv4.ping_group_range` (this
  sysctl governs IPv6 too). The kernel picks the echo identifier and delivers only this
  socket's replies; ICMP errors arrive as socket errors (IP_RECVERR).
- **raw** (`SOCK_RAW`): needs CAP_NET_RAW. Every ICMP packet of the host arrives, so replies
  are matched by identifier, sequence, source address and a per-run cookie in the payload;
  the IPv4 checksum is ours (the kernel computes ICMPv6 checksums); destination-unreachable
  and time-exceeded errors are matched through the request they quote.

When neither is allowed, the run fails with reason `icmp_not_permitted` and an error naming
the fix; `icmp_socket_mode()` lets the agent check that once at start-up.

Failure reasons: dns_* (phase dns); icmp_not_permitted, icmp_socket (connect);
icmp_unreachable (connect: no reply, and the network said unreachable); icmp_loss
(response). Timing phases: resolve, setup, rtt.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import math
import os
import secrets
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from probenet.v1 import probenet_pb2 as pb

from .base import PhaseTracker, ProbeFailure, ProbeOutcome
from .resolve import Resolver, address_family, family_for, resolve_addresses, system_resolver

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ..config import IpFamily, ProbeSpec

log = logging.getLogger(__name__)

SocketMode = Literal["auto", "dgram", "raw"]

ICMP_ECHO_REPLY, ICMP_DEST_UNREACH, ICMP_ECHO_REQUEST, ICMP_TIME_EXCEEDED = 0, 3, 8, 11
ICMP6_DEST_UNREACH, ICMP6_TIME_EXCEEDED, ICMP6_ECHO_REQUEST, ICMP6_ECHO_REPLY = 1, 3, 128, 129
_IPV6_HEADER_BYTES = 40
_ICMP_HEADER = struct.Struct("!BBHHH")  # type, code, checksum, identifier, sequence
_IP_RECVERR = getattr(socket, "IP_RECVERR", 11)
_IPV6_RECVERR = getattr(socket, "IPV6_RECVERR", 25)
_PATTERN = b"probenet-icmp-echo-"
_COOKIE_BYTES = 8
_UNREACHABLE_ERRNOS = frozenset({
    errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN, errno.ECONNREFUSED,
    errno.EPROTO,
})

_permission_logged: set[int] = set()


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of `data`."""
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def echo_request(family: int, identifier: int, sequence: int, payload: bytes) -> bytes:
    """An ICMP (IPv4) or ICMPv6 echo request; the checksum is set for IPv4 only.

    For ICMPv6 the kernel computes the checksum (it covers a pseudo-header with addresses
    only the kernel knows for sure); datagram sockets also replace the identifier.
    """
    kind = ICMP_ECHO_REQUEST if family == socket.AF_INET else ICMP6_ECHO_REQUEST
    header = _ICMP_HEADER.pack(kind, 0, 0, identifier, sequence)
    if family != socket.AF_INET:
        return header + payload
    return _ICMP_HEADER.pack(kind, 0, checksum(header + payload), identifier,
                             sequence) + payload


@dataclass(frozen=True, slots=True)
class IcmpMessage:
    """What a received packet says about one of our echo requests."""

    unreachable: bool  # False: an echo reply; True: an error quoting our request
    identifier: int
    sequence: int
    payload: bytes  # the reply's payload (empty for errors)
    quoted_destination: str = ""  # for errors: the destination of the quoted request


def _quoted_request(family: int, quoted: bytes) -> tuple[int, int, str] | None:
    """(identifier, sequence, destination) of the echo request an ICMP error quotes."""
    if family == socket.AF_INET:
        if len(quoted) < 20 or quoted[0] >> 4 != 4:
            return None
        header_len = (quoted[0] & 0x0F) * 4
        if quoted[9] != socket.IPPROTO_ICMP or len(quoted) < header_len + 8:
            return None
        destination = socket.inet_ntop(socket.AF_INET, quoted[16:20])
        inner = quoted[header_len:header_len + 8]
        request_type = ICMP_ECHO_REQUEST
    else:
        if len(quoted) < _IPV6_HEADER_BYTES + 8 or quoted[0] >> 4 != 6:
            return None
        if quoted[6] != socket.IPPROTO_ICMPV6:
            return None
        destination = socket.inet_ntop(socket.AF_INET6, quoted[24:40])
        inner = quoted[_IPV6_HEADER_BYTES:_IPV6_HEADER_BYTES + 8]
        request_type = ICMP6_ECHO_REQUEST
    kind, _, _, identifier, sequence = _ICMP_HEADER.unpack(inner)
    if kind != request_type:
        return None
    return identifier, sequence, destination


def parse_icmp(family: int, packet: bytes, *, has_ip_header: bool) -> IcmpMessage | None:
    """Parse a received packet; None for anything that is not about an echo request.

    `has_ip_header`: raw IPv4 sockets deliver the IP header, the others do not. Never
    raises on malformed input.
    """
    if has_ip_header:
        if len(packet) < 20 or packet[0] >> 4 != 4:
            return None
        packet = packet[(packet[0] & 0x0F) * 4:]
    if len(packet) < _ICMP_HEADER.size:
        return None
    kind, _, _, identifier, sequence = _ICMP_HEADER.unpack_from(packet)
    if family == socket.AF_INET:
        reply, errors = ICMP_ECHO_REPLY, (ICMP_DEST_UNREACH, ICMP_TIME_EXCEEDED)
    else:
        reply, errors = ICMP6_ECHO_REPLY, (ICMP6_DEST_UNREACH, ICMP6_TIME_EXCEEDED)
    if kind == reply:
        return IcmpMessage(False, identifier, sequence, packet[_ICMP_HEADER.size:])
    if kind in errors:
        quoted = _quoted_request(family, packet[_ICMP_HEADER.size:])
        if quoted is not None:
            return IcmpMessage(True, quoted[0], quoted[1], b"", quoted[2])
    return None


def permission_message(family: int) -> str:
    """What to do when neither a datagram nor a raw ICMP socket may be opened."""
    gid = os.getgid()
    version = "IPv6" if family == socket.AF_INET6 else "IPv4"
    return (f"icmp ({version}) needs either CAP_NET_RAW (raw sockets) or "
            f"net.ipv4.ping_group_range covering gid {gid} (datagram sockets): "
            f"sysctl -w net.ipv4.ping_group_range='0 2147483647', "
            "or give the agent CAP_NET_RAW (systemd: AmbientCapabilities=CAP_NET_RAW)")


def open_icmp_socket(family: int, mode: SocketMode = "auto") -> tuple[socket.socket, str]:
    """A non-blocking ICMP socket and its kind ("dgram" or "raw").

    `auto` tries a datagram socket first, then a raw one. Raises PermissionError with
    `permission_message` when neither is allowed, OSError for other failures.
    """
    proto = socket.IPPROTO_ICMP if family == socket.AF_INET else socket.IPPROTO_ICMPV6
    kinds = ("dgram", "raw") if mode == "auto" else (mode,)
    denied: list[str] = []
    for kind in kinds:
        sock_type = socket.SOCK_DGRAM if kind == "dgram" else socket.SOCK_RAW
        try:
            sock = socket.socket(family, sock_type, proto)
        except PermissionError as exc:
            denied.append(f"{kind}: {exc.strerror}")
            continue
        sock.setblocking(False)
        return sock, kind
    raise PermissionError(errno.EPERM, f"{permission_message(family)} ({'; '.join(denied)})")


def icmp_socket_mode(ip_family: IpFamily = "ip4") -> str:
    """Which ICMP socket this process can open ("dgram" or "raw"); for a start-up check.

    Raises PermissionError naming the fix when neither is allowed.
    """
    family = socket.AF_INET6 if ip_family == "ip6" else socket.AF_INET
    sock, kind = open_icmp_socket(family)
    sock.close()
    return kind


@dataclass(slots=True)
class _Exchange:
    """The state of one run's echo exchange."""

    family: int
    address: str
    identifier: int
    cookie: bytes
    check_identifier: bool
    sent_at: dict[int, float] = field(default_factory=dict)
    rtts: dict[int, float] = field(default_factory=dict)
    unreachable: set[int] = field(default_factory=set)
    unreachable_errors: int = 0
    error: str = ""
    sending_done: bool = False
    settled: asyncio.Event = field(default_factory=asyncio.Event)

    def answered(self) -> int:
        return len(self.rtts) + len(self.unreachable) + self.unreachable_errors

    def check_settled(self) -> None:
        if self.sending_done and self.answered() >= len(self.sent_at):
            self.settled.set()

    def take(self, message: IcmpMessage, source: str, now: float) -> None:
        """Account one parsed packet if it answers one of our requests."""
        if self.check_identifier and message.identifier != self.identifier:
            return
        sequence = message.sequence
        if sequence not in self.sent_at or sequence in self.rtts or sequence in self.unreachable:
            return
        if message.unreachable:
            if message.quoted_destination != self.address:
                return
            self.unreachable.add(sequence)
            self.error = f"{source} reports {self.address} unreachable"
        else:
            if source != self.address or message.payload[:len(self.cookie)] != self.cookie:
                return
            self.rtts[sequence] = now - self.sent_at[sequence]
        self.check_settled()


class IcmpProbe:
    """Ping a host `count` times; fail on loss above `max_loss`."""

    def __init__(self, host: str, *, count: int = 3, spacing_s: float = 0.2,
                 max_loss: float = 0.0, ip_family: IpFamily | None = None,
                 payload_bytes: int = 56, timeout_s: float = 5.0,
                 source_address: str | None = None, socket_mode: SocketMode = "auto",
                 resolver: Resolver = system_resolver, name: str = "") -> None:
        """Replies are awaited until shortly before `timeout_s` (the scheduler's deadline)."""
        self.host = host
        self.count = count
        self.spacing_s = spacing_s
        self.max_loss = max_loss
        self.ip_family = ip_family
        self.payload_bytes = payload_bytes
        self.timeout_s = timeout_s
        self.source_address = source_address
        self.socket_mode: SocketMode = socket_mode
        self.resolver = resolver
        self.name = name or host

    async def run(self, tracker: PhaseTracker) -> Sequence[ProbeOutcome]:
        """Probe once: resolve, open a socket, exchange echoes, then judge the loss."""
        loop = asyncio.get_running_loop()
        # Leave the scheduler's hard deadline a margin, so a lossy run ends as icmp_loss
        # with its statistics rather than as a bare timeout.
        deadline = loop.time() + self.timeout_s - min(0.1 * self.timeout_s, 0.2)
        tracker.enter("dns", "resolve")
        addresses = await resolve_addresses(
            self.host, ip_family=family_for(self.ip_family, self.source_address),
            resolver=self.resolver)
        address = addresses[0]
        family = address_family(address)
        tracker.enter("connect", "setup")
        sock, kind = self._open(family)
        with sock:
            if self.source_address:
                try:
                    sock.bind((self.source_address, 0))
                except OSError as exc:
                    raise ProbeFailure("connect", "icmp_socket",
                                       f"cannot bind to source address {self.source_address}: "
                                       f"{exc.strerror}") from exc
            if kind == "dgram":
                level = socket.IPPROTO_IP if family == socket.AF_INET else socket.IPPROTO_IPV6
                option = _IP_RECVERR if family == socket.AF_INET else _IPV6_RECVERR
                sock.setsockopt(level, option, 1)
            tracker.enter("response", "rtt")
            cookie = secrets.token_bytes(_COOKIE_BYTES)[:self.payload_bytes]
            exchange = _Exchange(family, address, secrets.randbelow(0x10000), cookie,
                                 check_identifier=kind == "raw")
            await self._exchange(sock, kind, exchange, deadline)
        duration = tracker.finish()
        return [self._outcome(exchange, duration, dict(tracker.durations))]

    def _open(self, family: int) -> tuple[socket.socket, str]:
        try:
            return open_icmp_socket(family, self.socket_mode)
        except PermissionError as exc:
            message = exc.strerror or str(exc)
            if family not in _permission_logged:
                _permission_logged.add(family)
                log.error(  # noqa: TRY400 - the message names the fix; no traceback needed
                    "icmp probes cannot open a socket: %s", message, extra={"probe": self.name})
            raise ProbeFailure("connect", "icmp_not_permitted", message) from exc
        except OSError as exc:
            raise ProbeFailure("connect", "icmp_socket",
                               f"cannot open an ICMP socket: {exc.strerror or exc}") from exc

    async def _exchange(self, sock: socket.socket, kind: str, exchange: _Exchange,
                        deadline: float) -> None:
        async with asyncio.TaskGroup() as tasks:
            receiver = tasks.create_task(self._receive(sock, kind, exchange),
                                         name=f"icmp-receive:{self.name}")
            try:
                async with asyncio.timeout_at(deadline):
                    await self._send(sock, exchange, deadline)
                    await exchange.settled.wait()
            except TimeoutError:
                pass
            finally:
                receiver.cancel()

    async def _send(self, sock: socket.socket, exchange: _Exchange, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        payload = exchange.cookie + (_PATTERN * (self.payload_bytes // len(_PATTERN) + 1))[
            :max(0, self.payload_bytes - len(exchange.cookie))]
        for index in range(self.count):
            if index:
                # Send only what leaves its reply at least one spacing before the deadline;
                # the rest could not fairly be answered in time, and is not counted.
                if loop.time() + 2 * self.spacing_s > deadline:
                    break
                await asyncio.sleep(self.spacing_s)
            sequence = index + 1
            packet = echo_request(exchange.family, exchange.identifier, sequence, payload)
            exchange.sent_at[sequence] = time.perf_counter()
            try:
                await loop.sock_sendto(sock, packet, (exchange.address, 0))
            except OSError as exc:
                # No route, a local firewall (EPERM), ...: this request is lost.
                if exc.errno in _UNREACHABLE_ERRNOS:
                    exchange.unreachable.add(sequence)
                exchange.error = f"sending to {exchange.address}: {exc.strerror or exc}"
        exchange.sending_done = True
        exchange.check_settled()

    async def _receive(self, sock: socket.socket, kind: str, exchange: _Exchange) -> None:
        loop = asyncio.get_running_loop()
        has_ip_header = kind == "raw" and exchange.family == socket.AF_INET
        while True:
            try:
                packet, source = await loop.sock_recvfrom(sock, 65535)
            except OSError as exc:
                # Datagram sockets report ICMP errors (IP_RECVERR) this way.
                exchange.error = f"{exchange.address}: {exc.strerror or exc}"
                if exc.errno not in _UNREACHABLE_ERRNOS:
                    return  # not about the network: nothing more will arrive
                exchange.unreachable_errors += 1
                exchange.check_settled()
                continue
            now = time.perf_counter()
            message = parse_icmp(exchange.family, packet, has_ip_header=has_ip_header)
            if message is not None:
                exchange.take(message, str(source[0]), now)

    def _outcome(self, exchange: _Exchange, duration: float,
                 phases: dict[str, float]) -> ProbeOutcome:
        sent = len(exchange.sent_at)
        rtts = list(exchange.rtts.values())
        received = len(rtts)
        details = pb.IcmpDetails(sent=sent, received=received)
        if rtts:
            mean = sum(rtts) / received
            details.rtt_min_seconds = min(rtts)
            details.rtt_avg_seconds = mean
            details.rtt_max_seconds = max(rtts)
            details.rtt_stddev_seconds = math.sqrt(sum((r - mean) ** 2 for r in rtts) / received)
        loss = (sent - received) / sent if sent else 1.0
        outcome = ProbeOutcome(success=True, duration_seconds=duration, phases=phases,
                               address=exchange.address, details=details)
        if received and loss <= self.max_loss + 1e-9:
            return outcome
        outcome.success = False
        if not received and (exchange.unreachable or exchange.unreachable_errors):
            outcome.failed_phase, outcome.reason = "connect", "icmp_unreachable"
            outcome.error = exchange.error or f"{exchange.address} unreachable"
        else:
            outcome.failed_phase, outcome.reason = "response", "icmp_loss"
            outcome.error = (f"{sent - received} of {sent} echo replies from "
                             f"{exchange.address} missing (loss {loss:.0%}, max_loss "
                             f"{self.max_loss:.0%})")
            if exchange.error:
                outcome.error += f"; {exchange.error}"
        return outcome


def build(spec: ProbeSpec, *, source_address: str | None,
          resolver: Resolver = system_resolver, socket_mode: SocketMode = "auto") -> IcmpProbe:
    """Build an `icmp` probe from its spec (target: a host)."""
    options = spec.icmp
    if options is None:
        raise ValueError(f"probe {spec.name!r}: kind icmp without icmp options")
    return IcmpProbe(spec.target, count=options.count, spacing_s=options.spacing,
                     max_loss=options.max_loss, ip_family=options.ip_family,
                     payload_bytes=options.payload_bytes, timeout_s=spec.timeout,
                     source_address=source_address, socket_mode=socket_mode,
                     resolver=resolver, name=spec.name)
