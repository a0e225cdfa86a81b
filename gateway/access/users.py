"""Lab users: name, password, SSH public keys and role assignments, from the lab file.

``Directory`` answers "who is this?" for every door: a password (token endpoint, SSH),
an SSH key (the SSH door, later). Passwords are compared in constant time, and an unknown
name costs the same comparison as a wrong password, so timing tells nothing.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from gateway.access.errors import InvalidCredentials
from gateway.access.rbac import RoleAssignment


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


class Directory:
    """The lab's users, looked up by name."""

    def __init__(self, users: Iterable[User]) -> None:
        self._users = {user.name: user for user in users}

    def __iter__(self) -> Iterator[User]:
        return iter(self._users.values())

    def __len__(self) -> int:
        return len(self._users)

    def get(self, name: str) -> User | None:
        """The user called ``name``, or None."""
        return self._users.get(name)

    def authenticate(self, name: str, password: str) -> User:
        """The user whose name and password these are; InvalidCredentials otherwise.

        A user without a password (SSH keys only) never authenticates by password.
        """
        user = self._users.get(name)
        expected = user.password if user is not None and user.password is not None else ""
        ok = hmac.compare_digest(_digest(expected), _digest(password))
        if user is None or user.password is None or not ok:
            raise InvalidCredentials(
                "Error validating credentials due to invalid username or password."
            )
        return user


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()
