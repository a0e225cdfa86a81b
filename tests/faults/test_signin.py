"""Sign-in under guessing: Entra ID's smart lockout, and a lab exposed beyond loopback.

After 10 failed sign-ins of one user (any grant, either token endpoint) the user is
locked: every sign-in, even with the right password, is Entra's ``AADSTS50053`` until the
lockout ends; the next lockout lasts twice as long. The lockout duration comes from the
lab file (``[access] lockout_duration``), here 1 s (scaled) so the test can outwait it.

A lab that listens beyond loopback refuses to start while any password is guessable or
TLS is off, naming the users (never their passwords), before it binds or writes anything.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from gateway.lab.config import DEFAULT_TENANT, parse_lab
from gateway.lab.runtime import LabRuntime, LabRuntimeError
from gateway.testing.timeouts import scaled
from tests.support.lab import LabHandle, lab_toml, running_lab

REPO = Path(__file__).resolve().parents[2]
THRESHOLD = 10
DURATION = scaled(1.0)
V2 = f"/{DEFAULT_TENANT}/oauth2/v2.0/token"
LOCKED_TEXT = (
    "AADSTS50053: Your account is locked because you've tried to sign in too many times "
    "with an incorrect user ID or password."
)


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[LabHandle]:
    access = f"[access]\nlockout_threshold = {THRESHOLD}\nlockout_duration = {DURATION}\n"
    async with running_lab(tmp_path, vms="", extra=access) as handle:
        yield handle


async def sign_in(lab: LabHandle, how: str, user: str, password: str) -> httpx.Response:
    """One sign-in by ``how``: the lab's /oauth2/token, or Entra's v2.0 endpoint with the
    password or the client_credentials grant."""
    if how == "v1":
        form = {"grant_type": "password", "username": user, "password": password}
        return await lab.http.post("/oauth2/token", data=form)
    if how == "v2-password":
        form = {"grant_type": "password", "username": user, "password": password}
    else:
        form = {"grant_type": "client_credentials", "client_id": user, "client_secret": password,
                "scope": "https://management.azure.com/.default"}  # fmt: skip
    return await lab.http.post(V2, data=form)


def assert_locked(reply: httpx.Response) -> float:
    """Entra's lockout answer; the seconds it says to wait."""
    assert reply.status_code == 400, reply.text
    body = reply.json()
    assert body["error"] == "invalid_grant"
    assert body["error_codes"] == [50053]
    assert body["error_description"].startswith(LOCKED_TEXT)
    return float(reply.headers["Retry-After"])


def assert_wrong_password(reply: httpx.Response) -> None:
    assert reply.status_code in (400, 401), reply.text
    assert reply.json()["error"] in ("invalid_grant", "invalid_client")
    assert "50053" not in reply.text


async def fail(lab: LabHandle, user: str, times: int) -> None:
    """``times`` wrong passwords for ``user``, spread over every grant and endpoint."""
    ways = ("v1", "v2-password", "v2-client")
    for n in range(times):
        assert_wrong_password(await sign_in(lab, ways[n % 3], user, f"guess-{n}"))


async def wait_unlocked(lab: LabHandle, user: str, timeout: float) -> float:
    """Poll with a wrong password until it is refused as wrong, not as locked (that guess
    counts as the first failure after the lockout); the seconds it took."""
    began = time.monotonic()
    async with asyncio.timeout(timeout):
        # The lockout ends on the clock, not on an event a client could await.
        while "50053" in (reply := await sign_in(lab, "v1", user, "still-guessing")).text:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    assert_wrong_password(reply)
    return time.monotonic() - began


async def test_ten_failures_lock_the_user_even_for_the_right_password(lab: LabHandle) -> None:
    await fail(lab, "alice", THRESHOLD - 1)
    assert (await sign_in(lab, "v1", "alice", "alice")).status_code == 200  # 9: not yet
    await fail(lab, "alice", THRESHOLD)
    for how in ("v1", "v2-password", "v2-client"):
        wait = assert_locked(await sign_in(lab, how, "alice", "alice"))
        assert 0 < wait <= DURATION + 1
    # Only alice: carol signs in, and a name the lab does not know locks the same way.
    assert (await sign_in(lab, "v2-client", "carol", "carol")).status_code == 200
    await fail(lab, "mallory", THRESHOLD)
    assert_locked(await sign_in(lab, "v1", "mallory", "anything"))
    # Every refusal is audited with the reason.
    rows = lab.runtime.context.audit.query(user="alice", action="token", limit=100)  # type: ignore[union-attr]
    assert sum("locked for" in r.detail for r in rows) >= 3


async def test_lockout_ends_after_its_duration_and_doubles_on_repeat(lab: LabHandle) -> None:
    await fail(lab, "bob", THRESHOLD)
    assert_locked(await sign_in(lab, "v1", "bob", "bob"))
    first = await wait_unlocked(lab, "bob", scaled(10))
    assert DURATION * 0.8 <= first <= DURATION + scaled(1.5)
    await fail(lab, "bob", THRESHOLD - 1)  # the poll's wrong guess was the first
    assert_locked(await sign_in(lab, "v2-client", "bob", "bob"))
    second = await wait_unlocked(lab, "bob", scaled(10))
    assert 2 * DURATION * 0.8 <= second <= 2 * DURATION + scaled(1.5)
    assert second > first * 1.5
    await fail(lab, "bob", THRESHOLD - 1)
    third = assert_locked(await sign_in(lab, "v1", "bob", "bob"))
    assert third >= 4 * DURATION - 1  # Retry-After: whole seconds


# -- a lab beyond loopback ------------------------------------------------------------------

WEAK_USERS = """
[[users]]
name = "alice"
password = "alice"

[[users]]
name = "bob"
password = "Bob-the-builder-2026"

[[users]]
name = "carol"
password = "Password123!"

[[users]]
name = "dave"
password = "s7#Kq2!x"

[[users]]
name = "erin"
password = "correct horse battery staple"
"""
PASSWORDS = ("Bob-the-builder-2026", "Password123!", "s7#Kq2!x", "correct horse battery")


def exposed_lab(tmp_path: Path, users: str, tls: bool) -> str:
    text = lab_toml(tmp_path / "state", vms="").replace('host = "127.0.0.1"', 'host = "0.0.0.0"')
    text = text.split("[[users]]")[0] + users
    return text.replace("[gateway]\n", "[gateway]\ntls = true\n") if tls else text


async def test_an_exposed_lab_with_guessable_passwords_does_not_start(tmp_path: Path) -> None:
    text = exposed_lab(tmp_path, WEAK_USERS, tls=True)
    config = parse_lab(text, source="lab.toml", base=tmp_path)
    with pytest.raises(LabRuntimeError) as caught:
        async with LabRuntime(config):
            pass
    message = str(caught.value)
    assert "refusing to listen on 0.0.0.0" in message
    assert "user 'alice' still has the default password (their own name)" in message
    assert "user 'bob' has a password that contains their name" in message
    assert "user 'carol' has one of the most common passwords" in message
    assert "user 'dave' has a password shorter than 12 characters" in message
    assert "erin" not in message
    assert "TLS is off" not in message
    assert not any(secret in message for secret in PASSWORDS)
    assert not (tmp_path / "state").exists()


async def test_lab_run_refuses_an_exposed_lab_before_it_starts(tmp_path: Path) -> None:
    """`serial-console lab run` exits 1 saying who is weak and that TLS is off."""
    lab_file = tmp_path / "lab.toml"
    lab_file.write_text(exposed_lab(tmp_path, WEAK_USERS, tls=False))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli.main", "lab", "run", "--lab", str(lab_file),
        cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(REPO)),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(scaled(30)):
        out, err = await proc.communicate()
    text = err.decode()
    assert proc.returncode == 1, text
    assert "refusing to listen on 0.0.0.0" in text
    for user in ("alice", "bob", "carol", "dave"):
        assert f"user '{user}'" in text
    assert "erin" not in text
    assert "TLS is off" in text
    assert not any(secret in text + out.decode() for secret in PASSWORDS)
    assert "Starting the lab" not in out.decode()
    assert not (tmp_path / "state").exists()


def test_strong_passwords_and_tls_may_listen_beyond_loopback(tmp_path: Path) -> None:
    strong = '[[users]]\nname = "erin"\npassword = "correct horse battery staple"\n'
    config = parse_lab(exposed_lab(tmp_path, strong, tls=True), source="l", base=tmp_path)
    assert config.exposure_problems() == []
    assert config.exposure_refusal() is None
    plain = parse_lab(exposed_lab(tmp_path, strong, tls=False), source="l", base=tmp_path)
    assert plain.exposure_problems() == [
        "TLS is off (run with --tls, or set tls = true in [gateway])"
    ]
