"""Which certificates the CLI trusts for a lab served over HTTPS: never none.

A lab started with ``--tls`` signs its certificate with its own CA (``<state-dir>/tls/
ca.pem``). ``serial-console login`` takes that CA once and keeps it, as PEM text, in the
lab's credentials entry; every later command, REST and websocket alike, verifies the
gateway against the system's CAs plus that one (``ssl_context``). Verification is never
turned off: there is no option to do so.

Where login finds the CA (``lab_ca_for_login``):

1. ``--ca-file PATH``: the file the lab printed (copied from another machine if need be);
2. else, for a lab on this machine (a loopback URL), the default state folder's
   ``.lab/tls/ca.pem`` under the working directory, when this user owns it and nobody
   else may write it: ``make run-lab LAB_ARGS=--tls`` and a login from the same checkout
   need nothing more;
3. else only the system's CAs (and ``SSL_CERT_FILE``): a certificate from a real CA works.

A CA fetched from the lab itself on first contact is not trusted: that first answer could
come from anyone on the path, and pinning it would only make an impostor permanent. The
CA travels the way the user chooses (a file), and a lab whose CA changed (its state
folder was wiped) is refused until the user logs in again with the new one.
"""

from __future__ import annotations

import ipaddress
import os
import ssl
import stat
from pathlib import Path
from urllib.parse import urlsplit

from gateway.cli.errors import CliError

DEFAULT_LAB_CA = Path(".lab") / "tls" / "ca.pem"
PEM_MARK = "-----BEGIN CERTIFICATE-----"


def ssl_context(ca_pem: str = "") -> ssl.SSLContext:
    """A verifying client context: the system's CAs, plus ``ca_pem`` (PEM text) if any.

    Raises CliError when ``ca_pem`` is not a certificate.
    """
    context = ssl.create_default_context()
    if ca_pem:
        try:
            context.load_verify_locations(cadata=ca_pem)
        except (ssl.SSLError, ValueError) as err:
            raise CliError(
                "The lab CA kept with the credentials is unreadable: run serial-console login "
                "again with --ca-file"
            ) from err
    return context


def read_ca_file(path: Path) -> str:
    """The PEM text of the CA certificate at ``path``. Raises CliError naming the file."""
    try:
        text = path.read_text(encoding="ascii")
    except OSError as err:
        raise CliError(f"--ca-file: cannot read {path}: {err.strerror or err}") from err
    except UnicodeDecodeError as err:
        raise CliError(f"--ca-file: {path} is not a PEM certificate (BEGIN CERTIFICATE)") from err
    if PEM_MARK not in text:
        raise CliError(f"--ca-file: {path} is not a PEM certificate (BEGIN CERTIFICATE)")
    try:
        ssl.create_default_context().load_verify_locations(cadata=text)
    except (ssl.SSLError, ValueError) as err:
        raise CliError(f"--ca-file: {path} is not a usable PEM certificate ({err})") from err
    return text


def lab_ca_for_login(url: str, ca_file: Path | None, cwd: Path | None = None) -> str:
    """The CA (PEM text) to keep for the lab at ``url``; "" for the system's CAs alone.
    See the module docstring for the order. Raises CliError for an unusable ``ca_file``."""
    if ca_file is not None:
        return read_ca_file(ca_file)
    parts = urlsplit(url)
    if parts.scheme != "https" or not _is_loopback(parts.hostname or ""):
        return ""
    candidate = (cwd or Path.cwd()) / DEFAULT_LAB_CA
    if not _private_to_me(candidate):
        return ""
    try:
        return read_ca_file(candidate)
    except CliError:
        return ""


def untrusted_hint(url: str) -> str:
    """What to do when the lab's certificate fails verification."""
    return (
        f"The lab at {url} presents a certificate this CLI does not trust: log in with "
        "--ca-file and the lab's CA (serial-console lab run --tls prints its path, "
        "<state-dir>/tls/ca.pem)"
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _private_to_me(path: Path) -> bool:
    """``path`` and its folder are this user's and nobody else may write them: a CA file
    anyone could plant would make their certificate trusted."""
    try:
        for item in (path, path.parent):
            info = item.lstat()
            if info.st_uid != os.getuid() or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
                return False
        return stat.S_ISREG(path.lstat().st_mode)
    except OSError:
        return False
