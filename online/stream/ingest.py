"""The ingest loop: read a Redis stream with a consumer group, apply, dead-letter, acknowledge.

Each round reads up to ``stream.batch_size`` entries per source (first this consumer's pending
ones, so a restart finishes what a crash left), adds the bad events to the dead-letter stream
and applies the valid ones online at once (freshness). The valid events are also buffered and
written to the offline store as one Parquet file per flush (every ``stream.offline_flush_s``
or ``offline_flush_events``; a file per round would be thousands of tiny files an hour), and
only then are the entries acknowledged. A crash anywhere before the XACK redelivers them,
which the offline sink and the online apply both recognise (see sink.py and apply.py); only a
dead letter may then be written twice (its ``id`` field tells). With ``stream.trim``, each
stream then loses the entries every consumer group has acknowledged (at start, at most every
``stream.trim_interval_s`` after an acknowledgement, and at the end; see trim.py): what is not
acknowledged, by ingest or by another application's group, stays.

One ingester per source at a time: it holds a lock key beside the stream (renewed while it
runs), because a window view's state is updated by read-modify-write and one entity's events
must be applied in stream order. A materialize of the views it feeds holds the same key while
it rewrites their states (see locks.py), so the two never overwrite each other's writes.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from featurestore._time import duration_us, now_us, parse_duration, to_utc
from featurestore.errors import FeatureStoreError, OnlineStoreError
from featurestore.online.stream.apply import WindowBatch, check_fences, write_plain
from featurestore.online.stream.events import Event, EventSchema, as_text
from featurestore.online.stream.locks import (
    LOCK_MS,
    LOCK_SUFFIX,
    acquire,
    holder_text,
    is_materialize,
    new_token,
    release,
    renew,
)
from featurestore.online.stream.sink import OfflineSink
from featurestore.online.stream.streams import (
    ClusterClient,
    dead_letter_name,
    group_info,
    redis_client,
    stream_sources,
)
from featurestore.online.stream.trim import StreamTrimmer

if TYPE_CHECKING:
    from collections.abc import Callable

    from featurestore.feature_view import FeatureView
    from featurestore.online.stream.metrics import IngestMetrics
    from featurestore.sources import StreamSource
    from featurestore.store import FeatureStore

CONSUMER = "ingest"  # one ingester per source (the lock), so its pending entries are its own
_LETTER_SKEW_MS = 600_000  # clocks of two cluster nodes (stream, dead letters) may differ


class _LostGroup(FeatureStoreError):
    """The stream server no longer has the consumer group (it was created again)."""


@dataclass
class IngestStats:
    """What an ingest run did.

    ``read``: entries read; ``applied``: valid events handled (offline and online), including
    ``replayed`` ones, which a window state already held from before a restart and so were not
    added again; ``dead``: dead-lettered; ``batches``: rounds; ``trimmed``: stream entries
    removed once every consumer group had acknowledged them (``stream.trim``).
    """

    read: int = 0
    applied: int = 0
    dead: int = 0
    replayed: int = 0
    batches: int = 0
    trimmed: int = 0
    by_source: dict[str, int] = field(default_factory=dict)


class _Source:
    """One source's reading state: its schema, sink, lock and where reading resumes."""

    def __init__(self, store: FeatureStore, src: StreamSource, views: list[FeatureView]) -> None:
        self.src = src
        self.views = views
        cfg = store.config.stream
        future = duration_us(parse_duration(cfg.max_future))
        past = duration_us(parse_duration(cfg.max_past)) if cfg.max_past else None
        self.schema = EventSchema.build(src, views, store.offline, future or 0, past)
        self.sink = (
            OfflineSink(store.config, self.schema) if store.config.stream.write_offline else None
        )
        self.dead_stream = dead_letter_name(store, src.stream)
        self.lock_key = src.stream + LOCK_SUFFIX
        self.token = new_token()
        # views whose stored window states may predate their definition: not materialized
        # since the last apply that changed them (see WindowBatch)
        self.unmaterialized = {v.name for v in views if v.is_window and not _materialized(store, v)}
        self.cursor = "0"  # pending entries after this id first, then ">" (new entries)
        self.unacked: list[str] = []  # entries handled online, acknowledged at the next flush
        self.unwritten: list[Event] = []  # their valid events, for the next Parquet file
        self.flushed_at = time.monotonic()
        self.untrimmed = True  # acknowledged entries since the last trim (a start may find some)
        self.trimmed_at = -math.inf


class Ingester:
    """Reads the stream sources of a repo and keeps the online (and offline) store fresh."""

    def __init__(
        self,
        store: FeatureStore,
        sources: list[str] | None = None,
        *,
        echo: Callable[[str], None] | None = None,
        metrics: IngestMetrics | None = None,
    ) -> None:
        found = stream_sources(store)
        if not found:
            raise FeatureStoreError(
                "no applied feature view reads a StreamSource; define one and run apply"
            )
        unknown = sorted(set(sources or ()) - set(found))
        if unknown:
            raise FeatureStoreError(
                f"unknown stream source(s) {unknown}; the repo's are {sorted(found)}"
            )
        names = sources or sorted(found)
        self.store = store
        self.cfg = store.config.stream
        self.online = store.online
        self.grace_us = duration_us(parse_duration(store.config.online_store.key_ttl_grace)) or 0
        self.sources = [_Source(store, *found[n]) for n in names]
        self.echo = echo
        self.metrics = metrics
        self.stats = IngestStats()
        self._stop = False
        self.client = redis_client(store, timeout=max(5.0, self.cfg.block_ms / 1000 + 5.0))
        self.trimmer = StreamTrimmer(self.client, self.cfg.group)
        self._locked: list[_Source] = []

    def stop(self) -> None:
        """Finish the round in hand, then return from ``run`` (signal handlers call this)."""
        self._stop = True

    def run(self, *, once: bool = False, max_events: int | None = None) -> IngestStats:
        """Ingest until stopped; ``once``: until the streams hold nothing new.

        Without ``once``, a store or stream server that fails is retried with backoff (what
        was not acknowledged is read again), and a stream server that lost the group (a
        restart without persistence) gets it back.
        """
        import redis

        # a cluster failing over answers CLUSTERDOWN / TRYAGAIN, has a slot uncovered, or (no
        # node answering while redis-py rebuilds its slot map) raises RedisClusterException
        cluster = (redis.exceptions.ClusterError, redis.exceptions.RedisClusterException)
        retry = (OnlineStoreError, redis.ConnectionError, redis.TimeoutError, _LostGroup, *cluster)
        try:
            self._start()
            last_renew = last_echo = time.monotonic()
            backoff = 0.1
            while not self._stop:
                new_only = all(s.cursor == ">" for s in self.sources)  # pending ones all read
                left = self.cfg.batch_size if max_events is None else max_events - self.stats.read
                try:
                    if time.monotonic() - last_renew > LOCK_MS / 3000:
                        self._renew()
                        last_renew = time.monotonic()
                    got = self._round(once, min(self.cfg.batch_size, left))
                    self._flush(force=False)
                    self._trim(force=False)
                    backoff = 0.1
                except retry as exc:
                    if once:
                        raise
                    self._say(f"ingest: {str(exc).splitlines()[0]}; retrying in {backoff:.1f}s")
                    for s in self.sources:  # what is not acknowledged is read again
                        s.cursor = "0"
                        s.unacked, s.unwritten = [], []
                    time.sleep(backoff)
                    backoff = min(5.0, backoff * 2)
                    last_renew = 0.0  # the lock and the groups are checked first thing
                    continue
                if (self.echo or self.metrics) and time.monotonic() - last_echo >= 2.0:
                    self._progress()
                    last_echo = time.monotonic()
                if max_events is not None and self.stats.read >= max_events:
                    break
                if once and new_only and not got:
                    break
            self._flush(force=True)
            self._trim(force=True)
            if self.echo or self.metrics:
                self._progress()
            return self.stats
        finally:
            self.close()

    def _flush(self, *, force: bool) -> None:
        """Write each source's buffered events as one Parquet file, then acknowledge every
        entry handled since the last flush (when due: ``stream.offline_flush_s`` or
        ``offline_flush_events``, or ``force``)."""
        cfg = self.cfg
        for s in self.sources:
            if not s.unacked:
                continue
            due = (
                force
                or s.sink is None
                or len(s.unwritten) >= cfg.offline_flush_events
                or time.monotonic() - s.flushed_at >= cfg.offline_flush_s
            )
            if not due:
                continue
            if s.sink is not None:
                s.sink.write(s.unwritten)
            for i in range(0, len(s.unacked), 10_000):  # only now: the file has landed
                self.client.xack(s.src.stream, cfg.group, *s.unacked[i : i + 10_000])
            s.unacked, s.unwritten = [], []
            s.flushed_at = time.monotonic()
            s.untrimmed = True

    def _trim(self, *, force: bool) -> None:
        """Trim each stream that had entries acknowledged since its last trim of what every
        consumer group is done with, at most every ``stream.trim_interval_s`` unless ``force``."""
        if not self.cfg.trim:
            return
        for s in self.sources:
            if not s.untrimmed:
                continue
            if not force and time.monotonic() - s.trimmed_at < self.cfg.trim_interval_s:
                continue
            done = self.trimmer.trim(s.src.name, s.src.stream)
            s.untrimmed, s.trimmed_at = False, time.monotonic()
            self.stats.trimmed += done.removed
            if self.metrics is not None:
                self.metrics.observe_trim(s.src.name, done.removed, done.left)

    def _start(self) -> None:
        """Take each source's lock, then refuse to start if a view's join-key fence stands
        against this ingest's definitions (read under the lock: see featurestore/_cleanup.py)."""
        self._groups()
        for s in self.sources:
            if not acquire(self.client, s.lock_key, s.token):
                raise FeatureStoreError(_busy(s, self.client.get(s.lock_key)))
            self._locked.append(s)
        for s in self.sources:
            check_fences(self.online, self.store.project, s.views, s.schema.arrow)
        self._trim(force=True)  # what an earlier run (or an untrimmed version) left

    def _groups(self) -> None:
        """Create each stream's consumer group at its first entry, unless it exists."""
        import redis

        for s in self.sources:
            try:
                self.client.xgroup_create(s.src.stream, self.cfg.group, id="0", mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    def _renew(self) -> None:
        """Extend the locks; take a vanished one again (the server restarted and lost it)."""
        for s in self.sources:
            if renew(self.client, s.lock_key, s.token):
                continue
            if not self.client.set(s.lock_key, s.token, nx=True, px=LOCK_MS):
                raise FeatureStoreError(
                    f"stream source '{s.src.name}': lost the lock of '{s.src.stream}' (now "
                    f"held by {holder_text(self.client.get(s.lock_key))}); stopping"
                )
            self._groups()  # a server that lost the lock may have lost the groups too

    def close(self) -> None:
        """Release the locks and the connection."""
        for s in self._locked:
            try:
                release(self.client, s.lock_key, s.token)
            except Exception:  # the lock expires by itself
                pass
        self._locked = []
        self.client.close()

    def _round(self, once: bool, count: int) -> int:
        """Read and handle one round of every source (up to ``count`` entries each); returns
        the entries read."""
        import redis

        streams = {s.src.stream: s.cursor for s in self.sources}
        waiting = all(c == ">" for c in streams.values()) and not once
        block = self.cfg.block_ms if waiting else None
        try:
            if isinstance(self.client, ClusterClient) and len(streams) > 1:
                reply = self._read_each(streams, count, block)
            else:
                reply = self.client.xreadgroup(
                    self.cfg.group, CONSUMER, streams, count=count, block=block
                )
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            self._groups()
            raise _LostGroup(
                f"the stream server lost group '{self.cfg.group}' (a restart without "
                "persistence?); created it again at the streams' first entry"
            ) from None
        by_stream = {
            (k.decode() if isinstance(k, bytes) else k): entries for k, entries in reply or []
        }
        total = 0
        for s in self.sources:
            entries = by_stream.get(s.src.stream, [])
            again = s.cursor != ">"  # this consumer's pending entries, in id order
            if again:
                s.cursor = as_text(entries[-1][0]) if entries else ">"
            if entries:
                self._handle(s, entries, again=again)
                total += len(entries)
        return total

    def _read_each(self, streams: dict[str, str], count: int, block: int | None) -> list[Any]:
        """XREADGROUP of each stream alone (a cluster node answers only for its own slots),
        the wait shared among them and skipped once a stream had entries."""
        reply: list[Any] = []
        each = None if block is None else max(1, block // len(streams))
        for name, cursor in streams.items():
            got = self.client.xreadgroup(
                self.cfg.group, CONSUMER, {name: cursor}, count=count,
                block=None if reply else each,
            )  # fmt: skip
            reply += got or []
        return reply

    def _handle(self, s: _Source, entries: list[Any], *, again: bool = False) -> None:
        """Dead-letter the bad events and apply the good ones online; buffer them for the next
        flush (the Parquet file, then the acknowledgement). ``again``: entries read before a
        crash or a retry, which may have left dead letters of events now good (see
        ``_drop_stale_letters``)."""
        t0 = time.perf_counter()
        events, dead = self._parse(s, entries)
        now = now_us()
        for e in events:  # ranks a tie offline as online: after every earlier write
            e.applied_us = now
        windows = [
            WindowBatch(
                self.online,
                self.store.project,
                v,
                events,
                s.schema.arrow,
                materialized=v.name not in s.unmaterialized,
            )
            for v in s.views
            if v.is_window
        ]
        late: dict[str, str] = {}
        while True:  # an event late for one view leaves every view; drop until none is late
            found = {i: wb.view.name for wb in windows for i in wb.late(set(late))}
            if not found:
                break
            late.update({i: f"late for window view '{name}'" for i, name in found.items()})
        dead += [(e.raw_id, _late_reason(e, late[e.raw_id], s), e.fields) for e in events
                 if e.raw_id in late]  # fmt: skip
        good = [e for e in events if e.raw_id not in late]
        if again and good:
            self._drop_stale_letters(s, good)
        if dead:  # first, so a crash later cannot lose a decision (a replay may repeat one)
            pipe = self.client.pipeline(transaction=False)
            cap = self.store.config.stream.dead_letter_maxlen  # exact: the newest N stay
            for rid, reason, fields in dead:
                record = {"id": rid, "source": s.src.name, "reason": reason}
                letter = {**record, "data": _as_json(fields)}
                pipe.xadd(s.dead_stream, letter, maxlen=cap, approximate=False)
            pipe.execute()
        replayed = 0
        for wb in windows:
            replayed += wb.write(self.online, set(late), grace_us=self.grace_us, now_us=now)[1]
        for v in s.views:
            if not v.is_window:
                write_plain(
                    self.online, self.store.project, v, good, s.schema.arrow,
                    grace_us=self.grace_us, now_us=now,
                    batch_size=self.store.config.online_store.write_batch_size,
                )  # fmt: skip
        s.unacked += [as_text(e[0]) for e in entries]
        s.unwritten += good
        self._count(s, len(entries), good, len(dead), replayed, time.perf_counter() - t0)

    def _drop_stale_letters(self, s: _Source, good: list[Event]) -> None:
        """Delete the dead letters of events applied now on a second read: a crash after an
        event was dead-lettered but before it was acknowledged, then a fix (say a larger
        allowed lateness), makes the same entry good on the restart. Its letter would
        otherwise stay, and a replay would apply the event twice."""
        ids = {e.raw_id for e in good}
        first_ms = min(int(i.partition("-")[0]) for i in ids)
        start = f"{max(0, first_ms - _LETTER_SKEW_MS)}-0"  # letters come after their entry
        stale: list[Any] = []
        while True:
            page = self.client.xrange(s.dead_stream, start, "+", count=1000)
            for lid, fields in page:
                if as_text(fields.get(b"id", fields.get("id", b""))) in ids:
                    stale.append(lid)
            if len(page) < 1000:
                break
            start = "(" + as_text(page[-1][0])
        for i in range(0, len(stale), 1000):
            self.client.xdel(s.dead_stream, *stale[i : i + 1000])

    @staticmethod
    def _parse(s: _Source, entries: list[Any]) -> tuple[list[Event], list[tuple[str, str, Any]]]:
        """The valid events of a round, and the bad entries as (id, reason, fields)."""
        events: list[Event] = []
        dead: list[tuple[str, str, Any]] = []
        for rid, fields in entries:
            rid = as_text(rid)
            if fields is None:  # deleted from the stream after delivery: nothing to apply
                continue
            try:
                ev = s.schema.parse(rid, fields)
            except Exception as exc:  # one bad entry must not stop the stream
                ev = f"could not be read ({type(exc).__name__}: {str(exc).splitlines()[0]})"
            if isinstance(ev, str):
                dead.append((rid, ev, fields))
            else:
                ev.fields = fields
                events.append(ev)
        return events, dead

    def _count(
        self, s: _Source, read: int, good: list[Event], dead: int, replayed: int, secs: float
    ) -> None:
        """A handled round into the stats and the metrics."""
        if self.metrics is not None:
            counts = {"applied": len(good), "dead": dead, "replayed": replayed}
            self.metrics.observe_round(s.src.name, [e.id for e in good], counts, secs)
        st = self.stats
        st.replayed += replayed
        st.read += read
        st.applied += len(good)
        st.dead += dead
        st.batches += 1
        st.by_source[s.src.name] = st.by_source.get(s.src.name, 0) + len(good)

    def _progress(self) -> None:
        """The group's lag per source into the metrics, and a progress line when echoing."""
        lag = []
        for s in self.sources:
            try:
                n = (group_info(self.client, s.src.stream, self.cfg.group) or {}).get("lag")
            except Exception:  # progress only
                n = None
            lag.append(f"{s.src.name} lag {'?' if n is None else n}")
            if self.metrics is not None and n is not None:
                self.metrics.lag.labels(s.src.name).set(n)
        st = self.stats
        if self.echo is not None:
            self._say(
                f"ingest: {st.applied:,} events applied, {st.dead:,} dead-lettered, "
                f"{st.batches:,} rounds; {', '.join(lag)}"
            )

    def _say(self, line: str) -> None:
        if self.echo is not None:
            self.echo(line)
        else:
            print(line, file=sys.stderr)


def _late_reason(e: Event, what: str, s: _Source) -> str:
    when = to_utc(e.ts).isoformat().replace("+00:00", "Z")
    return (
        f"'{s.src.timestamp_field}' {when} is {what}: older than its watermark minus the largest "
        "window and allowed_lateness (raise allowed_lateness to accept such events)"
    )


def _busy(s: _Source, holder: Any) -> str:
    """Why the lock of a source's stream could not be taken, naming its holder."""
    if is_materialize(holder):
        return (
            f"stream source '{s.src.name}': {holder_text(holder)} is writing the views fed by "
            f"stream '{s.src.stream}'; start ingest when it has finished"
        )
    return (
        f"stream source '{s.src.name}': another ingest is reading stream '{s.src.stream}' "
        f"({as_text(holder or b'?')}); stop it first (its lock expires {LOCK_MS // 1000}s after "
        "it dies)"
    )


def _materialized(store: FeatureStore, view: FeatureView) -> bool:
    """Whether ``view`` was materialized to this online store since its definition last changed
    (an apply that changes a view's schema drops its materialization record)."""
    from featurestore.registry import watermark_us

    return watermark_us(store.registry, view.name, store._store_id) is not None


def _as_json(fields: Any) -> bytes:
    return orjson.dumps({as_text(k): as_text(v) for k, v in fields.items()})
