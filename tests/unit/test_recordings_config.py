"""``[recordings]`` of the lab file: on by default, input off, bounds checked."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.lab.config import LabConfigError, parse_lab
from gateway.recordings.settings import RecordingSettings

MINIMAL = '[[resource_groups]]\nname = "rg"\n'


def _parse(text: str) -> RecordingSettings:
    return parse_lab(text, source="lab.toml", base=Path("/labs")).recordings


def test_recordings_are_on_and_input_is_off_by_default() -> None:
    settings = _parse(MINIMAL)
    assert settings == RecordingSettings()
    assert settings.enabled
    assert not settings.record_input


def test_the_lab_file_sets_input_and_the_bounds() -> None:
    settings = _parse(MINIMAL + "[recordings]\nrecord_input = true\nsession_bytes = 65536\n"
                      "total_bytes = 1048576\nenabled = false\n")  # fmt: skip
    assert settings == RecordingSettings(False, True, 65536, 1048576)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('record_input = "yes"', "recordings.record_input: expected true or false"),
        ("session_bytes = 10", "recordings.session_bytes: expected an integer in 4096.."),
        ("keep = 3", "recordings.keep: unknown key"),
    ],
)
def test_mistakes_name_the_key(text: str, message: str) -> None:
    with pytest.raises(LabConfigError, match=message.replace(".", r"\.")):
        _parse(MINIMAL + "[recordings]\n" + text + "\n")
