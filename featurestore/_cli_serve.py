"""CLI commands for serving: ``serve`` and ``models register|list|promote|unset``; the demo
model."""

from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    import polars as pl

    from featurestore.store import FeatureStore


def _store(ctx: click.Context) -> FeatureStore:
    from featurestore.store import FeatureStore

    return FeatureStore((ctx.obj or {}).get("repo", "."))


def register_commands(cli: click.Group) -> None:
    """Add ``serve`` and the ``models`` group to the main CLI."""
    cli.add_command(serve)
    cli.add_command(models)


@click.command()
@click.option("--host", help="Interface to listen on (default: serving.host).")
@click.option(
    "--port", type=click.IntRange(0, 65535), help="REST port (default: serving.rest_port)."
)
@click.option(
    "--grpc-port",
    type=click.IntRange(0, 65535),
    help="gRPC port, 0 for none (default: serving.grpc_port).",
)
@click.option(
    "--workers", type=click.IntRange(min=1), help="Worker processes (default: serving.workers)."
)
@click.option(
    "--log-level",
    callback=lambda ctx, param, value: _log_level(value),
    help="uvicorn log level (default: serving.log_level).",
)
@click.pass_context
def serve(
    ctx: click.Context,
    host: str | None,
    port: int | None,
    grpc_port: int | None,
    workers: int | None,
    log_level: str | None,
) -> None:
    """Run the REST and gRPC servers of this repo (settings from featurestore.yaml 'serving:')."""
    from featurestore.config import load_config
    from featurestore.online.serving.auth import check_keys_file
    from featurestore.online.serving.config import serving_config
    from featurestore.online.serving.drain import finish_s
    from featurestore.online.serving.parent_watch import SUPERVISOR_ENV
    from featurestore.online.serving.tls import uvicorn_options

    repo = (ctx.obj or {}).get("repo", ".")
    repo_config = load_config(repo)
    cfg = serving_config(repo_config)
    # checked here, before any port is opened: a worker that fails its start is restarted
    tls = uvicorn_options(cfg.tls, repo_config.resolve)
    check_keys_file(cfg.auth, repo_config.resolve)
    host = host or cfg.host
    port = cfg.rest_port if port is None else port
    grpc_port = cfg.grpc_port if grpc_port is None else grpc_port
    workers = workers or cfg.workers
    if port and port == grpc_port:
        raise click.ClickException(
            f"--port and --grpc-port (or serving.rest_port and serving.grpc_port) are both "
            f"{port}; give the REST and gRPC servers different ports"
        )
    os.environ["FEATURESTORE_REPO"] = str(Path(repo).resolve())
    os.environ["FEATURESTORE_GRPC_PORT"] = str(grpc_port)
    os.environ["FEATURESTORE_GRPC_HOST"] = host
    for what, p in (("REST", port), ("gRPC", grpc_port)):
        if p:  # in one line here, rather than a traceback from inside a starting worker
            _check_bindable(host, p, what)
    # port 0: the OS picks one now, held (bound, not listening) until the server has it
    held = _reserve_port(host) if port == 0 else None
    if held is not None:
        port = held.getsockname()[1]
    where = f"[{host}]" if ":" in host else host  # an IPv6 literal in brackets, as in a URL
    grpc_note = f", gRPC{' (TLS)' if tls else ''} on {where}:{grpc_port}" if grpc_port else ""
    scheme = "https" if tls else "http"
    shown = Path(repo).resolve()
    click.echo(
        f"serving {shown}: REST on {scheme}://{where}:{port}{grpc_note}, {workers} worker(s)"
    )
    # every worker process builds its own engine and gRPC server (SO_REUSEPORT shares the port);
    # several workers keep their metrics in one folder so any worker's /metrics shows them all
    metrics_dir = None
    user_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if user_dir:  # the previous run's files would be merged into this run's counts
        removed = wipe_metrics_dir(Path(user_dir))
        if removed:
            click.echo(f"removed {removed} metrics file(s) of a previous run from {user_dir}")
    elif workers > 1:
        metrics_dir = tempfile.mkdtemp(prefix="featurestore-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    # several workers end with this process, even when it is killed (see parent_watch)
    if workers > 1:
        os.environ[SUPERVISOR_ENV] = str(os.getpid())
    else:
        os.environ.pop(SUPERVISOR_ENV, None)
    try:
        finish = finish_s(cfg.shutdown_grace_s)
        _run_uvicorn(host, port, workers, log_level or cfg.log_level, tls, finish)
    finally:
        if held is not None:
            held.close()
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


# the files prometheus_client writes in multiprocess mode, ``<type>_<process id>.db`` (a gauge's
# type also names its multiprocess mode): the only ones removed from a folder the user set
_METRICS_FILE = re.compile(
    r"(?:counter|histogram|summary|gauge_(?:live)?(?:all|min|max|sum|mostrecent))_.+\.db"
)


def wipe_metrics_dir(folder: Path) -> int:
    """Remove prometheus_client's ``*.db`` files of an earlier run from the multiprocess folder
    (made if missing), as it asks between runs, leaving any other file there; returns how many
    went."""
    folder.mkdir(parents=True, exist_ok=True)
    removed = 0
    for path in folder.glob("*.db"):
        if _METRICS_FILE.fullmatch(path.name) and path.is_file():
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def _reserve_port(host: str) -> socket.socket:
    """A socket bound to a free port of ``host`` with SO_REUSEADDR and not listening: the
    server binds the same port beside it, and nothing else can take the port meanwhile."""
    from featurestore.online.serving._bind import bound_socket

    try:
        return bound_socket(host, 0)
    except socket.gaierror as exc:
        raise click.ClickException(f"cannot serve on host {host!r}: {exc.strerror}") from None


def _check_bindable(host: str, port: int, what: str) -> None:
    """A ClickException naming the host or the port when ``host:port`` cannot be listened on."""
    from featurestore.online.serving._bind import bound_socket

    try:
        bound_socket(host, port).close()
    except socket.gaierror as exc:
        raise click.ClickException(f"cannot serve on host {host!r}: {exc.strerror}") from None
    except OSError as exc:
        raise click.ClickException(
            f"{what} port {port} on {host} cannot be used: {exc.strerror}; pick another "
            f"with --{'grpc-' if what == 'gRPC' else ''}port or in featurestore.yaml"
        ) from None


def _log_level(value: str | None) -> str | None:
    """``--log-level``, checked here (the serving package is imported only to serve)."""
    if value is None:
        return None
    from featurestore.online.serving.config import LOG_LEVELS

    if value not in LOG_LEVELS:
        raise click.BadParameter(f"{value!r} is not one of {', '.join(LOG_LEVELS)}")
    return value


def _run_uvicorn(
    host: str, port: int, workers: int, log_level: str, tls: dict[str, Any], finish: float
) -> None:
    """Serve with uvicorn; once it stops listening, requests in flight get ``finish`` seconds
    to end (after a SIGTERM's first steps: see drain.Drain)."""
    import uvicorn

    uvicorn.run(
        "featurestore.online.serving.rest:app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        loop="auto",  # uvloop when installed (a dependency off Windows), else asyncio
        http="httptools",
        log_level=log_level,
        access_log=False,
        timeout_graceful_shutdown=finish,  # type: ignore[arg-type]  # seconds; a float is fine
        **tls,
    )


@click.group()
def models() -> None:
    """Register models, list them and move aliases (production, shadow, canary)."""


@models.command("register")
@click.argument("name")
@click.option(
    "--flavor",
    required=True,
    type=click.Choice(["lightgbm", "sklearn", "xgboost", "onnx", "python"]),
)
@click.option(
    "--path",
    "artifact",
    required=True,
    help="Model file (python: a .py file or a module name exposing predict).",
)
@click.option("--features", "service", required=True, help="The feature service it reads.")
@click.option("--description", default="")
@click.option(
    "--alias",
    type=click.Choice(["production", "shadow"]),
    help="Also point this alias at the new version.",
)
@click.pass_context
def register(
    ctx: click.Context,
    name: str,
    flavor: str,
    artifact: str,
    service: str,
    description: str,
    alias: str | None,
) -> None:
    """Add ARTIFACT as the next version of model NAME (checked against the feature service)."""
    from featurestore.online.models.repo import promote_model, register_model

    store = _store(ctx)
    mv = register_model(
        store,
        name,
        flavor=flavor,
        artifact=artifact,
        service=service,
        description=description,
    )
    click.echo(
        f"registered {name} v{mv.version} ({flavor}, {len(mv.feature_names)} features "
        f"from '{service}')"
    )
    if alias:
        # register loaded and checked the artifact just now: the alias does not load it again
        _warn(promote_model(store, name, mv.version, alias, registered=mv))
        click.echo(f"{name}@{alias} -> v{mv.version}")


def _warn(lines: list[str]) -> None:
    for line in lines:
        click.echo(f"warning: {line}", err=True)


@models.command("list")
@click.pass_context
def list_models(ctx: click.Context) -> None:
    """Every model with its versions and aliases."""
    from featurestore.online.models.errors import ModelRegistryError
    from featurestore.online.models.repo import model_registry

    reg = model_registry(_store(ctx))
    names = reg.names()
    if not names:
        click.echo("no models registered; add one with `featurestore models register`")
    for name in names:
        try:
            entry = reg.get(name)
        except ModelRegistryError as exc:  # one corrupt index: the others are still listed
            click.echo(f"{name}: error: {exc}")
            continue
        aliases = (
            ", ".join(
                f"{k}=v{a.version}" + (f" ({a.share:.0%})" if a.share is not None else "")
                for k, a in sorted(entry.aliases.items())
            )
            or "no aliases"
        )
        click.echo(f"{name}: {aliases}")
        for v in entry.versions.values():
            click.echo(
                f"  v{v.version}  {v.flavor:8s} {v.feature_service}  "
                f"{len(v.feature_names)} features  {v.created_at}  {v.description}"
            )


@models.command("promote")
@click.argument("name")
@click.argument("version")
@click.option(
    "--alias",
    default="production",
    show_default=True,
    type=click.Choice(["production", "shadow", "canary"]),
)
@click.option("--share", type=float, help="Canary traffic share, e.g. 0.1.")
@click.pass_context
def promote(ctx: click.Context, name: str, version: str, alias: str, share: float | None) -> None:
    """Point ALIAS of model NAME at VERSION; running servers load, warm, then swap to it.

    A shadow must read only features its production (and canary) read: it is scored on them.
    """
    from featurestore.online.models.repo import promote_model

    try:
        v = int(version.lstrip("v"))
    except ValueError:
        raise click.BadParameter(f"VERSION {version!r} must be a number such as 2 or v2") from None
    _warn(promote_model(_store(ctx), name, v, alias, share=share))
    click.echo(f"{name}@{alias} -> v{v}" + (f" ({share:.0%} of traffic)" if share else ""))


@models.command("unset")
@click.argument("name")
@click.option(
    "--alias",
    required=True,
    type=click.Choice(["shadow", "canary", "production"]),
    help="The alias to remove (production cannot be: promote another version instead).",
)
@click.pass_context
def unset(ctx: click.Context, name: str, alias: str) -> None:
    """Remove the shadow or canary ALIAS of model NAME; running servers stop using it."""
    from featurestore.online.models.repo import model_registry

    was = model_registry(_store(ctx)).remove_alias(name, alias)
    if was is None:
        click.echo(f"{name} has no {alias} alias; nothing to remove")
    else:
        click.echo(f"{name}@{alias} removed (was v{was})")


_MAX_TRAIN_ROWS = 250_000


def train_demo_model(
    store: FeatureStore,
    training_set: pl.DataFrame,
    label: str,
    service: str,
    echo: Callable[[str], Any] = print,
) -> dict[str, Any]:
    """Train a 100-tree LightGBM on the training set, register it as 'fraud' (production) and
    time in-process predicts; returns the figures."""
    import lightgbm as lgb
    import numpy as np

    from featurestore.online.models.repo import register_model, service_feature_names
    from featurestore.online.serving._requests import request_fields
    from featurestore.online.serving.engine import Engine

    names = service_feature_names(store, service)
    # the set is in spine (time) order; the most recent rows are plenty for a demo model
    df = (
        training_set.tail(_MAX_TRAIN_ROWS)
        if training_set.height > _MAX_TRAIN_ROWS
        else training_set
    )
    x = df.select(names).cast({n: float for n in names}).to_numpy().astype(np.float64)
    y = df[label].to_numpy().astype(np.float64)
    n_train = int(len(y) * 0.8)  # the set is in spine (time) order: test on the last 20 %
    t0 = time.perf_counter()
    params = {
        "objective": "binary",
        "learning_rate": 0.05,
        "num_leaves": 31,
        "verbose": -1,
        "num_threads": 1,  # OpenMP teams on a busy 2-core box: 2 threads ran 7x slower
        "max_bin": 63,
        "force_col_wise": True,
        "seed": 7,
    }
    booster = lgb.train(params, lgb.Dataset(x[:n_train], y[:n_train], feature_name=names), 100)
    train_s = time.perf_counter() - t0
    auc = _auc(y[n_train:], booster.predict(x[n_train:], num_threads=1))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fraud.txt"
        booster.save_model(str(path))
        mv = register_model(
            store,
            "fraud",
            flavor="lightgbm",
            artifact=path,
            service=service,
            description="quickstart demo model",
            alias="production",
        )
    echo(
        f"    trained 100 trees on {n_train:,} rows in {train_s:.1f} s; test AUC {auc:.3f}; "
        f"registered fraud v{mv.version} as production"
    )
    requests = store.resolve_features(service)
    keys = sorted({k for v, _ in requests for k in v.join_keys})
    fields = sorted(request_fields(requests))  # on-demand inputs: spine columns offline
    rows = df.select(keys + fields).sample(min(200, df.height), seed=7).to_dicts()

    def call(batch: list[dict[str, Any]], explain: bool = False) -> Any:
        return engine.predict(
            "fraud",
            entities={k: [r[k] for r in batch] for k in keys},
            request_data={f: [r[f] for r in batch] for f in fields} or None,
            explain=explain,
        )

    engine = Engine(store)
    try:
        engine.start(poll=False)
        call(rows[:1])
        lat = []
        for i in range(1000):
            t = time.perf_counter()
            call([rows[i % len(rows)]])
            lat.append(time.perf_counter() - t)
        res = call(rows[:3], explain=True)
    finally:
        engine.close()
    p50, p99 = np.percentile(np.array(lat) * 1e6, [50, 99])
    for row, score in zip(rows[:3], res.scores, strict=True):
        echo(f"    predict fraud {row} -> {score:.4f}")
    echo(f"    why {res.scores[0]:.4f} (explain=True): {_top_contributions(res.explanation)}")
    echo(
        f"    in-process predict (lookup + {len(names)} features + model): p50 {p50:.0f} us, "
        f"p99 {p99:.0f} us"
    )
    return {
        "model_version": mv.version,
        "test_auc": auc,
        "test_rows": len(y) - n_train,
        "predict_p50_us": float(p50),
        "predict_p99_us": float(p99),
    }


def _top_contributions(ex: Any, n: int = 3) -> str:
    """The ``n`` largest feature contributions of the first explained row, as text."""
    import numpy as np

    row = ex.contributions[0]
    top = np.argsort(-np.abs(row))[:n]
    parts = ", ".join(f"{ex.feature_names[j]} {row[j]:+.2f}" for j in top)
    return f"{parts} (log-odds, from a base of {ex.base_values[0]:+.2f})"


def _auc(y: Any, score: Any) -> float:
    """ROC AUC by the rank-sum formula (no sklearn needed)."""
    import numpy as np

    pos = y > 0.5
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score))
    ranks[order] = np.arange(1, len(score) + 1)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
