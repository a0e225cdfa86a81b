"""Where ``serial-console login`` keeps its tokens: one owner-only JSON file.

The file is ``$XDG_CONFIG_HOME/serial-console/credentials.json`` (``~/.config`` when the
variable is unset or not absolute, as the XDG spec says). It holds one entry per lab URL
(the token, its expiry, the user, the subscription and, for a lab with its own CA, that
CA's certificate) and the URL of the last login,
which commands use when neither ``--url`` nor ``SERIAL_CONSOLE_URL`` names one.

The folder is made 0700 and the file written 0600, through a temporary file in the same
folder and an atomic rename, so a crash never leaves a half-written or readable token.
A file with wider permissions is tightened on the next write, never read silently: the
store refuses it with ``CredentialsError`` naming the file and the fix.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from gateway.cli.errors import CredentialsError, NotLoggedIn

FILE_NAME = "credentials.json"
FOLDER_NAME = "serial-console"
# A token this close to its expiry is treated as expired: a command started now would
# see it refused half-way.
EXPIRY_MARGIN = 30.0


@dataclass(frozen=True, slots=True)
class Credentials:
    """A token for one lab: ``expires_at`` is Unix time; ``ca_pem`` the lab CA the CLI
    verifies an HTTPS lab against, besides the system's (empty: the system's alone)."""

    url: str
    username: str
    token: str
    expires_at: float
    subscription_id: str
    ca_pem: str = ""


def default_path(environ: Mapping[str, str] | None = None) -> Path:
    """The credentials file for the environment ``environ`` (default ``os.environ``)."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_CONFIG_HOME", "")
    folder = Path(base) if base and os.path.isabs(base) else Path.home() / ".config"
    return folder / FOLDER_NAME / FILE_NAME


def normalize_url(url: str) -> str:
    """The key a lab URL is stored under: no trailing slash."""
    return url.rstrip("/")


class CredentialStore:
    """The credentials file at ``path``. ``clock`` (Unix seconds) can be replaced in tests."""

    def __init__(self, path: Path | None = None, *, clock: Callable[[], float] = time.time):
        self.path = default_path() if path is None else path
        self.clock = clock

    # -- reading ----------------------------------------------------------------------

    def _read(self) -> dict[str, Any]:
        try:
            fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except FileNotFoundError:
            return {"labs": {}}
        except OSError as err:
            raise CredentialsError(f"Cannot read {self.path}: {err.strerror or err}") from err
        with os.fdopen(fd, "rb") as file:
            mode = os.fstat(file.fileno()).st_mode
            if mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise CredentialsError(
                    f"{self.path} can be read by other users (mode {stat.S_IMODE(mode):o}): "
                    f"run chmod 600 {self.path}, or serial-console logout and log in again"
                )
            raw = file.read()
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise CredentialsError(
                f"{self.path} is not valid JSON: remove it and run serial-console login again"
            ) from err
        if not isinstance(data, dict) or not isinstance(data.get("labs"), dict):
            raise CredentialsError(
                f"{self.path} is not a credentials file: remove it and run serial-console login"
            )
        return data

    def default_url(self) -> str | None:
        """The URL of the last login, if any."""
        value = self._read().get("current")
        return value if isinstance(value, str) else None

    def get(self, url: str) -> Credentials | None:
        """The stored credentials for ``url`` (expired or not), or None."""
        entry = self._read()["labs"].get(normalize_url(url))
        if not isinstance(entry, dict):
            return None
        try:
            return Credentials(
                url=normalize_url(url),
                username=str(entry["username"]),
                token=str(entry["token"]),
                expires_at=float(entry["expires_at"]),
                subscription_id=str(entry["subscription_id"]),
                ca_pem=str(entry.get("ca_pem") or ""),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise CredentialsError(
                f"{self.path} has an unreadable entry for {url}: run serial-console login again"
            ) from err

    def load(self, url: str) -> Credentials:
        """Usable credentials for ``url``. Raises NotLoggedIn when none or expired."""
        creds = self.get(url)
        if creds is None:
            raise NotLoggedIn(f"Not logged in to {normalize_url(url)}", normalize_url(url))
        if creds.expires_at - EXPIRY_MARGIN <= self.clock():
            raise NotLoggedIn(
                f"The token for {creds.username} at {creds.url} has expired", creds.url
            )
        return creds

    # -- writing ----------------------------------------------------------------------

    def save(self, creds: Credentials) -> None:
        """Store ``creds`` (replacing the entry of its URL) and make its URL the default."""
        try:
            data = self._read()
        except CredentialsError:
            data = {"labs": {}}  # a broken or too-open file is replaced, not merged
        entry = asdict(creds)
        url = normalize_url(entry.pop("url"))
        data["labs"][url] = entry
        data["current"] = url
        self._write(data)

    def remove(self, url: str) -> Credentials | None:
        """Forget the entry of ``url``; returns it (None when there was none)."""
        creds = self.get(url)
        if creds is None:
            return None
        data = self._read()
        data["labs"].pop(normalize_url(url), None)
        if data.get("current") == normalize_url(url):
            data.pop("current")
        self._write(data)
        return creds

    def _write(self, data: dict[str, Any]) -> None:
        folder = self.path.parent
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(folder, 0o700)
            fd, temp = tempfile.mkstemp(prefix=".credentials-", dir=folder)  # mode 0600
        except OSError as err:
            raise CredentialsError(f"Cannot write {self.path}: {err.strerror or err}") from err
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as file:
                json.dump(data, file, indent=2, sort_keys=True)
                file.write("\n")
                file.flush()
                os.fsync(file.fileno())
            os.replace(temp, self.path)
        except OSError as err:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise CredentialsError(f"Cannot write {self.path}: {err.strerror or err}") from err
