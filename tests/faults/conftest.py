"""The lab under hostile input, faults and load: every test here is marked ``faults``,
runs against a lab on 127.0.0.1 only, and bounds its loops in count and time."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/faults/" in str(item.path).replace("\\", "/"):
            item.add_marker(pytest.mark.faults)
