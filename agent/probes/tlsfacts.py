"""What a finished TLS handshake tells: earliest certificate expiry, TLS version, cipher.

Shared by the `tls` probe and the `http` probe (https targets); the result is the wire's
`probenet.v1.TlsFacts`, which the collector exports as blackbox_exporter's
`probe_ssl_earliest_cert_expiry` and `probe_tls_version_info`.

Which certificates count: the verified chain (leaf up to the trusted root, as
blackbox_exporter does) when the handshake verified one; with verification off, the chain
the server presented; the leaf alone as a last resort. Python 3.13 has public
`get_verified_chain()`; 3.11 and 3.12 only have it on the private `_sslobj`, used when
present.
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING, Any

from cryptography import x509

from probenet.v1 import probenet_pb2 as pb

if TYPE_CHECKING:
    from collections.abc import Iterable

_ENCODING_DER = 2  # _ssl.ENCODING_DER, for _ssl.Certificate.public_bytes on 3.11/3.12

# OpenSSL's names -> blackbox_exporter's `version` label values.
_VERSION_NAMES = {
    "TLSv1": "TLS 1.0",
    "TLSv1.1": "TLS 1.1",
    "TLSv1.2": "TLS 1.2",
    "TLSv1.3": "TLS 1.3",
    "SSLv3": "SSL 3.0",
}


def tls_version_name(openssl_name: str | None) -> str:
    """`TLSv1.3` -> `TLS 1.3` (unknown names pass through, None -> "")."""
    if not openssl_name:
        return ""
    return _VERSION_NAMES.get(openssl_name, openssl_name)


def _as_der(cert: Any) -> bytes | None:
    if isinstance(cert, bytes | bytearray):
        return bytes(cert)
    public_bytes = getattr(cert, "public_bytes", None)  # _ssl.Certificate (3.10-3.12)
    if public_bytes is None:
        return None
    data = public_bytes(_ENCODING_DER)
    return bytes(data) if isinstance(data, bytes | bytearray) else None


def _chain(ssl_object: ssl.SSLObject | ssl.SSLSocket, method: str) -> list[bytes]:
    # The public method (3.13+) returns DER bytes; the private one, Certificate objects.
    getter = getattr(ssl_object, method, None)
    if getter is None:
        getter = getattr(getattr(ssl_object, "_sslobj", None), method, None)
    if getter is None:
        return []
    try:
        certs = getter() or []
    except (ssl.SSLError, ValueError):
        return []
    return [der for der in map(_as_der, certs) if der is not None]


def peer_chain(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> list[bytes]:
    """The peer's certificates as DER: verified chain, else presented chain, else the leaf."""
    chain = _chain(ssl_object, "get_verified_chain")
    if not chain:
        chain = _chain(ssl_object, "get_unverified_chain")
    if not chain:
        leaf = ssl_object.getpeercert(binary_form=True)
        chain = [leaf] if leaf else []
    return chain


def earliest_expiry(der_certs: Iterable[bytes]) -> int:
    """The earliest `notAfter` of these DER certificates, unix seconds (0 if none parse)."""
    expiries = []
    for der in der_certs:
        try:
            cert = x509.load_der_x509_certificate(der)
        except ValueError:
            continue
        expiries.append(int(cert.not_valid_after_utc.timestamp()))
    return min(expiries, default=0)


def facts_from_ssl_object(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> pb.TlsFacts:
    """TLS facts of a completed handshake (an empty message for None)."""
    if ssl_object is None:
        return pb.TlsFacts()
    cipher = ssl_object.cipher()
    return pb.TlsFacts(
        earliest_cert_expiry=earliest_expiry(peer_chain(ssl_object)),
        version=tls_version_name(ssl_object.version()),
        cipher=cipher[0] if cipher else "",
    )
