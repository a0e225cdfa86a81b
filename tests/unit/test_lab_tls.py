"""The lab CA: made once and kept; the server certificate reused while it fits, renewed
when the host set changes or it nears expiry; a broken CA is made anew."""

from __future__ import annotations

import datetime
from pathlib import Path

from cryptography import x509

from gateway.lab.tls import (
    RENEW_BEFORE,
    SERVER_LIFETIME,
    ensure_lab_certificate,
    server_hosts,
)

HOSTS = server_hosts("127.0.0.1")
NOW = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


def names(path: Path) -> set[str]:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(ip) for ip in alt.get_values_for_type(x509.IPAddress)} | set(
        alt.get_values_for_type(x509.DNSName)
    )


def test_server_hosts_cover_loopback_and_the_configured_host() -> None:
    """127.0.0.1, ::1 and localhost always; the host once; a wildcard adds this machine."""
    assert server_hosts("127.0.0.1") == ("127.0.0.1", "::1", "localhost")
    assert server_hosts("lab.example") == ("127.0.0.1", "::1", "localhost", "lab.example")
    assert server_hosts("[::1]") == ("127.0.0.1", "::1", "localhost")
    assert server_hosts("0.0.0.0", ["box"]) == ("127.0.0.1", "::1", "localhost", "box")


def test_the_certificate_names_the_hosts_and_is_reused(tmp_path: Path) -> None:
    """Made on first use for the hosts; a second call changes no byte."""
    files = ensure_lab_certificate(tmp_path, HOSTS, now=lambda: NOW)
    assert names(files.cert) == {"127.0.0.1", "::1", "localhost"}
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    ensure_lab_certificate(tmp_path, HOSTS, now=lambda: NOW + datetime.timedelta(days=100))
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_a_new_host_set_renews_the_certificate_not_the_ca(tmp_path: Path) -> None:
    """--host lab.example: a new certificate naming it, signed by the same CA."""
    files = ensure_lab_certificate(tmp_path, HOSTS, now=lambda: NOW)
    ca, cert = files.ca.read_bytes(), files.cert.read_bytes()  # type: ignore[union-attr]
    ensure_lab_certificate(tmp_path, server_hosts("lab.example"), now=lambda: NOW)
    assert files.ca.read_bytes() == ca  # type: ignore[union-attr]
    assert files.cert.read_bytes() != cert
    assert "lab.example" in names(files.cert)


def test_a_certificate_near_expiry_is_renewed(tmp_path: Path) -> None:
    """Within RENEW_BEFORE of its end the certificate is made again, valid from now."""
    files = ensure_lab_certificate(tmp_path, HOSTS, now=lambda: NOW)
    cert = files.cert.read_bytes()
    later = NOW + SERVER_LIFETIME - RENEW_BEFORE + datetime.timedelta(hours=1)
    ensure_lab_certificate(tmp_path, HOSTS, now=lambda: later)
    assert files.cert.read_bytes() != cert
    renewed = x509.load_pem_x509_certificate(files.cert.read_bytes())
    assert renewed.not_valid_after_utc > later + RENEW_BEFORE


def test_a_broken_ca_is_made_anew_with_its_certificate(tmp_path: Path) -> None:
    """A CA key that is not a key: a new CA, and a server certificate it signed."""
    files = ensure_lab_certificate(tmp_path, HOSTS, now=lambda: NOW)
    ca = files.ca.read_bytes()  # type: ignore[union-attr]
    (tmp_path / "ca-key.pem").write_text("garbage")
    ensure_lab_certificate(tmp_path, HOSTS, now=lambda: NOW)
    new_ca = x509.load_pem_x509_certificate(files.ca.read_bytes())  # type: ignore[union-attr]
    assert files.ca.read_bytes() != ca  # type: ignore[union-attr]
    cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
    assert cert.issuer == new_ca.subject
