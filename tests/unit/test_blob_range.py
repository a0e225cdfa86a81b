"""The one byte range a boot-diagnostics blob is served in (``Range: bytes=...``), as
Azure Storage answers it."""

from __future__ import annotations

import pytest

from gateway.api.bootdiag import parse_range


@pytest.mark.parametrize(
    ("header", "size", "span"),
    [
        ("bytes=0-9", 100, (0, 9)),
        ("bytes=90-", 100, (90, 99)),
        ("bytes=95-200", 100, (95, 99)),
        ("bytes=-10", 100, (90, 99)),  # the last ten bytes
        ("bytes=-500", 100, (0, 99)),
        ("bytes=-10", 0, "unsatisfiable"),  # an empty log has no last bytes
        ("bytes=100-", 100, "unsatisfiable"),
        ("bytes=-0", 100, "unsatisfiable"),
        ("bytes=0-1,5-6", 100, None),  # several ranges: the whole blob
        ("items=0-9", 100, None),
        ("bytes=9-0", 100, None),
        ("bytes=a-b", 100, None),
    ],
)
def test_a_range_is_a_first_and_last_byte_or_unsatisfiable_or_the_whole_blob(
    header: str, size: int, span: object
) -> None:
    assert parse_range(header, size) == span
