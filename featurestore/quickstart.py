"""The end-to-end demo: synthetic card transactions -> features -> training set -> online lookups."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

DAYS = 30
MIN_TRANSACTIONS = 200  # step 5 looks up 200 sampled transactions online


def generate_data(
    folder: Path, *, n_transactions: int, seed: int = 7, end: datetime | None = None
) -> dict[str, int]:
    """Write transactions and daily user/merchant feature snapshots as Parquet under ``folder``.

    The 30 days of data end at ``end`` (default: today 00:00 UTC), so a fresh repo serves
    non-expired features right away. Returns row counts per file.
    """
    import duckdb
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    end = end or datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    start_us = int((end - timedelta(days=DAYS)).timestamp() * 1e6)
    n_users = max(200, n_transactions // 50)
    n_merchants = max(50, n_transactions // 1000)

    # users: heavy-tailed activity and spend levels; merchants: category and risk tier
    activity = rng.pareto(1.5, n_users) + 0.2
    spend = rng.lognormal(3.5, 0.7, n_users)
    m_pop = rng.pareto(1.2, n_merchants) + 0.1
    m_risk = rng.choice([0, 1, 2], n_merchants, p=[0.8, 0.15, 0.05])
    user_id = rng.choice(n_users, n_transactions, p=activity / activity.sum()).astype(np.int64) + 1
    merchant_id = (
        rng.choice(n_merchants, n_transactions, p=m_pop / m_pop.sum()).astype(np.int64) + 1
    )
    ts = np.sort(start_us + rng.integers(0, DAYS * 86_400_000_000, n_transactions)).astype(np.int64)
    amount = np.round(spend[user_id - 1] * rng.lognormal(0.0, 0.6, n_transactions), 2)
    hour = (ts // 3_600_000_000) % 24
    night = hour < 6
    risk = m_risk[merchant_id - 1]
    logit = (
        -6.0
        + 1.3 * risk
        + 1.1 * night
        + 0.9 * np.log1p(amount / spend[user_id - 1])
        + rng.normal(0, 0.5, n_transactions)
    )
    is_fraud = rng.random(n_transactions) < 1 / (1 + np.exp(-logit))
    tx = pa.table(
        {
            "transaction_id": np.arange(1, n_transactions + 1, dtype=np.int64),
            "user_id": user_id,
            "merchant_id": merchant_id,
            "amount": amount,
            "event_timestamp": pa.array(ts, pa.timestamp("us", tz="UTC")),
            "is_fraud": is_fraud.astype(np.int8),
        }
    )
    pq.write_table(tx, folder / "transactions.parquet")
    users = pa.table(
        {
            "user_id": np.arange(1, n_users + 1, dtype=np.int64),
            "credit_limit": np.round(spend * 40, -1),
            "signup_days_ago": rng.integers(DAYS, 3 * 365, n_users),
        }
    )
    merchants = pa.table(
        {
            "merchant_id": np.arange(1, n_merchants + 1, dtype=np.int64),
            "category": rng.integers(1, 20, n_merchants),
            "risk_tier": m_risk.astype(np.int64),
        }
    )
    con = duckdb.connect()
    con.execute("SET TimeZone='UTC'")
    con.register("tx", tx)
    con.register("users", users)
    con.register("merchants", merchants)
    user_path, merchant_path = folder / "user_stats.parquet", folder / "merchant_stats.parquet"
    con.execute(_USER_SQL.format(days=DAYS, out=user_path))
    con.execute(_MERCHANT_SQL.format(days=DAYS, out=merchant_path))
    counts = {"transactions": n_transactions}
    for name, path in (("user_stats", user_path), ("merchant_stats", merchant_path)):
        counts[name] = pq.ParquetFile(path).metadata.num_rows
    con.close()
    return counts


# Daily snapshots over a full (entity x day) grid, so windows count calendar days; a snapshot
# for day d covers transactions before d + 1 day and becomes true at that midnight.
_USER_SQL = """
COPY (
WITH days AS (SELECT CAST(d AS DATE) AS day FROM range(
        (SELECT CAST(min(event_timestamp) AS DATE) FROM tx),
        (SELECT CAST(max(event_timestamp) AS DATE) FROM tx) + INTERVAL 1 DAY, INTERVAL 1 DAY) t(d)),
daily AS (SELECT user_id, CAST(event_timestamp AS DATE) AS day, count(*) AS n, sum(amount) AS s,
          sum(amount * amount) AS ss, max(amount) AS mx, sum((hour(event_timestamp) < 6)::INT) AS night
          FROM tx GROUP BY ALL),
grid AS (SELECT u.user_id, d.day, u.credit_limit, u.signup_days_ago FROM users u CROSS JOIN days d),
w AS (
  SELECT g.user_id, g.day, g.credit_limit, g.signup_days_ago,
    coalesce(d.n, 0) AS n1, coalesce(d.s, 0) AS s1,
    sum(coalesce(d.n, 0)) OVER w7 AS n7, sum(coalesce(d.s, 0)) OVER w7 AS s7,
    max(d.mx) OVER w7 AS mx7, sum(coalesce(d.night, 0)) OVER w7 AS night7,
    sum(coalesce(d.n, 0)) OVER w30 AS n30, sum(coalesce(d.s, 0)) OVER w30 AS s30,
    sum(coalesce(d.ss, 0)) OVER w30 AS ss30, count(d.n) OVER w30 AS active30
  FROM grid g LEFT JOIN daily d USING (user_id, day)
  WINDOW w7 AS (PARTITION BY g.user_id ORDER BY g.day ROWS BETWEEN 6 PRECEDING AND CURRENT ROW),
         w30 AS (PARTITION BY g.user_id ORDER BY g.day ROWS BETWEEN {days} PRECEDING AND CURRENT ROW))
SELECT user_id,
  CAST(day + INTERVAL 1 DAY AS TIMESTAMPTZ) AS event_timestamp,
  CAST(day + INTERVAL 1 DAY + INTERVAL 5 MINUTE AS TIMESTAMPTZ) AS created_timestamp,
  n1::BIGINT AS tx_count_1d, n7::BIGINT AS tx_count_7d, n30::BIGINT AS tx_count_30d,
  round(s1, 2) AS amount_sum_1d, round(s7, 2) AS amount_sum_7d,
  CASE WHEN n7 > 0 THEN s7 / n7 END AS amount_mean_7d,
  CASE WHEN n30 > 0 THEN s30 / n30 END AS amount_mean_30d,
  mx7 AS amount_max_7d,
  CASE WHEN n30 > 1 THEN sqrt(greatest(ss30 / n30 - (s30 / n30) ^ 2, 0)) END AS amount_std_30d,
  CASE WHEN n7 > 0 THEN night7 / n7 END AS night_share_7d,
  active30::BIGINT AS active_days_30d, credit_limit::DOUBLE AS credit_limit,
  (signup_days_ago - date_diff('day', day, (SELECT max(day) FROM days)))::BIGINT AS account_age_days
FROM w ORDER BY event_timestamp, user_id
) TO '{out}' (FORMAT parquet)
"""

_MERCHANT_SQL = """
COPY (
WITH days AS (SELECT CAST(d AS DATE) AS day FROM range(
        (SELECT CAST(min(event_timestamp) AS DATE) FROM tx),
        (SELECT CAST(max(event_timestamp) AS DATE) FROM tx) + INTERVAL 1 DAY, INTERVAL 1 DAY) t(d)),
daily AS (SELECT merchant_id, CAST(event_timestamp AS DATE) AS day, count(*) AS n, sum(amount) AS s,
          sum(amount * amount) AS ss, max(amount) AS mx, sum((hour(event_timestamp) < 6)::INT) AS night,
          sum(is_fraud) AS fraud
          FROM tx GROUP BY ALL),
grid AS (SELECT m.merchant_id, d.day, m.category, m.risk_tier FROM merchants m CROSS JOIN days d),
w AS (
  SELECT g.merchant_id, g.day, g.category, g.risk_tier, coalesce(d.n, 0) AS n1,
    sum(coalesce(d.n, 0)) OVER w7 AS n7, sum(coalesce(d.s, 0)) OVER w7 AS s7,
    sum(coalesce(d.ss, 0)) OVER w7 AS ss7, max(d.mx) OVER w7 AS mx7,
    sum(coalesce(d.night, 0)) OVER w7 AS night7,
    sum(coalesce(d.n, 0)) OVER w30 AS n30, sum(coalesce(d.fraud, 0)) OVER w30 AS fraud30
  FROM grid g LEFT JOIN daily d USING (merchant_id, day)
  WINDOW w7 AS (PARTITION BY g.merchant_id ORDER BY g.day ROWS BETWEEN 6 PRECEDING AND CURRENT ROW),
         w30 AS (PARTITION BY g.merchant_id ORDER BY g.day ROWS BETWEEN {days} PRECEDING AND CURRENT ROW))
SELECT merchant_id,
  CAST(day + INTERVAL 1 DAY AS TIMESTAMPTZ) AS event_timestamp,
  n1::BIGINT AS m_tx_count_1d, n7::BIGINT AS m_tx_count_7d,
  CASE WHEN n7 > 0 THEN s7 / n7 END AS m_amount_mean_7d,
  CASE WHEN n7 > 1 THEN sqrt(greatest(ss7 / n7 - (s7 / n7) ^ 2, 0)) END AS m_amount_std_7d,
  mx7 AS m_amount_max_7d,
  CASE WHEN n7 > 0 THEN night7 / n7 END AS m_night_share_7d,
  fraud30::BIGINT AS m_chargebacks_30d,
  CASE WHEN n30 > 0 THEN fraud30 / n30 END AS m_chargeback_rate_30d,
  category::BIGINT AS m_category, risk_tier::BIGINT AS m_risk_tier
FROM w ORDER BY event_timestamp, merchant_id
) TO '{out}' (FORMAT parquet)
"""


def _batch_score(
    store: Any, spine: Path, test_rows: int, echo: Callable[[str], Any]
) -> dict[str, Any]:
    """Score the spine with the production model into data/scores.parquet; the AUC of the
    held-out rows' batch scores equals the one measured at training: the same features."""
    import polars as pl

    from featurestore._cli_serve import _auc

    out = store.repo_path / "data" / "scores.parquet"
    res = store.batch_score("fraud", spine, out=out, progress=True)
    scored = pl.read_parquet(out, columns=["is_fraud", "score"]).tail(test_rows)
    auc = _auc(scored["is_fraud"].to_numpy(), scored["score"].to_numpy())
    echo(
        f"    {res.rows:,} rows in {res.seconds:.2f} s ({res.rows / res.seconds:,.0f} rows/s) "
        f"-> {out.relative_to(store.repo_path)}; AUC of the last {test_rows:,}: {auc:.3f}"
    )
    return {"batch_rows_per_s": res.rows / res.seconds, "batch_test_auc": auc}


def check_arguments(n_transactions: int, seed: int) -> None:
    """A usage error naming ``--transactions`` or ``--seed`` when the demo cannot run on it."""
    import click

    if n_transactions < MIN_TRANSACTIONS:
        raise click.BadParameter(
            f"{n_transactions} is below the minimum of {MIN_TRANSACTIONS}",
            param_hint="'--transactions'",
        )
    if seed < 0:
        raise click.BadParameter(f"{seed} is negative; give 0 or more", param_hint="'--seed'")


def run_quickstart(
    directory: Path,
    *,
    n_transactions: int = 1_000_000,
    seed: int = 7,
    echo: Callable[[str], Any] = print,
    force: bool = False,
) -> dict[str, Any]:
    """Every step of the product on generated data, printing what each took; returns the figures.

    The arguments are checked, and a folder already holding a repo's files or registries
    refused (unless ``force``), before anything is written. The demo always runs on its own
    config (the one a fresh folder gets): with ``force``, a repo's featurestore.yaml and its
    data/registry.json are written over, so the demo never reaches the registry or online store
    that config named.
    """
    import numpy as np
    import polars as pl

    from featurestore._scaffold import check_target, untouched_demo, write_config
    from featurestore.store import FeatureStore

    check_arguments(n_transactions, seed)
    directory = directory.resolve()
    check_target(
        directory,
        "the quickstart would write over that repo: give another --dir, or pass --force",
        force=force or untouched_demo(directory, "fraud"),  # its own demo: run it again
    )
    figures: dict[str, Any] = {}
    echo(f"1/7 generating {n_transactions:,} card transactions over {DAYS} days in {directory}")
    t0 = time.perf_counter()
    # its own config, even over a repo's (--force): the demo must not apply to, materialize into
    # or delete from the registry and online store that one names (maybe production's)
    write_config(directory, "fraud")
    if force:  # a registry of the repo's project here would refuse the demo's project
        (directory / "data" / "registry.json").unlink(missing_ok=True)
    import shutil

    shutil.copy(
        Path(__file__).parent / "templates" / "definitions.py", directory / "definitions.py"
    )
    counts = generate_data(directory / "data", n_transactions=n_transactions, seed=seed)
    echo(f"    {counts} in {time.perf_counter() - t0:.1f} s")

    store = FeatureStore(directory)
    echo("2/7 apply")
    t0 = time.perf_counter()
    plan = store.apply()
    echo("    " + str(plan).replace("\n", "\n    "))
    echo(f"    registry version {store.registry.version} in {time.perf_counter() - t0:.2f} s")

    echo("3/7 point-in-time training set: every transaction x feature service 'fraud_model_v1'")
    spine = directory / "data" / "transactions.parquet"
    t0 = time.perf_counter()
    train = store.get_historical_features(spine, "fraud_model_v1", progress=True)
    dt = time.perf_counter() - t0
    out = directory / "data" / "training_set.parquet"
    train.write_parquet(out)
    figures["training_rows_per_s"] = train.height / dt
    echo(
        f"    {train.height:,} rows x {train.width} columns in {dt:.2f} s "
        f"({train.height / dt:,.0f} rows/s) -> {out.relative_to(directory)}"
    )
    nulls = train.select(
        pl.col("amount_mean_7d").null_count(), pl.col("m_amount_mean_7d").null_count()
    ).row(0)
    echo(
        f"    rows without a user snapshot in ttl: {nulls[0]:,}; without a merchant snapshot: {nulls[1]:,}"
    )

    echo("4/7 materialize the latest values into the embedded online store")
    t0 = time.perf_counter()
    res = store.materialize_incremental(datetime.now(timezone.utc), progress=True)
    dt = time.perf_counter() - t0
    figures["materialized_rows"] = res.total_rows
    echo(f"    {res.rows} in {dt:.2f} s ({res.total_rows / dt:,.0f} rows/s)")

    echo("5/7 online lookups")
    features = store.get_feature_service("fraud_model_v1")
    rng = np.random.default_rng(seed)
    tx = pl.read_parquet(spine, columns=["user_id", "merchant_id"]).sample(200, seed=seed)
    rows = tx.to_dicts()
    store.get_online_features(features, rows[:1])  # first call opens the store
    lat = []
    for i in rng.integers(0, len(rows), 2000):
        t = time.perf_counter()
        store.get_online_features(features, [rows[i]])
        lat.append(time.perf_counter() - t)
    batch_lat = []
    for _ in range(200):
        t = time.perf_counter()
        store.get_online_features(features, rows[:100])
        batch_lat.append(time.perf_counter() - t)
    resp = store.get_online_features(features, rows[:3])
    d = resp.to_dict()
    for i in range(3):
        shown = {
            k: d[k][i]
            for k in (
                "user_id",
                "merchant_id",
                "tx_count_7d",
                "amount_mean_7d",
                "m_chargeback_rate_30d",
            )
        }
        echo(f"    {shown}")
    p = np.percentile(np.array(lat) * 1e6, [50, 99])
    pb = np.percentile(np.array(batch_lat) * 1e6, [50, 99])
    figures.update(online_p50_us=p[0], online_p99_us=p[1])
    n_views = len({ref.split(":")[0] for ref in features.features})
    echo(
        f"    1 entity x {len(features.features)} features from {n_views} views: "
        f"p50 {p[0]:.0f} us, p99 {p[1]:.0f} us"
    )
    echo(
        f"    100 entities x {len(features.features)} features: p50 {pb[0]:.0f} us, p99 {pb[1]:.0f} us"
    )
    echo("6/7 train a LightGBM fraud model on the training set, register it, predict in process")
    from featurestore._cli_serve import train_demo_model

    figures.update(train_demo_model(store, train, "is_fraud", "fraud_model_v1", echo))
    echo("7/7 batch score every transaction with fraud, on the features it had at its time")
    figures.update(_batch_score(store, spine, figures["test_rows"], echo))
    echo(
        f"Done. Explore with: featurestore -r {directory} get --feature-service fraud_model_v1 "
        f"--entity user_id={rows[0]['user_id']} --entity merchant_id={rows[0]['merchant_id']}"
    )
    echo(f"Serve it over REST and gRPC with: featurestore -r {directory} serve")
    echo(
        f"Batch-score any spine with: featurestore -r {directory} score fraud "
        "--spine SPINE.parquet --out scores.parquet"
    )
    store.close()
    return figures
