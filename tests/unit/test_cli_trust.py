"""Which CA the CLI keeps at login: --ca-file, else a local lab's .lab/tls/ca.pem when it is
this user's alone, else none; the kept CA survives in the credentials file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gateway.cli.credentials import Credentials, CredentialStore
from gateway.cli.errors import CliError
from gateway.cli.trust import lab_ca_for_login, read_ca_file, ssl_context
from gateway.lab.tls import ensure_lab_certificate, server_hosts

URL = "https://127.0.0.1:8400"


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A folder where a lab ran with --tls: .lab/tls/ca.pem."""
    ensure_lab_certificate(tmp_path / ".lab" / "tls", server_hosts("127.0.0.1"))
    return tmp_path


def test_ca_file_wins(checkout: Path, tmp_path: Path) -> None:
    """--ca-file is read and kept, wherever the lab is."""
    other = ensure_lab_certificate(tmp_path / "other", server_hosts("127.0.0.1")).ca
    assert other is not None
    pem = lab_ca_for_login("https://lab.example:8400", other, cwd=checkout)
    assert pem == other.read_text()


def test_a_local_lab_ca_is_found_in_the_default_state_folder(checkout: Path) -> None:
    """A loopback https URL, no --ca-file: .lab/tls/ca.pem here; nothing for http or
    another host."""
    ca = (checkout / ".lab" / "tls" / "ca.pem").read_text()
    assert lab_ca_for_login(URL, None, cwd=checkout) == ca
    assert lab_ca_for_login("https://localhost:8400", None, cwd=checkout) == ca
    assert lab_ca_for_login("http://127.0.0.1:8400", None, cwd=checkout) == ""
    assert lab_ca_for_login("https://lab.example", None, cwd=checkout) == ""


def test_a_ca_others_may_write_is_not_trusted(checkout: Path) -> None:
    """A CA file in a folder anyone may write could be anyone's: it is left alone."""
    os.chmod(checkout / ".lab" / "tls", 0o777)
    assert lab_ca_for_login(URL, None, cwd=checkout) == ""


def test_a_bad_ca_file_is_named(tmp_path: Path) -> None:
    """A missing file or one that is not a certificate is refused, naming it."""
    with pytest.raises(CliError, match=f"--ca-file: cannot read {tmp_path / 'none.pem'}"):
        read_ca_file(tmp_path / "none.pem")
    (tmp_path / "key.pem").write_text("-----BEGIN PRIVATE KEY-----\nabc\n")
    with pytest.raises(CliError, match="is not a PEM certificate"):
        read_ca_file(tmp_path / "key.pem")


def test_the_kept_ca_is_stored_with_the_token_and_trusted(checkout: Path, tmp_path: Path) -> None:
    """The CA travels in the credentials entry and makes a verifying context."""
    pem = lab_ca_for_login(URL, None, cwd=checkout)
    store = CredentialStore(tmp_path / "c.json")
    store.save(Credentials(URL, "alice", "t", 1e12, "sub", pem))
    kept = store.load(URL)
    assert kept.ca_pem == pem
    context = ssl_context(kept.ca_pem)
    assert context.verify_mode.name == "CERT_REQUIRED"
    assert context.check_hostname
    assert any("Serial Console Lab CA" in str(ca["subject"]) for ca in context.get_ca_certs())
