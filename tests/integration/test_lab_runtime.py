"""The lab runtime and ``serial-console lab run`` with emulated guests: start, boot log from
the first byte, state kept across restarts, clean shutdown on signals, refusals."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import sys
from pathlib import Path

import httpx
import pytest

from gateway.lab.config import MachineSpec, load_default_lab
from gateway.lab.runtime import LabRuntime, LabRuntimeError, default_machine_factory
from gateway.machines.base import Machine, MachineLaunchError, PowerState
from gateway.testing.timeouts import scaled
from tests.integration.conftest import (
    SUBSCRIPTION,
    FakeMachine,
    eventually,
    lab_config,
    running_lab,
)
from tests.support import lab as support_lab

REPO = Path(__file__).resolve().parents[2]

EMULATED_LAB = """
[gateway]
port = 0
bootlog_bytes = 65536

[[resource_groups]]
name = "lab-rg"

[[vms]]
name = "linux-e"
resource_group = "lab-rg"
os = "linux"
backend = "emulated"

[[vms]]
name = "win-e"
resource_group = "lab-rg"
os = "windows"
backend = "emulated"

[[scale_sets]]
name = "web-vmss"
resource_group = "lab-rg"
backend = "emulated"
capacity = 2

[[users]]
name = "carol"
password = "carol-pw"
roles = [{ role = "Owner", scope = "subscription" }]
"""

SC = f"/subscriptions/{SUBSCRIPTION}/providers/Microsoft.SerialConsole"


async def test_lab_starts_every_machine_and_logs_the_boot_from_its_first_byte(
    tmp_path: Path,
) -> None:
    """Every VM and instance runs; each boot log begins with the guest's first line."""
    async with running_lab(EMULATED_LAB, tmp_path, default_machine_factory) as lab:
        runtime = lab.runtime
        assert set(runtime.machines) == {"linux-e", "win-e", "web-vmss_0", "web-vmss_1"}
        assert all(m.power_state is PowerState.RUNNING for m in runtime.machines.values())
        linux = runtime.bootlogs["linux-e"]
        await eventually(lambda: b"login:" in linux.read(0).contents, scaled(10), "login:")
        assert linux.read(0).contents.startswith(b"[    0.000000] Linux version")
        sac = runtime.bootlogs["win-e"]
        await eventually(lambda: b"SAC>" in sac.read(0).contents, scaled(10), "SAC>")
        assert (tmp_path / ".lab" / "lab.db").exists()
        assert (tmp_path / ".lab" / "bootdiag" / "web-vmss_1" / "serial.ring").exists()
        machines = list(runtime.machines.values())
    assert all(m.power_state is PowerState.DEALLOCATED for m in machines)


async def test_state_survives_a_restart(tmp_path: Path) -> None:
    """Tokens, the console's disabled state and boot-log offsets outlive a gateway restart."""
    async with running_lab(EMULATED_LAB, tmp_path, default_machine_factory) as lab:
        headers = await lab.as_user("carol")
        await lab.client.post(
            f"{SC}/consoleServices/default/disableConsole?api-version=2024-07-01", headers=headers
        )
        bootlog = lab.runtime.bootlogs["linux-e"]
        await eventually(lambda: b"login:" in bootlog.read(0).contents, scaled(10), "login:")
        first_boot = bootlog.read(0).contents
    end_before = bootlog.end
    async with running_lab(EMULATED_LAB, tmp_path, default_machine_factory) as lab:
        response = await lab.client.get(
            f"{SC}/consoleServices/default?api-version=2024-07-01", headers=headers
        )
        assert response.status_code == 200
        assert response.json()["properties"]["disabled"] is True
        again = lab.runtime.bootlogs["linux-e"]
        assert again.end >= end_before
        assert again.read(0, len(first_boot)).contents == first_boot
        await eventually(lambda: again.end > end_before, scaled(10), "the second boot's output")


async def test_machine_that_fails_to_start_is_reported_and_the_rest_runs(
    tmp_path: Path,
) -> None:
    """One VM failing to boot does not stop the lab: it is reported and left deallocated."""

    class Broken(FakeMachine):
        async def start(self) -> None:
            raise MachineLaunchError("no kernel image: run 'make images'")

    def factory(spec: MachineSpec, run_dir: Path) -> Machine:
        return Broken(spec.name) if spec.name == "win-e" else FakeMachine(spec.name)

    async with running_lab(EMULATED_LAB, tmp_path, factory) as lab:
        assert lab.runtime.start_failures == {"win-e": "no kernel image: run 'make images'"}
        assert lab.runtime.machines["linux-e"].power_state is PowerState.RUNNING
        assert lab.runtime.machines["win-e"].power_state is PowerState.DEALLOCATED


async def test_refuses_to_listen_beyond_loopback_with_default_passwords(tmp_path: Path) -> None:
    """On a public address, default passwords and plain HTTP stop the lab before it starts."""
    made: list[str] = []

    def factory(spec: MachineSpec, run_dir: Path) -> Machine:
        made.append(spec.name)
        return FakeMachine(spec.name)

    config = load_default_lab().with_overrides(host="0.0.0.0", state_dir=tmp_path / ".lab")
    with pytest.raises(LabRuntimeError) as caught:
        async with LabRuntime(config, machine_factory=factory):
            pass
    message = str(caught.value)
    assert "user 'alice' still has the default password" in message
    assert "TLS is off" in message
    assert made == []


async def test_busy_port_is_a_clear_error(tmp_path: Path) -> None:
    """A port another process holds is refused with a message naming it."""
    async with running_lab(EMULATED_LAB, tmp_path / "one") as first:
        config = lab_config(EMULATED_LAB, tmp_path / "two").with_overrides(port=first.runtime.port)
        with pytest.raises(
            LabRuntimeError, match=f"cannot listen on 127.0.0.1:{first.runtime.port}"
        ):
            async with LabRuntime(config, machine_factory=lambda s, d: FakeMachine(s.name)):
                pass


# -- the command line -----------------------------------------------------------------------


async def _cli(*args: str, cwd: Path) -> asyncio.subprocess.Process:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli.main", *args,
        cwd=cwd, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


@pytest.mark.slow  # a `lab run` process per signal, started and stopped gracefully
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
async def test_lab_run_serves_and_stops_cleanly_on_a_signal(tmp_path: Path, sig: int) -> None:
    """`lab run` prints where it is, serves the API, and on Ctrl+C/SIGTERM deallocates all."""
    lab_file = tmp_path / "lab.toml"
    lab_file.write_text(EMULATED_LAB)
    proc = await _cli("lab", "run", "--lab", str(lab_file), "--port", "0", cwd=tmp_path)
    assert proc.stdout is not None
    seen: list[str] = []
    try:
        async with asyncio.timeout(scaled(30)):
            while "Press Ctrl+C" not in (line := (await proc.stdout.readline()).decode()):
                assert line, "lab run ended early:\n" + "".join(seen)
                seen.append(line)
        url = next(line.split(" at ")[1].strip() for line in seen if " is up at " in line)
        async with httpx.AsyncClient(base_url=url) as client:
            response = await client.get("/openapi.json")
            assert response.status_code == 200
        proc.send_signal(sig)
        async with asyncio.timeout(scaled(30)):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = "".join(seen) + out.decode()
    assert proc.returncode == 0, text + err.decode()
    assert "linux-e" in text
    assert "web-vmss_1" in text
    assert text.count("deallocated") >= 4
    assert "every machine is deallocated" in text
    assert (tmp_path / ".lab" / "lab.db").exists()


async def test_lab_run_refuses_a_public_address_and_says_why(tmp_path: Path) -> None:
    """`lab run --host 0.0.0.0` with the default lab exits 1 naming the weak passwords."""
    proc = await _cli("lab", "run", "--host", "0.0.0.0", "--port", "0", cwd=tmp_path)
    async with asyncio.timeout(scaled(30)):
        _, err = await proc.communicate()
    assert proc.returncode == 1
    assert "refusing to listen on 0.0.0.0" in err.decode()
    assert "default password" in err.decode()


async def test_lab_run_reports_lab_file_mistakes(tmp_path: Path) -> None:
    """A wrong lab file exits 2 with the file, the key and what was expected."""
    lab_file = tmp_path / "lab.toml"
    lab_file.write_text(EMULATED_LAB.replace('os = "windows"', 'os = "bsd"'))
    proc = await _cli("lab", "run", "--lab", str(lab_file), cwd=tmp_path)
    async with asyncio.timeout(scaled(30)):
        _, err = await proc.communicate()
    assert proc.returncode == 2
    assert f"{lab_file}: vms[1].os: expected one of linux, windows, got 'bsd'" in err.decode()


# -- TLS ------------------------------------------------------------------------------------


async def test_a_tls_lab_is_trusted_with_its_ca_and_refused_without(tmp_path: Path) -> None:
    """--tls: https on the same port with a certificate from the lab's CA, made in
    <state>/tls/ (CA public, keys owner-only); a client trusting the CA is answered, one
    that does not is refused; console URLs are wss:// and boot-log URLs https://."""
    async with support_lab.running_lab(tmp_path, tls=True) as lab:
        assert lab.url.startswith("https://127.0.0.1:")
        tls_dir = tmp_path / "state" / "tls"
        assert lab.ca_path == tls_dir / "ca.pem"
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tls_dir.iterdir()}
        assert modes == {
            "ca.pem": 0o644, "ca-key.pem": 0o600, "server.pem": 0o644, "server-key.pem": 0o600
        }  # fmt: skip
        url, _ = await lab.session_url("alice")
        assert url.startswith(f"wss://127.0.0.1:{lab.runtime.port}/")
        token = await lab.token("alice")
        reply = await lab.http.post(
            lab.vm_path("linux-1") + "/retrieveBootDiagnosticsData",
            params={"api-version": "2024-07-01"},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert reply.json()["serialConsoleLogBlobUri"].startswith("https://127.0.0.1:")
        async with httpx.AsyncClient(verify=support_lab.trusting(lab.ca_path)) as trusted:
            assert (await trusted.get(f"{lab.url}/openapi.json")).status_code == 200
        async with httpx.AsyncClient() as stranger:
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await stranger.get(f"{lab.url}/openapi.json")
        # localhost is in the certificate too.
        async with httpx.AsyncClient(verify=support_lab.trusting(lab.ca_path)) as trusted:
            local = lab.url.replace("127.0.0.1", "localhost")
            assert (await trusted.get(f"{local}/openapi.json")).status_code == 200


async def test_the_lab_ca_is_kept_across_restarts(tmp_path: Path) -> None:
    """A restarted lab serves the same CA and certificate: clients keep trusting it."""
    async with support_lab.running_lab(tmp_path, tls=True) as lab:
        first = {p.name: p.read_bytes() for p in (tmp_path / "state" / "tls").iterdir()}
    async with support_lab.running_lab(tmp_path, tls=True) as lab:
        again = {p.name: p.read_bytes() for p in (tmp_path / "state" / "tls").iterdir()}
        assert lab.ca_path is not None
        async with httpx.AsyncClient(verify=support_lab.trusting(lab.ca_path)) as client:
            assert (await client.get(f"{lab.url}/openapi.json")).status_code == 200
    assert again == first


async def test_a_certificate_the_user_brings_wins(tmp_path: Path) -> None:
    """tls_cert and tls_key in the lab file are served even with --tls; no lab CA is made."""
    cert, key, their_ca = support_lab.user_certificate(tmp_path / "mine")
    gateway = f'tls_cert = "{cert}"\ntls_key = "{key}"'
    async with support_lab.running_lab(tmp_path, tls=True, gateway=gateway) as lab:
        assert lab.url.startswith("https://")
        assert lab.ca_path is None
        assert not (tmp_path / "state" / "tls").exists()
        async with httpx.AsyncClient(verify=support_lab.trusting(their_ca)) as client:
            assert (await client.get(f"{lab.url}/openapi.json")).status_code == 200


@pytest.mark.slow  # a `lab run --tls` process, its CA made, then stopped gracefully
async def test_lab_run_tls_prints_the_https_url_and_how_to_trust_it(tmp_path: Path) -> None:
    """`lab run --tls` prints its https URL, the CA's path and the export line to trust it."""
    lab_file = tmp_path / "lab.toml"
    lab_file.write_text(EMULATED_LAB)
    proc = await _cli("lab", "run", "--lab", str(lab_file), "--tls", cwd=tmp_path)
    assert proc.stdout is not None
    seen: list[str] = []
    try:
        async with asyncio.timeout(scaled(30)):
            while "Press Ctrl+C" not in (line := (await proc.stdout.readline()).decode()):
                assert line, "lab run ended early:\n" + "".join(seen)
                seen.append(line)
        proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(scaled(30)):
            await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = "".join(seen)
    ca = tmp_path / ".lab" / "tls" / "ca.pem"
    assert "Serial Console Lab is up at https://127.0.0.1:" in text
    assert f"export REQUESTS_CA_BUNDLE={ca} SSL_CERT_FILE={ca}" in text
    assert f"--ca-file {ca} --username carol" in text
    assert proc.returncode == 0


async def test_lab_run_names_an_unreadable_certificate_and_its_key(tmp_path: Path) -> None:
    """A tls_cert that is not a certificate exits 2 naming the lab file, the key, the file."""
    (tmp_path / "cert.pem").write_text("not a certificate\n")
    (tmp_path / "key.pem").write_text("not a key\n")
    lab_file = tmp_path / "lab.toml"
    lab_file.write_text(
        EMULATED_LAB.replace("port = 0", 'port = 0\ntls_cert = "cert.pem"\ntls_key = "key.pem"')
    )
    proc = await _cli("lab", "run", "--lab", str(lab_file), cwd=tmp_path)
    async with asyncio.timeout(scaled(30)):
        _, err = await proc.communicate()
    assert proc.returncode == 2
    assert err.decode().strip() == (
        f"serial-console: {lab_file}: gateway.tls_cert: {tmp_path / 'cert.pem'} is not a PEM "
        "certificate (BEGIN CERTIFICATE)"
    )
