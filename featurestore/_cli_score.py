"""``featurestore score``: batch-score a spine with registered models into a Parquet file."""

from __future__ import annotations

import click


@click.command()
@click.argument("models", nargs=-1, required=True)
@click.option(
    "--spine",
    required=True,
    type=click.Path(exists=True),
    help="Parquet file or folder of entity rows (join keys + timestamp).",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False),
    help="Parquet file to write (.parquet or .pq).",
)
@click.option("--timestamp-column", default="event_timestamp", show_default=True)
@click.option("--as-known", is_flag=True, help="Only rows created at or before each spine time.")
@click.option("--with-features", is_flag=True, help="Also write the models' input features.")
@click.option(
    "--explain",
    is_flag=True,
    help="Also write each input's contribution to each score (contrib_*, base_value).",
)
@click.option(
    "--chunk-rows",
    type=int,
    default=1_000_000,
    show_default=True,
    help="Spine rows joined and scored at a time (bounds memory).",
)
@click.pass_context
def score(
    ctx: click.Context,
    models: tuple[str, ...],
    spine: str,
    out: str,
    timestamp_column: str,
    as_known: bool,
    with_features: bool,
    explain: bool,
    chunk_rows: int,
) -> None:
    """Score every spine row with MODELS (NAME, NAME@ALIAS or NAME@VERSION) at its time."""
    from featurestore._atomic import check_parquet_out
    from featurestore.store import FeatureStore

    check_parquet_out(out)  # before any work: a .csv name would hold Parquet

    with FeatureStore((ctx.obj or {}).get("repo", ".")) as store:
        res = store.batch_score(
            list(models),
            spine,
            timestamp_column=timestamp_column,
            as_known=as_known,
            include_features=with_features,
            explain=explain,
            out=out,
            chunk_rows=chunk_rows,
            progress=True,
        )
    used = ", ".join(f"{m.name} v{m.version} ({m.flavor})" for m in res.models)
    rate = res.rows / res.seconds if res.seconds > 0 else 0.0
    line = (
        f"scored {res.rows:,} rows with {used} in {res.seconds:.2f} s ({rate:,.0f} rows/s) -> {out}"
    )
    if res.unscored:
        line += f"; {res.unscored:,} left unscored (a null input the model refuses)"
    click.echo(line)
