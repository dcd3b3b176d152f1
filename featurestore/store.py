"""FeatureStore: the thin facade users call; each method hands off to a small service."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from featurestore._inputs import entity_input
from featurestore._time import now_us, to_us, to_utc
from featurestore.config import RepoConfig, load_config, online_store_id
from featurestore.errors import (
    DefinitionError,
    FeatureNotFoundError,
    FeatureStoreError,
    OnlineStoreError,
)
from featurestore.feature_service import FeatureService
from featurestore.feature_view import FeatureView
from featurestore.plan import Plan, make_plan
from featurestore.registry import Registry, RegistryState, watermark_us
from featurestore.sources import StreamSource

if TYPE_CHECKING:
    import polars as pl

    from featurestore._cleanup import ViewCleanup
    from featurestore.offline.scoring import BatchScores
    from featurestore.offline.store import OfflineStore
    from featurestore.online.base import OnlineStore
    from featurestore.online.lookup import OnlineResponse
    from featurestore.online.serving.engine import Engine
    from featurestore.online.serving.results import PredictResult
    from featurestore.online.stream import IngestStats
    from featurestore.online.stream.locks import MaterializeLocks

FeatureRequest = list[tuple[FeatureView, list[str]]]


@dataclass(frozen=True)
class MaterializeResult:
    """What one materialization wrote: rows per view and the window used; ``skipped``: the
    views left out because another held their stream's lock (or, with ``skip_busy``, an apply
    removed or redefined them while they were written), with why (one line each)."""

    start_us: int
    end_us: int
    rows: dict[str, int]
    skipped: dict[str, str] = field(default_factory=dict)
    asked_end_us: int | None = None  # the end asked for, when it was after now (see end_us)

    @property
    def total_rows(self) -> int:
        return sum(self.rows.values())


class FeatureStore:
    """Entry point: apply definitions, build training sets, materialize, and read online features."""

    def __init__(
        self, repo_path: str | os.PathLike[str] = ".", *, config: RepoConfig | None = None
    ) -> None:
        self.config = config or load_config(repo_path)
        self._store_id = online_store_id(self.config.online_store)  # whose watermarks are ours
        self.repo_path = self.config.repo_path
        self.project = self.config.project
        self._registry = Registry(self.config.registry_path, self.project, self.repo_path)
        self._offline: OfflineStore | None = None
        self._online: OnlineStore | None = None
        self._engine: Engine | None = None
        self._streams: Any = None  # the stream server's client, opened by send_events
        self._resolved: tuple[RegistryState | None, dict[Any, FeatureRequest]] = (None, {})
        self._shapes: tuple[RegistryState | None, dict[Any, Any]] = (None, {})

    # ---- registry ---------------------------------------------------------------------------
    @property
    def registry(self) -> RegistryState:
        """The applied definitions (reloaded when the registry file changes)."""
        return self._registry.require()

    def recent_registry(self) -> RegistryState:
        """:attr:`registry` for request paths: a check up to 0.1 s old is trusted, which saves a
        stat per call; this process's own writes (applies, materializations) are seen at once."""
        return self._registry.recent()

    def list_feature_views(self) -> list[FeatureView]:
        return list(self.registry.feature_views.values())

    def list_entities(self) -> list[Any]:
        return list(self.registry.entities.values())

    def list_feature_services(self) -> list[FeatureService]:
        return list(self.registry.feature_services.values())

    def get_feature_view(self, name: str) -> FeatureView:
        return self.registry.feature_view(name)

    def get_feature_service(self, name: str) -> FeatureService:
        return self.registry.feature_service(name)

    def plan(self) -> Plan:
        """What ``apply`` would change; definition errors (including against the data) raise here."""
        from featurestore.repo import load_definitions

        defs = load_definitions(self.config)
        kinds = self._validate_against_data(defs)
        return make_plan(self._registry.load(), defs, kinds)

    def apply(self, *objects: Any, report: Callable[[ViewCleanup], None] | None = None) -> Plan:
        """Validate the repo's definitions and write them as a new registry version (atomically),
        then delete the online rows of the feature views it removed. It reads the definition
        files (``objects``, Feast's way of passing them, are refused, naming that).

        ``report`` gets what happened to each removed view's rows (``str()`` is one line); an
        online store that does not answer leaves them for the next apply, which retries (even
        with no changes), and without ``report`` that is an ``OnlineCleanupWarning``.
        """
        from featurestore._cleanup import delete_redefined
        from featurestore.repo import load_definitions

        if objects:
            raise TypeError(
                "apply() takes no objects: it reads the repo's definition files (every *.py in "
                "the repo root, or `definitions:` in featurestore.yaml); put the objects there"
            )
        defs = load_definitions(self.config)
        kinds = self._validate_against_data(defs)
        current = self._registry.load()
        plan = make_plan(current, defs, kinds)
        # a fenced view's rows are deleted only behind its fence, with its streams' locks held
        redefined = {
            n: r
            for n, r in sorted(current.pending_cleanup.items())
            if n in defs.feature_views and not r.get("fenced")
        }
        if redefined:
            delete_redefined(self.online, self.project, redefined, self._registry)
        if not plan.empty or not self._registry.exists():
            self._registry.apply(
                list(defs.entities.values()),
                list(defs.feature_views.values()),
                list(defs.feature_services.values()),
                list(defs.on_demand_views.values()),
                join_key_kinds=kinds,
            )
        self._report_cleanup(report)
        return plan

    def _report_cleanup(self, report: Callable[[ViewCleanup], None] | None) -> None:
        """Delete the rows of removed views (see featurestore/_cleanup.py) and tell ``report``,
        or warn about what is left for the next apply."""
        from featurestore._cleanup import OnlineCleanupWarning, finish_cleanup

        for result in finish_cleanup(self, self._registry):
            if report is not None:
                report(result)
            elif result.pending:
                import warnings

                warnings.warn(str(result), OnlineCleanupWarning, stacklevel=3)

    def _validate_against_data(self, defs: Any) -> dict[str, str]:
        """Views against their sources, then every transform compiled (numba disk-cached);
        returns whether each join key holds integers or strings ("int" / "str")."""
        from featurestore._compile import compile_definitions

        problems: list[str] = []
        for view in defs.feature_views.values():
            if view.is_window:
                from featurestore.offline.windows import window_problems

                found = window_problems(self.offline, view)
            else:
                found = self.offline.validate_view(view)
            for p in found:
                problems.append(f"{defs.where('feature view', view.name)}: {p}")
        if not problems and any(
            isinstance(v.source, StreamSource) for v in defs.feature_views.values()
        ):  # (the stream package is not imported for repos without streams)
            from featurestore.online.stream.checks import stream_source_problems

            problems = stream_source_problems(self.offline, defs.feature_views.values())
        kinds: dict[str, str] = {}
        if not problems:
            kinds, problems = self._join_key_kinds(defs)
        if not problems:
            problems = compile_definitions(self.offline, defs)
        if problems:
            more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
            raise DefinitionError(problems[0] + more)
        return kinds

    def _join_key_kinds(self, defs: Any) -> tuple[dict[str, str], list[str]]:
        """Integers or strings per join key, from the views' sources (see join_key_kinds)."""
        from featurestore.offline.validation import join_key_kinds

        off = self.offline
        sources = [
            (v, off.source_schema(v.source), off.relation_label(v.source))
            for v in defs.feature_views.values()
        ]
        return join_key_kinds(sources, defs.entities.values())

    # ---- feature references -----------------------------------------------------------------
    def resolve_features(self, features: Sequence[str] | FeatureService | str) -> FeatureRequest:
        """``view:feature`` references (or a feature service, or its name) grouped by view in order.

        Cached per registry version: online lookups resolve the same references on every call.
        """
        return self._resolved_in(self.registry, features)

    def _resolved_in(
        self, state: RegistryState, features: Sequence[str] | FeatureService | str
    ) -> FeatureRequest:
        key = self._features_key(features)
        cached_state, cache = self._resolved
        if cached_state is not state:
            cache = {}
            self._resolved = (state, cache)
        hit = cache.get(key)
        if hit is None:
            hit = self._resolve(state, features)
            if len(cache) < 1024:
                cache[key] = hit
        return [(view, list(feats)) for view, feats in hit]

    @staticmethod
    def _features_key(features: Sequence[str] | FeatureService | str) -> Any:
        """``features`` as a cache key: a service (or its name) as is, references as a tuple."""
        return features if isinstance(features, (str, FeatureService)) else tuple(features)

    def _resolve(
        self, state: RegistryState, features: Sequence[str] | FeatureService | str
    ) -> FeatureRequest:
        if isinstance(features, FeatureService):
            refs: Sequence[str] = features.features
        elif isinstance(features, str):
            refs = state.feature_service(features).features if ":" not in features else [features]
        else:
            refs = features
        if not refs:
            raise FeatureNotFoundError(
                "no features requested; pass 'view:feature' references or a feature service"
            )
        grouped: dict[str, list[str]] = {}
        for ref in refs:
            if not isinstance(ref, str) or ref.count(":") != 1:
                raise FeatureNotFoundError(
                    f"bad feature reference {ref!r}; expected 'view:feature'"
                )
            view_name, feat = ref.split(":")
            view = state.feature_view(view_name)
            view.field(feat)  # raises with the list of known features
            names = grouped.setdefault(view_name, [])
            if feat not in names:
                names.append(feat)
        return [(state.feature_view(v), f) for v, f in grouped.items()]

    # ---- offline ----------------------------------------------------------------------------
    @property
    def offline(self) -> OfflineStore:
        if self._offline is None:
            from featurestore.offline.store import OfflineStore

            self._offline = OfflineStore(self.config)
        return self._offline

    def get_historical_features(
        self,
        entity_df: Any,
        features: Sequence[str] | FeatureService | str,
        *,
        full_feature_names: bool = False,
        as_known: bool = False,
        timestamp_column: str = "event_timestamp",
        progress: bool = False,
    ) -> pl.DataFrame:
        """A point-in-time correct training set: every spine row, in order, with its features at t.

        ``entity_df`` is a polars/pandas DataFrame, a pyarrow Table or a Parquet path holding the
        join keys and ``timestamp_column``. ``as_known=True`` also drops rows whose created
        timestamp is after t ("as it was known at t").

        Window views are aggregated as of each spine time (``(t - w, t]``); on-demand features
        are computed from the other columns and the spine's request-field columns.
        """
        requests = self.resolve_features(features)
        if any(v.is_window or not v.join_keys for v, _ in requests):
            from featurestore.offline.mixed import historical_features

            return historical_features(
                self.offline,
                entity_df,
                requests,
                full_feature_names=full_feature_names,
                as_known=as_known,
                timestamp_column=timestamp_column,
                progress=progress,
            )
        return self.offline.get_historical_features(
            entity_df,
            requests,
            full_feature_names=full_feature_names,
            as_known=as_known,
            timestamp_column=timestamp_column,
            progress=progress,
        )

    def batch_score(
        self,
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
        """Score every spine row with registered model(s) on its point-in-time features.

        ``model``: ``name``, ``name@alias`` or ``name@version``, or a list of them (one score
        column each: ``score``, or ``score_<name>_v<version>`` for several). The features are
        the training set's at each row's time, so the scores equal online predict's after
        materializing to that time. ``explain`` adds each input's contribution to each score
        (``contrib_<feature>`` and ``base_value``). ``out`` writes a Parquet file (the result's
        ``path``) instead of returning ``frame``; the spine is joined and scored ``chunk_rows``
        at a time.
        """
        from featurestore.offline.scoring import batch_score

        return batch_score(
            self,
            model,
            entity_df,
            timestamp_column=timestamp_column,
            as_known=as_known,
            include_features=include_features,
            explain=explain,
            out=out,
            chunk_rows=chunk_rows,
            progress=progress,
        )

    # ---- materialization --------------------------------------------------------------------
    @property
    def online(self) -> OnlineStore:
        if self._online is None:
            from featurestore.online.base import open_online_store

            self._online = open_online_store(self.config)
        return self._online

    def materialize(
        self,
        start: datetime | str | int | None = None,
        end: datetime | str | int | None = None,
        *,
        views: Sequence[str] | None = None,
        progress: bool = False,
        overwrite: bool = False,
        start_date: datetime | str | int | None = None,
        end_date: datetime | str | int | None = None,
        feature_views: Sequence[str] | None = None,
    ) -> MaterializeResult:
        """Write the latest row per entity with start <= event_timestamp <= end to the online store.

        ``start_date``, ``end_date`` and ``feature_views`` are Feast's names for ``start``,
        ``end`` and ``views`` (keyword only; giving both names of one is a TypeError).

        A row online with a later (event time, created time), such as one pushed online only,
        is kept (``codec.row_replaces``, checked atomically per key); ``overwrite=True`` writes
        the offline rows over newer ones too (after correcting offline data). A window view
        writes each entity's window state as of ``end`` instead (built from its events in
        ``(end - max window - allowed lateness, end]``; ``start`` is not used). Losing a
        stream's lock midway (see online/stream/locks.py) stops it with an error. An ``end``
        after now is taken as now (``asked_end_us`` keeps it): see ``_until_now``.
        """
        start = _feast_alias("materialize", "start", start, "start_date", start_date)
        end = _feast_alias("materialize", "end", end, "end_date", end_date)
        views = _feast_alias("materialize", "views", views, "feature_views", feature_views, False)
        start_us, asked_us = to_us(start), to_us(end)
        if start_us > asked_us:
            raise FeatureStoreError(
                f"materialize: start {to_utc(start_us)} is after end {to_utc(asked_us)}"
            )
        end_us = _until_now(asked_us)
        rows: dict[str, int] = {}
        with self._online_views(views) as held:
            for v in held.views:
                self._write_view(
                    rows, held, False, v, min(start_us, end_us), end_us, progress, overwrite
                )
        late = asked_us if asked_us != end_us else None
        return MaterializeResult(start_us, end_us, rows, dict(held.skipped), late)

    def materialize_incremental(
        self,
        end: datetime | str | int | None = None,
        *,
        views: Sequence[str] | None = None,
        progress: bool = False,
        skip_busy: bool = False,
        overwrite: bool = False,
        end_date: datetime | str | int | None = None,
        feature_views: Sequence[str] | None = None,
    ) -> MaterializeResult:
        """Materialize each view from its watermark (or end - ttl the first time) up to ``end``.

        ``end_date`` and ``feature_views`` are Feast's names for ``end`` and ``views``.

        A view whose watermark is already at or past ``end`` is left as it is (0 rows): its
        store holds newer values, which an older ``end`` would overwrite (``materialize(...,
        overwrite=True)`` over an explicit window still can). ``skip_busy``: a view whose
        stream's lock another holds (an ingest reading it) is left out and named in ``skipped``
        instead of refusing all, and so is one an apply removes or redefines while it is
        written (no row of it is written after the apply's cleanup deleted its rows).
        Newer online rows are kept unless ``overwrite`` (see ``materialize``). An ``end``
        after now is taken as now (see ``_until_now``)."""
        name = "materialize_incremental"
        end = _feast_alias(name, "end", end, "end_date", end_date)
        views = _feast_alias(name, "views", views, "feature_views", feature_views, False)
        asked_us = to_us(end)
        end_us = _until_now(asked_us)
        state = self.registry
        rows: dict[str, int] = {}
        first = end_us
        with self._online_views(views, skip_busy=skip_busy) as held:
            for view in held.views:
                mark = watermark_us(state, view.name, self._store_id)
                with _naming(view.name):
                    mark = self._store_watermark(view.name, mark)
                if mark is not None and mark >= end_us:
                    rows[view.name] = 0
                    continue
                if mark is not None:
                    start_us = mark
                elif view.ttl_us is not None:
                    start_us = end_us - view.ttl_us
                else:
                    start_us = 0
                first = min(first, start_us)
                start_us = min(start_us, end_us)
                self._write_view(rows, held, skip_busy, view, start_us, end_us, progress, overwrite)
        late = asked_us if asked_us != end_us else None
        return MaterializeResult(first, end_us, rows, dict(held.skipped), late)

    def _write_view(
        self,
        rows: dict[str, int],
        held: MaterializeLocks,
        skip: bool,
        view: FeatureView,
        start_us: int,
        end_us: int,
        progress: bool,
        overwrite: bool,
    ) -> None:
        """Materialize ``view`` into ``rows``; one an apply removed or redefined meanwhile (see
        ``ViewChangedError``) is left out, named in ``held.skipped``, if ``skip``, else raises."""
        from featurestore._cleanup import ViewChangedError

        try:
            with _naming(view.name):
                rows[view.name] = self._materialize_view(
                    view, start_us, end_us, progress, held, overwrite
                )
        except ViewChangedError:
            if not skip:
                raise
            held.skipped[view.name] = (
                "featurestore apply removed or redefined it while it was written and deleted "
                "its online rows (its watermark did not move)"
            )

    @contextmanager
    def _online_views(
        self, names: Sequence[str] | None, *, skip_busy: bool = False
    ) -> Iterator[MaterializeLocks]:
        """The views to materialize (default: every online view), with the locks of the streams
        feeding them held meanwhile: refused while an ingest (or another materialize) writes
        one, or with ``skip_busy`` those views left out, and no ingest starts until done (see
        online/stream/locks.materialize_lock). A view whose join-key fence is pending is
        refused or left out the same way (see ``_fenced``)."""
        from featurestore._cleanup import ViewWrites
        from featurestore.online.stream.locks import materialize_lock

        state = self.registry
        if names:
            views = [state.feature_view(n) for n in names]
            for n in names:
                if n in state.on_demand_views:
                    raise FeatureStoreError(
                        f"'{n}' is an on-demand feature view: it is computed at request time "
                        "from its inputs, so there is nothing to materialize (materialize the "
                        "views it reads)"
                    )
            offline = [v.name for v in views if not v.online]
            if offline:
                raise FeatureStoreError(
                    f"feature view '{offline[0]}' is not served online (online=False): there "
                    "is nothing to materialize; set online=True in its definition and apply, or "
                    "leave it out"
                )
        else:
            views = [v for v in state.feature_views.values() if v.online]
        with materialize_lock(self, views, skip_busy=skip_busy) as held:
            # each view's cleanup mark before the registry says it is current (see ViewWrites)
            marks = {v.name: self._registry.cleanup_mark(v.name) for v in held.views}
            fenced = self._fenced(held.views)
            if fenced and not skip_busy:
                name, why = next(iter(fenced.items()))
                raise FeatureStoreError(f"feature view '{name}' cannot be materialized yet: {why}")
            if fenced:
                held.skipped.update(fenced)
                held.views = [v for v in held.views if v.name not in fenced]
            held.writes = {
                v.name: ViewWrites(self._registry, v.name, marks[v.name]) for v in held.views
            }
            yield held

    def _fenced(self, views: list[FeatureView]) -> dict[str, str]:
        """View -> why it is left alone, for ``views`` whose join keys changed while an ingest
        ran and whose old rows are not deleted yet: rows written now would be deleted with
        them. Read with the streams' locks held, so no apply deletes while materialize writes
        a view that passed (see featurestore/_cleanup.py). A view an apply removed or
        redefined since ``views`` were read is left alone too: its cleanup may be done."""
        from featurestore._cleanup import fenced_views
        from featurestore.registry import row_identity

        state = self._registry.reload()
        pending = fenced_views(state)
        out: dict[str, str] = {}
        for v in views:
            now = state.feature_views.get(v.name)
            if now is None or row_identity(now) != row_identity(v):
                out[v.name] = (
                    "featurestore apply removed or redefined it since materialize read the "
                    "registry; run materialize again"
                )
                continue
            if v.name not in pending:
                continue
            if pending[v.name].get("fenced"):
                stream = pending[v.name].get("stream") or getattr(v.source, "stream", "?")
                out[v.name] = (
                    "its online rows under its old join keys are not deleted yet; once no "
                    f"ingest reads stream '{stream}', run featurestore apply to delete them"
                )
            else:
                out[v.name] = (
                    "the online rows of its earlier definition are still being deleted by "
                    "featurestore apply; materialize it once that apply has finished (or run "
                    "apply again if it failed)"
                )
        return out

    def _materialize_view(
        self,
        view: FeatureView,
        start_us: int,
        end_us: int,
        progress: bool,
        held: MaterializeLocks | None = None,
        overwrite: bool = False,
    ) -> int:
        """Write one view; ``held.ensure_held`` runs before each write and before the watermark,
        so a lost stream lock stops it there (see online/stream/locks.py). None: no lock held.
        Each write and the watermark's record hold the view's ``held.writes`` guard, so an
        apply removing or redefining it meanwhile stops it (ViewChangedError) before its
        cleanup deletes (see featurestore/_cleanup.py). A plain view's rows go through the
        store's only-newer check unless ``overwrite``."""
        from featurestore._progress import progress_bar
        from featurestore._time import duration_us, parse_duration
        from featurestore.online.stream.locks import MaterializeLocks
        from featurestore.online.writer import write_table

        held = held or MaterializeLocks([view], {}, set())
        guard = held.writes.get(view.name)
        one_write = guard.batch if guard is not None else nullcontext

        grace = duration_us(parse_duration(self.config.online_store.key_ttl_grace)) or 0
        if view.is_window:
            from featurestore.online.windows import materialize_window_view

            written = materialize_window_view(
                self.offline,
                _GuardedWrites(self.online, one_write),
                self.project,
                view,
                end_us,
                key_ttl_grace_us=grace,
                batch_size=self.config.online_store.write_batch_size,
                now_us=now_us(),
                before_write=held.ensure_held if held.guards(view) else None,
                progress=progress,
            )
            held.ensure_held()
            with one_write():
                self._record_watermark(view, start_us, end_us)
            return written
        # the count only sizes the progress bar: without one it is a query saved
        total = self.offline.count_latest_rows(view, start_us, end_us) if progress else None
        # an ordered store (LMDB) is written fastest front to back: rows in its key order
        order = "online" if getattr(self.online, "ordered_keys", False) else "keys"
        rows = self.offline.iter_latest_rows(view, start_us, end_us, key_order=order)
        size = max(1, int(self.config.online_store.write_batch_size))
        guarded = held.guards(view)
        written = 0
        with progress_bar(total, f"materialize {view.name}", enabled=progress) as bar:
            for batch in rows:
                import pyarrow as pa

                table = pa.Table.from_batches([batch])
                step = size if guarded else max(1, table.num_rows)  # a lock check per write
                for at in range(0, table.num_rows, step):
                    chunk = table.slice(at, step)
                    held.ensure_held()
                    with one_write():  # (a store's refusal names the view: see _naming)
                        written += write_table(
                            self.online,
                            self.project,
                            view,
                            chunk,
                            now_us=now_us(),
                            key_ttl_grace_us=grace,
                            batch_size=size,
                            # a row pushed online meanwhile (or only online) may be newer
                            only_newer=not overwrite,
                        )
                    bar.update(chunk.num_rows)  # rows done, skipped expired ones too: ends at total
        # the watermark moves only after every batch landed, so a crash means a clean rerun
        held.ensure_held()
        with one_write():
            self._record_watermark(view, start_us, end_us)
        return written

    def _record_watermark(self, view: FeatureView, start_us: int, end_us: int) -> None:
        """Move ``view``'s watermark in the registry, then store it in the online store too
        (see ``_store_watermark``); nothing when an apply redefined the view meanwhile."""
        import struct

        mark = self._registry.update_materialization(
            view.name, start_us, end_us, self._store_id, written=view
        )
        if mark is not None:
            keys = self._watermark_keys(view.name)
            self.online.write_batch(keys, [struct.pack("<q", mark)] * len(keys))

    def _store_watermark(self, view: str, mark: int | None) -> int | None:
        """The registry's watermark ``mark`` as far as the online store still holds it: None
        if the store lacks its copy (it lost its data, or predates the copy), so an incremental
        run fills it afresh rather than trusting rows that are gone. On Redis Cluster every
        primary node holds a copy: one node missing its copy lost its data (restarted empty)."""
        import struct

        if mark is None:
            return None
        held = self.online.read(self._watermark_keys(view))
        if any(v is None or len(v) != 8 for v in held):
            return None
        return min([mark] + [struct.unpack("<q", v)[0] for v in held])

    def _watermark_keys(self, view: str) -> list[bytes]:
        """The keys of ``view``'s watermark copies in the online store: one, or on Redis
        Cluster one per primary node (hash tags from the current slot map)."""
        from featurestore.online.keys import watermark_key

        per_node = getattr(self.online, "node_tags", None)
        tags = per_node() if per_node is not None else []
        if not tags:  # one store (or a cluster without a slot map: no node to name)
            return [watermark_key(self.project, view)]
        return [watermark_key(self.project, view, tag) for tag in tags]

    def _drop_watermark(self, view: str) -> None:
        """Delete every node's copy of a removed ``view``'s watermark on Redis Cluster (and the
        one key older versions wrote there). Other stores keep their one key, as before: the
        registry forgot the view, so a view of that name defined again starts afresh anyway."""
        from featurestore.online.keys import watermark_key

        delete = getattr(self.online, "delete_keys", None)
        if delete is not None:
            delete([*self._watermark_keys(view), watermark_key(self.project, view)])

    # ---- online -----------------------------------------------------------------------------
    def get_online_features(
        self,
        features: Sequence[str] | FeatureService | str,
        entity_rows: Any,
        *,
        full_feature_names: bool = False,
        include_event_timestamps: bool = False,
        now: datetime | str | int | None = None,
        request_data: dict[str, Sequence[Any]] | None = None,
    ) -> OnlineResponse:
        """Latest values for each entity row, with a status per value; one store round trip.

        ``entity_rows``: join-key columns (``{"user_id": [1, 2]}``, lists or arrays), a list of
        row dicts, or a DataFrame (polars, pandas) or Arrow table.

        ``now`` sets the time TTLs are judged at and window features are read at (default: the
        wall clock). ``request_data`` gives on-demand features their request fields, one value
        per entity row.
        """
        state = self.recent_registry()
        shapes = self._shapes_in(state)
        shape_key = (self._features_key(features), full_feature_names)
        shape = shapes.get(shape_key)
        # resolved before the entity rows are read, so errors come in the same order as unplanned
        requests = self._resolved_in(state, features) if shape is None else []
        rows = entity_input(entity_rows)
        at_us = now_us() if now is None else to_us(now)
        if shape is None:
            from featurestore.online._shape import request_shape

            shape = request_shape(self.project, requests, full_feature_names)
            if len(shapes) < 1024:
                shapes[shape_key] = shape
        lookup = shape.plan(
            rows, at_us, include_event_timestamps, request_data, state.join_key_kinds
        )
        return lookup.read(self.online)

    def _shapes_in(self, state: RegistryState) -> dict[Any, Any]:
        """Online request shapes (online.lookup.RequestShape) of this registry version, by
        (features, full names): a repeated lookup skips resolving and planning its features."""
        cached_state, cache = self._shapes
        if cached_state is not state:
            cache = {}
            self._shapes = (state, cache)
        return cache

    def predict(
        self,
        model: str,
        entity_rows: Any,
        *,
        request_data: dict[str, Sequence[Any]] | None = None,
        return_features: bool = False,
        deadline_ms: float | None = None,
        explain: bool = False,
    ) -> PredictResult:
        """Score entities in process: lookup -> on-demand features -> model, as ``POST /predict``.

        ``model`` is ``name``, ``name@alias`` or ``name@version``; ``entity_rows`` holds join-key
        columns (``{"user_id": [1, 2]}``), a list of rows or a DataFrame. The serving engine is
        started on first use and shares this store's online connection.
        """
        if self._engine is None:
            from featurestore.online.serving.engine import Engine

            self._engine = Engine(self).start(poll=False)
        return self._engine.predict(
            model,
            entities=entity_input(entity_rows),
            request_data=request_data,
            return_features=return_features,
            deadline_ms=deadline_ms,
            explain=explain,
        )

    def push(
        self, feature_view: str, rows: Any = None, *, to: str = "online", df: Any = None
    ) -> int:
        """Write rows of a plain feature view, as ``POST /push``; returns how many.

        ``df`` is Feast's name for ``rows`` (Feast's first argument names a push source; here
        it is the feature view).

        ``rows`` holds join keys, every feature and optionally the source's timestamp column
        (microseconds, ISO 8601 or datetimes, naive ones UTC; default: now), as columns, row
        dicts or a DataFrame. ``to``:
        "online" (the online store), "offline" (one new Parquet file in the view's source
        folder, so training sets and materialize see the rows) or "online_and_offline".
        As over REST, a ``Bytes`` value given as text is read as base64, and an event time more
        than ``stream.max_future`` after now is refused (nothing of the push is written).
        """
        rows = _feast_alias("push", "rows", rows, "df", df)
        if self._engine is None:
            from featurestore.online.serving.engine import Engine

            self._engine = Engine(self).start(poll=False)
        return self._engine.push(feature_view, entity_input(rows), to=to)

    # ---- streams ----------------------------------------------------------------------------
    def send_events(self, source: str, rows: Any) -> list[str]:
        """Add events (row dicts, or columns ``{name: [values]}``) to a StreamSource's Redis
        stream in one round trip; returns their entry ids. ``ingest`` applies them."""
        from featurestore.online.stream.streams import redis_client, send_events

        if self._streams is None:
            self._streams = redis_client(self, timeout=10.0)
        return send_events(self, source, rows, self._streams)

    def ingest(
        self,
        sources: Sequence[str] | None = None,
        *,
        once: bool = False,
        max_events: int | None = None,
        progress: bool = False,
    ) -> IngestStats:
        """Apply stream events to the online and offline stores (``featurestore ingest``).

        Runs until stopped; ``once`` returns when the streams hold nothing new. Bad events go
        to each stream's dead-letter stream; see online/stream.
        """
        from featurestore.online.stream import Ingester

        echo = (lambda line: print(line, file=sys.stderr, flush=True)) if progress else None
        ing = Ingester(self, list(sources) if sources else None, echo=echo)
        return ing.run(once=once, max_events=max_events)

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None
        if self._online is not None:
            self._online.close()
            self._online = None
        if self._streams is not None:
            self._streams.close()
            self._streams = None
        if self._offline is not None:
            close = getattr(self._offline, "close", None)
            if close:
                close()
            self._offline = None

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _GuardedWrites:
    """An online store whose ``write_batch`` runs inside ``batch()`` (a view's ViewWrites
    guard): materialize's window-view writes, one guard check per batch."""

    def __init__(self, online: OnlineStore, batch: Callable[[], Any]) -> None:
        self._online, self._batch = online, batch

    def write_batch(self, *args: Any, **kw: Any) -> Any:
        with self._batch():
            return self._online.write_batch(*args, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._online, name)


def _feast_alias(
    method: str, name: str, value: Any, feast_name: str, feast_value: Any, required: bool = True
) -> Any:
    """The argument given as ``name`` or under Feast's ``feast_name``: a TypeError naming both
    when both are given, or neither of a required one (as Python's own would)."""
    if value is not None and feast_value is not None:
        raise TypeError(
            f"{method}() got both '{name}' and '{feast_name}' (Feast's name for it); give one"
        )
    if value is None and feast_value is None and required:
        raise TypeError(f"{method}() missing required argument '{name}' (or '{feast_name}')")
    return feast_value if value is None else value


def _until_now(end_us: int) -> int:
    """``end_us``, or now if it is later: a row dated after now is not served yet (the training
    set at now has none), and a watermark past now would make every later incremental run
    skip the rows that arrive until then."""
    return min(end_us, now_us())


@contextmanager
def _naming(view: str) -> Iterator[None]:
    """An online store error inside names the view being materialized, of its class."""
    try:
        yield
    except OnlineStoreError as exc:
        raise type(exc)(f"materialize '{view}': {exc}") from exc
