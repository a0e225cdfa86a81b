"""The credentials file of ``serial-console login``: where it lives, who can read it."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from gateway.cli.credentials import Credentials, CredentialStore, default_path
from gateway.cli.errors import CredentialsError, NotLoggedIn

URL = "http://127.0.0.1:8080"


def creds(url: str = URL, *, expires_at: float = 2000.0, user: str = "alice") -> Credentials:
    return Credentials(url, user, "tok-" + user, expires_at, "00000000-sub")


def store(tmp_path: Path, now: float = 1000.0) -> CredentialStore:
    return CredentialStore(tmp_path / "cfg" / "serial-console" / "credentials.json",
                           clock=lambda: now)  # fmt: skip


def test_default_path_follows_xdg_config_home(tmp_path: Path) -> None:
    """The file lives in $XDG_CONFIG_HOME/serial-console, or ~/.config when it is unset."""
    assert default_path({"XDG_CONFIG_HOME": str(tmp_path)}) == (
        tmp_path / "serial-console" / "credentials.json"
    )
    assert default_path({}) == Path.home() / ".config" / "serial-console" / "credentials.json"
    assert default_path({"XDG_CONFIG_HOME": "relative"}).parent.parent == Path.home() / ".config"


def test_saved_token_is_owner_only(tmp_path: Path) -> None:
    """After login the token file is 0600 in a 0700 folder, and reads back the same."""
    s = store(tmp_path)
    s.save(creds())
    assert stat.S_IMODE(os.stat(s.path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(s.path.parent).st_mode) == 0o700
    assert s.load(URL + "/") == creds()
    assert s.default_url() == URL
    assert not [p for p in s.path.parent.iterdir() if p.name != "credentials.json"]


def test_existing_open_folder_is_tightened(tmp_path: Path) -> None:
    """A config folder that others could read is made 0700 when the token is written."""
    s = store(tmp_path)
    s.path.parent.mkdir(parents=True, mode=0o755)
    os.chmod(s.path.parent, 0o755)
    s.save(creds())
    assert stat.S_IMODE(os.stat(s.path.parent).st_mode) == 0o700


def test_no_token_says_run_login(tmp_path: Path) -> None:
    """Without a login, commands are told the exact login command, the lab's URL included."""
    with pytest.raises(NotLoggedIn, match=f"run serial-console login --url {URL} --username NAME"):
        store(tmp_path).load(URL)


def test_expired_token_says_run_login(tmp_path: Path) -> None:
    """A token past (or within 30 s of) its expiry is refused with the login hint."""
    s = store(tmp_path, now=1990.0)
    s.save(creds(expires_at=2000.0))
    with pytest.raises(NotLoggedIn, match=r"expired: run serial-console login"):
        s.load(URL)


def test_one_entry_per_lab_and_logout_removes_one(tmp_path: Path) -> None:
    """Logging in to two labs keeps both; logout forgets only the one named."""
    s = store(tmp_path)
    other = "http://127.0.0.1:9090"
    s.save(creds())
    s.save(creds(other, user="bob"))
    assert s.default_url() == other
    assert s.remove(other) == creds(other, user="bob")
    assert s.default_url() is None
    assert s.load(URL).username == "alice"
    assert s.remove(other) is None


def test_readable_by_others_is_refused(tmp_path: Path) -> None:
    """A token file others can read is not used: the error says to chmod it or log in."""
    s = store(tmp_path)
    s.save(creds())
    os.chmod(s.path, 0o644)
    with pytest.raises(CredentialsError, match="chmod 600"):
        s.load(URL)
    s.save(creds())  # a new login replaces it, owner-only again
    assert stat.S_IMODE(os.stat(s.path).st_mode) == 0o600


def test_corrupt_file_is_reported(tmp_path: Path) -> None:
    """A damaged file gives a one-line reason naming it, not a traceback."""
    s = store(tmp_path)
    s.save(creds())
    s.path.write_text("{not json")
    with pytest.raises(CredentialsError, match="not valid JSON"):
        s.load(URL)
    s.path.write_text(json.dumps({"labs": {URL: {"token": "x"}}}))
    with pytest.raises(CredentialsError, match="unreadable entry"):
        s.load(URL)
