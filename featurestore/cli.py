"""The ``featurestore`` command line: init, plan, apply, materialize, training-set, get, quickstart.

Serving, models, keys, ingest and score live in the ``_cli_*`` modules beside this one.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import click

from featurestore._cli_compact import compact
from featurestore._cli_dead_letters import dead_letters
from featurestore._cli_ingest import ingest
from featurestore._cli_keys import keys
from featurestore._cli_purge import purge_expired
from featurestore._cli_score import score
from featurestore._cli_serve import register_commands
from featurestore.errors import EntityDataError, FeatureStoreError


class _Group(click.Group):
    """Turns errors into one line on stderr (a traceback only with --debug)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except FeatureStoreError as exc:
            _fail(ctx, exc)
        except BrokenPipeError:  # the reader went away (`... | head`): nothing to say to it
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no flush error
            sys.exit(141)  # as a shell reports a pipe's writer killed by SIGPIPE
        except (ValueError, OSError) as exc:
            _fail(ctx, exc, prefix=f"{type(exc).__name__}: ")
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except Exception as exc:  # a bug or an unforeseen input: still one line, --debug shows it
            _fail(ctx, exc, prefix=f"{type(exc).__name__}: ", hint=" (--debug shows where)")


def _fail(ctx: click.Context, exc: BaseException, prefix: str = "", hint: str = "") -> None:
    if ctx.obj and ctx.obj.get("debug"):
        raise exc
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    click.echo(f"error: {prefix}{msg}{hint}", err=True)
    sys.exit(1)


@click.group(cls=_Group)
@click.option(
    "--repo",
    "-r",
    default=".",
    show_default=True,
    help="Feature repo folder.",
    type=click.Path(file_okay=False),
)
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.version_option(package_name="featurestore")
@click.pass_context
def cli(ctx: click.Context, repo: str, debug: bool) -> None:
    """Feature store: define features once, build training sets, serve them online."""
    ctx.obj = {"repo": repo, "debug": debug}


def _store(ctx: click.Context) -> Any:
    from featurestore.store import FeatureStore

    return FeatureStore(ctx.obj["repo"])


@cli.command()
@click.argument("name")
@click.option(
    "--online-store",
    type=click.Choice(["embedded", "redis", "redis_cluster"]),
    default="embedded",
    show_default=True,
)
@click.option(
    "--force",
    is_flag=True,
    help="Write over a folder that already holds a repo's files (featurestore.yaml, "
    "definitions.py, data/*.parquet) or registries; without it such a folder is refused.",
)
def init(name: str, online_store: str, force: bool) -> None:
    """Create a new feature repo NAME with a config, definitions and a sample dataset."""
    from featurestore._scaffold import scaffold

    path = scaffold(Path(name), online_store=online_store, force=force)
    click.echo(f"Created feature repo in {path}")
    where = shlex.quote(name if name.strip() else str(path))  # ("" is this folder)
    click.echo(
        f"Next: cd {where} && featurestore apply && featurestore materialize-incremental now"
    )


@cli.command()
@click.pass_context
def plan(ctx: click.Context) -> None:
    """Show what apply would change (breaking schema changes are flagged)."""
    store = _store(ctx)
    p = store.plan()
    click.echo(str(p))
    _warn_models_without_service(store, p, p.feature_services)


@cli.command()
@click.pass_context
def apply(ctx: click.Context) -> None:
    """Validate the definitions and write them to the registry as a new version; delete the
    online rows of removed feature views (what the online store refuses, the next apply retries)."""
    store = _store(ctx)
    cleanups: list[Any] = []
    p = store.apply(report=cleanups.append)
    click.echo(str(p))
    for c in cleanups:
        click.echo(f"warning: {c}" if c.pending else str(c), err=c.pending)
    _warn_models_without_service(store, p, store.registry.feature_services)
    click.echo(f"Registry at version {store.registry.version}.")


def _warn_models_without_service(store: Any, plan: Any, services: Any) -> None:
    """A warning line per model version that reads a feature service ``plan`` removes, or a
    feature ``plan`` takes from its service (it answers 503 until the service is back or the
    model is registered again); ``services``: the feature services by name, as applied."""
    if not plan.narrows_services:
        return  # nothing taken away: no model can lose its inputs (and no model code to import)
    from featurestore.online.models.repo import models_reading_missing_services

    for line in models_reading_missing_services(store, services):
        click.echo(f"warning: {line}", err=True)


@cli.command("list")
@click.pass_context
def list_(ctx: click.Context) -> None:
    """List the applied entities, feature views and feature services."""
    store = _store(ctx)
    for e in store.list_entities():
        click.echo(f"entity          {e.name}  join_keys={list(e.join_keys)}")
    for v in store.list_feature_views():
        ttl = v.to_dict()["ttl"]
        click.echo(f"feature view    {v.name}  {_features(len(v.schema))}  ttl={ttl}")
    for o in store.registry.on_demand_views.values():
        click.echo(f"on-demand view  {o.name}  {_features(len(o.feature_names))}")
    for s in store.list_feature_services():
        click.echo(f"feature service {s.name}  {_features(len(s.features))}")


def _features(n: int) -> str:
    return f"{n} feature" if n == 1 else f"{n} features"


def _when(value: str) -> Any:
    from datetime import datetime, timezone

    if value == "now":
        return datetime.now(timezone.utc)
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an ISO 8601 time or 'now'") from None


# a newer online row (a push) is kept by default: codec.row_replaces, checked by the store
_OVERWRITE = click.option(
    "--overwrite",
    is_flag=True,
    help="Write the offline rows even over newer online rows (after correcting offline data).",
)


@cli.command()
@click.argument("start")
@click.argument("end")
@click.option("--views", help="Comma-separated feature views (default: all online views).")
@_OVERWRITE
@click.pass_context
def materialize(
    ctx: click.Context, start: str, end: str, views: str | None, overwrite: bool
) -> None:
    """Write the latest values with START <= event time <= END into the online store.

    An online row newer than the offline one (a push, say) is kept unless --overwrite.
    """
    store = _store(ctx)
    t0 = time.perf_counter()
    res = store.materialize(
        _when(start), _when(end), views=_views(views), progress=True, overwrite=overwrite
    )
    _report_materialize(res, time.perf_counter() - t0)


ALL_SKIPPED = 3  # materialize-incremental's exit status when every view was skipped


@cli.command("materialize-incremental")
@click.argument("end")
@click.option("--views", help="Comma-separated feature views (default: all online views).")
@_OVERWRITE
@click.pass_context
def materialize_incremental(
    ctx: click.Context, end: str, views: str | None, overwrite: bool
) -> None:
    """Materialize each view from its watermark up to END ('now' for the current time).

    An online row newer than the offline one (a push, say) is kept unless --overwrite.

    Without --views, a view whose stream's lock is held (an ingest reads the stream, or another
    materialize writes the view) is skipped with a line saying so, and the others are written.
    Exit status: 0 when any view was materialized (or was already up to date), 3 when every
    view was skipped, 1 on an error (such as a view listed in --views whose stream is being
    ingested: listed views are never skipped).
    """
    store = _store(ctx)
    t0 = time.perf_counter()
    names = _views(views)
    res = store.materialize_incremental(
        _when(end), views=names, progress=True, skip_busy=not names, overwrite=overwrite
    )
    _report_materialize(res, time.perf_counter() - t0)
    if res.skipped and not res.rows:
        click.echo("error: every view was skipped: nothing materialized", err=True)
        sys.exit(ALL_SKIPPED)


def _report_materialize(res: Any, seconds: float) -> None:
    if res.asked_end_us is not None:
        from featurestore._time import to_utc

        click.echo(
            f"end {to_utc(res.asked_end_us).isoformat()} is in the future: materialized up to "
            f"now, {to_utc(res.end_us).isoformat()}"
        )
    for view, n in res.rows.items():
        click.echo(f"{view}: {n:,} rows")
    for view, why in res.skipped.items():
        click.echo(f"{view}: skipped, {why}")
    rate = res.total_rows / seconds if seconds > 0 else 0.0
    click.echo(f"materialized {res.total_rows:,} rows in {seconds:.2f} s ({rate:,.0f} rows/s)")


@cli.command("training-set")
@click.option(
    "--spine",
    required=True,
    type=click.Path(exists=True),
    help="Parquet file (or folder) of entity rows.",
)
@click.option("--features", help="Comma-separated view:feature references.")
@click.option("--feature-service", help="A feature service name instead of --features.")
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False),
    help="Parquet file to write (.parquet or .pq).",
)
@click.option("--timestamp-column", default="event_timestamp", show_default=True)
@click.option("--full-feature-names", is_flag=True, help="Name columns view__feature.")
@click.option("--as-known", is_flag=True, help="Only rows created at or before each spine time.")
@click.option(
    "--chunk-rows",
    type=click.IntRange(min=1),
    default=1_000_000,
    show_default=True,
    help="Spine rows joined and written at a time (bounds memory).",
)
@click.pass_context
def training_set(
    ctx: click.Context,
    spine: str,
    features: str | None,
    feature_service: str | None,
    out: str,
    timestamp_column: str,
    full_feature_names: bool,
    as_known: bool,
    chunk_rows: int,
) -> None:
    """Build a point-in-time correct training set from a spine and write it to Parquet.

    The spine is joined --chunk-rows rows at a time, each chunk appended to the file, so
    memory holds one chunk, not the whole training set; the rows come out as one join gives.
    """
    if bool(features) == bool(feature_service):
        raise click.UsageError("give exactly one of --features or --feature-service")
    from featurestore._atomic import check_parquet_out

    check_parquet_out(out)
    store = _store(ctx)
    t0 = time.perf_counter()
    tmp = _reserve_out(Path(out))  # before the join: a path that cannot be written fails now
    try:
        from featurestore.offline.chunked import write_training_set

        res = write_training_set(
            store,
            spine,
            _split(features) or feature_service,
            tmp,
            chunk_rows=chunk_rows,
            full_feature_names=full_feature_names,
            as_known=as_known,
            timestamp_column=timestamp_column,
            progress=True,
        )
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dt = time.perf_counter() - t0
    click.echo(
        f"wrote {res.rows:,} rows x {res.columns} columns to {out} in {dt:.2f} s "
        f"({res.rows / dt:,.0f} rows/s)"
    )


def _reserve_out(out: Path) -> Path:
    """Create ``out``'s folder and an empty hidden temporary file beside ``out``, which the
    training set is written to and then renamed over ``out``: a reader never sees half a
    file, and a path that cannot be written fails before the join, not after it."""
    import uuid

    from featurestore._atomic import file_above

    blocker = file_above(out)
    if blocker is not None:
        raise FeatureStoreError(
            f"--out '{out}' lies below '{blocker}', which is a file; give a path in a folder"
        )
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except OSError as exc:
        raise FeatureStoreError(
            f"--out '{out}' cannot be written ({exc.strerror or exc}: '{exc.filename}'); give "
            "a path in a folder you can write"
        ) from None
    return tmp


@cli.command()
@click.option("--features", help="Comma-separated view:feature references.")
@click.option("--feature-service", help="A feature service name instead of --features.")
@click.option(
    "--entity",
    "entities",
    multiple=True,
    required=True,
    help="key=value; key=v1,v2 or a repeated key for more entities (\\, for a comma in a value).",
)
@click.option(
    "--request",
    "request",
    multiple=True,
    help="field=value request data for on-demand features (v1,v2 or a repeated field for more "
    "entities).",
)
@click.option("--full-feature-names", is_flag=True)
@click.pass_context
def get(
    ctx: click.Context,
    features: str | None,
    feature_service: str | None,
    entities: tuple[str, ...],
    request: tuple[str, ...],
    full_feature_names: bool,
) -> None:
    """Print an online lookup as JSON, with per-value status and event timestamps."""
    import orjson

    from featurestore._jsonable import json_default

    if bool(features) == bool(feature_service):
        raise click.UsageError("give exactly one of --features or --feature-service")
    store = _store(ctx)
    kinds = store.registry.join_key_kinds  # a key of strings keeps "42" a string
    columns: dict[str, list[Any]] = {}
    for item in entities:
        if "=" not in item:
            raise click.BadParameter(f"--entity {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        parse = str if kinds.get(key) == "str" else _scalar
        columns.setdefault(key, []).extend(parse(v) for v in _values(raw))  # repeats add up
        for v in columns[key]:
            if isinstance(v, int) and not -(2**63) <= v < 2**63:
                raise EntityDataError(
                    f"--entity {key}={v}: outside the 64-bit range of integer join keys"
                )
    request_data: dict[str, list[Any]] = {}
    for item in request:
        if "=" not in item:
            raise click.BadParameter(f"--request {item!r}: expected field=value")
        key, raw = item.split("=", 1)
        request_data.setdefault(key, []).extend(_number(v) for v in _values(raw))
    t0 = time.perf_counter()
    resp = store.get_online_features(
        _split(features) or feature_service,
        columns,
        full_feature_names=full_feature_names,
        include_event_timestamps=True,
        request_data=request_data or None,
    )
    ms = (time.perf_counter() - t0) * 1e3
    out = {
        "features": resp.to_dict(),
        "status": {k: [s.name for s in v] for k, v in resp.statuses.items()},
        "latency_ms": round(ms, 3),
    }
    click.echo(
        orjson.dumps(
            out, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY, default=json_default
        ).decode()
    )


def _values(raw: str) -> list[str]:
    """The comma-separated values of one option (``\\,`` is a comma inside a value)."""
    return [v.replace("\\,", ",") for v in re.split(r"(?<!\\),", raw)]


def _scalar(v: str) -> Any:
    try:
        return int(v)
    except ValueError:
        return v


def _number(v: str) -> Any:
    try:
        return int(v)
    except ValueError:
        try:
            return float(v)
        except ValueError:
            return v


def _split(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def _views(value: str | None) -> list[str] | None:
    """``--views`` as names; given but naming none (``--views ,``) is an error, not "all"."""
    names = _split(value)
    if value is not None and not names:
        raise click.BadParameter(f"{value!r} names no feature view", param_hint="'--views'")
    return names


@cli.command()
@click.option(
    "--dir",
    "directory",
    default="fraud_repo",
    show_default=True,
    help="Where to create the demo repo.",
)
@click.option(
    "--transactions",
    default=1_000_000,
    show_default=True,
    help="Transactions to generate (200 or more).",
)
@click.option("--seed", default=7, show_default=True)
@click.option(
    "--force",
    is_flag=True,
    help="Run in a folder that already holds a repo: write over its featurestore.yaml (with "
    "the demo's own, so the registry and online store it named are left alone), "
    "definitions.py, data/*.parquet and data/registry.json, then run the demo in the "
    "folder's embedded store as in a new folder. Without it such a folder is refused, "
    "unless it is the quickstart's own demo, untouched.",
)
def quickstart(directory: str, transactions: int, seed: int, force: bool) -> None:
    """Generate a fraud-style repo, apply, build a training set, materialize and look up online."""
    from featurestore.quickstart import run_quickstart

    run_quickstart(
        Path(directory), n_transactions=transactions, seed=seed, echo=click.echo, force=force
    )


register_commands(cli)
cli.add_command(keys)
cli.add_command(ingest)
cli.add_command(score)
cli.add_command(purge_expired)
cli.add_command(compact)
cli.add_command(dead_letters)


def main() -> None:
    """Console entry point."""
    cli(prog_name="featurestore")


if __name__ == "__main__":
    main()
