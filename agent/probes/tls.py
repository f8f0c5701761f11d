"""The `tls` probe: TCP connect, TLS handshake with SNI, chain and expiry checks.

Target `host:port` (`[v6]:port`). Success = the handshake completed and the certificate is
trusted (system store, or `ca_file`), matches `server_name` (default: the host), and stays
valid for at least `min_days_valid` more days. Reports `pb.TlsDetails` (earliest expiry of
the chain, TLS version, cipher) whenever the handshake completed.

Failure reasons: dns_* (phase dns); connect_refused, connect_reset, connect_timeout,
connect_unreachable, connect_error (connect); tls_cert_expired, tls_cert_unknown_ca,
tls_hostname_mismatch, tls_handshake (tls); tls_cert_expiring (validation).
Timing phases: resolve, connect, tls.
"""

from __future__ import annotations

import ssl
import time
from typing import TYPE_CHECKING

from probenet.addresses import format_host_port, split_host_port
from probenet.v1 import probenet_pb2 as pb

from .base import PhaseTracker, ProbeFailure, ProbeOutcome
from .connect import close_stream, connect_socket, open_stream
from .resolve import Resolver, family_for, resolve_addresses, system_resolver
from .tlsfacts import facts_from_ssl_object

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from ..config import ProbeSpec

_DAY_S = 86400.0

# OpenSSL X509_V_ERR_* codes -> reasons.
_VERIFY_REASONS = {
    10: "tls_cert_expired",  # CERT_HAS_EXPIRED
    2: "tls_cert_unknown_ca",  # UNABLE_TO_GET_ISSUER_CERT
    18: "tls_cert_unknown_ca",  # DEPTH_ZERO_SELF_SIGNED_CERT
    19: "tls_cert_unknown_ca",  # SELF_SIGNED_CERT_IN_CHAIN
    20: "tls_cert_unknown_ca",  # UNABLE_TO_GET_ISSUER_CERT_LOCALLY
    21: "tls_cert_unknown_ca",  # UNABLE_TO_VERIFY_LEAF_SIGNATURE
    62: "tls_hostname_mismatch",  # HOSTNAME_MISMATCH
    64: "tls_hostname_mismatch",  # IP_ADDRESS_MISMATCH
}


def handshake_failure(exc: Exception, where: str) -> ProbeFailure:
    """Translate a failed TLS handshake into a ProbeFailure in phase `tls`."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        reason = _VERIFY_REASONS.get(exc.verify_code, "tls_handshake")
        detail = exc.verify_message or str(exc)
    elif isinstance(exc, ssl.SSLError):
        reason, detail = "tls_handshake", exc.reason or str(exc)
    else:  # the peer closed or reset mid-handshake (e.g. a plain TCP server)
        reason, detail = "tls_handshake", str(exc) or type(exc).__name__
    return ProbeFailure("tls", reason, f"TLS handshake with {where}: {detail}")


def client_context(ca_file: str | None, *, insecure_skip_verify: bool = False,
                   cert_file: str | None = None, key_file: str | None = None) -> ssl.SSLContext:
    """A client SSLContext: system store or `ca_file`, optional client certificate.

    Raises ValueError naming the file that could not be loaded.
    """
    try:
        context = ssl.create_default_context(cafile=ca_file)
        if cert_file and key_file:
            context.load_cert_chain(cert_file, key_file)
    except OSError as exc:
        where = exc.filename or ca_file or cert_file
        raise ValueError(f"cannot load TLS files ({where}): {exc.strerror or exc}") from exc
    except ssl.SSLError as exc:
        files = ", ".join(f for f in (ca_file, cert_file, key_file) if f)
        raise ValueError(f"invalid TLS files ({files}): {exc.reason or exc}") from exc
    if insecure_skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class TlsProbe:
    """Handshake with `host:port` and check the certificate chain."""

    def __init__(self, host: str, port: int, *, context: ssl.SSLContext, server_name: str,
                 min_days_valid: float = 0, source_address: str | None = None,
                 resolver: Resolver = system_resolver,
                 wall_clock: Callable[[], float] = time.time) -> None:
        """`context` decides trust; `server_name` is sent as SNI and checked against the cert."""
        self.host = host
        self.port = port
        self.context = context
        self.server_name = server_name
        self.min_days_valid = min_days_valid
        self.source_address = source_address
        self.resolver = resolver
        self._wall_clock = wall_clock

    async def run(self, tracker: PhaseTracker) -> Sequence[ProbeOutcome]:
        """Probe once; raise ProbeFailure before the handshake completes."""
        tracker.enter("dns", "resolve")
        addresses = await resolve_addresses(
            self.host, ip_family=family_for(None, self.source_address), resolver=self.resolver)
        address = addresses[0]
        where = format_host_port(self.host, self.port)
        tracker.enter("connect", "connect")
        sock = await connect_socket(address, self.port, source_address=self.source_address)
        tracker.enter("tls", "tls")
        try:
            _, writer = await open_stream(sock, ssl_context=self.context,
                                          server_hostname=self.server_name)
        except (ssl.SSLError, ConnectionError, EOFError) as exc:
            raise handshake_failure(exc, where) from exc
        try:
            facts = facts_from_ssl_object(writer.get_extra_info("ssl_object"))
            tracker.enter("validation")
            failure = self._validate(facts)
        finally:
            await close_stream(writer)
        duration = tracker.finish()
        return [ProbeOutcome(
            success=failure is None, duration_seconds=duration,
            failed_phase="validation" if failure else "",
            reason="tls_cert_expiring" if failure else "", error=failure or "",
            phases=dict(tracker.durations), address=address,
            details=pb.TlsDetails(tls=facts))]

    def _validate(self, facts: pb.TlsFacts) -> str | None:
        if self.min_days_valid <= 0 or not facts.earliest_cert_expiry:
            return None
        days_left = (facts.earliest_cert_expiry - self._wall_clock()) / _DAY_S
        if days_left >= self.min_days_valid:
            return None
        return (f"a certificate of {self.server_name} expires in {days_left:.1f} days "
                f"(min_days_valid {self.min_days_valid:g})")


def build(spec: ProbeSpec, *, source_address: str | None,
          resolver: Resolver = system_resolver) -> TlsProbe:
    """Build a `tls` probe from its spec; raise ValueError for an unusable ca_file."""
    options = spec.tls
    host, port = split_host_port(spec.target)
    server_name = (options.server_name if options else None) or host
    context = client_context(options.ca_file if options else None,
                             insecure_skip_verify=bool(options and options.insecure_skip_verify))
    return TlsProbe(host, port, context=context, server_name=server_name,
                    min_days_valid=options.min_days_valid if options else 0,
                    source_address=source_address, resolver=resolver)
