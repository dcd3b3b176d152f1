"""``featurestore dead-letters``: list the bad events of stream ingestion, send them back to their
stream after a fix (``replay``), or delete them (``drop``)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from featurestore.online.stream import DeadLetter
    from featurestore.store import FeatureStore

_SHOWN = 300  # characters of an event shown by ``list`` (``--json`` prints them whole)

_source = click.option("--source", help="A StreamSource (default: all of them).")
_reason = click.option(
    "--reason", help="Only dead letters whose reason holds this text (any case)."
)


@click.group("dead-letters")
def dead_letters() -> None:
    """Inspect, replay or drop the bad events of stream ingestion: the dead-letter stream
    beside each stream (<stream>:dead, or the suffix in stream.dead_letter_suffix)."""


@dead_letters.command("list")
@_source
@click.option("--limit", default=20, show_default=True, type=click.IntRange(min=1),
              help="At most this many per source, oldest first.")  # fmt: skip
@_reason
@click.option("--json", "as_json", is_flag=True, help="One JSON array of the letters.")
@click.pass_context
def list_(
    ctx: click.Context, source: str | None, limit: int, reason: str | None, as_json: bool
) -> None:
    """Show dead letters: why each failed and the event as it was sent."""
    from featurestore.online.stream import count_dead_letters, list_dead_letters

    with _quiet_on_closed_pipe(), _stream_store(ctx) as (store, client):
        rows: list[dict[str, Any]] = []
        for name in _sources(store, source):
            letters = list_dead_letters(
                store, name, limit=limit, reason_contains=reason, client=client
            )
            if as_json:
                rows += [x.to_dict() for x in letters]
                continue
            total = count_dead_letters(store, name, client=client)
            click.echo(f"{name}: {total:,} dead letters, {len(letters):,} shown")
            for x in letters:
                click.echo(f"  {x.letter_id} (entry {x.original_id or '?'}): {x.reason}")
                click.echo(f"    {_event_text(x)}")
        if as_json:
            click.echo(json.dumps(rows, indent=2))


@dead_letters.command()
@_source
@_reason
@click.option("--limit", type=click.IntRange(min=1), help="At most this many events per source.")
@click.pass_context
def replay(ctx: click.Context, source: str | None, reason: str | None, limit: int | None) -> None:
    """Send dead letters back to their stream, as they were first sent, for ingest to read
    again (after fixing the definitions or the producer). One still bad is dead-lettered again."""
    from featurestore.online.stream import (
        check_replayable,
        list_dead_letters,
        replay_dead_letters,
    )

    with _stream_store(ctx) as (store, client):
        names = _sources(store, source)
        for name in names:  # all checked before any is moved
            check_replayable(store, name, client=client)
        for name in names:
            n = replay_dead_letters(store, name, limit=limit, reason_contains=reason, client=client)
            click.echo(f"{name}: sent {n:,} dead letters back to the stream")
            if limit is None:
                left = list_dead_letters(
                    store, name, limit=None, reason_contains=reason, client=client
                )
                if left:
                    click.echo(
                        f"{name}: {len(left):,} left: unreadable, or their entries are still "
                        "pending in the ingest group (featurestore ingest reads those again)"
                    )


@dead_letters.command()
@_source
@_reason
@click.option("--all", "everything", is_flag=True, help="Drop every dead letter (no filter).")
@click.pass_context
def drop(ctx: click.Context, source: str | None, reason: str | None, everything: bool) -> None:
    """Delete dead letters for good: those matching --reason, or with --all every one."""
    from featurestore.errors import FeatureStoreError
    from featurestore.online.stream import drop_dead_letters

    if not reason and not everything:
        raise FeatureStoreError(
            "dead-letters drop deletes for good: give --reason TEXT, or --all to drop them all"
        )
    with _stream_store(ctx) as (store, client):
        for name in _sources(store, source):
            n = drop_dead_letters(
                store, name, reason_contains=reason, everything=everything, client=client
            )
            click.echo(f"{name}: dropped {n:,} dead letters")


@contextmanager
def _quiet_on_closed_pipe() -> Iterator[None]:
    """Stop quietly when the reader of the output went away (``... | head``): the rest is
    thrown away, as other command-line tools do, rather than printed as an error."""
    import os
    import sys

    try:
        yield
    except BrokenPipeError:
        # the interpreter flushes stdout again on exit: point it at nothing, so it cannot fail
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        raise click.exceptions.Exit(0) from None


@contextmanager
def _stream_store(ctx: click.Context) -> Iterator[tuple[FeatureStore, Any]]:
    """The repo's store and a client of its stream server; a Redis error becomes one line
    naming the server (as ``featurestore ingest`` says it)."""

    from featurestore.errors import FeatureStoreError
    from featurestore.online.stream.streams import redis_client, stream_errors
    from featurestore.store import FeatureStore

    store = FeatureStore((ctx.obj or {}).get("repo", "."))
    try:
        client = redis_client(store, timeout=30.0)
        try:
            yield store, client
        finally:
            client.close()
    except stream_errors() as exc:
        url = store.config.stream.redis_url(store.config.online_store)
        raise FeatureStoreError(f"stream server {url}: {exc}") from exc
    finally:
        store.close()


def _sources(store: FeatureStore, source: str | None) -> list[str]:
    """``source`` alone (checked by the calls that take it), or every stream source."""
    from featurestore.errors import FeatureStoreError
    from featurestore.online.stream import stream_sources

    if source is not None:
        return [source]
    names = sorted(stream_sources(store))
    if not names:
        raise FeatureStoreError("no applied feature view reads a StreamSource; nothing to do")
    return names


def _event_text(letter: DeadLetter, shown: int = _SHOWN) -> str:
    """The original event in one line: a ``data`` entry's JSON as is, flat fields as k=v."""
    f = letter.fields
    if f is None:
        text = "(the original fields cannot be read)"
    elif set(f) == {"data"}:
        text = f"data={f['data']}"
    else:
        text = " ".join(f"{k}={v}" for k, v in f.items())
    text = text.replace("\n", "\\n")
    return text if len(text) <= shown else text[: shown - 3] + "..."
