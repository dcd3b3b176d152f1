"""Feature definitions for the fraud demo: users, merchants, their daily statistics, real-time
window aggregations over the raw transactions and an on-demand feature of the request."""

from featurestore import (
    Aggregation,
    Entity,
    FeatureService,
    FeatureView,
    Field,
    Float64,
    Int64,
    OnDemandFeatureView,
    ParquetSource,
    RequestSource,
    on_demand_feature,
)

user = Entity("user", join_keys=["user_id"], description="A card holder.")
merchant = Entity("merchant", join_keys=["merchant_id"], description="A shop taking card payments.")

user_stats = FeatureView(
    name="user_stats",
    entities=[user],
    source=ParquetSource(
        "data/user_stats.parquet",
        timestamp_field="event_timestamp",
        created_timestamp_field="created_timestamp",
    ),
    ttl="2d",
    owner="risk-team@example.com",
    description="Daily snapshot of a user's card activity, computed at midnight UTC.",
    schema=[
        Field("tx_count_1d", Int64, default=0),
        Field("tx_count_7d", Int64, default=0),
        Field("tx_count_30d", Int64, default=0),
        Field("amount_sum_1d", Float64, default=0.0),
        Field("amount_sum_7d", Float64, default=0.0),
        Field("amount_mean_7d", Float64),
        Field("amount_mean_30d", Float64),
        Field("amount_max_7d", Float64),
        Field("amount_std_30d", Float64),
        Field("night_share_7d", Float64),
        Field("active_days_30d", Int64, default=0),
        Field("credit_limit", Float64),
        Field("account_age_days", Int64),
    ],
)

merchant_stats = FeatureView(
    name="merchant_stats",
    entities=[merchant],
    source=ParquetSource("data/merchant_stats.parquet", timestamp_field="event_timestamp"),
    ttl="7d",
    owner="risk-team@example.com",
    description="Daily snapshot of a merchant's traffic and chargebacks.",
    schema=[
        Field("m_tx_count_1d", Int64, default=0),
        Field("m_tx_count_7d", Int64, default=0),
        Field("m_amount_mean_7d", Float64),
        Field("m_amount_std_7d", Float64),
        Field("m_amount_max_7d", Float64),
        Field("m_night_share_7d", Float64),
        Field("m_chargebacks_30d", Int64, default=0),
        Field("m_chargeback_rate_30d", Float64),
        Field("m_category", Int64),
        Field("m_risk_tier", Int64),
    ],
)

# Every transaction is an event; each feature at time t aggregates the user's transactions with
# t - window < event_timestamp <= t (so a training row counts its own transaction, exactly as
# the online value read right after that transaction was ingested would).
user_tx_windows = FeatureView(
    name="user_tx_windows",
    entities=[user],
    source=ParquetSource("data/transactions.parquet", timestamp_field="event_timestamp"),
    owner="risk-team@example.com",
    description="A user's card activity over sliding windows, exact at any instant.",
    aggregations=[
        Aggregation("amount", "count", ["1h", "24h"], name="rt_tx_count"),
        Aggregation("amount", "sum", ["24h"], name="rt_amount_sum"),
        Aggregation("amount", "mean", ["7d"], name="rt_amount_mean"),
        Aggregation("amount", "stddev", ["30d"], name="rt_amount_std"),
        Aggregation("merchant_id", "distinct_count", ["24h"], name="rt_merchants"),
    ],
)

transaction = RequestSource("transaction", schema=[Field("amount", Float64)])


@on_demand_feature(
    inputs=["amount", "user_tx_windows:rt_amount_mean_7d"],
    output=Field("amount_vs_mean_7d", Float64),
    sources=[transaction],
)
def amount_vs_mean_7d(amount: float, mean_7d: float) -> float:
    """The request's amount relative to the user's mean amount over the last 7 days."""
    if mean_7d == 0.0:
        return 0.0
    return amount / mean_7d


transaction_features = OnDemandFeatureView(
    name="transaction_features",
    sources=[transaction, user_tx_windows],
    features=[amount_vs_mean_7d],
)

fraud_model_v1 = FeatureService(
    name="fraud_model_v1",
    features=[user_stats, merchant_stats, user_tx_windows],
    description="Everything the fraud model reads (entity keys only, no request data).",
)

# v2 adds the on-demand feature: online lookups pass request_data={"amount": [...]}, and the
# training spine carries an ``amount`` column (transactions.parquet does).
fraud_model_v2 = FeatureService(
    name="fraud_model_v2",
    features=[
        user_stats,
        merchant_stats,
        user_tx_windows,
        "transaction_features:amount_vs_mean_7d",
    ],
    description="fraud_model_v1 plus the request amount relative to the user's 7-day mean.",
)
