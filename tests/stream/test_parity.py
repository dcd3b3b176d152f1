"""The stream oracle: after materializing up to T and ingesting random events after T, the online
value served at t equals the training-set value at t (the batch folder now holds the streamed
events) and a slow plain-Python recomputation from the raw events, for a window view and a plain
view with a ttl, over many entities and query times.

Events carry ties in event time, nulls (JSON null and a missing field), out-of-order arrival
within the allowed lateness, ISO and integer-microsecond timestamps, entities with no events and
an entity seen only on the stream. Two ingest rounds: the second updates the states the first
wrote.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from featurestore import FeatureStore
from featurestore.online.base import Status

from .conftest import (
    DAY,
    EXACT,
    LATENESS,
    MAX_WINDOW,
    TX_FEATURES,
    TX_REFS,
    TX_SPEC,
    TX_TYPES,
    H,
    close,
    dead_entries,
    hour_floor_now_us,
    make_repo,
    pending_count,
    profile_key,
    profile_oracle,
    read_folder,
    redis_client_for,
    stream_files,
    tx_key,
    tx_oracle,
    wire,
    xadd_json,
)

USERS = 14  # 0-9 have initial events, 11 only streamed ones, 10 (mostly), 12 and 13 none
TTL = 2 * DAY


def initial_tx(rng: np.random.Generator, t0: int) -> list[dict]:
    n = 300
    ts = t0 - rng.integers(0, 30 * H, n)
    ts[:5] = t0  # on T itself
    amount = np.round(rng.lognormal(3.0, 1.0, n), 2)
    return [
        {
            "user_id": int(rng.integers(0, 10)),
            "event_timestamp": int(ts[i]),
            "amount": None if rng.random() < 0.1 else float(amount[i]),
            "merchant_id": int(rng.integers(0, 8)),
        }
        for i in range(n)
    ]


def stream_tx(rng: np.random.Generator, lo: int, hi: int, n: int) -> list[dict]:
    """Events with times in (lo, hi], in random (out-of-order) stream order, with ties/nulls."""
    ts = lo + rng.integers(1, hi - lo + 1, n)
    ts[10:30] = ts[30:50]  # ties in event time (some for one user, most across users)
    user = rng.choice([*range(10), 11], n)
    user[10:20] = user[30:40]
    amount = np.round(rng.lognormal(3.0, 1.0, n), 2)
    amount[60:70] = 25.0  # equal values under ties
    ts[60:70] = ts[60]
    out = []
    for i in range(n):
        e = {"user_id": int(user[i]), "event_timestamp": int(ts[i])}
        r = rng.random()
        if r < 0.08:
            e["amount"] = None  # JSON null
        elif r >= 0.12:  # else: the field is missing, which is null too
            e["amount"] = float(amount[i])
        e["merchant_id"] = int(rng.integers(0, 8))
        out.append(e)
    return out


def initial_profile(rng: np.random.Generator, t0: int) -> list[dict]:
    out = []
    for u in range(10):
        for _ in range(int(rng.integers(1, 4))):
            ts = int(t0 - rng.integers(0, 20 * H))
            out.append(
                {
                    "user_id": u,
                    "event_timestamp": ts,
                    "created": ts + len(out) * 1000 + 1,
                    "tier": int(rng.integers(0, 4)),
                    "score": float(np.round(rng.normal(), 6)),
                }
            )
    return out


def stream_profile(rng: np.random.Generator, lo: int, hi: int, n: int, base: int) -> list[dict]:
    out = []
    for i in range(n):
        ts = int(lo + rng.integers(1, hi - lo + 1))
        u = int(rng.choice([*range(10), 11]))
        if i >= 10 and rng.random() < 0.25:  # a tie in event time with an earlier event
            prev = out[int(rng.integers(0, len(out)))]
            u, ts = prev["user_id"], prev["event_timestamp"]
        e = {
            "user_id": u,
            "event_timestamp": ts,
            # unique per event, so no two rows tie in both timestamps; sometimes lower than a tie
            "created": ts + int(rng.integers(-5000, 5000)) * 1000 + base + i,
            "tier": None if rng.random() < 0.1 else int(rng.integers(0, 4)),
        }
        if rng.random() < 0.85:
            e["score"] = None if rng.random() < 0.1 else float(np.round(rng.normal(), 6))
        out.append(e)
    return out


def _norm(e: dict, cols: list[str]) -> dict:
    return {c: e.get(c) for c in cols}


def _spine(users: list[int], times: list[int]) -> pa.Table:
    return pa.table(
        {
            "user_id": pa.array(users, pa.int64()),
            "event_timestamp": pa.array(times, pa.timestamp("us", tz="UTC")),
        }
    )


def _online(store: FeatureStore, refs: list[str], users: list[int], t: int) -> tuple[dict, dict]:
    resp = store.get_online_features(refs, [{"user_id": u} for u in users], now=t)
    return resp.to_dict(), resp.statuses


def check_window_view(
    store: FeatureStore, state_events: list[dict], all_events: list[dict], times: list[int]
) -> int:
    """Online == offline == oracle at each exact time; earlier reads are EXPIRED. Returns how
    many (user, t) pairs were compared."""
    users = list(range(USERS))
    marks = {
        u: max((e["event_timestamp"] for e in state_events if e["user_id"] == u), default=None)
        for u in users
    }
    pairs: list[tuple[int, int]] = []
    online_vals: dict[tuple[int, int], dict] = {}
    for t in times:
        got, statuses = _online(store, TX_REFS, users, t)
        for i, u in enumerate(users):
            mark = marks[u]
            st = statuses["amount_count_1d"][i]
            if mark is None:
                assert st == Status.NOT_FOUND, (u, t, st)
                assert got["amount_count_1d"][i] == 0 and got["amount_mean_1h"][i] is None
                continue
            if t < mark - LATENESS:
                # documented: a read before the newest event minus the lateness is not exact
                assert st == Status.EXPIRED, (u, t, mark, st)
                continue
            assert st == Status.PRESENT, (u, t, st)
            pairs.append((u, t))
            online_vals[(u, t)] = {f: got[f][i] for f in TX_FEATURES}
    assert pairs
    spine_u = [p[0] for p in pairs]
    spine_t = [p[1] for p in pairs]
    off = store.get_historical_features(_spine(spine_u, spine_t), TX_REFS).to_dict(as_series=False)
    assert off["user_id"] == spine_u
    bad = []
    for k, (u, t) in enumerate(pairs):
        for f, _, fn, _ in TX_SPEC:
            on = online_vals[(u, t)][f]
            want = tx_oracle(all_events, u, t, f)
            if not close(on, off[f][k], exact=True) or not close(on, want, fn in EXACT):
                bad.append((u, t, f, on, off[f][k], want))
    assert not bad, (len(bad), bad[:5])
    return len(pairs)


def check_plain_view(store: FeatureStore, events: list[dict], times: list[int]) -> set[str]:
    """Online == offline == oracle (value and status) for every user at each time; returns the
    statuses seen, so a caller can check the comparison was not vacuous."""
    users = list(range(USERS))
    seen: set[str] = set()
    refs = ["profile:tier", "profile:score"]
    for t in times:
        got, statuses = _online(store, refs, users, t)
        off = store.get_historical_features(_spine(users, [t] * USERS), refs).to_dict(
            as_series=False
        )
        for i, u in enumerate(users):
            row, status = profile_oracle(events, u, t, TTL)
            seen.add(status)
            assert statuses["tier"][i].name == status, (u, t, statuses["tier"][i], status)
            want_tier = None if row is None else row.get("tier")
            want_score = None if row is None else row.get("score")
            assert got["tier"][i] == off["tier"][i] == want_tier, (u, t, got["tier"][i], row)
            assert close(got["score"][i], off["score"][i], True), (u, t)
            assert close(got["score"][i], want_score, True), (u, t, got["score"][i], row)
    return seen


def window_times(rng: np.random.Generator, events: list[dict], t0: int, tmax: int) -> list[int]:
    near = sorted(
        {e["event_timestamp"] for e in events if e["event_timestamp"] >= tmax - 90 * 60e6}
    )
    times = [tmax - 90 * 60_000_000, tmax - H, tmax - 1, tmax, tmax + 1]
    times += [tmax + 30 * 60_000_000, tmax + H, tmax + H + 1, tmax + 12 * H, tmax + DAY]
    times += [tmax + DAY + 1, *near[-12:], *(t + H for t in near[-6:])]
    times += [int(x) for x in t0 + rng.integers(0, tmax - t0 + 26 * H, 6)]
    return sorted(set(times))


@pytest.mark.parametrize(
    ("online", "seed"), [("redis", 0), ("redis", 1), ("redis_cluster", 2)]
)  # on a cluster, the two streams live on different nodes
def test_online_after_ingest_equals_training_set_and_oracle(
    tmp_path, request, online, seed
) -> None:
    url = request.getfixturevalue("redis_cluster_url" if online == "redis_cluster" else "redis_url")
    rng = np.random.default_rng(seed)
    t0 = hour_floor_now_us() - DAY  # T: materialize up to here, stream after it
    tx0 = initial_tx(rng, t0)
    prof0 = initial_profile(rng, t0)
    repo = make_repo(tmp_path / "repo", url, tx0, prof0, project=f"par{seed}", online=online)
    client = redis_client_for(url, online)
    if online == "redis_cluster":
        nodes = {client.get_node_from_key(k).name for k in ("tx_events", "profile_events")}
        assert len(nodes) == 2

    with FeatureStore(repo) as store:
        store.apply()
        res = store.materialize(t0 - 3 * DAY, t0)
        assert res.rows["tx"] > 0 and res.rows["profile"] == 10

        # the state materialize wrote: events in (T - max window - lateness, T]
        state = [e for e in tx0 if e["event_timestamp"] > t0 - MAX_WINDOW - LATENESS]
        all_tx = list(tx0)
        all_prof = list(prof0)
        sent_tx: list[dict] = []
        sent_prof: list[dict] = []
        for rnd, (lo, hi) in enumerate([(t0 - H, t0 + 20 * H), (t0 + 10 * H, t0 + 22 * H)]):
            new_tx = stream_tx(rng, lo, hi, 400 if rnd == 0 else 150)
            new_prof = stream_profile(rng, lo, hi, 60, base=rnd * 1000)
            ids = xadd_json(
                client, "tx_events", [wire(e, as_iso=i % 2 == 0) for i, e in enumerate(new_tx)]
            )
            xadd_json(
                client,
                "profile_events",
                [
                    wire(e, ts_fields=("event_timestamp", "created"), as_iso=i % 3 == 0)
                    for i, e in enumerate(new_prof)
                ],
            )
            stats = store.ingest(once=True)
            assert stats.applied == len(new_tx) + len(new_prof), stats
            assert stats.dead == 0 and stats.batches >= 1, stats
            assert len(ids) == len(new_tx)
            sent_tx += new_tx
            sent_prof += new_prof
            all_tx += new_tx
            all_prof += new_prof
            state += new_tx

            tmax = max(e["event_timestamp"] for e in all_tx)
            compared = check_window_view(store, state, all_tx, window_times(rng, all_tx, t0, tmax))
            assert compared >= 100
            pmax = max(e["event_timestamp"] for e in all_prof)
            ptimes = [pmax, pmax + 1, pmax + H, t0 + 40 * H, pmax + TTL - H, t0 + 3 * DAY]
            seen = check_plain_view(store, all_prof, ptimes)
            assert {"PRESENT", "NOT_FOUND", "EXPIRED"} <= seen

    # the batch folders hold the initial events plus each streamed one exactly once
    tx_rows = read_folder(repo / "data" / "tx")
    assert sorted(map(tx_key, tx_rows), key=repr) == sorted(map(tx_key, tx0 + sent_tx), key=repr)
    prof_rows = read_folder(repo / "data" / "profile")
    assert sorted(map(profile_key, prof_rows), key=repr) == sorted(
        map(profile_key, prof0 + sent_prof), key=repr
    )
    files = stream_files(repo / "data" / "tx")
    assert files and all(p.name.startswith("stream-tx_stream-") for p in files)
    initial = pq.read_schema(repo / "data" / "tx" / "initial.parquet")
    for p in files:  # appended with the batch source's column types
        schema = pq.read_schema(p)
        for name, typ in TX_TYPES.items():
            assert schema.field(name).type == initial.field(name).type == typ, (p.name, name)
    # everything acknowledged, nothing dead
    assert pending_count(client, "tx_events") == 0
    assert pending_count(client, "profile_events") == 0
    assert dead_entries(client, "tx_events") == []
