"""The suite's lab (tests/e2e/lab.toml) is the default lab less its disk VMs and fixed ports."""

from __future__ import annotations

import dataclasses

from gateway.lab.config import load_default_lab, load_lab
from tests.e2e.conftest import SUITE_LAB


def test_the_suite_lab_is_the_default_lab_without_its_disk_vms() -> None:
    suite, default = load_lab(SUITE_LAB), load_default_lab()
    kept = [vm for vm in default.vms if vm.machine.image.disk is None]
    assert len(kept) < len(default.vms), "the default lab has no disk VM any more"
    assert suite.vms == tuple(kept)
    assert suite.scale_sets == default.scale_sets
    assert suite.users == default.users
    assert suite.subscription == default.subscription
    assert suite.resource_groups == default.resource_groups
    assert suite.access == default.access
    assert suite.gateway == dataclasses.replace(default.gateway, port=0, ssh_port=0)
