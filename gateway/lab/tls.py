"""The lab's own certificate authority: HTTPS and WSS with no homework.

``ensure_lab_certificate(tls_dir, hosts)`` returns the ``TlsFiles`` the gateway serves
with, making what is missing in ``tls_dir`` (``<state-dir>/tls/``):

- ``ca.pem`` (0644): the lab CA's certificate, the one file a client must trust;
- ``ca-key.pem`` (0600): its key, which never leaves the folder;
- ``server.pem`` (0644) and ``server-key.pem`` (0600): the gateway's certificate for
  ``hosts`` (127.0.0.1, ::1, localhost and the configured host), signed by the CA.

The CA is made once and kept (ten years), so a client trusts it across restarts. The
server certificate is reused while it is valid for ``RENEW_BEFORE`` more, names exactly
``hosts`` and is signed by the CA in the folder; otherwise it is made anew. Keys are
written owner-only through a temporary file and a rename, so no reader ever sees half a
key or a key with wider permissions.

``check_certificate_pair(cert, key)`` checks a certificate the user brings (the lab file's
``tls_cert`` and ``tls_key``): both PEM, the key unencrypted and matching the certificate.

The ``cryptography`` package builds the certificates (its x509 builder): no ``openssl``
subprocess, no parsing of its output, the same code on every machine.

Exceptions::

    TlsError           a certificate or key cannot be made, read or used (message says which)
      CertificateError   one of the user's files is not what it must be (``.key`` names it)
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.lab.errors import LabError

CA_LIFETIME = datetime.timedelta(days=3650)
SERVER_LIFETIME = datetime.timedelta(days=397)  # the longest browsers accept
RENEW_BEFORE = datetime.timedelta(days=30)
LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")

Clock = Callable[[], datetime.datetime]


class TlsError(LabError):
    """A certificate or key cannot be made, read or used; the message names the file."""


class CertificateError(TlsError):
    """A file the user brings is unusable; ``key`` is the lab-file key that names it."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """What the gateway serves with; ``ca`` is None for a certificate the user brought."""

    cert: Path
    key: Path
    ca: Path | None = None


def server_hosts(host: str, extra: Iterable[str] = ()) -> tuple[str, ...]:
    """The names the gateway's certificate covers: loopback, ``host`` (a wildcard address
    adds ``extra``, e.g. this machine's name), without duplicates, in a stable order."""
    names = list(LOOPBACK_HOSTS)
    wanted = [host.strip("[]")] if host not in ("", "0.0.0.0", "::") else list(extra)
    for name in wanted:
        if name and _canonical(name) not in {_canonical(n) for n in names}:
            names.append(name)
    return tuple(names)


def ensure_lab_certificate(
    tls_dir: Path, hosts: Iterable[str], *, now: Clock | None = None
) -> TlsFiles:
    """The lab CA and a server certificate for ``hosts`` in ``tls_dir`` (see the module
    docstring): reused when good, made when missing, stale or for other names.

    Raises TlsError when the folder cannot be written or its files cannot be read.
    """
    clock = now or (lambda: datetime.datetime.now(datetime.UTC))
    files = TlsFiles(tls_dir / "server.pem", tls_dir / "server-key.pem", tls_dir / "ca.pem")
    assert files.ca is not None
    ca_key_path = tls_dir / "ca-key.pem"
    wanted = frozenset(_canonical(h) for h in hosts)
    try:
        tls_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        tls_dir.chmod(0o700)
        ca_cert, ca_key = _load_ca(files.ca, ca_key_path, clock())
        if ca_cert is None or ca_key is None:
            ca_cert, ca_key = _make_ca(clock())
            _write(ca_key_path, _key_pem(ca_key), 0o600)
            _write(files.ca, ca_cert.public_bytes(serialization.Encoding.PEM), 0o644)
        if not _server_usable(files, ca_cert, wanted, clock()):
            server_key = ec.generate_private_key(ec.SECP256R1())
            cert = _make_server(ca_cert, ca_key, server_key, sorted(wanted), clock())
            _write(files.key, _key_pem(server_key), 0o600)
            _write(files.cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    except OSError as err:
        where = err.filename or tls_dir
        reason = err.strerror or err
        raise TlsError(f"cannot keep the lab's TLS files in {where}: {reason}") from err
    return files


def check_certificate_pair(cert: Path, key: Path) -> None:
    """Check the user's ``cert`` and ``key`` files: PEM, readable, unencrypted, a pair.

    Raises CertificateError whose ``key`` is ``tls_cert`` or ``tls_key`` (the lab file's).
    """
    certificate = _read_certificate(cert)
    try:
        data = key.read_bytes()
    except OSError as err:
        raise CertificateError("tls_key", f"cannot read {key}: {err.strerror or err}") from err
    try:
        private = serialization.load_pem_private_key(data, password=None)
    except TypeError as err:
        raise CertificateError(
            "tls_key", f"{key} is encrypted: give the key without a passphrase"
        ) from err
    except ValueError as err:
        raise CertificateError(
            "tls_key", f"{key} is not a PEM private key (BEGIN PRIVATE KEY)"
        ) from err
    if private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ):
        raise CertificateError("tls_key", f"{key} is not the key of the certificate {cert}")


# -- internals -------------------------------------------------------------------------------


def _canonical(host: str) -> str:
    """A host as a certificate compares it: IPs in their normal form, names in lower case."""
    host = host.strip("[]")
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host.lower()


def _read_certificate(path: Path) -> x509.Certificate:
    try:
        data = path.read_bytes()
    except OSError as err:
        raise CertificateError("tls_cert", f"cannot read {path}: {err.strerror or err}") from err
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as err:
        raise CertificateError(
            "tls_cert", f"{path} is not a PEM certificate (BEGIN CERTIFICATE)"
        ) from err


def _load_ca(
    cert_path: Path, key_path: Path, now: datetime.datetime
) -> tuple[x509.Certificate | None, ec.EllipticCurvePrivateKey | None]:
    """The kept CA, or (None, None) when it is missing, unreadable, not a pair or expiring."""
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (FileNotFoundError, ValueError, TypeError):
        return None, None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        return None, None
    if key.public_key() != cert.public_key() or cert.not_valid_after_utc - RENEW_BEFORE <= now:
        return None, None
    return cert, key


def _server_usable(
    files: TlsFiles, ca: x509.Certificate, wanted: frozenset[str], now: datetime.datetime
) -> bool:
    """Whether the kept server certificate may be served again for ``wanted``."""
    try:
        cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
        key = serialization.load_pem_private_key(files.key.read_bytes(), password=None)
    except (FileNotFoundError, ValueError, TypeError):
        return False
    if key.public_key() != cert.public_key() or cert.issuer != ca.subject:
        return False
    if not cert.not_valid_before_utc <= now < cert.not_valid_after_utc - RENEW_BEFORE:
        return False
    try:
        _verify_signature(ca, cert)
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (InvalidSignature, x509.ExtensionNotFound):
        return False
    have = {str(ip) for ip in names.get_values_for_type(x509.IPAddress)}
    have |= {name.lower() for name in names.get_values_for_type(x509.DNSName)}
    return have == wanted


def _verify_signature(ca: x509.Certificate, cert: x509.Certificate) -> None:
    public = ca.public_key()
    assert cert.signature_hash_algorithm is not None
    if isinstance(public, ec.EllipticCurvePublicKey):
        public.verify(
            cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm)
        )
    elif isinstance(public, rsa.RSAPublicKey):
        public.verify(
            cert.signature,
            cert.tbs_certificate_bytes,
            padding.PKCS1v15(),
            cert.signature_hash_algorithm,
        )
    else:
        raise InvalidSignature


def _make_ca(now: datetime.datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    # A serial in the name: two labs' CAs never look alike to a client that trusts both.
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Serial Console Lab"),
            x509.NameAttribute(
                NameOID.COMMON_NAME, f"Serial Console Lab CA {x509.random_serial_number():x}"[:64]
            ),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    usage = x509.KeyUsage(
        digital_signature=False, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
        encipher_only=False, decipher_only=False,
    )  # fmt: skip
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _make_server(
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    key: ec.EllipticCurvePrivateKey,
    hosts: list[str],
    now: datetime.datetime,
) -> x509.Certificate:
    alt: list[x509.GeneralName] = []
    for host in hosts:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alt.append(x509.DNSName(host))
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Serial Console Lab"),
            x509.NameAttribute(NameOID.COMMON_NAME, hosts[0] if hosts else "localhost"),
        ]
    )
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + SERVER_LIFETIME)
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes, mode: int) -> None:
    """``data`` into ``path`` with ``mode``, atomically (a temporary file, then a rename)."""
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temp, mode)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
