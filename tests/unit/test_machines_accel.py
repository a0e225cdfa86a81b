"""The accelerator choice is shared by concurrent calls in any event loop, not only the first."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gateway.machines import accel


async def _slow_probe(kernel: Path, qemu: str) -> tuple[str, str]:
    for _ in range(3):
        await asyncio.sleep(0)  # the lock is held across loop turns, as a real probe holds it
    return "tcg", "probed"


def test_concurrent_choices_work_in_one_event_loop_after_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two labs run one after the other in one process (each asyncio.run a new loop), each
    starting two QEMU guests at once: both get the accelerator, with one probe per loop at
    most, and no 'bound to a different event loop' error."""
    monkeypatch.delenv("LAB_ACCEL", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(accel, "_probe", _slow_probe)
    monkeypatch.setattr(accel, "_cache", {})
    kernel = tmp_path / "vmlinux"
    kernel.write_bytes(b"kernel")

    async def two_at_once() -> list[str]:
        return list(await asyncio.gather(accel.select_accel(kernel), accel.select_accel(kernel)))

    assert asyncio.run(two_at_once()) == ["tcg", "tcg"]
    accel._cache.clear()
    (tmp_path / "cache").rename(tmp_path / "cache-old")  # probe again in the second loop
    assert asyncio.run(two_at_once()) == ["tcg", "tcg"]
