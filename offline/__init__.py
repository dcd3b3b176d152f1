"""The offline store: DuckDB over Parquet, point-in-time joins and materialization reads."""
