"""Lab users: name, password, SSH public keys and role assignments, from the lab file.

``Directory`` answers "who is this?" for every door: a password (token endpoint, SSH),
an SSH key (the SSH door, later). Passwords are compared in constant time, and an unknown
name costs the same comparison as a wrong password, so timing tells nothing. A name that
fails too often is locked for a while (``lockout``: Entra ID's smart lockout).

``password_weakness(user)`` says why a password is too weak for a lab that listens
beyond loopback: shorter than ``MIN_PASSWORD_LENGTH``, the user's name or containing it,
or one of the passwords every guesser tries first.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from gateway.access.errors import InvalidCredentials
from gateway.access.lockout import SignInLockout
from gateway.access.rbac import RoleAssignment

MIN_PASSWORD_LENGTH = 12
# What guessers try first (the top of the lists leaked passwords give), lower case; a
# password is refused when, folded to lower case, it is one of these or one of these
# followed by digits and punctuation ("Password123!").
COMMON_PASSWORDS = frozenset(
    {
        "123456", "12345678", "123456789", "1234567890", "password", "passw0rd", "p@ssw0rd",
        "p@ssword", "qwerty", "qwertyuiop", "qwerty123", "abc123", "111111", "123123",
        "iloveyou", "admin", "administrator", "welcome", "letmein", "monkey", "dragon",
        "football", "baseball", "sunshine", "princess", "trustno1", "changeme", "secret",
        "root", "toor", "guest", "test", "default", "master", "login", "azure", "microsoft",
        "serial-lab", "seriallab", "serialconsole", "serial-console", "lab", "console",
    }
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class User:
    """One lab user. ``name`` is unique in the lab, compared case-sensitively."""

    name: str
    password: str | None
    ssh_keys: tuple[str, ...] = ()
    roles: tuple[RoleAssignment, ...] = ()

    @property
    def has_default_password(self) -> bool:
        """True when the password is still the user's own name (as the default lab ships)."""
        return self.password is not None and self.password == self.name


def password_weakness(user: User) -> str | None:
    """Why ``user``'s password is guessable (a phrase that never repeats the password),
    or None when it is strong enough to face a network. A user without a password (SSH
    keys only) has none to guess."""
    password = user.password
    if password is None:
        return None
    folded, name = password.lower(), user.name.lower()
    if folded == name:
        return "still has the default password (their own name)"
    if name and name in folded:
        return "has a password that contains their name"
    if folded.rstrip("0123456789!@#$%^&*.?_-") in COMMON_PASSWORDS or folded in COMMON_PASSWORDS:
        return "has one of the most common passwords"
    if len(password) < MIN_PASSWORD_LENGTH:
        return f"has a password shorter than {MIN_PASSWORD_LENGTH} characters"
    return None


class Directory:
    """The lab's users, looked up by name. ``lockout`` counts failed sign-ins (Entra's
    defaults when not given)."""

    def __init__(self, users: Iterable[User], lockout: SignInLockout | None = None) -> None:
        self._users = {user.name: user for user in users}
        self.lockout = lockout if lockout is not None else SignInLockout()

    def __iter__(self) -> Iterator[User]:
        return iter(self._users.values())

    def __len__(self) -> int:
        return len(self._users)

    def get(self, name: str) -> User | None:
        """The user called ``name``, or None."""
        return self._users.get(name)

    def authenticate(self, name: str, password: str) -> User:
        """The user whose name and password these are; InvalidCredentials otherwise, and
        AccountLocked while ``name`` is locked for failing too often (the password is then
        not even checked, so the right one is refused too).

        A user without a password (SSH keys only) never authenticates by password.
        """
        self.lockout.check(name)
        user = self._users.get(name)
        expected = user.password if user is not None and user.password is not None else ""
        ok = hmac.compare_digest(_digest(expected), _digest(password))
        if user is None or user.password is None or not ok:
            self.lockout.failed(name)
            raise InvalidCredentials(
                "Error validating credentials due to invalid username or password."
            )
        self.lockout.succeeded(name)
        return user


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()
