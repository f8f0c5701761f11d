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
"""

from __future__ import annotations

import base64
import logging
import re
import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Any
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
    from collections.abc import Sequence

    from ..config import HttpOptions, IpFamily, ProbeSpec

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


class _Url:
    """The parts of a URL a request needs."""

    __slots__ = ("host", "host_header", "port", "scheme", "target", "text")

    def __init__(self, text: str) -> None:
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


class HttpProbe:
    """Request `url` on a fresh connection and check the answer against `options`."""

    def __init__(self, url: str, options: HttpOptions, *, source_address: str | None = None,
                 ssl_context: ssl.SSLContext | None = None, server_name: str | None = None,
                 auth_header: str | None = None, all_addresses: bool = False,
                 timeout_s: float = 5.0, resolver: Resolver = system_resolver) -> None:
        """`ssl_context` is used for https hops (default: the system trust store)."""
        self.url = _Url(url)
        self.options = options
        self.source_address = source_address
        self.family: IpFamily | None = family_for(options.ip_family, source_address)
        self._literal = literal_addresses(self.url.host, self.family)
        self._ssl_context = ssl_context
        self.server_name = server_name
        self.all_addresses = all_addresses
        self.timeout_s = timeout_s
        self.resolver = resolver
        self.headers = dict(options.headers)
        if auth_header is not None:
            self.headers.setdefault("Authorization", auth_header)
        self.body = options.body.encode() if options.body is not None else None
        self.body_regex = re.compile(options.body_regex) if options.body_regex else None
        self.forbidden = [re.compile(p) for p in options.fail_if_body_matches]
        self.expect_headers = {k.lower(): re.compile(v) for k, v in options.expect_headers.items()}

    @property
    def ssl_context(self) -> ssl.SSLContext:
        """The client context for https hops (built on first use)."""
        if self._ssl_context is None:
            self._ssl_context = client_context(None)
        return self._ssl_context

    async def run(self, tracker: PhaseTracker) -> Sequence[ProbeOutcome]:
        """Probe once (every address of the first hop with all_addresses)."""
        tracker.enter("dns", "resolve")
        addresses = self._literal or await resolve_addresses(
            self.url.host, ip_family=self.family, resolver=self.resolver)
        if self.all_addresses:
            return await probe_each_address(
                addresses, lambda address, own: self._follow([address], own), tracker,
                self.timeout_s)
        return [await self._follow(addresses, tracker)]

    async def _follow(self, addresses: Sequence[str], tracker: PhaseTracker) -> ProbeOutcome:
        """Request, following redirects; validate the final response."""
        url, method, body = self.url, self.options.method, self.body
        redirects = 0
        facts: pb.TlsFacts | None = None
        failure: tuple[str, str] | None = None
        while True:
            response, address, hop_facts = await self._exchange(url, addresses, method, body,
                                                                tracker)
            facts = hop_facts or facts
            location = response.headers.get("location")
            if not (self.options.follow_redirects and response.status in _REDIRECTS
                    and location):
                break
            if redirects >= self.options.max_redirects:
                failure = ("too_many_redirects",
                           f"more than {self.options.max_redirects} redirects")
                break
            try:
                next_url = _Url(urljoin(url.text, location))
            except ValueError:
                failure = ("response_invalid",
                           f"redirect to unsupported location {location[:_EXCERPT]!r}")
                break
            redirects += 1
            url = next_url
            if response.status == 303 or (response.status in {301, 302} and method == "POST"):
                method, body = "GET", None
            tracker.enter("dns", "resolve")
            addresses = await resolve_addresses(url.host, ip_family=self.family,
                                                resolver=self.resolver)
        tracker.enter("validation")
        return self._outcome(tracker, response, address, redirects=redirects, facts=facts,
                             failure=failure or self._validate(response))

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

    async def _exchange(self, url: _Url, addresses: Sequence[str], method: str,
                        body: bytes | None, tracker: PhaseTracker,
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
        request = build_request(method, url.target, url.host_header, self.headers, body)
        if url.scheme == "https":
            tracker.enter("tls", "tls")
            try:
                response, ssl_object = await exchange(
                    sock, request, tracker, ssl_context=self.ssl_context,
                    server_hostname=self.server_name or url.host,
                    head_request=method == "HEAD")
            except (ssl.SSLError, ConnectionError, EOFError) as exc:
                raise handshake_failure(exc, format_host_port(address, url.port)) from exc
            return response, address, _tls_facts(ssl_object)
        response, _ = await exchange(sock, request, tracker, head_request=method == "HEAD")
        return response, address, None


def _read_secret(path: str, what: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ValueError(f"cannot read {what} {path}: {exc.strerror}") from exc


def build(spec: ProbeSpec, *, source_address: str | None,
          resolver: Resolver = system_resolver) -> HttpProbe:
    """Build an `http` probe from its spec; raise ValueError for unusable TLS or auth files."""
    options = spec.http
    if options is None:  # pragma: no cover - the config always sets the probe's own options
        raise ValueError("http options missing")
    tls = options.tls
    context = None
    if spec.target.startswith("https:") or tls is not None:
        context = client_context(
            tls.ca_file if tls else None,
            insecure_skip_verify=bool(tls and tls.insecure_skip_verify),
            cert_file=tls.cert_file if tls else None, key_file=tls.key_file if tls else None)
        context.set_alpn_protocols(["http/1.1"])
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
