"""Bearer tokens in a real SQLite database: expiry, and a changed password ending them."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.access.errors import ExpiredToken, InvalidToken
from gateway.access.store import LabDatabase
from gateway.access.tokens import TokenService
from gateway.access.users import Directory, User


def _user(password: str) -> User:
    return User(name="alice", password=password, ssh_keys=(), roles=())


def test_a_token_ends_when_its_users_password_changes(tmp_path: Path) -> None:
    """A leaked password is changed in the lab file: tokens issued with it stop working,
    across a restart, and the message says to log in again."""
    db = LabDatabase(tmp_path / "lab.db")
    token = TokenService(db, Directory([_user("old")])).issue(_user("old")).access_token
    db.close()
    db = LabDatabase(tmp_path / "lab.db")
    assert TokenService(db, Directory([_user("old")])).authenticate(token).name == "alice"
    with pytest.raises(InvalidToken, match="changed after this token was issued: log in again"):
        TokenService(db, Directory([_user("new")])).authenticate(token)


def test_a_token_expires(tmp_path: Path) -> None:
    """After its lifetime a token is refused with ARM's expiry text."""
    db = LabDatabase(tmp_path / "lab.db")
    now = [1000.0]
    service = TokenService(db, Directory([_user("pw")]), lifetime=60, clock=lambda: now[0])
    token = service.issue(_user("pw")).access_token
    now[0] += 61
    with pytest.raises(ExpiredToken, match="is earlier than current UTC time"):
        service.authenticate(token)
