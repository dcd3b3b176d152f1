"""``featurestore compact``: merge the push files of source folders into one file per folder.

Each offline push adds one Parquet file; run this from cron (say hourly) so training sets and
materializations open few files. Stream ingest's ``stream-...`` files are left alone, and push
files a stream file ranks between are merged apart (one file per run), so no tie changes winner.
"""

from __future__ import annotations

import click


@click.command("compact")
@click.option("--view", "view", help="Only the source folder of this feature view.")
@click.pass_context
def compact(ctx: click.Context, view: str | None) -> None:
    """Merge each plain view's push-*.parquet files into one file (exact duplicates dropped;
    one per run of pushes when stream files rank between them)."""
    from featurestore.offline.compact import compact_pushes
    from featurestore.store import FeatureStore

    with FeatureStore((ctx.obj or {}).get("repo", ".")) as store:
        results = compact_pushes(store.config, store.registry, view)
    if not results:
        click.echo("no plain feature views, nothing to compact")
    for r in results:
        if r.skipped is not None:
            click.echo(f"skipped '{r.folder}' (view '{r.view}'): {r.skipped}")
        else:
            n = len(r.outputs) or 1
            click.echo(
                f"compacted '{r.folder}': {r.files_merged:,} files, {r.rows_before:,} rows "
                f"-> {n:,} file{'s' if n > 1 else ''}, {r.rows_after:,} rows"
            )
