"""The registry: applied definitions as one versioned JSON document, written atomically.

Each apply writes a new version (the previous ones are kept beside it under ``<name>.history/``);
materialization watermarks live in the same document but do not bump the version, and so do
the records of removed views whose online rows are still to be deleted (``pending_cleanup``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from featurestore._atomic import atomic_write
from featurestore._transform_refs import carry_code_epoch
from featurestore.entity import Entity
from featurestore.errors import FeatureNotFoundError, RegistryError
from featurestore.feature_service import FeatureService
from featurestore.feature_view import FeatureView, _brief
from featurestore.on_demand_view import OnDemandFeatureView
from featurestore.sources import StreamSource

FORMAT = 1
CHECK_S = 0.1  # how old a registry check a lookup may trust (see Registry.recent)
_WRITES: dict[str, int] = {}  # registry file -> writes by this process, through any Registry


def watermark_us(state: RegistryState, view: str, store: str) -> int | None:
    """``view``'s materialization watermark if it belongs to online store ``store`` (a record
    from before stores were named counts as this one's), else None: that store has nothing."""
    m = state.materialization.get(view) or {}
    if m.get("store", store) != store:
        return None
    mark = m.get("watermark_us")
    return None if mark is None else int(mark)


@dataclass
class RegistryState:
    """The definitions of one registry version, plus materialization state per view."""

    project: str
    version: int = 0
    applied_at: str | None = None
    entities: dict[str, Entity] = field(default_factory=dict)
    feature_views: dict[str, FeatureView] = field(default_factory=dict)
    feature_services: dict[str, FeatureService] = field(default_factory=dict)
    materialization: dict[str, dict[str, Any]] = field(default_factory=dict)
    on_demand_views: dict[str, OnDemandFeatureView] = field(default_factory=dict)
    # join key -> "int" or "str": the type of its columns in the sources, which lookups check
    # entity values against (empty in a registry written before these were recorded: no check)
    join_key_kinds: dict[str, str] = field(default_factory=dict)
    # removed view (or view whose join keys changed) -> {"removed_in": version, "stream": name
    # or None, ["ingest": holder], ["fenced": True], ["again": version that defined it again]}:
    # its online rows are not deleted yet (see featurestore/_cleanup.py); apply retries them
    pending_cleanup: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for odfv in self.on_demand_views.values():  # lookups fetch their inputs from these
            odfv._source_views = {
                n: self.feature_views[n] for n in odfv.source_views if n in self.feature_views
            }

    def feature_view(self, name: str) -> FeatureView:
        """A feature view (or an on-demand feature view, which answers the same questions)."""
        try:
            return self.feature_views[name]
        except KeyError:
            odfv = self.on_demand_views.get(name)
            if odfv is not None:
                return odfv  # type: ignore[return-value]
            names = sorted([*self.feature_views, *self.on_demand_views])
            known = _brief(names) or "none (run `featurestore apply`)"
            raise FeatureNotFoundError(
                f"no feature view '{name}' in the registry; known views: {known}"
            ) from None

    def feature_service(self, name: str) -> FeatureService:
        try:
            return self.feature_services[name]
        except KeyError:
            known = _brief(sorted(self.feature_services)) or "none"
            raise FeatureNotFoundError(
                f"no feature service '{name}' in the registry; known: {known}"
            ) from None

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "project": self.project,
            "version": self.version,
            "applied_at": self.applied_at,
            "entities": [e.to_dict() for e in self.entities.values()],
            "feature_views": [v.to_dict() for v in self.feature_views.values()],
            "feature_services": [s.to_dict() for s in self.feature_services.values()],
            "materialization": self.materialization,
            "on_demand_feature_views": [v.to_dict() for v in self.on_demand_views.values()],
            "join_key_kinds": self.join_key_kinds,
            "pending_cleanup": self.pending_cleanup,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], repo_path: Path | None = None) -> RegistryState:
        """Inverse of ``to_dict``; transform functions resolve against ``repo_path`` on use."""
        if d.get("format") != FORMAT:
            raise RegistryError(
                f"registry format {d.get('format')!r} is not supported (expected {FORMAT})"
            )
        entities = {e["name"]: Entity.from_dict(e) for e in d["entities"]}
        views = {
            v["name"]: FeatureView.from_dict(v, entities, repo_path) for v in d["feature_views"]
        }
        odfvs = {
            v["name"]: OnDemandFeatureView.from_dict(v, repo_path)
            for v in d.get("on_demand_feature_views") or ()
        }
        services = {s["name"]: FeatureService.from_dict(s) for s in d["feature_services"]}
        return cls(
            project=d["project"],
            version=d["version"],
            applied_at=d.get("applied_at"),
            entities=entities,
            feature_views=views,
            feature_services=services,
            materialization=d.get("materialization") or {},
            on_demand_views=odfvs,
            join_key_kinds=d.get("join_key_kinds") or {},
            pending_cleanup=d.get("pending_cleanup") or {},
        )


class Registry:
    """Reads and writes the registry file; every write is atomic (temp file + rename) and locked."""

    def __init__(self, path: Path, project: str, repo_path: Path | None = None) -> None:
        self.path = Path(path)
        self.project = project
        self.repo_path = repo_path
        self._cache: tuple[float, int, RegistryState] | None = None
        self._key = str(self.path)
        self._checked = (float("-inf"), -1)  # (monotonic time of the last stat, _WRITES then)

    def _lock(self) -> Any:
        from filelock import FileLock

        self.path.parent.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.path) + ".lock", timeout=60)

    def exists(self) -> bool:
        return self.path.is_file()

    def load(self) -> RegistryState:
        """The current state; an empty state when nothing was applied yet. Cached by mtime."""
        checked = (time.monotonic(), _WRITES.get(self._key, 0))  # taken before the stat
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return RegistryState(project=self.project)
        if self._cache and self._cache[0] == st.st_mtime and self._cache[1] == st.st_size:
            self._checked = checked
            return self._cache[2]
        try:
            state = RegistryState.from_dict(json.loads(self.path.read_bytes()), self.repo_path)
        except (ValueError, KeyError, TypeError) as exc:
            raise RegistryError(
                f"registry {self.path} is corrupt ({exc}); re-run `featurestore apply`"
            ) from None
        if state.project != self.project:
            raise RegistryError(
                f"registry {self.path} belongs to project '{state.project}', not '{self.project}'; "
                "point 'registry' in featurestore.yaml at another file"
            )
        self._cache = (st.st_mtime, st.st_size, state)
        self._checked = checked
        return state

    def recent(self, max_age_s: float = CHECK_S) -> RegistryState:
        """:meth:`require`, trusting a check up to ``max_age_s`` old: a lookup's hot path skips
        the stat. A write by this process (through any Registry of the file) is seen at once,
        another process's within ``max_age_s``."""
        cache, (at, writes) = self._cache, self._checked
        if (
            cache is not None
            and time.monotonic() - at < max_age_s
            and _WRITES.get(self._key, 0) == writes
            and cache[2].version
        ):
            return cache[2]
        return self.require()

    def require(self) -> RegistryState:
        """The current state, or a RegistryError telling the user to apply first."""
        state = self.load()
        if state.version == 0:
            raise RegistryError(
                f"nothing applied yet ({self.path} does not exist); run `featurestore apply`"
            )
        return state

    def apply(
        self,
        entities: list[Entity],
        views: list[FeatureView],
        services: list[FeatureService],
        on_demand_views: list[OnDemandFeatureView] | None = None,
        *,
        join_key_kinds: dict[str, str] | None = None,
    ) -> RegistryState:
        """Replace the definitions with these, as a new version; materialization state of kept views
        stays. Removed views get a cleanup record in the same write (their online rows are
        deleted next, and until that succeeds the record says so). A record goes only once its
        view's rows are deleted (``update_cleanup``, with the view's ``cleanup_lock`` held), so
        a view defined again keeps it, marked ``again``: the cleanup after this write deletes
        the rows of its removed version, and materialize leaves it alone until then (see
        featurestore/_cleanup.py).

        A view whose online rows the new definition cannot use as they are loses its watermark,
        so the next incremental materialize writes it afresh: new schema, source, ttl (the
        rows' expiry) or join keys; rows under join keys it no longer has get a cleanup record
        as a removed view's do."""
        with self._lock():
            self._cache = None
            old = self.load()
            names = {v.name for v in views}
            kinds = dict(join_key_kinds or {})
            for v in views:  # before any schema version is compared (see carry_code_epoch)
                carry_code_epoch(old.feature_views.get(v.name), v)
            version = old.version + 1
            # a view with a cleanup record has rows of an earlier definition still to delete
            # (the cleanup after this write deletes them, or, fenced, once it takes its
            # streams' locks), and materialize leaves it alone until then: no watermark to keep
            keep = {
                n: m
                for n, m in old.materialization.items()
                if n in names
                and n not in old.pending_cleanup
                and not rewrite_reasons(old, n, views, kinds)
            }
            # every record stays until its rows are deleted: dropping one here while another
            # apply's cleanup still deletes that view would let materialize write rows the
            # cleanup then deletes (see featurestore/_cleanup.py); a removed view defined again
            # is marked so
            pending = {n: dict(r) for n, r in old.pending_cleanup.items()}
            for n in sorted(names & pending.keys() - old.feature_views.keys()):
                pending[n].setdefault("again", version)
            for n in sorted(old.feature_views.keys() - names):
                earlier = {k: v for k, v in pending.get(n, {}).items() if k != "again"}
                pending[n] = {**earlier, **_cleanup_record(old.feature_views[n], version)}
            for v in views:
                prev = old.feature_views.get(v.name)
                if prev is not None and keys_changed(prev, v, old.join_key_kinds, kinds):
                    record = {**pending.get(v.name, {}), **_cleanup_record(prev, version)}
                    record.pop("again", None)  # rows of old keys: as any view whose keys changed
                    if record["stream"] or isinstance(v.source, StreamSource):
                        record["fenced"] = True  # deleted behind its fence only (see above)
                    pending[v.name] = record
            state = RegistryState(
                project=self.project,
                version=version,
                applied_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                entities={e.name: e for e in entities},
                feature_views={v.name: v for v in views},
                feature_services={s.name: s for s in services},
                materialization=keep,
                on_demand_views={v.name: v for v in on_demand_views or ()},
                join_key_kinds=kinds,
                pending_cleanup=pending,
            )
            self._write(state, history=True)
            return state

    def update_materialization(
        self,
        view: str,
        start_us: int,
        end_us: int,
        store: str | None = None,
        *,
        written: FeatureView | None = None,
    ) -> int | None:
        """Record a finished materialization window for ``view`` (the watermark only moves
        forward); returns the watermark now recorded.

        ``store`` names the online store written (config.online_store_id): a window written to
        another store than the one the watermark belongs to starts the record afresh.

        A view an apply removed meanwhile gets no watermark (None) but a cleanup record: the
        rows just written belong to no view, and the next apply deletes them. ``written``: the
        definition the rows were written under; if an apply changed what its rows hold (schema,
        ttl, join keys, source) meanwhile, nothing is recorded (None), so the watermark that
        apply dropped stays dropped and the next run writes the view afresh.
        """
        with self._lock():
            self._cache = None
            state = self.require()
            if view not in state.feature_views:
                state.pending_cleanup.setdefault(
                    view, {"removed_in": state.version, "stream": None}
                )
                self._write(state, history=False)
                return None
            if written is not None and row_identity(state.feature_views[view]) != row_identity(
                written
            ):
                return None
            m = state.materialization.setdefault(view, {"watermark_us": None, "intervals": []})
            if store is not None and m.get("store", store) != store:
                m.update(watermark_us=None, intervals=[])
            if store is not None:
                m["store"] = store
            m["watermark_us"] = (
                end_us if m["watermark_us"] is None else max(m["watermark_us"], end_us)
            )
            m["intervals"] = (m["intervals"] + [[start_us, end_us]])[-20:]
            self._write(state, history=False)
            return int(m["watermark_us"])

    def cleanup_lock(self, view: str) -> Any:
        """The lock (a file beside the registry) held by whoever deletes ``view``'s online rows
        for its cleanup record, from reading the record to dropping it, so no other process
        deletes by a record it read before. Take it before the registry's own lock, never
        while holding that."""
        from filelock import FileLock

        return FileLock(str(self._cleanup_file("", view, ".lock")))

    def write_lock(self, view: str) -> Any:
        """The lock materialize holds for each batch of ``view``'s online rows it writes, and a
        cleanup while it deletes them (after ``new_cleanup_mark``), so no batch lands during or
        after the delete. Take it after ``cleanup_lock``, before the registry's own lock."""
        from filelock import FileLock

        return FileLock(str(self._cleanup_file("writes", view, ".lock")))

    def cleanup_mark(self, view: str) -> str:
        """A token that changes whenever a cleanup starts deleting ``view``'s online rows ("":
        none did yet): a materialize that read it before the registry stops writing the view
        once it changed (see featurestore/_cleanup.py)."""
        try:  # (read before each batch materialize writes: the folder is not made here)
            return self._cleanup_file("marks", view, ".mark", make=False).read_text()
        except FileNotFoundError:
            return ""

    def new_cleanup_mark(self, view: str) -> None:
        """Change ``view``'s cleanup mark: a cleanup is about to delete its online rows."""
        import uuid

        atomic_write(self._cleanup_file("marks", view, ".mark"), uuid.uuid4().hex.encode())

    def _cleanup_file(self, kind: str, view: str, suffix: str, *, make: bool = True) -> Path:
        """The file of ``view`` in the folder of cleanup locks and marks beside the registry
        (``kind``: a subfolder, so no view's name makes another kind's file), made if
        ``make``."""
        from urllib.parse import quote

        folder = self.path.parent / (self.path.name + ".cleanup") / kind
        if make:
            folder.mkdir(parents=True, exist_ok=True)
        return folder / (quote(view, safe="") + suffix)

    def reload(self) -> RegistryState:
        """:meth:`load`, read from the file even if the cache looks current (a write within
        the file system's time resolution may keep the size and time)."""
        self._cache = None
        return self.load()

    def update_cleanup(
        self, done: Iterable[str], notes: Mapping[str, Mapping[str, Any]] | None = None
    ) -> RegistryState:
        """Drop the cleanup records of ``done`` views (their online rows are deleted) and merge
        ``notes`` into the records of others; returns the resulting state. A done view that is
        still defined (its join keys changed) loses its watermark too: its rows are gone."""
        with self._lock():
            self._cache = None
            state = self.load()
            pending = state.pending_cleanup
            changed = False
            for name in done:
                if pending.pop(name, None) is not None:
                    changed = True
                    if name in state.feature_views:
                        state.materialization.pop(name, None)
            for name, fields in (notes or {}).items():
                if name in pending and any(pending[name].get(k) != v for k, v in fields.items()):
                    pending[name].update(fields)
                    changed = True
            if changed:
                self._write(state, history=False)
            return state

    def _write(self, state: RegistryState, *, history: bool) -> None:
        data = json.dumps(state.to_dict(), indent=1, sort_keys=False).encode()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if history:
            hist = self.path.parent / (self.path.name + ".history")
            hist.mkdir(exist_ok=True)
            atomic_write(hist / f"v{state.version}.json", data)
        atomic_write(self.path, data)
        self._cache = None
        _WRITES[self._key] = _WRITES.get(self._key, 0) + 1


def _cleanup_record(view: FeatureView, version: int) -> dict[str, Any]:
    """What the cleanup of a removed view needs to know: when, and the stream that fed it."""
    src = view.source
    return {"removed_in": version, "stream": src.stream if isinstance(src, StreamSource) else None}


def row_identity(view: FeatureView) -> tuple[Any, ...]:
    """What a view's online rows depend on: an apply changing any of it drops the watermark."""
    return (view.schema_version, view.ttl, view.join_keys, view.source)


def rewrite_reasons(
    old: RegistryState, name: str, views: list[FeatureView], kinds: Mapping[str, str]
) -> list[str]:
    """Why the online rows of view ``name`` must be written again under its new definition
    (empty: they stay valid, and so does its watermark)."""
    new = next(v for v in views if v.name == name)
    prev = old.feature_views.get(name)
    if prev is None:
        return ["new view"]
    reasons = []
    if prev.schema_version != new.schema_version:
        reasons.append("schema")
    if prev.source != new.source:
        reasons.append("source")
    if prev.ttl != new.ttl:
        reasons.append("ttl")
    if keys_changed(prev, new, old.join_key_kinds, kinds):
        reasons.append("join keys")
    return reasons


def keys_changed(
    prev: FeatureView, new: FeatureView, old_kinds: Mapping[str, str], kinds: Mapping[str, str]
) -> bool:
    """Whether the view's online keys change: other join-key names, or a key whose values
    changed kind (integers / strings are written differently); an unrecorded kind matches."""
    if prev.join_keys != new.join_keys:
        return True
    return any(k in old_kinds and k in kinds and old_kinds[k] != kinds[k] for k in new.join_keys)
