"""The lab file: the default lab, validation messages (file, key, expectation), overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.access import rbac
from gateway.lab.config import LabConfigError, load_default_lab, load_lab, parse_lab
from tests.support.lab import user_certificate

MINIMAL = """
[[resource_groups]]
name = "rg"

[[vms]]
name = "vm1"
resource_group = "rg"
"""


def parse(text: str) -> object:
    return parse_lab(text, source="lab.toml", base=Path("/labs"))


def test_default_lab_has_the_documented_resources_and_users() -> None:
    """The shipped lab: linux-1/2 on QEMU, the Debian disk VMs debian-gen2 (UEFI) and
    debian-gen1 (BIOS) on QEMU, win-1 and nodiag-1 emulated, web-vmss 0 and 1."""
    lab = load_default_lab()
    vms = {vm.name: vm for vm in lab.vms}
    assert set(vms) == {"linux-1", "linux-2", "debian-gen2", "debian-gen1", "win-1", "nodiag-1"}
    assert vms["linux-1"].machine.backend == "qemu"
    for name, generation in (("debian-gen2", 2), ("debian-gen1", 1)):
        disk = vms[name].machine.image.disk
        assert vms[name].machine.backend == "qemu"
        assert disk is not None
        assert disk.generation == generation
    assert vms["win-1"].machine.os == "windows"
    assert vms["win-1"].machine.backend == "emulated"
    assert vms["nodiag-1"].boot_diagnostics is False
    assert all(vm.resource_group == "lab-rg" for vm in lab.vms)
    (vmss,) = lab.scale_sets
    assert vmss.name == "web-vmss"
    assert [i.machine.name for i in vmss.instances] == ["web-vmss_0", "web-vmss_1"]
    assert all(i.latest_model for i in vmss.instances)
    users = {u.name: u for u in lab.users}
    sub = rbac.subscription_scope(lab.subscription.id)
    assert users["alice"].roles == (
        rbac.RoleAssignment("Virtual Machine Contributor", f"{sub}/resourceGroups/lab-rg"),
    )
    assert users["bob"].roles == (rbac.RoleAssignment("Reader", sub),)
    assert users["carol"].roles == (rbac.RoleAssignment("Owner", sub),)
    assert all(u.password == u.name for u in lab.users)
    assert {spec.password for spec in lab.machine_specs()} == {"serial-lab"}
    assert lab.gateway.host == "127.0.0.1"
    assert lab.gateway.bootlog_bytes == 1 << 20
    assert lab.state_dir == Path(".lab")


def test_minimal_lab_gets_defaults() -> None:
    """Only names are required: a VM is emulated Linux, 128 MB, with every prerequisite met."""
    lab = parse(MINIMAL)
    (vm,) = lab.vms  # type: ignore[attr-defined]
    assert (vm.machine.os, vm.machine.backend, vm.machine.memory_mb) == ("linux", "emulated", 128)
    assert (vm.boot_diagnostics, vm.provisioning_state, vm.serial_port_enabled) == (
        True,
        "Succeeded",
        True,
    )


def test_image_and_tls_paths_are_relative_to_the_lab_file(tmp_path: Path) -> None:
    """kernel, initrd and TLS files resolve next to the lab file, not the working directory."""
    (tmp_path / "k").mkdir()
    for name in ("k/vmlinux", "k/initrd"):
        (tmp_path / name).write_bytes(b"")
    cert, key, _ = user_certificate(tmp_path / "certs")
    lab = parse_lab(
        MINIMAL.replace('resource_group = "rg"', 'resource_group = "rg"\nbackend = "qemu"')
        + '[vms.image]\nkernel = "k/vmlinux"\ninitrd = "k/initrd"\n'
        + '[gateway]\ntls_cert = "certs/server.pem"\ntls_key = "certs/server-key.pem"\n',
        source="lab.toml",
        base=tmp_path,
    )
    assert lab.vms[0].machine.image.kernel == tmp_path / "k/vmlinux"
    assert (lab.gateway.tls_cert, lab.gateway.tls_key) == (cert, key)
    assert lab.gateway.tls


def test_tls_true_or_the_tls_flag_turns_the_lab_ca_on() -> None:
    """`tls = true` in [gateway] and --tls both ask for the lab CA; the default is HTTP."""
    assert not parse(MINIMAL).gateway.tls  # type: ignore[attr-defined]
    assert parse(MINIMAL + "[gateway]\ntls = true").gateway.lab_ca  # type: ignore[attr-defined]
    lab = load_default_lab()
    assert not lab.gateway.tls
    assert lab.with_overrides(tls=True).gateway.tls
    assert lab.with_overrides(host="0.0.0.0", tls=True).exposure_problems()[-1].startswith("user")


@pytest.mark.parametrize(
    ("gateway", "message"),
    [
        (
            'tls_cert = "nowhere.pem"\ntls_key = "key.pem"',
            "lab.toml: gateway.tls_cert: expected an existing PEM file (paths are relative to "
            "the lab file), got '{dir}/nowhere.pem'",
        ),
        (
            'tls_cert = "server.pem"\ntls_key = "gone.pem"',
            "lab.toml: gateway.tls_key: expected an existing PEM file",
        ),
        (
            'tls_cert = "junk.pem"\ntls_key = "server-key.pem"',
            "lab.toml: gateway.tls_cert: {dir}/junk.pem is not a PEM certificate (BEGIN "
            "CERTIFICATE)",
        ),
        (
            'tls_cert = "server.pem"\ntls_key = "junk.pem"',
            "lab.toml: gateway.tls_key: {dir}/junk.pem is not a PEM private key",
        ),
        (
            'tls_cert = "server.pem"\ntls_key = "ca-key.pem"',
            "lab.toml: gateway.tls_key: {dir}/ca-key.pem is not the key of the certificate "
            "{dir}/server.pem",
        ),
        ("tls = 1", "lab.toml: gateway.tls: expected true or false, got 1"),
    ],
)
def test_bad_certificate_files_are_named_with_their_key(
    tmp_path: Path, gateway: str, message: str
) -> None:
    """A certificate or key that is missing, not PEM or not a pair is refused on load,
    naming the lab file, the key and the file."""
    user_certificate(tmp_path)
    (tmp_path / "junk.pem").write_text("junk\n")
    with pytest.raises(LabConfigError) as caught:
        parse_lab(MINIMAL + "[gateway]\n" + gateway, source="lab.toml", base=tmp_path)
    assert message.format(dir=tmp_path) in str(caught.value)


def test_a_missing_kernel_is_named_on_load() -> None:
    """A kernel that is not there is a lab-file mistake, reported before anything starts."""
    with pytest.raises(LabConfigError, match=r"vms\[0\]\.image\.kernel: expected an existing file"):
        parse(MINIMAL + '[vms.image]\nkernel = "nowhere/vmlinux"\n')


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("state_dir = [", "lab.toml: not valid TOML"),
        ("colour = 1", "lab.toml: colour: unknown key"),
        (MINIMAL + 'os = "bsd"', "lab.toml: vms[0].os: expected one of linux, windows, got 'bsd'"),
        (MINIMAL + "memory_mb = 4", "vms[0].memory_mb: expected an integer in 16..65536, got 4"),
        (MINIMAL + 'memory_mb = "lots"', "vms[0].memory_mb: expected an integer"),
        (MINIMAL + "boot_diagnostics = 1", "vms[0].boot_diagnostics: expected true or false"),
        (MINIMAL + 'provisioning_state = "Done"', "vms[0].provisioning_state: expected one of"),
        (MINIMAL + 'backend = "qemu"\nos = "windows"', "vms[0].backend: expected emulated"),
        (MINIMAL + "flavour = 2", "vms[0].flavour: unknown key"),
        (MINIMAL.replace('"rg"\n\n', '"other"\n\n', 1), "vms[0].resource_group: expected the name"),
        (MINIMAL + MINIMAL.split("\n\n", 1)[1], "vms: name 'rg/vm1' is used twice"),
        (MINIMAL.replace('name = "vm1"', 'name = "../x"'), "vms[0].name: expected a name"),
        (MINIMAL.replace('name = "vm1"', 'name = "' + "a" * 65 + '"'), "vms[0].name"),
        ('[[vms]]\nresource_group = "rg"', "vms[0].name: expected a string (the key is required)"),
        ("[gateway]\nport = 70000", "gateway.port: expected an integer in 0..65535, got 70000"),
        ('[gateway]\ntls_cert = "c.pem"', "gateway.tls_key: expected tls_cert and tls_key"),
        ('[subscription]\nid = "a/b"', "subscription.id: expected a subscription id"),
        (
            MINIMAL + '[[scale_sets]]\nname = "s"\nresource_group = "rg"\ncapacity = 2\n'
            "latest_model = [5]",
            "scale_sets[0].latest_model: expected instance numbers in 0..1, got 5",
        ),
        (
            MINIMAL + '[[scale_sets]]\nname = "vm1"\nresource_group = "rg"\ncapacity = 1\n'
            '[[vms]]\nname = "vm1_0"\nresource_group = "rg"',
            "is used twice",
        ),
        (
            MINIMAL + '[[users]]\nname = "u"\nroles = [{ role = "Admin", scope = "subscription" }]',
            "users[0].roles[0].role: expected one of Contributor, Owner, Reader, Virtual Machine "
            "Contributor, got 'Admin'",
        ),
        (
            MINIMAL
            + '[[users]]\nname = "u"\nroles = [{ role = "Reader", scope = "resourceGroups/x" }]',
            "users[0].roles[0].scope: expected 'subscription'",
        ),
        (
            MINIMAL + '[[users]]\nname = "u"\nroles = [{ role = "Reader" }]',
            "users[0].roles[0].scope: expected a string (the key is required)",
        ),
        (
            MINIMAL + '[[users]]\nname = "u"\nssh_keys = ["nokey"]',
            "users[0].ssh_keys: expected SSH",
        ),
        (MINIMAL + '[[users]]\nname = "u"\n[[users]]\nname = "u"', "users: name 'u' is used twice"),
        ("vms = 3", "vms: expected an array of tables, got 3"),
    ],
)
def test_mistakes_name_the_file_the_key_and_the_expectation(text: str, message: str) -> None:
    """Each mistake is refused with where it is and what would be right."""
    with pytest.raises(LabConfigError) as caught:
        parse(text)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("scope", "expected"),
    [
        ("subscription", ""),
        ("/", ""),
        ("resourceGroups/RG", "/resourceGroups/rg"),
        (
            "resourceGroups/rg/virtualMachines/VM1",
            "/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm1",
        ),
        (
            "/subscriptions/{sub}/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm1",
            "/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm1",
        ),
    ],
)
def test_role_scopes_become_arm_ids(scope: str, expected: str) -> None:
    """Short scopes ('subscription', 'resourceGroups/rg/...') and full ARM ids both work."""
    lab = parse(MINIMAL)
    sub = lab.subscription.id  # type: ignore[attr-defined]
    role = f'{{ role = "Reader", scope = "{scope.format(sub=sub)}" }}'
    text = MINIMAL + f'[[users]]\nname = "u"\nroles = [{role}]'
    (user,) = parse(text).users  # type: ignore[attr-defined]
    assert user.roles[0].scope == f"/subscriptions/{sub}{expected}"


def test_exposure_problems_only_beyond_loopback() -> None:
    """Default passwords and plain HTTP matter only when listening beyond this machine."""
    lab = load_default_lab()
    assert lab.exposure_problems() == []
    assert lab.with_overrides(host="::1").exposure_problems() == []
    problems = lab.with_overrides(host="0.0.0.0").exposure_problems()
    assert len(problems) == 4
    assert "user 'bob' still has the default password (their own name)" in problems
    assert problems[-1].startswith("TLS is off")


def test_overrides_replace_host_port_and_state_dir(tmp_path: Path) -> None:
    """--host, --port and --state-dir win over the lab file."""
    lab = load_default_lab().with_overrides(host="::1", port=0, state_dir=tmp_path)
    assert (lab.gateway.host, lab.gateway.port, lab.state_dir) == ("::1", 0, tmp_path)
    with pytest.raises(LabConfigError, match="--port"):
        load_default_lab().with_overrides(port=-1)


def test_missing_lab_file_is_named(tmp_path: Path) -> None:
    """A lab file that cannot be read is named in the error."""
    with pytest.raises(LabConfigError, match=r"nope\.toml: cannot read the lab file"):
        load_lab(tmp_path / "nope.toml")


def test_a_resource_group_named_in_other_letters_is_the_same_group() -> None:
    """ARM names are case-insensitive: `LAB-RG` names `lab-rg`, spelled as declared."""
    lab = parse(MINIMAL.replace('resource_group = "rg"', 'resource_group = "RG"'))
    assert [vm.resource_group for vm in lab.vms] == ["rg"]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ('password = "tab\\tinside"', "vms[0].password"),
        ('password = ""', "vms[0].password"),
        ('hostname = "bad host"', "vms[0].hostname"),
        ('hostname = "x console=tty0"', "vms[0].hostname"),
    ],
)
def test_what_goes_on_the_kernel_command_line_is_one_safe_word(line: str, key: str) -> None:
    """A host name that would split the kernel command line is refused, and so is a guest
    password a console cannot type; the refusal never repeats the password."""
    with pytest.raises(LabConfigError, match=key.replace("[", r"\[").replace("]", r"\]")) as err:
        parse(MINIMAL + line + "\n")
    assert "inside" not in str(err.value)


def test_a_guest_password_may_hold_spaces_and_never_shows_in_a_repr() -> None:
    """The password reaches the guest through fw_cfg, not a command line: spaces are fine;
    a printed spec hides it."""
    lab = parse(MINIMAL + 'password = "two words here"\n')
    spec = lab.vms[0].machine  # type: ignore[attr-defined]
    assert spec.password == "two words here"
    assert "two words" not in repr(spec)


def test_a_vm_name_that_is_no_host_name_gives_a_usable_one() -> None:
    """Without `hostname`, the VM's name made into a host name (underscores become '-')."""
    lab = parse(MINIMAL.replace('name = "vm1"', 'name = "web_vm_1"'))
    assert lab.vms[0].machine.hostname == "web-vm-1"  # type: ignore[attr-defined]


def test_an_empty_user_password_is_a_mistake_not_a_locked_account() -> None:
    """`password = ""` would be a user who can never log in: the file is refused, saying so."""
    with pytest.raises(LabConfigError, match=r"users\[0\]\.password: expected a password"):
        parse(MINIMAL + '[[users]]\nname = "dan"\npassword = ""\n')
