"""``featurestore purge-expired``: delete the embedded online store's expired rows.

Reads already skip an expired row, but LMDB keeps it until its key is written again, so the
file of an embedded store whose entities stop coming back only grows. Redis expires keys itself.
"""

from __future__ import annotations

import time

import click


@click.command("purge-expired")
@click.option(
    "--batch",
    default=10_000,
    show_default=True,
    type=click.IntRange(min=1),
    help="Most deletions per write transaction (other writers wait at most one batch).",
)
@click.pass_context
def purge_expired(ctx: click.Context, batch: int) -> None:
    """Delete the rows past their expiry from the embedded online store (run it periodically)."""
    from featurestore.config import load_config
    from featurestore.online.base import open_online_store
    from featurestore.online.embedded import EmbeddedOnlineStore

    config = load_config((ctx.obj or {}).get("repo", "."))
    with open_online_store(config) as store:
        if not isinstance(store, EmbeddedOnlineStore):
            click.echo(
                f"the {config.online_store.type} online store: Redis expires keys itself, "
                "nothing to purge"
            )
            return
        t0 = time.perf_counter()
        n = store.purge_expired(batch=batch)
        seconds = time.perf_counter() - t0
    click.echo(f"purged {n:,} expired rows from the embedded online store in {seconds:.2f} s")
