"""schemathesis against the served OpenAPI spec: generated requests never get a 5xx.

(schemathesis' pytest plugin does not run under pytest 9, so each operation's strategy is
driven by hypothesis directly.)
"""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from tests.serving.conftest import ServerThread


def test_generated_requests_get_no_server_error(shared_server: ServerThread) -> None:
    schema = schemathesis.openapi.from_url(f"{shared_server.url}/openapi.json")
    ran: list[str] = []
    calls: list[int] = []
    for result in schema.get_all_operations():
        op = result.ok()
        ran.append(op.label)

        @settings(
            max_examples=40, deadline=None, database=None, suppress_health_check=list(HealthCheck)
        )
        @given(case=op.as_strategy())
        def check(case) -> None:
            r = case.call_and_validate(base_url=shared_server.url, checks=[not_a_server_error])
            calls.append(r.status_code)

        check()
    assert len(ran) == 8, ran
    assert len(calls) > 100 and max(calls) < 500
    assert any(c == 200 for c in calls) and any(400 <= c < 500 for c in calls)
