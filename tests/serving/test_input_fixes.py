"""Inputs that used to fail with unhelpful errors.

- Pushed times given as Python datetimes (aware or naive), pandas Timestamps, numpy datetime64
  values and polars Datetime columns, in process: taken, naive ones as UTC (never shifted by
  the local zone), as the README says of naive times everywhere.
- A REST POST whose body is not declared JSON (a form, no Content-Type, text/plain): 415
  naming the Content-Type and saying to send application/json, on every POST route alike.
- A python-flavor model whose ``explain(x)`` returns a tuple, a ragged list or anything else
  that is not a 2-D numeric array: the "expected (n, k) or (n, k + 1)" message, naming the
  model, not numpy's complaint.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pandas as pd
import polars as pl
import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from featurestore import Entity, FeatureView, Field, ParquetSource, UnixTimestamp
from featurestore.online.serving import _requests as rq
from featurestore.online.serving.engine import Engine
from featurestore.online.serving.errors import BadRequestError
from featurestore.store import FeatureStore
from tests.serving.conftest import MODEL_FEATURES, make_repo

UTC = timezone.utc
IST = timezone(timedelta(hours=5, minutes=30))
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
TS = "merchant_stats__event_timestamp"


@pytest.fixture
def far_zone(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A process time zone hours away from UTC: a naive time read as local time would move."""
    monkeypatch.setenv("TZ", "America/Los_Angeles")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def _recent(i: int) -> datetime:
    """Distinct times after the repo's materialized rows (an hour old), with microseconds."""
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=20)
    return base + timedelta(seconds=i, microseconds=1000 * i + 7)


def _online_times(store: FeatureStore, merchants: list[int]) -> list[datetime]:
    got = store.get_online_features(
        ["merchant_stats:risk"], {"merchant_id": merchants}, include_event_timestamps=True
    )
    return got.to_dict()[TS]


# ---- 1. pushed datetimes, in process ------------------------------------------------------


def test_push_takes_datetimes_timestamps_and_datetime64s(fresh_repo: Path, far_zone: None) -> None:
    t = [_recent(i) for i in range(1, 7)]
    given_as = [
        t[0],  # aware, UTC
        t[1].astimezone(IST),  # aware, another zone
        t[2].replace(tzinfo=None),  # naive: UTC by the documented rule
        pd.Timestamp(t[3]),
        pd.Timestamp(t[4].replace(tzinfo=None)),  # naive pandas
        np.datetime64(t[5].replace(tzinfo=None), "us"),
    ]
    merchants = [1, 2, 3, 4, 5, 6]
    with FeatureStore(fresh_repo) as store:
        rows = {"merchant_id": merchants, "risk": [0.9] * 6, "event_timestamp": given_as}
        assert store.push("merchant_stats", rows) == 6
        assert _online_times(store, merchants) == t
        # row dicts too
        assert store.push(
            "merchant_stats", [{"merchant_id": 7, "risk": 0.1, "event_timestamp": t[0]}]
        )
        assert _online_times(store, [7]) == [t[0]]


def test_push_takes_a_polars_frame_with_datetime_columns(fresh_repo: Path, far_zone: None) -> None:
    t = [_recent(i) for i in range(1, 5)]
    aware = pl.DataFrame(
        {"merchant_id": [1, 2], "risk": [0.7, 0.8], "event_timestamp": t[:2]}
    ).with_columns(pl.col("event_timestamp").dt.convert_time_zone("Asia/Kolkata"))
    naive = pl.DataFrame(
        {
            "merchant_id": [3, 4],
            "risk": [0.6, 0.5],
            "event_timestamp": [x.replace(tzinfo=None) for x in t[2:]],
        }
    ).with_columns(pl.col("event_timestamp").cast(pl.Datetime("ns")))
    assert aware.schema["event_timestamp"] == pl.Datetime("us", "Asia/Kolkata")
    assert naive.schema["event_timestamp"] == pl.Datetime("ns")
    with FeatureStore(fresh_repo) as store:
        assert store.push("merchant_stats", aware) == 2
        assert store.push("merchant_stats", naive) == 2
        assert _online_times(store, [1, 2, 3, 4]) == t
        got = store.get_online_features(["merchant_stats:risk"], {"merchant_id": [1, 3]})
        assert got.to_dict()["risk"] == [0.7, 0.6]


def test_store_push_takes_a_nanosecond_datetime64_column(fresh_repo: Path) -> None:
    """FeatureStore.push lists columns first (entity_input): nanosecond times must come out as
    times, not as integers that would read as microseconds."""
    t = [_recent(i) for i in range(1, 3)]
    when = np.array([np.datetime64(x.replace(tzinfo=None), "ns") for x in t])
    with FeatureStore(fresh_repo) as store:
        rows = {"merchant_id": np.array([1, 2]), "risk": [0.4, 0.5], "event_timestamp": when}
        assert store.push("merchant_stats", rows) == 2
        assert _online_times(store, [1, 2]) == t


def test_engine_push_reads_datetime64_arrays_by_their_unit(fresh_repo: Path) -> None:
    """numpy's tolist turns nanosecond times into integers, which would pass for microseconds."""
    t = [_recent(i) for i in range(1, 4)]
    naive = [x.replace(tzinfo=None) for x in t]
    engine = Engine.from_repo(str(fresh_repo)).start(poll=False)
    try:
        for unit, merchant in (("ns", 1), ("us", 2), ("ms", 3)):
            when = np.array([np.datetime64(naive[merchant - 1], unit)])
            rows = {"merchant_id": np.array([merchant]), "risk": [0.3], "event_timestamp": when}
            assert engine.push("merchant_stats", rows) == 1
        frame = pd.DataFrame({"merchant_id": [4], "risk": [0.2], "event_timestamp": [t[0]]})
        assert engine.push("merchant_stats", frame) == 1
        got = engine.get_features(
            features=["merchant_stats:risk"],
            entities={"merchant_id": [1, 2, 3, 4]},
            include_event_timestamps=True,
        )
        ms = t[2].replace(microsecond=t[2].microsecond // 1000 * 1000)  # floored to the unit
        assert got.columns[TS] == [t[0], t[1], ms, t[0]], got.columns[TS]
    finally:
        engine.close()


_VIEW = FeatureView(
    name="v",
    entities=[Entity("e", join_keys=["k"])],
    source=ParquetSource("x.parquet"),
    schema=[Field("seen", UnixTimestamp)],
)


def test_timestamp_features_take_datetimes_and_bad_times_name_the_row(far_zone: None) -> None:
    t = datetime(2026, 3, 1, 12, 30, 15, 250, tzinfo=UTC)
    us = (t - EPOCH) // timedelta(microseconds=1)
    seen = [t, t.astimezone(IST), t.replace(tzinfo=None), np.datetime64(us, "us"), None, us]
    table = rq.push_table(_VIEW, {"k": [1, 2, 3, 4, 5, 6], "seen": seen}, 10, 100)
    assert table.column("seen").cast("int64").to_pylist() == [us, us, us, us, None, us]
    for bad, why in [
        (1.5, "a float is not a time"),
        (True, "a bool is not a time"),
        ("noon", "'noon' is not ISO 8601"),
        (us * 1000, "outside the years 1-9999 (nanoseconds?"),
    ]:
        for col in ("seen", "event_timestamp"):
            rows = {"k": [1, 2], "seen": [us, us], "event_timestamp": [us, us]}
            rows[col] = [us, bad]
            with pytest.raises(BadRequestError) as info:
                rq.push_table(_VIEW, rows, 10, 100)
            msg = str(info.value)
            assert msg.startswith(f"push: rows.{col} holds a bad time (rows.{col}[1]: "), msg
            assert why in msg and "ISO 8601" in msg.split("; give ")[1]
            assert info.value.field == f"rows.{col}"


_OFFSETS = st.integers(-14 * 60, 14 * 60).map(lambda m: timezone(timedelta(minutes=m)))


@given(
    naive=st.datetimes(min_value=datetime(2, 1, 1), max_value=datetime(9998, 12, 31)),
    zone=_OFFSETS,
)
def test_every_spelling_of_one_time_gives_the_same_microseconds(
    naive: datetime, zone: timezone
) -> None:
    as_utc = naive.replace(tzinfo=UTC)
    want = (as_utc - EPOCH) // timedelta(microseconds=1)
    assert rq.time_us(naive) == want  # naive: UTC, whatever the process' zone
    assert rq.time_us(as_utc.astimezone(zone)) == want
    assert rq.time_us(as_utc.isoformat()) == want
    assert rq.time_us(np.datetime64(naive, "us")) == want
    if datetime(1678, 1, 1) < naive < datetime(2262, 1, 1):  # what nanoseconds can hold
        assert rq.time_us(np.datetime64(naive, "us").astype("datetime64[ns]")) == want
        assert rq.time_us(pd.Timestamp(naive)) == want
        assert rq.time_us(pd.Timestamp(as_utc).tz_convert(zone)) == want
    assert rq.time_us(want) == want
    assert rq.time_us(pd.NaT) is None and rq.time_us(np.datetime64("NaT")) is None


# ---- 2. REST bodies that are not declared JSON -------------------------------------------

BODIES = {
    "/get-online-features": {
        "feature_service": "scoring",
        "entities": {"user_id": [7], "merchant_id": [3]},
    },
    "/predict": {"model": "fraud", "entities": {"user_id": [7], "merchant_id": [3]}},
    "/push": {"feature_view": "merchant_stats", "rows": {"merchant_id": [3], "risk": [0.4]}},
}


def test_a_body_not_declared_json_is_a_415_on_every_post_route(
    fresh_repo: Path, serve: Any
) -> None:
    s = serve(fresh_repo)
    spec = httpx.get(f"{s.url}/openapi.json", timeout=10).json()
    posts = sorted(p for p, ops in spec["paths"].items() if "post" in ops)
    assert posts == sorted(BODIES)  # a new POST route needs a body here
    with httpx.Client(base_url=s.url, timeout=10) as client:

        def risk_of_merchant_3() -> float:
            body = {"features": ["merchant_stats:risk"], "entities": {"merchant_id": [3]}}
            return client.post("/get-online-features", json=body).json()["results"][1]["values"]

        for path in posts:
            assert "415" in spec["paths"][path]["post"]["responses"]
            raw = orjson.dumps(BODIES[path])  # valid JSON: only the declared type is wrong
            for ctype, named in [
                ("application/x-www-form-urlencoded", "'application/x-www-form-urlencoded'"),
                (None, "no Content-Type header"),
                ("text/plain; charset=utf-8", "'text/plain; charset=utf-8'"),
            ]:
                headers = {} if ctype is None else {"content-type": ctype}
                r = client.post(path, content=raw, headers=headers)
                assert r.request.headers.get("content-type") == ctype
                assert r.status_code == 415, (path, ctype, r.text)
                assert r.headers["content-type"] == "application/json"
                assert r.json() == {
                    "error": f"POST {path} takes a JSON body, but the request has "
                    + ("" if ctype is None else "Content-Type ")
                    + f"{named}; send the body as JSON with the header Content-Type: "
                    "application/json"
                }
        assert risk_of_merchant_3() == [0.3]  # the refused pushes wrote nothing
        for path in posts:  # the same bytes declared JSON are answered
            raw = orjson.dumps(BODIES[path])
            for ctype in ("application/json", "application/json; charset=utf-8"):
                r = client.post(path, content=raw, headers={"content-type": ctype})
                assert r.status_code == 200, (path, ctype, r.text)
        assert risk_of_merchant_3() == [0.4]
        # an unknown path is still a 404, whatever its type
        assert client.post("/nope", content=b"x").status_code == 404


def test_with_api_keys_on_the_key_is_checked_first_then_the_type(
    tmp_path: Path, serve: Any
) -> None:
    from featurestore.online.serving.auth import SCOPES, make_entry, new_key, write_keys

    repo = make_repo(tmp_path / "repo", serving="serving:\n  auth: {}\n")
    key = new_key()
    write_keys(repo / "secrets" / "api_keys.json", [make_entry("ops", key, SCOPES)])
    s = serve(repo)
    form = {"content-type": "application/x-www-form-urlencoded"}
    for path, body in BODIES.items():
        raw = orjson.dumps(body)
        assert httpx.post(f"{s.url}{path}", content=raw, headers=form).status_code == 401
        r = httpx.post(
            f"{s.url}{path}", content=raw, headers={**form, "x-api-key": key, "x-request-id": "r1"}
        )
        assert r.status_code == 415 and r.headers["x-request-id"] == "r1", r.text
        assert "send the body as JSON" in r.json()["error"]


# ---- 3. a python model whose explain(x) returns the wrong thing ----------------------------

NAMES = f"import numpy as np\nFEATURE_NAMES = {MODEL_FEATURES!r}\n"
PREDICT = "def predict(x):\n    return 0.5 * x[:, 2] + 0.001 * x[:, 0]\n"
BAD_EXPLAINS = {
    "tuple": ("(x * 0.1, np.zeros(len(x)))", "a tuple that is not a numeric array"),
    "ragged": ("[[1.0, 2.0]] + [[1.0]] * (len(x) - 1)", "a list that is not a numeric array"),
    "none": ("None", "a NoneType"),
    "words": ("[['a'] * x.shape[1]] * len(x)", "a list that is not a numeric array"),
    "narrow": ("x[:, :2]", "shape (2, 2)"),
}


def test_a_bad_explain_of_a_python_model_says_what_it_returned(
    fresh_repo: Path, tmp_path: Path, serve: Any
) -> None:
    from featurestore._cli_serve import register_commands
    from featurestore.cli import cli

    register_commands(cli)
    versions = {}
    for name, (ret, _) in BAD_EXPLAINS.items():
        path = tmp_path / f"{name}.py"
        path.write_text(NAMES + PREDICT + f"def explain(x):\n    return {ret}\n")
        r = CliRunner().invoke(
            cli,
            ["-r", str(fresh_repo), "models", "register", "fraud", "--flavor", "python",
             "--path", str(path), "--features", "scoring"],
            catch_exceptions=False,
        )  # fmt: skip
        assert r.exit_code == 0, r.output
        versions[name] = int(r.output.split("registered fraud v")[1].split()[0])
    s = serve(fresh_repo)
    entities = {"user_id": [7, 8], "merchant_id": [3, 4]}
    for name, (_, said) in BAD_EXPLAINS.items():
        v = versions[name]
        body = {"model": f"fraud@{v}", "entities": entities, "explain": True}
        r = httpx.post(f"{s.url}/predict", json=body, timeout=10)
        assert r.status_code == 500, (name, r.text)
        assert r.json() == {
            "error": f"model 'fraud' v{v} failed to explain 2 row(s): ValueError: explain(x) "
            f"returned {said} for 2 row(s) of 3 inputs; expected (2, 3) or (2, 4) with the "
            "base value last, as a 2-D numeric array"
        }, name
        body["explain"] = False  # scores alone are fine
        assert httpx.post(f"{s.url}/predict", json=body, timeout=10).status_code == 200
