"""LAB_TIMEOUT_SCALE: one factor for every wait, refused when it is not a positive number."""

from __future__ import annotations

import pytest

from gateway.testing.timeouts import scale, scaled


@pytest.mark.parametrize(("value", "factor"), [(None, 1.0), ("", 1.0), ("2.5", 2.5), ("1", 1.0)])
def test_the_scale_multiplies_every_wait(
    monkeypatch: pytest.MonkeyPatch, value: str | None, factor: float
) -> None:
    if value is None:
        monkeypatch.delenv("LAB_TIMEOUT_SCALE", raising=False)
    else:
        monkeypatch.setenv("LAB_TIMEOUT_SCALE", value)
    assert scale() == factor
    assert scaled(10) == 10 * factor


@pytest.mark.parametrize("value", ["0", "-1", "fast", "nan", "inf"])
def test_a_scale_that_is_not_a_positive_number_is_refused(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("LAB_TIMEOUT_SCALE", value)
    with pytest.raises(ValueError, match=f"LAB_TIMEOUT_SCALE='{value}': expected a positive"):
        scaled(1)
