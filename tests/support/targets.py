"""Small real target servers for tests, on loopback, each an async context manager.

Every server binds port 0 (or a given port), records who connected (the peer's source
address), and misbehaves on demand, so tests can show each failure phase for real:

    async with HttpTarget({"/": HttpRoute(200, "hello"),
                           "/slow": HttpRoute(delay_s=5),          # response timeout
                           "/reset": HttpRoute(behaviour="reset")}) as web:
        web.url("/slow")          # "http://127.0.0.1:PORT/slow"
        web.peers                 # ["127.0.0.2", ...] source addresses seen
    async with HttpTarget(ssl_context=cert.server_context()) as tls_web: ...   # https

    async with TcpTarget("echo") as tcp: ...           # also "accept", "banner", "reset", "stall"
    port = closed_port()                               # nothing listens: connect is refused
    with UnacceptingListener() as (host, port): ...     # SYNs dropped: connect times out

    table = {("www.example.test.", "A"): DnsAnswer(["192.0.2.10"]),
             ("big.example.test.", "TXT"): DnsAnswer(['"x"'] * 50, truncate=True),
             ("broken.example.test.", "A"): DnsAnswer(rcode="SERVFAIL"),
             ("slow.example.test.", "A"): DnsAnswer(stall=True)}
    async with DnsResponder(table) as dns_server:       # UDP and TCP on dns_server.port
        dns_server.queries                              # [(name, type, "udp"|"tcp", peer)]

A name missing from the DNS table is NXDOMAIN; a name present with other types only gets
NOERROR with no answer; a CNAME entry is followed within the table.
Certificates for the HTTPS target come from tests/certs.py (`TestCA`).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Self, cast

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

if TYPE_CHECKING:
    from collections.abc import Callable

# ----------------------------------------------------------------------------------- HTTP

HttpBehaviour = Literal["respond", "reset", "close", "stall", "garbage", "reset_mid_body"]


@dataclass
class HttpRoute:
    """How the HTTP target answers one path.

    behaviour: respond (normally, after `delay_s`); reset (RST instead of a response);
    close (FIN without a response); stall (read the request, never answer); garbage (a
    non-HTTP reply); reset_mid_body (headers promise more body than is sent, then RST).
    """

    status: int = 200
    body: bytes | str = b"ok"
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    behaviour: HttpBehaviour = "respond"
    chunked: bool = False

    def payload(self) -> bytes:
        """The response bytes for `respond`."""
        body = self.body.encode() if isinstance(self.body, str) else self.body
        lines = [f"HTTP/1.1 {self.status} {'OK' if self.status < 400 else 'Error'}"]
        headers = {"Content-Type": "text/plain", "Connection": "close", **self.headers}
        if self.chunked:
            headers["Transfer-Encoding"] = "chunked"
            half = len(body) // 2
            parts = [p for p in (body[:half], body[half:]) if p]
            body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"
        else:
            headers.setdefault("Content-Length", str(len(body)))
        lines += [f"{k}: {v}" for k, v in headers.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


@dataclass
class RecordedRequest:
    """One request the HTTP target received."""

    method: str
    path: str
    headers: dict[str, str]
    peer: str
    at: float = field(default_factory=time.monotonic)  # when it arrived (monotonic clock)


def _rst(transport: asyncio.BaseTransport) -> None:
    """Close with a TCP RST (SO_LINGER 0)."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class _HttpServerProtocol(asyncio.Protocol):
    def __init__(self, target: HttpTarget) -> None:
        self.target = target
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.answered = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.target.connections += 1
        self.target._open.add(transport)

    def connection_lost(self, _exc: Exception | None) -> None:
        if self.transport is not None:
            self.target._open.discard(self.transport)

    def data_received(self, data: bytes) -> None:
        if self.answered or self.transport is None:
            return
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buffer) > 65536:
                self.transport.abort()
            return
        head = self.buffer[:end].decode("latin-1")
        lines = head.split("\r\n")
        parts = lines[0].split(" ")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0") or 0)
        if len(self.buffer) < end + 4 + length:
            return
        self.answered = True
        method, path = (parts[0], parts[1]) if len(parts) >= 2 else ("?", "?")
        peer = self.transport.get_extra_info("peername")
        request = RecordedRequest(method, path, headers, str(peer[0]) if peer else "")
        self.target.requests_seen += 1
        if self.target.record:
            self.target.requests.append(request)
        route = self.target.route_for(path.split("?", 1)[0])
        if route.delay_s > 0 or route.behaviour == "stall":
            task = asyncio.get_running_loop().create_task(self._answer_later(route, method))
            self.target._tasks.add(task)
            task.add_done_callback(self.target._tasks.discard)
        else:
            self._answer(route, method)

    async def _answer_later(self, route: HttpRoute, method: str) -> None:
        if route.behaviour == "stall":
            await asyncio.sleep(3600)
        await asyncio.sleep(route.delay_s)
        self._answer(route, method)

    def _answer(self, route: HttpRoute, method: str) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if route.behaviour == "reset":
            _rst(transport)
        elif route.behaviour == "close":
            transport.close()
        elif route.behaviour == "garbage":
            transport.write(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
            transport.close()
        elif route.behaviour == "reset_mid_body":
            transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\npartial")
            loop = asyncio.get_running_loop()
            loop.call_later(0.05, _rst, transport)
        else:
            payload = route.payload()
            if method == "HEAD":
                payload = payload.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
            transport.write(payload)
            transport.close()


class HttpTarget:
    """A small HTTP/1.1 server (HTTPS with `ssl_context`) answering per path from `routes`."""

    def __init__(self, routes: dict[str, HttpRoute] | None = None, *, host: str = "127.0.0.1",
                 port: int = 0, ssl_context: Any = None, default: HttpRoute | None = None,
                 record: bool = True) -> None:
        """Unknown paths get `default` (200 "ok"); `record=False` keeps only counters."""
        self.routes = dict(routes or {})
        self.default = default or HttpRoute()
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self.record = record
        self.requests: list[RecordedRequest] = []
        self.requests_seen = 0
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.BaseTransport] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def route_for(self, path: str) -> HttpRoute:
        """The route answering `path`."""
        return self.routes.get(path, self.default)

    def url(self, path: str = "/") -> str:
        """The URL of `path` on this server."""
        scheme = "https" if self.ssl_context is not None else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}{path}"

    @property
    def peers(self) -> list[str]:
        """Source addresses of every recorded request."""
        return [r.peer for r in self.requests]

    async def __aenter__(self) -> Self:
        """Start listening."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _HttpServerProtocol(self), self.host, self.port, ssl=self.ssl_context,
            backlog=4096, ssl_handshake_timeout=5.0 if self.ssl_context else None)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Stop listening and drop every connection."""
        if self._server is None:
            return
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for transport in list(self._open):
            transport.abort()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2):
                await self._server.wait_closed()
        self._server = None


# ----------------------------------------------------------------------------------- TCP

TcpMode = Literal["accept", "echo", "banner", "reset", "stall"]


class TcpTarget:
    """A TCP server: accept (then close), echo lines, send a banner, reset, or stall."""

    def __init__(self, mode: TcpMode = "accept", *, host: str = "127.0.0.1", port: int = 0,
                 banner: bytes = b"220 probenet test ready\r\n", record: bool = True) -> None:
        """`banner` is what `banner` mode sends on connect (then it echoes like `echo`)."""
        self.mode = mode
        self.host = host
        self.port = port
        self.banner = banner
        self.record = record
        self.peers: list[str] = []
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[Any]] = set()

    @property
    def address(self) -> str:
        """`host:port` (brackets for IPv6)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)
        self.connections += 1
        if self.record:
            self.peers.append(str(writer.get_extra_info("peername")[0]))
        self._writers.add(writer)
        try:
            if self.mode == "reset":
                _rst(writer.transport)
                return
            if self.mode == "accept":
                writer.close()
                return
            if self.mode == "stall":
                await reader.read()  # until the client gives up
                return
            if self.mode == "banner":
                writer.write(self.banner)
            while line := await reader.readline():
                writer.write(line)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def __aenter__(self) -> Self:
        """Start listening."""
        self._server = await asyncio.start_server(self._handle, self.host, self.port,
                                                  backlog=4096)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Stop listening and drop every connection."""
        if self._server is None:
            return
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2):
                await self._server.wait_closed()
                if self._handlers:
                    await asyncio.wait(list(self._handlers))
        self._server = None


async def wait_until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Poll `condition` until it holds; TimeoutError after `timeout_s`.

    Servers accept asynchronously: a probe may be done before the server saw it.
    """
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.01)


def closed_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on (a connect to it is refused)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class UnacceptingListener:
    """A listening socket whose accept queue is full: new SYNs are dropped, connects hang.

    Linux drops a SYN when the listener's accept queue is full; with a backlog of 0 and a
    few connections that nobody accepts, every further connect attempt times out, which is
    exactly what a target whose SYNs are blackholed looks like. Used as `with ... as
    (host, port)`.
    """

    def __init__(self, host: str = "127.0.0.1") -> None:
        """Bind on `host`, port 0."""
        self.host = host
        self._listener: socket.socket | None = None
        self._fillers: list[socket.socket] = []

    def __enter__(self) -> tuple[str, int]:
        """Listen and fill the queue until a connect stops completing."""
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind((self.host, 0))
        self._listener.listen(0)
        port = int(self._listener.getsockname()[1])
        for _ in range(16):
            filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            filler.settimeout(0.3)
            self._fillers.append(filler)
            try:
                filler.connect((self.host, port))
            except (TimeoutError, OSError):
                break
        else:  # pragma: no cover - the kernel did not drop SYNs
            self.__exit__()
            raise RuntimeError("could not fill the accept queue")
        return self.host, port

    def __exit__(self, *exc_info: object) -> None:
        """Close everything."""
        for sock in self._fillers:
            sock.close()
        self._fillers.clear()
        if self._listener is not None:
            self._listener.close()
            self._listener = None


# ----------------------------------------------------------------------------------- DNS


@dataclass
class DnsAnswer:
    """How the DNS responder answers one (name, type).

    `records` are rdata texts of the key's type ("192.0.2.1", "10 mx.example.test.",
    '"some text"'); `rcode` the response code; `truncate` answers UDP with TC set and no
    records (the full answer comes over TCP); `stall` never answers.
    """

    records: list[str] = field(default_factory=list)
    rcode: str = "NOERROR"
    truncate: bool = False
    stall: bool = False
    ttl: int = 60


DnsTable = dict[tuple[str, str], DnsAnswer]


def _key(name: str, rtype: str) -> tuple[str, str]:
    return (name.lower().rstrip(".") + ".", rtype.upper())


class DnsResponder:
    """A DNS server on UDP and TCP (same port) answering from a table."""

    def __init__(self, table: DnsTable | None = None, *, host: str = "127.0.0.1",
                 port: int = 0) -> None:
        """`table` maps (name, type) to DnsAnswer; names are case-insensitive, dot optional."""
        self.table: DnsTable = {_key(n, t): a for (n, t), a in (table or {}).items()}
        self.host = host
        self.port = port
        self.queries: list[tuple[str, str, str, str]] = []
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._tcp_writers: set[asyncio.StreamWriter] = set()

    @property
    def address(self) -> str:
        """`host:port`, as a dns probe's `server` option is written."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def set(self, name: str, rtype: str, answer: DnsAnswer) -> None:
        """Change the answer for (name, type) while running."""
        self.table[_key(name, rtype)] = answer

    def answer(self, wire: bytes, transport: str, peer: str) -> bytes | None:
        """The reply to one query message (None: stay silent)."""
        try:
            query = dns.message.from_wire(wire)
        except (dns.exception.DNSException, ValueError):
            return None
        if not query.question:
            return None
        question = query.question[0]
        qname = question.name.to_text().lower()
        qtype = dns.rdatatype.to_text(question.rdtype)
        self.queries.append((qname, qtype, transport, peer))
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        entry = self.table.get((qname, qtype))
        if entry is not None and entry.stall:
            return None
        if entry is not None and entry.truncate and transport == "udp":
            response.flags |= dns.flags.TC
            return response.to_wire()
        if entry is not None and entry.rcode != "NOERROR":
            response.set_rcode(dns.rcode.from_text(entry.rcode))
            return response.to_wire()
        if not any(name == qname for name, _ in self.table):
            response.set_rcode(dns.rcode.NXDOMAIN)
            return response.to_wire()
        name = qname
        for _ in range(8):  # follow CNAMEs inside the table
            entry = self.table.get((name, qtype))
            if entry is not None:
                response.answer.append(dns.rrset.from_text_list(
                    name, entry.ttl, dns.rdataclass.IN, qtype, entry.records))
                break
            alias = self.table.get((name, "CNAME"))
            if alias is None or not alias.records:
                break
            response.answer.append(dns.rrset.from_text_list(
                name, alias.ttl, dns.rdataclass.IN, "CNAME", alias.records))
            name = alias.records[0].lower().rstrip(".") + "."
        return response.to_wire()

    async def _handle_tcp(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        self._tcp_writers.add(writer)
        peer = str(writer.get_extra_info("peername")[0])
        try:
            while True:
                size = struct.unpack("!H", await reader.readexactly(2))[0]
                reply = self.answer(await reader.readexactly(size), "tcp", peer)
                if reply is None:
                    await reader.read()  # stall until the client gives up
                    return
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            self._tcp_writers.discard(writer)
            writer.close()

    async def __aenter__(self) -> Self:
        """Listen on UDP, then TCP on the same port."""
        loop = asyncio.get_running_loop()
        responder = self

        class _Udp(asyncio.DatagramProtocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                # (3.11's selector datagram transport does not subclass DatagramTransport)
                self.transport = cast("asyncio.DatagramTransport", transport)

            def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
                reply = responder.answer(data, "udp", str(addr[0]))
                if reply is not None:
                    self.transport.sendto(reply, addr)

        wanted = self.port
        for _ in range(50):  # port 0: find a port free for both UDP and TCP
            transport, _ = await loop.create_datagram_endpoint(
                _Udp, local_addr=(self.host, wanted))
            port = transport.get_extra_info("sockname")[1]
            try:
                self._tcp = await asyncio.start_server(self._handle_tcp, self.host, port)
            except OSError:
                transport.close()
                if wanted:
                    raise
                continue
            self._udp = cast("asyncio.DatagramTransport", transport)
            self.port = port
            return self
        raise RuntimeError("no port free for both UDP and TCP")

    async def __aexit__(self, *exc_info: object) -> None:
        """Stop both listeners."""
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._tcp is not None:
            self._tcp.close()
            for writer in list(self._tcp_writers):
                writer.transport.abort()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2):
                    await self._tcp.wait_closed()
            self._tcp = None
