"""A throwaway test CA and the server/client certificates tests need, made with `cryptography`.

Every suite that needs TLS uses this module instead of shipping key material:

    ca = TestCA(tmp_path)                          # a fresh CA: ca.ca_file is its PEM
    good = ca.issue("localhost", "127.0.0.1")      # valid now, for these names/addresses
    old = ca.issue("localhost", expired=True)      # expired yesterday
    soon = ca.issue("localhost", days_valid=3)     # expires in 3 days
    other = TestCA(tmp_path, name="Unknown CA").issue("localhost")   # signed by a stranger
    server_ctx = good.server_context()             # ssl.SSLContext for asyncio/aiohttp servers
    client_ctx = ca.client_context()               # trusts only this CA

`issue(...)` returns an `IssuedCert` with `cert_file`, `key_file`, `chain_file` (leaf +
CA, what servers present), the `not_after` datetime and the PEM bytes. Keys are P-256 (fast
to generate), certificates follow RFC 5280 strictly enough for OpenSSL's X509_STRICT mode
(subject/authority key identifiers, critical basic constraints and key usage).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import itertools
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_serial_numbers = itertools.count(1000)


def _now() -> dt.datetime:
    return dt.datetime.now(tz=dt.UTC).replace(microsecond=0)


def _private_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


@dataclass(frozen=True)
class IssuedCert:
    """A certificate and its key, written to files, as issued by a TestCA."""

    cert_file: Path
    key_file: Path
    chain_file: Path  # leaf then issuing CA: what a server should present
    cert_pem: bytes
    key_pem: bytes
    chain_pem: bytes
    not_after: dt.datetime

    def server_context(self) -> ssl.SSLContext:
        """A server-side SSLContext presenting this certificate (and its CA)."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.chain_file, self.key_file)
        return context


class TestCA:
    """A self-signed CA that writes everything it makes into `folder`."""

    __test__ = False  # not a pytest test class despite the name

    def __init__(self, folder: Path, name: str = "probenet test CA") -> None:
        """Create the CA key and certificate (valid from a day ago for ten years)."""
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.name = name
        self._stem = name.lower().replace(" ", "-")
        self.key = _private_key()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        public = self.key.public_key()
        now = _now()
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(public)
            .serial_number(next(_serial_numbers))
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        self.ca_pem = self.cert.public_bytes(serialization.Encoding.PEM)
        self.ca_file = self.folder / f"{self._stem}.pem"
        self.ca_file.write_bytes(self.ca_pem)

    def issue(self, *names: str, days_valid: float = 90, expired: bool = False,
              client: bool = False, file_stem: str | None = None) -> IssuedCert:
        """Issue a leaf for DNS names and IP addresses `names` (the first is the CN).

        `days_valid` counts from now; `expired=True` makes one that ended a day ago.
        `client=True` adds the clientAuth usage (for mTLS agents).
        """
        if not names:
            raise ValueError("issue() needs at least one name")
        key = _private_key()
        now = _now()
        if expired:
            not_before, not_after = now - dt.timedelta(days=30), now - dt.timedelta(days=1)
        else:
            not_before, not_after = now - dt.timedelta(hours=1), now + dt.timedelta(
                days=days_valid)
        usages = [ExtendedKeyUsageOID.SERVER_AUTH]
        if client:
            usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(next(_serial_numbers))
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName([_san(n) for n in names]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        stem = file_stem or f"{self._stem}-{cert.serial_number}"
        cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        key_pem = _key_pem(key)
        chain_pem = cert_pem + self.ca_pem
        cert_file = self.folder / f"{stem}.pem"
        key_file = self.folder / f"{stem}-key.pem"
        chain_file = self.folder / f"{stem}-chain.pem"
        cert_file.write_bytes(cert_pem)
        key_file.write_bytes(key_pem)
        key_file.chmod(0o600)
        chain_file.write_bytes(chain_pem)
        return IssuedCert(cert_file, key_file, chain_file, cert_pem, key_pem, chain_pem,
                          not_after)

    def client_context(self) -> ssl.SSLContext:
        """A client-side SSLContext trusting this CA only (hostname checks on)."""
        return ssl.create_default_context(cafile=str(self.ca_file))
