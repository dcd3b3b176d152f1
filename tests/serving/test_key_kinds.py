"""A join-key value of the wrong kind (a string for an integer key, or the reverse) is a 4xx
naming the field on every endpoint, never a silent all-defaults answer: keys written from
integer columns can never match a string. (gRPC: see test_grpc's error cases.)"""

from __future__ import annotations

import httpx
import pytest


@pytest.mark.parametrize(
    ("path", "body", "needle"),
    [
        (
            "/get-online-features",
            {"feature_service": "scoring", "entities": {"user_id": ["3"], "merchant_id": [1]}},
            "entities.user_id[0] is \"3\" (string), but join key 'user_id' holds integers",
        ),
        (
            "/get-online-features",
            {"features": ["merchant_stats:risk"], "entities": {"merchant_id": [1, 2, "7"]}},
            'entities.merchant_id[2] is "7" (string)',
        ),
        (  # one entity: the predict shortcut must hand it to the checks, not score defaults
            "/predict",
            {"model": "fraud", "entities": {"user_id": ["3"], "merchant_id": [1]}},
            'entities.user_id[0] is "3"',
        ),
        (
            "/predict",
            {"model": "fraud", "entities": {"user_id": [3, 4], "merchant_id": ["1", "2"]}},
            'entities.merchant_id[0] is "1"',
        ),
        (
            "/push",
            {
                "feature_view": "merchant_stats",
                "rows": {"merchant_id": ["1"], "risk": [0.1]},
            },
            "rows.merchant_id[0] is \"1\" (string), but join key 'merchant_id' holds integers",
        ),
    ],
)
def test_rest_wrong_key_kind_is_a_400(client: httpx.Client, path: str, body: dict, needle: str):
    r = client.post(path, json=body)
    assert r.status_code == 400, r.text
    assert needle in r.json()["error"]


def test_rest_right_kinds_still_answer(client: httpx.Client) -> None:
    r = client.post(
        "/predict", json={"model": "fraud", "entities": {"user_id": [3], "merchant_id": [1]}}
    )
    assert r.status_code == 200, r.text
    r = client.post(
        "/get-online-features",
        json={"feature_service": "scoring", "entities": {"user_id": [3], "merchant_id": [1]}},
    )
    assert r.status_code == 200, r.text
    statuses = [s for col in r.json()["results"] for s in col["statuses"] or []]
    assert statuses and set(statuses) == {"PRESENT"}
