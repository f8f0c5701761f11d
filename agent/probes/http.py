"""The `http` probe: one request on a fresh connection, redirects followed, response checked.

Success = the final response's status is in `expect_status` (default 2xx and 3xx), every
`expect_headers` regex matches, `body_regex` (if set) matches and no `fail_if_body_matches`
regex does. Failure reasons: dns_* (phase dns); connect_* (connect); tls_cert_expired,
tls_cert_unknown_ca, tls_hostname_mismatch, tls_handshake (tls); connect_reset (request:
the peer reset while we sent); response_reset, response_invalid, response_too_large
(response); http_status, header_mismatch, body_mismatch, body_forbidden_match,
too_many_redirects (validation). A failure after a response keeps its status code.

Timing phases (blackbox_exporter's names): resolve, connect, tls, processing (request sent
until the first response byte), transfer (first byte to the end of the body); with
redirects, each phase sums over the hops. Reports `pb.HttpDetails` with the TLS facts of the
last https hop. With `all_addresses`, every address of the URL's host is probed (the first
hop; redirects resolve normally), one outcome each.

The `flow` probe reuses what is here: `HttpUrl`, `HttpConnector` (resolve, connect from the
source address, TLS, one exchange) and `fetch` (one request with its redirects, with
`HopHooks` to add and take cookies on every hop).
"""

from __future__ import annotations

import base64
import logging
import re
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urljoin, urlsplit

from probenet.addresses import format_host, format_host_port
from probenet.v1 import probenet_pb2 as pb

from .attempt import probe_each_address
from .base import PhaseTracker, ProbeFailure, ProbeOutcome
from .connect import connect_socket, literal_addresses
from .httpclient import HttpResponse, build_request, exchange
from .resolve import Resolver, family_for, resolve_addresses, system_resolver
from .tls import client_context, handshake_failure

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from ..config import HttpOptions, IpFamily, ProbeSpec, TlsClientOptions

__all__ = ["Fetched", "HopHooks", "HttpConnector", "HttpProbe", "HttpUrl", "build", "fetch",
           "http_tls_context"]

log = logging.getLogger(__name__)

_EXCERPT = 80
_DEFAULT_PORTS = {"http": 80, "https": 443}
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


def _tls_facts(ssl_object: Any) -> pb.TlsFacts | None:
    try:
        from .tlsfacts import facts_from_ssl_object  # noqa: PLC0415 - optional
    except ImportError:
        return None
    try:
        return facts_from_ssl_object(ssl_object)
    except Exception:
        log.warning("could not read TLS facts", exc_info=True)
        return None


class HttpUrl:
    """The parts of an http(s) URL a request needs; ValueError for any other URL."""

    __slots__ = ("host", "host_header", "port", "scheme", "target", "text")

    def __init__(self, text: str) -> None:
        """Split `text`; ValueError unless it is an http(s) URL with a host."""
        parts = urlsplit(text)
        if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
            raise ValueError(f"unsupported URL {text!r}")
        self.text = text
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = parts.port or _DEFAULT_PORTS[parts.scheme]
        self.target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host = self.host.encode("idna").decode("ascii") if not self.host.isascii() else self.host
        bracketed = format_host(host)
        self.host_header = (bracketed if self.port == _DEFAULT_PORTS[self.scheme]
                            else f"{bracketed}:{self.port}")

    @property
    def origin(self) -> tuple[str, str, int]:
        """(scheme, host, port): what decides whether two URLs are the same site."""
        return self.scheme, self.host.lower(), self.port


class HttpConnector:
    """Fresh connections for single requests: resolve, connect from the source address, TLS.

    `server_name` replaces the TLS server name (SNI and certificate check) of every https
    hop, or only of hops to `server_name_host` when that is given (a flow's target host:
    its absolute URLs to other hosts keep their own names).
    """

    __slots__ = ("_ssl_context", "family", "resolver", "server_name", "server_name_host",
                 "source_address")

    def __init__(self, *, source_address: str | None, family: IpFamily | None,
                 ssl_context: ssl.SSLContext | None = None, server_name: str | None = None,
                 server_name_host: str | None = None,
                 resolver: Resolver = system_resolver) -> None:
        """`ssl_context` is used for https hops (default: the system trust store)."""
        self.source_address = source_address
        self.family = family
        self._ssl_context = ssl_context
        self.server_name = server_name
        self.server_name_host = server_name_host
        self.resolver = resolver

    @property
    def ssl_context(self) -> ssl.SSLContext:
        """The client context for https hops (built on first use)."""
        if self._ssl_context is None:
            self._ssl_context = client_context(None)
        return self._ssl_context

    def server_hostname(self, url: HttpUrl) -> str:
        """The TLS server name for a hop to `url`."""
        if self.server_name and (self.server_name_host is None
                                 or url.host.lower() == self.server_name_host):
            return self.server_name
        return url.host

    async def resolve(self, url: HttpUrl, tracker: PhaseTracker) -> list[str]:
        """Every address of the URL's host (phase dns, timed as resolve)."""
        tracker.enter("dns", "resolve")
        return await resolve_addresses(url.host, ip_family=self.family, resolver=self.resolver)

    async def exchange(self, url: HttpUrl, addresses: Sequence[str], tracker: PhaseTracker, *,
                       method: str, headers: Mapping[str, str], body: bytes | None,
                       ) -> tuple[HttpResponse, str, pb.TlsFacts | None]:
        """Connect (first address that accepts), send one request, read the response."""
        tracker.enter("connect", "connect")
        sock, address = None, addresses[0]
        for index, address in enumerate(addresses):
            try:
                sock = await connect_socket(address, url.port,
                                            source_address=self.source_address)
                break
            except ProbeFailure:
                if index == len(addresses) - 1:
                    raise
        assert sock is not None
        request = build_request(method, url.target, url.host_header, headers, body)
        if url.scheme == "https":
            tracker.enter("tls", "tls")
            try:
                response, ssl_object = await exchange(
                    sock, request, tracker, ssl_context=self.ssl_context,
                    server_hostname=self.server_hostname(url), head_request=method == "HEAD")
            except (ssl.SSLError, ConnectionError, EOFError) as exc:
                raise handshake_failure(exc, format_host_port(address, url.port)) from exc
            return response, address, _tls_facts(ssl_object)
        response, _ = await exchange(sock, request, tracker, head_request=method == "HEAD")
        return response, address, None


class HopHooks(Protocol):
    """What a caller of `fetch` does on every hop (a flow: its cookie jar)."""

    def request_headers(self, url: HttpUrl, method: str, has_body: bool) -> Mapping[str, str]:
        """The headers of the request about to be sent to `url`."""
        ...

    def response_received(self, url: HttpUrl, response: HttpResponse) -> None:
        """Called with every response, redirects included, before the next hop."""
        ...


@dataclass(slots=True)
class Fetched:
    """The final response of a request and its redirects, and why it failed, if it did."""

    response: HttpResponse
    address: str
    url: HttpUrl  # the final URL
    redirects: int
    facts: pb.TlsFacts | None  # of the last https hop
    failure: tuple[str, str] | None  # (reason, error): too_many_redirects, response_invalid


async def fetch(connector: HttpConnector, url: HttpUrl, addresses: Sequence[str],
                tracker: PhaseTracker, *, method: str, headers: Mapping[str, str],
                body: bytes | None, follow_redirects: bool, max_redirects: int,
                hops: HopHooks | None = None) -> Fetched:
    """Send one request to `url` (already resolved to `addresses`), following redirects.

    A 303, or a 301/302 answering a POST, turns the next hop into a GET without a body.
    Transport failures raise ProbeFailure; a redirect limit or an unusable Location is
    returned as `failure`, with the response that carried it.
    """
    redirects = 0
    facts: pb.TlsFacts | None = None
    failure: tuple[str, str] | None = None
    while True:
        hop_headers = headers if hops is None else hops.request_headers(url, method,
                                                                        body is not None)
        response, address, hop_facts = await connector.exchange(
            url, addresses, tracker, method=method, headers=hop_headers, body=body)
        if hops is not None:
            hops.response_received(url, response)
        facts = hop_facts or facts
        location = response.headers.get("location")
        if not (follow_redirects and response.status in _REDIRECTS and location):
            break
        if redirects >= max_redirects:
            failure = ("too_many_redirects", f"more than {max_redirects} redirects")
            break
        try:
            next_url = HttpUrl(urljoin(url.text, location))
        except ValueError:
            failure = ("response_invalid",
                       f"redirect to unsupported location {location[:_EXCERPT]!r}")
            break
        redirects += 1
        url = next_url
        if response.status == 303 or (response.status in {301, 302} and method == "POST"):
            method, body = "GET", None
        addresses = await connector.resolve(url, tracker)
    return Fetched(response, address, url, redirects, facts, failure)


class HttpProbe:
    """Request `url` on a fresh connection and check the answer against `options`."""

    def __init__(self, url: str, options: HttpOptions, *, source_address: str | None = None,
                 ssl_context: ssl.SSLContext | None = None, server_name: str | None = None,
                 auth_header: str | None = None, all_addresses: bool = False,
                 timeout_s: float = 5.0, resolver: Resolver = system_resolver) -> None:
        """`ssl_context` is used for https hops (default: the system trust store)."""
        self.url = HttpUrl(url)
        self.options = options
        self.family: IpFamily | None = family_for(options.ip_family, source_address)
        self.connector = HttpConnector(source_address=source_address, family=self.family,
                                       ssl_context=ssl_context, server_name=server_name,
                                       resolver=resolver)
        self._literal = literal_addresses(self.url.host, self.family)
        self.all_addresses = all_addresses
        self.timeout_s = timeout_s
        self.headers = dict(options.headers)
        if auth_header is not None:
            self.headers.setdefault("Authorization", auth_header)
        self.body = options.body.encode() if options.body is not None else None
        self.body_regex = re.compile(options.body_regex) if options.body_regex else None
        self.forbidden = [re.compile(p) for p in options.fail_if_body_matches]
        self.expect_headers = {k.lower(): re.compile(v) for k, v in options.expect_headers.items()}

    async def run(self, tracker: PhaseTracker) -> Sequence[ProbeOutcome]:
        """Probe once (every address of the first hop with all_addresses)."""
        tracker.enter("dns", "resolve")
        addresses = self._literal or await resolve_addresses(
            self.url.host, ip_family=self.family, resolver=self.connector.resolver)
        if self.all_addresses:
            return await probe_each_address(
                addresses, lambda address, own: self._follow([address], own), tracker,
                self.timeout_s)
        return [await self._follow(addresses, tracker)]

    async def _follow(self, addresses: Sequence[str], tracker: PhaseTracker) -> ProbeOutcome:
        """Request, following redirects; validate the final response."""
        options = self.options
        fetched = await fetch(self.connector, self.url, addresses, tracker,
                              method=options.method, headers=self.headers, body=self.body,
                              follow_redirects=options.follow_redirects,
                              max_redirects=options.max_redirects)
        tracker.enter("validation")
        return self._outcome(tracker, fetched.response, fetched.address,
                             redirects=fetched.redirects, facts=fetched.facts,
                             failure=fetched.failure or self._validate(fetched.response))

    def _outcome(self, tracker: PhaseTracker, response: HttpResponse, address: str, *,
                 redirects: int, facts: pb.TlsFacts | None,
                 failure: tuple[str, str] | None) -> ProbeOutcome:
        details = pb.HttpDetails(http_version=response.version, redirects=redirects,
                                 content_length=response.body_bytes)
        if facts is not None:
            details.tls.CopyFrom(facts)
        duration = tracker.finish()
        return ProbeOutcome(
            success=failure is None, duration_seconds=duration,
            failed_phase="validation" if failure else "",
            reason=failure[0] if failure else "", error=failure[1] if failure else "",
            phases=dict(tracker.durations), status_code=response.status, address=address,
            details=details)

    def _validate(self, response: HttpResponse) -> tuple[str, str] | None:
        if not self.options.status_matches(response.status):
            return ("http_status", (f"status {response.status} is not one of "
                                   f"{', '.join(self.options.expect_status)}"))
        for name, pattern in self.expect_headers.items():
            value = response.headers.get(name)
            if value is None:
                return "header_mismatch", f"header {name!r} missing"
            if not pattern.search(value):
                return ("header_mismatch", (f"header {name!r} value {value[:_EXCERPT]!r} does "
                                           f"not match {pattern.pattern!r}"))
        if self.body_regex is None and not self.forbidden:
            return None
        text = response.text()
        if self.body_regex is not None and not self.body_regex.search(text):
            return "body_mismatch", f"body does not match {self.body_regex.pattern!r}"
        for pattern in self.forbidden:
            if pattern.search(text):
                return "body_forbidden_match", f"body matches {pattern.pattern!r}"
        return None


def _read_secret(path: str, what: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ValueError(f"cannot read {what} {path}: {exc.strerror}") from exc


def http_tls_context(target: str, tls: TlsClientOptions | None) -> ssl.SSLContext | None:
    """The client TLS context of an https target (or one with TLS options), HTTP/1.1 only."""
    if not target.startswith("https:") and tls is None:
        return None
    context = client_context(
        tls.ca_file if tls else None,
        insecure_skip_verify=bool(tls and tls.insecure_skip_verify),
        cert_file=tls.cert_file if tls else None, key_file=tls.key_file if tls else None)
    context.set_alpn_protocols(["http/1.1"])
    return context


def build(spec: ProbeSpec, *, source_address: str | None,
          resolver: Resolver = system_resolver) -> HttpProbe:
    """Build an `http` probe from its spec; raise ValueError for unusable TLS or auth files."""
    options = spec.http
    if options is None:  # pragma: no cover - the config always sets the probe's own options
        raise ValueError("http options missing")
    tls = options.tls
    context = http_tls_context(spec.target, tls)
    auth_header = None
    if options.auth is not None and options.auth.basic is not None:
        password = _read_secret(options.auth.basic.password_file, "password_file")
        pair = f"{options.auth.basic.username}:{password}".encode()
        auth_header = "Basic " + base64.b64encode(pair).decode("ascii")
    elif options.auth is not None and options.auth.bearer_token_file is not None:
        auth_header = "Bearer " + _read_secret(options.auth.bearer_token_file,
                                               "bearer_token_file")
    return HttpProbe(spec.target, options, source_address=source_address, ssl_context=context,
                     server_name=tls.server_name if tls else None, auth_header=auth_header,
                     all_addresses=spec.all_addresses, timeout_s=spec.timeout,
                     resolver=resolver)
