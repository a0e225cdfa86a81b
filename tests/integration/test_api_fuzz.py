"""Hostile and malformed requests, generated from /openapi.json, never get a 5xx.

schemathesis makes requests for every operation of the lab's OpenAPI description (odd
names, wrong types, huge numbers, missing bodies) as carol, who may do everything, and
checks each answer: a 4xx that says what was wrong is fine, a server error is a bug.
Bounded: a few examples per operation, against a lab process with emulated guests.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from gateway.testing.lab import LabProcess

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("api-fuzz")]  # one lab, one worker


@pytest.fixture(scope="module")
def api_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabProcess]:
    lab = LabProcess.start(tmp_path_factory.mktemp("api-fuzz"), emulated=True)
    try:
        yield lab
    finally:
        lab.stop()


@pytest.fixture(scope="module")
def token(api_lab: LabProcess) -> str:
    reply = httpx.post(
        api_lab.url + "/oauth2/token",
        data={"grant_type": "password", "username": "carol", "password": "carol"},
    )
    reply.raise_for_status()
    return str(reply.json()["access_token"])


def test_no_request_gets_a_server_error(api_lab: LabProcess, token: str) -> None:
    """Whatever the request, the gateway answers with a clear 4xx or a success, never 5xx."""
    api = schemathesis.openapi.from_url(api_lab.url + "/openapi.json")
    operations = [result.ok() for result in api.get_all_operations()]
    assert len(operations) > 20
    failures: list[str] = []
    statuses: list[int] = []
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
        def check(case: schemathesis.Case) -> None:
            response = case.call(headers={"Authorization": f"Bearer {token}"}, timeout=30)
            statuses.append(response.status_code)
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path}: {response.status_code} "
                                f"{response.text[:300]}")  # fmt: skip

        check()
    assert not failures, "\n".join(failures)
    assert len(statuses) > 5 * len(operations)  # the run really exercised every operation
