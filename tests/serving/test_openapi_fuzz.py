"""schemathesis against the served OpenAPI spec: generated requests never get a 5xx.

(schemathesis' pytest plugin does not run under pytest 9, so each operation's strategy is
driven by hypothesis directly.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from tests.serving.conftest import ServerThread, make_repo


def _fuzz(server: ServerThread, headers: dict[str, str] | None = None) -> list[int]:
    """Every operation of the served spec, 40 generated requests each; their status codes."""
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    ran: list[str] = []
    calls: list[int] = []
    for result in schema.get_all_operations():
        op = result.ok()
        ran.append(op.label)

        @settings(
            max_examples=40, deadline=None, database=None, suppress_health_check=list(HealthCheck)
        )
        @given(case=op.as_strategy())
        def check(case: Any) -> None:
            r = case.call_and_validate(
                base_url=server.url, checks=[not_a_server_error], headers=headers
            )
            calls.append(r.status_code)

        check()
    assert len(ran) == 8, ran
    return calls


def test_generated_requests_get_no_server_error(shared_server: ServerThread) -> None:
    calls = _fuzz(shared_server)
    assert len(calls) > 100 and max(calls) < 500
    assert any(c == 200 for c in calls) and any(400 <= c < 500 for c in calls)


def test_no_server_error_with_api_keys_and_the_audit_log_on(tmp_path: Path, serve: Any) -> None:
    """The spec then adds the x-request-id header (generated too) and the key schemes."""
    from featurestore.online.serving.auth import SCOPES, make_entry, new_key, write_keys

    repo = make_repo(
        tmp_path / "repo", serving="serving:\n  auth: {}\n  audit: {path: data/audit}\n"
    )
    key = new_key()
    write_keys(repo / "secrets" / "api_keys.json", [make_entry("fuzz", key, SCOPES)])
    server = serve(repo)
    calls = _fuzz(server, headers={"x-api-key": key})
    assert len(calls) > 100 and max(calls) < 500
    assert any(c == 200 for c in calls) and any(400 <= c < 500 for c in calls)
    # and the server still answers, and records, a real prediction after all that
    import httpx

    body = {"model": "fraud", "entities": {"user_id": [3], "merchant_id": [2]}}
    r = httpx.post(f"{server.url}/predict", json=body, headers={"x-api-key": key}, timeout=10)
    assert r.status_code == 200, r.text
    audit = server.app.state.engine.audit
    assert audit.flush(10) and audit.written >= 1 and audit.dropped == 0
