"""One-time connect sessions: once, in time, for their user, fairly bounded."""

from __future__ import annotations

import uuid

import pytest

from gateway.access.connect_sessions import ConnectSessions
from gateway.access.errors import SessionExpired, SessionUsed, SessionWrongUser, UnknownSession

VM = "/subscriptions/s/resourceGroups/g/providers/Microsoft.Compute/virtualMachines/v"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_ids_are_guids_that_survive_azs_url_rewrite() -> None:
    """az turns the websocket URL into the admin URL with .replace("ws", "http"): a GUID
    (hex and dashes) never holds "ws"."""
    sessions = ConnectSessions()
    for _ in range(2000):
        grant = sessions.create(VM, "alice", "c")
        assert str(uuid.UUID(grant.session_id)) == grant.session_id
        assert "ws" not in grant.session_id


def test_a_session_is_claimed_once_by_its_user_within_its_lifetime() -> None:
    clock = Clock()
    sessions = ConnectSessions(clock=clock)
    grant = sessions.create(VM, "alice", "c")
    with pytest.raises(SessionWrongUser):
        sessions.claim(grant.session_id, "bob")
    assert sessions.claim(grant.session_id, "alice") == grant
    with pytest.raises(SessionUsed):
        sessions.claim(grant.session_id, "alice")
    late = sessions.create(VM, "alice", "c")
    clock.now += 61
    with pytest.raises(SessionExpired):
        sessions.claim(late.session_id, "alice")
    with pytest.raises(UnknownSession):
        sessions.claim("no-such-id", "alice")


def test_the_admin_url_lives_as_long_as_its_console_is_open() -> None:
    """az's Ctrl+] menu posts to the session URL while the console runs."""
    clock = Clock()
    sessions = ConnectSessions(clock=clock)
    grant = sessions.create(VM, "alice", "c")
    sessions.claim(grant.session_id, "alice")
    clock.now += 3600
    assert sessions.lookup(grant.session_id, "alice") == grant
    sessions.create(VM, "carol", "c")  # a purge keeps the open one
    assert sessions.lookup(grant.session_id, "alice") == grant
    sessions.release(grant.session_id)
    with pytest.raises(SessionExpired, match="ended when its console closed"):
        sessions.lookup(grant.session_id, "alice")


def test_one_user_cannot_expire_another_users_urls() -> None:
    """alice making sessions as fast as she can only ever pushes out her own."""
    sessions = ConnectSessions(max_sessions=50, max_per_user=10)
    carol = sessions.create(VM, "carol", "c")
    for _ in range(1000):
        sessions.create(VM, "alice", "c")
    assert sessions.claim(carol.session_id, "carol") == carol
    assert len(sessions) <= 11


def test_the_total_bound_takes_from_whoever_holds_the_most() -> None:
    sessions = ConnectSessions(max_sessions=6, max_per_user=4)
    bob = sessions.create(VM, "bob", "c")
    alice = [sessions.create(VM, "alice", "c") for _ in range(4)]
    sessions.create(VM, "dave", "c")
    sessions.create(VM, "erin", "c")  # the lab is full: alice's oldest gives way
    with pytest.raises(UnknownSession):
        sessions.claim(alice[0].session_id, "alice")
    assert sessions.claim(bob.session_id, "bob") == bob
