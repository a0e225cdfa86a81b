"""The SSH user name of a console: USER+GROUP+VM, or USER+GROUP+SET+INSTANCE."""

from __future__ import annotations

import pytest

from gateway.ssh.address import USAGE, AddressError, ConsoleAddress, parse, user_of


def test_a_vm_and_a_scale_set_instance() -> None:
    assert parse("alice+lab-rg+linux-1") == ConsoleAddress("alice", "lab-rg", "linux-1")
    instance = parse("alice+lab-rg+web-vmss+0")
    assert instance == ConsoleAddress("alice", "lab-rg", "web-vmss", "0")
    assert instance.label == "web-vmss/0"


@pytest.mark.parametrize("name", ["alice", "alice+lab-rg", "alice++linux-1", "a+b+c+d+e", "+g+v"])
def test_anything_else_says_how_to_spell_it(name: str) -> None:
    with pytest.raises(AddressError) as caught:
        parse(name)
    assert f"'{name}' does not name a console" in str(caught.value)
    assert USAGE in str(caught.value)


def test_the_user_is_the_part_before_the_first_plus() -> None:
    assert user_of("alice+lab-rg+linux-1") == "alice"
    assert user_of("alice") == "alice"
