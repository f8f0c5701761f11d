"""A small HTTP/1.1 client for probes: one request on one fresh connection, read with limits.

Why not aiohttp: a probe needs a fresh connection each time (a pooled one says nothing about
reachability), its TLS handshake timed on its own, and to run thousands of times a second.
aiohttp with a fresh session per request managed about 3,000 requests per CPU-second on
this machine class against 7,000 for plain asyncio streams, and hides the TCP/TLS boundary
inside one call. This client is an asyncio Protocol on a socket the probe connected itself:
it writes one request (`Connection: close`) as soon as the connection (and TLS) is up, and
parses the response as bytes arrive, strictly enough never to crash on garbage. Failures
are ProbeFailures with the agent's reasons: response_reset (the peer closed or reset
before a complete response), response_invalid (not HTTP), response_too_large (headers
over the limit).
"""

from __future__ import annotations

import asyncio
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .base import ProbeFailure

if TYPE_CHECKING:
    import socket
    import ssl
    from collections.abc import Mapping

    from .base import PhaseTracker

MAX_HEADER_BYTES = 64 * 1024
# Body bytes kept for matching; the rest is read (and timed) but not kept.
MAX_KEPT_BODY_BYTES = 1024 * 1024
_NO_BODY_STATUSES = frozenset({204, 304})


@dataclass(slots=True)
class HttpResponse:
    """What one exchange returned."""

    status: int
    reason: str
    version: str  # "1.1", "1.0"
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names, repeats joined
    # Each Set-Cookie line as received: joined with ", " (as `headers` does) they could no
    # longer be told apart, since cookie dates hold commas.
    set_cookies: list[str] = field(default_factory=list)
    body: bytes = b""  # at most MAX_KEPT_BODY_BYTES
    body_bytes: int = 0  # every body byte received

    def text(self) -> str:
        """The kept body, decompressed if the server compressed it, decoded leniently."""
        body = self.body
        encoding = self.headers.get("content-encoding", "").strip().lower()
        if encoding in {"gzip", "x-gzip", "deflate"}:
            wbits = 47 if encoding != "deflate" else 15
            try:
                body = zlib.decompressobj(wbits).decompress(body, MAX_KEPT_BODY_BYTES)
            except zlib.error:
                body = self.body
        return body.decode("utf-8", errors="replace")


def build_request(method: str, target: str, host_header: str,
                  headers: Mapping[str, str], body: bytes | None) -> bytes:
    """The request bytes: our defaults, overridden by `headers` (case-insensitively)."""
    fields = {
        "host": ("Host", host_header),
        "user-agent": ("User-Agent", "probenet-agent"),
        "accept": ("Accept", "*/*"),
        "accept-encoding": ("Accept-Encoding", "identity"),
    }
    for name, value in headers.items():
        fields[name.lower()] = (name, value)
    fields["connection"] = ("Connection", "close")
    if body is not None:
        fields["content-length"] = ("Content-Length", str(len(body)))
    head = f"{method} {target} HTTP/1.1\r\n" + "".join(
        f"{name}: {value}\r\n" for name, value in fields.values()) + "\r\n"
    return head.encode("latin-1", errors="replace") + (body or b"")


def _invalid(what: str) -> ProbeFailure:
    return ProbeFailure("response", "response_invalid", f"not a valid HTTP response: {what}")


def parse_head(head: bytes) -> HttpResponse:
    """Parse a status line and header block (ending in CRLF CRLF); raise ProbeFailure."""
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError as exc:  # pragma: no cover - latin-1 decodes every byte
        raise _invalid("undecodable header") from exc
    lines = text.split("\r\n")
    status_line = lines[0]
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or len(parts[0]) != 8:
        raise _invalid(f"status line {status_line[:80]!r}")
    code = parts[1]
    if len(code) != 3 or not code.isdigit() or not 100 <= int(code) <= 999:
        raise _invalid(f"status code {code[:20]!r}")
    response = HttpResponse(status=int(code), reason=parts[2] if len(parts) > 2 else "",
                            version=parts[0][5:])
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise _invalid(f"header line {line[:80]!r}")
        key = name.lower()
        value = value.strip()
        if key == "set-cookie":
            response.set_cookies.append(value)
        previous = response.headers.get(key)
        response.headers[key] = value if previous is None else f"{previous}, {value}"
    return response


class _ResponseReader(asyncio.Protocol):
    """Writes the request once connected; parses the response as it arrives."""

    def __init__(self, request: bytes, tracker: PhaseTracker, done: asyncio.Future[HttpResponse],
                 *, head_request: bool) -> None:
        self.request = request
        self.tracker = tracker
        self.done = done
        self.head_request = head_request
        self.transport: asyncio.BaseTransport | None = None
        self.buffer = bytearray()
        self.response: HttpResponse | None = None
        self.mode = ""  # "", "length", "chunked", "eof" once the head is parsed
        self.remaining = 0  # body bytes left ("length"), or of the current chunk ("chunked")
        self.kept = bytearray()
        self.total = 0
        self.got_data = False

    # -- asyncio callbacks ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.tracker.enter("request", "processing")
        transport.write(self.request)  # type: ignore[attr-defined]
        self.tracker.enter("response", "processing")

    def data_received(self, data: bytes) -> None:
        if self.done.done():
            return
        if not self.got_data:
            self.got_data = True
            self.tracker.enter("response", "transfer")
        try:
            if self.response is None:
                self.buffer += data
                self._parse_head()
            elif self.mode == "chunked":
                self.buffer += data
                self._parse_chunks()
            else:
                self._add_body(data)
        except ProbeFailure as failure:
            self._fail(failure)

    def eof_received(self) -> bool:
        self._ended(None)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._ended(exc)

    # -- parsing -------------------------------------------------------------------------------

    def _parse_head(self) -> None:
        while self.response is None:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > MAX_HEADER_BYTES:
                    raise ProbeFailure("response", "response_too_large",
                                       f"response headers larger than {MAX_HEADER_BYTES} bytes")
                return
            response = parse_head(bytes(self.buffer[:end + 4]))
            del self.buffer[:end + 4]
            if 100 <= response.status < 200 and response.status != 101:
                continue  # an interim response (100 Continue): the real one follows
            self.response = response
        response = self.response
        headers = response.headers
        if self.head_request or response.status in _NO_BODY_STATUSES or response.status < 200:
            self._finish()
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            self.mode = "chunked"
            self._parse_chunks()
        elif "content-length" in headers:
            length_text = headers["content-length"].split(",")[0].strip()
            if not length_text.isdigit():
                raise _invalid(f"Content-Length {length_text[:20]!r}")
            self.mode, self.remaining = "length", int(length_text)
            rest, self.buffer = bytes(self.buffer), bytearray()
            if self.remaining == 0:
                self._finish()
            else:
                self._add_body(rest)
        else:
            self.mode = "eof"
            rest, self.buffer = bytes(self.buffer), bytearray()
            self._add_body(rest)

    def _keep(self, chunk: bytes | bytearray) -> None:
        self.total += len(chunk)
        room = MAX_KEPT_BODY_BYTES - len(self.kept)
        if room > 0:
            self.kept += chunk[:room]

    def _add_body(self, data: bytes) -> None:
        if self.mode == "length":
            self._keep(data[:self.remaining])
            self.remaining -= min(len(data), self.remaining)
            if self.remaining == 0:
                self._finish()
        elif data:
            self._keep(data)

    def _parse_chunks(self) -> None:
        buffer = self.buffer
        while not self.done.done():
            if self.remaining > 0:  # inside a chunk's data
                take = min(self.remaining, len(buffer))
                self._keep(buffer[:take])
                del buffer[:take]
                self.remaining -= take
                if self.remaining > 0:
                    return
                self.remaining = -2  # its CRLF is next
            if self.remaining == -2:
                if len(buffer) < 2:
                    return
                if buffer[:2] != b"\r\n":
                    raise _invalid("chunk not followed by CRLF")
                del buffer[:2]
                self.remaining = 0
            end = buffer.find(b"\r\n")
            if end < 0:
                if len(buffer) > 1024:
                    raise _invalid("chunk size line too long")
                return
            size_text = bytes(buffer[:end]).split(b";", 1)[0].strip()
            del buffer[:end + 2]
            try:
                size = int(size_text, 16)
            except ValueError:
                raise _invalid(f"chunk size {size_text[:20]!r}") from None
            if size < 0:
                raise _invalid("negative chunk size")
            if size == 0:  # the last chunk; trailers, if any, are not needed
                self._finish()
                return
            self.remaining = size

    # -- endings -------------------------------------------------------------------------------

    def _finish(self) -> None:
        if self.done.done() or self.response is None:
            return
        self.response.body = bytes(self.kept)
        self.response.body_bytes = self.total
        self.done.set_result(self.response)

    def _fail(self, failure: ProbeFailure) -> None:
        if not self.done.done():
            self.done.set_exception(failure)
        if self.transport is not None:
            self.transport.abort()  # type: ignore[attr-defined]

    def _ended(self, exc: Exception | None) -> None:
        if self.done.done():
            return
        if exc is None and self.response is not None and self.mode == "eof":
            self._finish()
            return
        if not self.got_data:
            detail = f": {exc}" if exc else ""
            message = f"the server closed the connection without responding{detail}"
        elif self.response is None:
            message = f"connection closed inside the headers ({bytes(self.buffer[:60])!r})"
            if exc is None:
                self._fail(_invalid(message))
                return
        else:
            message = f"connection lost in the middle of the body ({self.total} bytes read)"
        self._fail(ProbeFailure("response", "response_reset", message))


async def exchange(sock: socket.socket, request: bytes, tracker: PhaseTracker, *,
                   ssl_context: ssl.SSLContext | None = None,
                   server_hostname: str | None = None,
                   head_request: bool = False) -> tuple[HttpResponse, Any]:
    """Do the TLS handshake if asked, send `request`, read the response.

    Returns the response and the TLS `ssl_object` (None for plain HTTP). TLS errors
    propagate as they are (ssl.SSLError, ConnectionError) for the caller to translate; the
    socket is always closed.
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[HttpResponse] = loop.create_future()
    try:
        if ssl_context is not None:
            transport, _ = await loop.create_connection(
                lambda: _ResponseReader(request, tracker, done, head_request=head_request),
                sock=sock, ssl=ssl_context, server_hostname=server_hostname,
                ssl_handshake_timeout=3600.0)
        else:
            transport, _ = await loop.create_connection(
                lambda: _ResponseReader(request, tracker, done, head_request=head_request),
                sock=sock)
    except BaseException:
        done.cancel()  # nobody will await it: later callbacks must not set an exception
        sock.close()
        raise
    try:
        response = await done
        ssl_object = transport.get_extra_info("ssl_object")
    except BaseException:
        transport.abort()
        if done.done() and not done.cancelled():
            done.exception()  # retrieved: the deadline may strike just after a failure
        done.cancel()
        raise
    transport.close()
    return response, ssl_object
