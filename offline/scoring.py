"""Batch scoring: a spine -> point-in-time features -> registered model(s) -> a score per row.

"What would the model have said for these entities at these times": nightly scoring jobs,
backtests of a new version against production, and the proof that serving has no skew. The
features are the training set's (``get_historical_features``: same join, defaults, TTL,
windows and on-demand features) and the input row is built as online predict builds it
(float64, null -> NaN, the model's input order), so a batch score at T equals the online
score after materializing up to T. The spine is joined and scored in chunks of
``chunk_rows``, which bounds memory; a file is written beside ``out`` and renamed at the end.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from featurestore._progress import progress_bar
from featurestore.errors import EntityDataError, FeatureStoreError
from featurestore.types import NUMERIC_TYPES

if TYPE_CHECKING:
    import polars as pl
    import pyarrow as pa

    from featurestore.online.models import Explanation, LoadedModel, ModelVersion
    from featurestore.store import FeatureStore

METADATA_KEY = b"featurestore.batch_score"
_EXPLAIN_BLOCK = 2048  # rows per thread at least, when explaining on several cores


class BatchScoreError(FeatureStoreError):
    """A batch-scoring request that cannot run as given (names the argument or column)."""


@dataclass
class BatchScores:
    """What a batch score produced: rows, per-model score columns, and the frame or file."""

    rows: int
    unscored: int
    models: list[ModelVersion]
    columns: list[str]
    seconds: float
    path: Path | None = None
    frame: pl.DataFrame | None = field(default=None, repr=False)


@dataclass(frozen=True)
class _Scorer:
    """One model to score with: its loaded predictor, its inputs and its output column."""

    model: LoadedModel
    service: str
    inputs: tuple[str, ...]  # bare names, the model's input order
    joined: tuple[str, ...]  # the same features' training-set columns (``view__feature``)
    column: str

    def explained(self, several: bool) -> tuple[list[str], str]:
        """The contribution columns (one per input) and the base-value column of ``explain``."""
        tag = f"{self.model.version.name}_v{self.model.version.version}_" if several else ""
        base = f"base_value_{tag[:-1]}" if several else "base_value"
        return [f"contrib_{tag}{name}" for name in self.inputs], base


@dataclass(frozen=True)
class _Job:
    """What every chunk is asked for."""

    scorers: list[_Scorer]
    timestamp_column: str
    as_known: bool
    features: list[str]  # input features to return (include_features)
    explain: bool


def batch_score(
    store: FeatureStore,
    model: str | Sequence[str],
    entity_df: Any,
    *,
    timestamp_column: str = "event_timestamp",
    as_known: bool = False,
    include_features: bool = False,
    explain: bool = False,
    out: str | os.PathLike[str] | None = None,
    chunk_rows: int = 1_000_000,
    progress: bool = False,
) -> BatchScores:
    """Score every spine row with each model at the row's time; see the module docstring."""
    from featurestore.offline.spine import to_arrow_table

    t0 = time.perf_counter()
    if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1:
        raise BatchScoreError(f"chunk_rows must be a whole number >= 1; got {chunk_rows!r}")
    out_path = _out_path(out)
    scorers = _scorers(store, [model] if isinstance(model, str) else list(model))
    if explain:
        for s in scorers:  # refused before any work
            s.model.require_explainable()
    spine = to_arrow_table(entity_df)
    _check_spine(store, scorers, spine, timestamp_column)
    _check_joined_names(store, scorers, spine.column_names)
    job = _Job(
        scorers,
        timestamp_column,
        as_known,
        _feature_columns(scorers) if include_features else [],
        explain,
    )
    _check_collisions(spine.column_names, job)
    meta = _metadata(job, spine.num_rows)
    sink = _Sink(out_path, meta)
    unscored = 0
    try:
        with progress_bar(spine.num_rows, "batch score", enabled=progress) as bar:
            for start in range(0, max(spine.num_rows, 1), chunk_rows):
                chunk = spine.slice(start, chunk_rows)
                table, missed = _score_chunk(store, job, chunk)
                unscored += missed
                sink.write(table)
                bar.update(chunk.num_rows)
        path, frame = sink.finish()
    except BaseException:
        sink.abort()
        raise
    return BatchScores(
        rows=spine.num_rows,
        unscored=unscored,
        models=[s.model.version for s in scorers],
        columns=[s.column for s in scorers],
        seconds=time.perf_counter() - t0,
        path=path,
        frame=frame,
    )


def _out_path(out: str | os.PathLike[str] | None) -> Path | None:
    """``out`` as a path, refused before any work when no file can be written there: a
    folder, or a path below a file."""
    if out is None:
        return None
    path = Path(out)
    if path.is_dir():
        raise BatchScoreError(
            f"out '{out}' is a directory; give the path of a Parquet file to write"
        )
    from featurestore._atomic import file_above

    blocker = file_above(path)
    if blocker is not None:
        raise BatchScoreError(
            f"out '{out}' lies below '{blocker}', which is a file; give a path in a folder"
        )
    return path


def _scorers(store: FeatureStore, refs: list[str]) -> list[_Scorer]:
    """Resolve and load each model reference; check its inputs against its feature service."""
    from featurestore.online.models import LoadedModel, load_predictor
    from featurestore.online.models.repo import model_registry

    if not refs:
        raise BatchScoreError("give at least one model to score with")
    registry = model_registry(store)
    versions = []
    for ref in refs:
        if not isinstance(ref, str) or not ref:
            raise BatchScoreError(f"a model is NAME, NAME@ALIAS or NAME@VERSION; got {ref!r}")
        mv = registry.resolve(ref)
        if any((v.name, v.version) == (mv.name, mv.version) for v in versions):
            raise BatchScoreError(
                f"model '{ref}' is version {mv.version} of '{mv.name}', which is already "
                "being scored; give each model version once"
            )
        versions.append(mv)
    scorers = []
    for mv in versions:
        joined = _joined_inputs(store, mv)
        predictor = load_predictor(mv.flavor, registry.artifact_path(mv))
        column = "score" if len(versions) == 1 else f"score_{mv.name}_v{mv.version}"
        loaded = LoadedModel(mv, predictor)
        scorers.append(_Scorer(loaded, mv.feature_service, mv.feature_names, joined, column))
    return scorers


def _joined_inputs(store: FeatureStore, mv: ModelVersion) -> tuple[str, ...]:
    """The training-set column of each model input, found as online predict finds it: by bare
    name in the model's feature service (``input_features``), which must still serve every
    input, as numbers, and must not have two features of one bare name. Joined under full
    names, so a spine column may share a feature's bare name."""
    from featurestore.online.models import ModelRegistryError
    from featurestore.online.models.repo import input_features

    served = input_features(store, mv.feature_service, f"model '{mv.name}' v{mv.version}")
    for name in mv.feature_names:
        if name not in served:
            raise ModelRegistryError(
                f"model '{mv.name}' v{mv.version} needs feature '{name}', which its feature "
                f"service '{mv.feature_service}' no longer serves; re-register the model"
            )
        view, feat = served[name]
        dtype = view.field(feat).dtype.name
        if dtype not in NUMERIC_TYPES:
            raise ModelRegistryError(
                f"feature '{name}' of model '{mv.name}' v{mv.version} is {dtype} in "
                f"feature service '{mv.feature_service}'; the model needs numbers"
            )
    return tuple(f"{served[n][0].name}__{served[n][1]}" for n in mv.feature_names)


def _check_spine(
    store: FeatureStore, scorers: list[_Scorer], spine: pa.Table, timestamp_column: str
) -> None:
    """Refuse a spine without a join key or the timestamp column before any work starts."""
    from featurestore.offline.spine import normalize_spine

    keys = {
        view.name: view.join_keys
        for s in scorers
        for view, _ in store.resolve_features(s.service)
        if view.join_keys
    }
    normalize_spine(spine.slice(0, 0), timestamp_column=timestamp_column, required_keys=keys)


def _check_joined_names(
    store: FeatureStore, scorers: list[_Scorer], spine_columns: list[str]
) -> None:
    """Refuse a spine column named as a feature column of the join (``view__feature``, every
    feature of each model's service), which the join would overwrite; a training set built
    with full feature names is such a spine."""
    from featurestore.offline.pit import output_names

    taken = set(spine_columns)
    for service in dict.fromkeys(s.service for s in scorers):
        for view, feats, cols in output_names(list(store.resolve_features(service)), True):
            for feat, col in zip(feats, cols, strict=True):
                if col in taken:
                    raise EntityDataError(
                        f"entity dataframe has a column '{col}', the name batch scoring joins "
                        f"feature '{view.name}:{feat}' under (view__feature); rename or drop "
                        "that column"
                    )


def _feature_columns(scorers: list[_Scorer]) -> list[str]:
    """The input features to return (first model's order, then new names of the others)."""
    source: dict[str, str] = {}
    for s in scorers:
        for name, col in zip(s.inputs, s.joined, strict=True):
            if source.setdefault(name, col) != col:
                view, other = col.split("__", 1)[0], source[name].split("__", 1)[0]
                raise BatchScoreError(
                    f"feature '{name}' comes from view '{other}' for one model and from "
                    f"'{view}' for another; score them in separate runs to get their features"
                )
    return list(source)


def _check_collisions(spine: list[str], job: _Job) -> None:
    outputs = {name: "a model input feature" for name in job.features}
    several = len(job.scorers) > 1
    for s in job.scorers:
        outputs[s.column] = "a score column"
        if job.explain:
            contribs, base = s.explained(several)
            outputs.update((c, "an explanation column") for c in [*contribs, base])
    for name, what in outputs.items():
        if name in spine:
            raise EntityDataError(
                f"entity dataframe has a column '{name}', which is also {what} of the "
                "batch score's output; rename or drop that column"
            )


def _score_chunk(store: FeatureStore, job: _Job, chunk: pa.Table) -> tuple[pa.Table, int]:
    """Join one spine chunk once per feature service, score it, and add the output columns."""
    import pyarrow as pa

    frames: dict[str, pl.DataFrame] = {}
    features: dict[str, pa.ChunkedArray] = {}
    outputs: dict[str, np.ndarray] = {}
    unscored = 0
    for s in job.scorers:
        df = frames.get(s.service)
        if df is None:
            df = frames[s.service] = store.get_historical_features(
                chunk,
                s.service,
                full_feature_names=True,
                as_known=job.as_known,
                timestamp_column=job.timestamp_column,
            )
        for name, col in zip(s.inputs, s.joined, strict=True):
            if name in job.features and name not in features:
                features[name] = df.get_column(col).to_arrow()
        x = _input_matrix(df, s.joined)
        if len(x):
            outputs[s.column], missed = s.model.score(x, many=True)
            unscored += missed
        else:  # an empty spine: the columns, no call into the model
            outputs[s.column] = np.empty(0)
        if job.explain:
            contribs, base = s.explained(len(job.scorers) > 1)
            ex = _explain(s.model, x)
            outputs.update(zip(contribs, ex.contributions.T, strict=True))
            outputs[base] = ex.base_values
    columns = dict(zip(chunk.column_names, chunk.columns, strict=True))
    columns.update((name, features[name]) for name in job.features)
    # an unscored row (NaN) is a null score; so are its contributions
    columns.update((n, pa.array(v, pa.float64(), from_pandas=True)) for n, v in outputs.items())
    return pa.table(columns), unscored


def _explain(model: LoadedModel, x: np.ndarray) -> Explanation:
    """``model.explain(x)`` in row blocks on every core: the libraries explain on one thread
    and release the GIL, and each row's contributions do not depend on the others."""
    from concurrent.futures import ThreadPoolExecutor

    from featurestore.online.models import Explanation

    workers = min(os.cpu_count() or 1, max(1, len(x) // _EXPLAIN_BLOCK))
    if workers == 1:
        return model.explain(x)
    blocks = np.array_split(x, workers)
    with ThreadPoolExecutor(workers) as pool:
        parts = list(pool.map(model.explain, blocks))
    return Explanation(
        parts[0].feature_names,
        np.concatenate([p.contributions for p in parts]),
        np.concatenate([p.base_values for p in parts]),
        parts[0].output,
    )


def _input_matrix(df: pl.DataFrame, names: tuple[str, ...]) -> np.ndarray:
    """The model's input rows, as online predict builds them: float64, null -> NaN."""
    import polars as pl

    # one column per input, by position: a name given twice is two columns, not one
    cols = [pl.col(n).cast(pl.Float64).fill_null(np.nan).alias(str(i)) for i, n in enumerate(names)]
    return df.select(cols).to_numpy(order="c")  # row-major: each model row is contiguous


def _metadata(job: _Job, rows: int) -> dict[bytes, bytes]:
    models = []
    for s in job.scorers:
        mv = s.model.version
        entry: dict[str, Any] = {
            "name": mv.name,
            "version": mv.version,
            "flavor": mv.flavor,
            "feature_service": s.service,
            "column": s.column,
        }
        if job.explain:
            contribs, base = s.explained(len(job.scorers) > 1)
            ex = s.model.predictor.explainer
            entry["explanation"] = {
                "contributions": contribs,
                "base_value": base,
                "output": ex.output if ex is not None else None,
            }
        models.append(entry)
    info = {
        "models": models,
        "timestamp_column": job.timestamp_column,
        "as_known": job.as_known,
        "rows": rows,
        "scored_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    return {METADATA_KEY: json.dumps(info).encode()}


class _Sink:
    """Where scored chunks go: a Parquet file written beside ``out`` and renamed at the end,
    or a list of tables that becomes one polars frame."""

    def __init__(self, out: Path | None, meta: dict[bytes, bytes]) -> None:
        self.out = out
        self.meta = meta
        self.tables: list[pa.Table] = []
        self.writer: Any = None
        self.schema: pa.Schema | None = None
        self.tmp: Path | None = None
        if out is not None:
            try:
                out.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise BatchScoreError(
                    f"out: cannot create the folder '{out.parent}' ({exc.strerror or exc}); "
                    "give a path the scoring job can write"
                ) from None
            self.tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")

    def write(self, table: pa.Table) -> None:
        if self.schema is None:
            self.schema = table.schema.with_metadata(self.meta)
        if table.schema != self.schema:  # the metadata; or an all-null chunk's types
            table = table.cast(self.schema)
        if self.tmp is None:
            self.tables.append(table)
            return
        import pyarrow.parquet as pq

        if self.writer is None:
            self.writer = pq.ParquetWriter(self.tmp, self.schema)
        self.writer.write_table(table)

    def finish(self) -> tuple[Path | None, pl.DataFrame | None]:
        import polars as pl
        import pyarrow as pa

        if self.out is None:
            table = pa.concat_tables(self.tables) if self.tables else pa.table({})
            return None, pl.from_arrow(table)  # type: ignore[return-value]
        assert self.tmp is not None and self.writer is not None
        self.writer.close()
        self.writer = None
        os.replace(self.tmp, self.out)
        return self.out, None

    def abort(self) -> None:
        """Drop what was written: no partial file at ``out``, no temporary file left."""
        if self.writer is not None:
            try:
                self.writer.close()
            except Exception:
                pass
            self.writer = None
        if self.tmp is not None:
            self.tmp.unlink(missing_ok=True)
