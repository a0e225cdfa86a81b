"""Smart lockout's counting on a fake clock: threshold, refusal while locked, doubling."""

from __future__ import annotations

import pytest

from gateway.access.errors import AccountLocked, InvalidCredentials
from gateway.access.lockout import SignInLockout
from gateway.access.users import Directory, User, password_weakness


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_locks_after_the_threshold_and_doubles_each_time() -> None:
    clock = Clock()
    lockout = SignInLockout(3, 60.0, ceiling=200.0, clock=clock)
    assert [lockout.failed("a") for _ in range(3)] == [0.0, 0.0, 60.0]
    with pytest.raises(AccountLocked) as caught:
        lockout.check("a")
    assert caught.value.retry_after == 60.0
    lockout.check("b")  # only that name
    clock.now += 60.0
    lockout.check("a")
    assert [lockout.failed("a") for _ in range(3)][-1] == 120.0
    clock.now += 120.0
    assert [lockout.failed("a") for _ in range(3)][-1] == 200.0  # the ceiling
    clock.now += 200.0
    lockout.succeeded("a")
    assert [lockout.failed("a") for _ in range(3)][-1] == 60.0  # a success starts over


def test_the_directory_refuses_the_right_password_while_locked() -> None:
    clock = Clock()
    directory = Directory([User("alice", "pw")], SignInLockout(2, 10.0, clock=clock))
    for _ in range(2):
        with pytest.raises(InvalidCredentials):
            directory.authenticate("alice", "wrong")
    with pytest.raises(AccountLocked):
        directory.authenticate("alice", "pw")
    clock.now += 10.0
    assert directory.authenticate("alice", "pw").name == "alice"


def test_threshold_zero_turns_lockout_off() -> None:
    lockout = SignInLockout(0, 60.0)
    assert all(lockout.failed("a") == 0.0 for _ in range(100))
    lockout.check("a")


def test_tracked_names_are_bounded() -> None:
    lockout = SignInLockout(5, 60.0, max_names=100)
    for n in range(1000):
        lockout.failed(f"name-{n}")
    assert len(lockout._records) <= 100


@pytest.mark.parametrize(
    ("name", "password", "weak"),
    [
        ("alice", "alice", "own name"),
        ("alice", "ALICE", "own name"),
        ("bob", "my-bob-password-is-long", "contains their name"),
        ("carol", "Password123!", "most common"),
        ("carol", "qwertyuiop", "most common"),
        ("dave", "x7#Kq2!zz", "shorter than 12"),
        ("erin", "correct horse battery staple", None),
    ],
)
def test_password_weakness(name: str, password: str, weak: str | None) -> None:
    found = password_weakness(User(name, password))
    assert (found is None) if weak is None else (found is not None and weak in found)
    assert found is None or password not in found
