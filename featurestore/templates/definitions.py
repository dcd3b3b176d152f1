"""Feature definitions for the fraud demo: users, merchants and their daily statistics."""

from featurestore import Entity, FeatureService, FeatureView, Field, Float64, Int64, ParquetSource

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

fraud_model_v1 = FeatureService(
    name="fraud_model_v1",
    features=[user_stats, merchant_stats],
    description="Everything the fraud model reads.",
)
