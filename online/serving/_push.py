"""Pushes: rows checked against a feature view's schema and written, under a time limit, to its
online store, its offline source or both (``to``; a mixin of Engine).

``to="online"`` (the default) writes the online store only. ``to="offline"`` appends the rows to
the view's source folder as one Parquet file (featurestore.offline.push), so training sets and
later materializations see them; ``to="online_and_offline"`` does both, the offline file first
(the durable record), then the online store. When the online write then fails or times out the
request fails as an online push does, and the offline file stays: a retry adds an identical
row, which the point-in-time join resolves to the same values.

Before anything is written, every front end's rows are checked here beside ``push_table``: the
JSON forms answers use are read back (``json_values``: base64 text of a Bytes feature,
``"NaN"``/``"Infinity"``/``"-Infinity"`` of a float one) and finite numbers a Float32 would
store as infinity are refused; an event time more than ``stream.max_future`` after now is
refused, as stream ingest refuses it (``check_not_future``); and so is a join key too long
for the embedded store (``check_key_sizes``). A refused push writes nothing, online or offline.

A write runs on the engine's thread pool, so a hung store or disk cannot hang the request; its
limit is ten times the read budget, at least a second (writes may take longer than reads). A
write that lands after its request timed out is not recorded in the audit log.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures as cf
import logging
import math
import numbers
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from featurestore._inputs import entity_input
from featurestore._time import duration_us, now_us, parse_duration
from featurestore.errors import (
    EntityDataError,
    FeatureStoreError,
    OnlineStoreError,
    OnlineStoreUnavailableError,
)
from featurestore.online.models.errors import without_paths
from featurestore.online.serving import _requests as rq
from featurestore.online.serving.config import MAX_DEADLINE_MS
from featurestore.online.serving.errors import BadRequestError, NotReadyError

if TYPE_CHECKING:
    from featurestore.online.serving.audit import AuditLog
    from featurestore.online.serving.config import ServingConfig
    from featurestore.online.serving.metrics import Metrics
    from featurestore.store import FeatureStore

log = logging.getLogger("featurestore.serving")


def _plain_rows(rows: Any) -> Any:
    """In-process rows as ``to_columns`` takes them: columns as lists (``entity_input``, which
    lists numpy datetime64 columns as times, not as bare integers); rows it refuses are left
    for ``to_columns`` to name as the push's field."""
    try:
        return entity_input(rows)
    except EntityDataError:
        return rows


# JSON has no NaN or infinity: answers spell them so (protobuf's JSON mapping), pushes read them
_NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
_F32_END = 2.0**128 - 2.0**103  # the least magnitude a float32 rounds to infinity
_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1  # ints pyarrow takes as they are for a float column
_FLOAT_TYPES = {"float32": False, "float64": False, "array<float32>": True, "array<float64>": True}


class _OutOfRange(Exception):
    """A finite number a float column cannot hold (it would be stored as infinity)."""


def json_values(view: Any, cols: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """Pushed feature columns with the JSON forms answers use read back: a text value of a
    Bytes feature is base64 (as answers give bytes), ``"NaN"``, ``"Infinity"`` and
    ``"-Infinity"`` of a float feature (or float array element) are those floats. A value that
    is not base64 text, or a finite number a Float32 (Float64) feature would store as infinity,
    is a BadRequestError naming its column and row; other values are left for ``push_table``."""
    from featurestore.feature_view import FeatureView

    if not isinstance(view, FeatureView):  # (on-demand views: push_table refuses them)
        return cols
    out = dict(cols)
    for f in view.features:
        vals, kind = cols.get(f.name), f.dtype.name
        if vals is None:
            continue
        where = f"rows.{f.name}"
        if kind == "bytes":
            if any(type(v) is str for v in vals):
                out[f.name] = [_unbase64(v, where, i, view.name) for i, v in enumerate(vals)]
        elif kind in _FLOAT_TYPES:
            f32 = kind.endswith("float32>") or kind == "float32"
            if not _FLOAT_TYPES[kind] and _plain_floats(vals, f32):
                continue  # the usual column: nothing to read back or refuse
            cell = _float_list if _FLOAT_TYPES[kind] else _float
            try:
                out[f.name] = [cell(v, f32) for v in vals]
            except _OutOfRange as exc:
                i = next(i for i, v in enumerate(vals) if _out_of_range(cell, v, f32))
                raise BadRequestError(
                    f"push: {where}[{i}]{exc}; feature '{f.name}' of view '{view.name}' is "
                    f"{kind}, which would store it as infinity",
                    field=where,
                ) from None
    return out


def _plain_floats(vals: list[Any], f32: bool) -> bool:
    """Whether a float column holds only Python floats (and nulls) it can store as they are:
    one C-level pass for most pushes (a NaN or an infinity fails it: ``_float`` decides)."""
    nums = [v for v in vals if v is not None]
    if not all(type(v) is float for v in nums):
        return False
    return not f32 or all(-_F32_END < v < _F32_END for v in nums)


def _unbase64(v: Any, where: str, i: int, view: str) -> Any:
    """A Bytes value: text decoded from standard base64; anything else as it is."""
    if type(v) is not str:
        return v
    try:
        return base64.b64decode(v, validate=True)
    except ValueError:  # binascii.Error, or text that is not ASCII
        shown = repr(v) if len(v) <= 40 else repr(v[:40])[:-1] + "...'"
        raise BadRequestError(
            f"push: {where}[{i}] is {shown}, not base64 text; feature '{where[5:]}' of view "
            f"'{view}' is bytes, which JSON carries as standard base64 (as answers give it)",
            field=where,
        ) from None


def _float(v: Any, f32: bool) -> Any:
    """A float feature's value: a non-finite spelling read, an int past int64 made a float;
    _OutOfRange for a finite number the column cannot hold."""
    t = type(v)
    if t is str:
        return _NON_FINITE.get(v, v)  # any other text: push_table names it
    if t is bool or not isinstance(v, numbers.Real):
        return v
    if isinstance(v, numbers.Integral) and not _I64_MIN <= v <= _I64_MAX:
        try:
            v = float(v)
        except OverflowError:
            raise _OutOfRange(f" is an integer of {int(v).bit_length()} bits") from None
    if f32 and not -_F32_END < v < _F32_END and math.isfinite(v):
        raise _OutOfRange(f" is {v!r}, beyond the largest Float32 (3.4028235e+38)")
    return v


def _float_list(v: Any, f32: bool) -> Any:
    """A float array's value: ``_float`` of each element (anything but a list as it is)."""
    if type(v) is not list:
        return v
    try:
        return [_float(x, f32) for x in v]
    except _OutOfRange as exc:
        j = next(j for j, x in enumerate(v) if _out_of_range(_float, x, f32))
        raise _OutOfRange(f"[{j}]{exc}") from None


def _out_of_range(cell: Callable[[Any, bool], Any], v: Any, f32: bool) -> bool:
    try:
        cell(v, f32)
    except _OutOfRange:
        return True
    return False


def check_not_future(view: Any, table: Any, ts_name: str, now: int, max_future: str) -> None:
    """BadRequestError naming the first row whose event time is more than ``max_future`` (the
    config's ``stream.max_future``, the bound stream ingest puts on event times) after ``now``:
    online such a row would be served before its time and hold its entity's row (any later
    push is older), while the training set at now would not give it."""
    import numpy as np

    from featurestore.online.codec import EVENT_TS

    ev = table.column(EVENT_TS).to_numpy()
    ahead = np.flatnonzero(ev > now + (duration_us(parse_duration(max_future)) or 0))
    if len(ahead):
        i = int(ahead[0])
        raise BadRequestError(
            f"push: rows.{ts_name}[{i}] is {_iso(int(ev[i]))}, more than stream.max_future "
            f"({max_future}) after now "
            f"({_iso(now)}); feature view '{view.name}' takes no rows from the future (a unit "
            "or time zone mix-up?), so nothing of this push was written",
            field=f"rows.{ts_name}",
        )


def _iso(us: int) -> str:
    t = datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(microseconds=us)
    return t.isoformat().replace("+00:00", "Z")


def check_key_sizes(
    store: Any, project: str, view: Any, cols: dict[str, list[Any]], kinds: Any
) -> None:
    """BadRequestError naming the join-key column and row of a key too long for the embedded
    (LMDB) store, with its length and the limit: the store could never hold it, so a retry
    (the 503 of a failed write) would fail the same way. Other stores take any length."""
    from featurestore.online.embedded import EmbeddedOnlineStore
    from featurestore.online.keys import build_keys

    if not isinstance(store, EmbeddedOnlineStore):
        return
    limit = store.max_key_size()
    # a bound first (a character escapes to at most 4 bytes, an int key to 20), so the usual
    # short keys are not rendered twice
    bound = 2 * len(project) + 4 * len(view.name) + 8
    for k in view.join_keys:
        strs = [len(v) for v in cols[k] if type(v) is str]
        bound += 4 * len(k) + 2 + max(20, 4 * max(strs, default=0) + 2)
    if bound <= limit:
        return
    keys = build_keys(project, view.name, view.join_keys, [cols[k] for k in view.join_keys], kinds)
    longest = max(map(len, keys))
    if longest <= limit:
        return
    i = next(i for i, k in enumerate(keys) if len(k) == longest)
    sizes = {k: len(str(cols[k][i]).encode()) for k in view.join_keys}
    col = max(sizes, key=sizes.__getitem__)
    raise BadRequestError(
        f"push: rows.{col}[{i}] is {sizes[col]} bytes long, which makes its online key "
        f"{longest} bytes; the embedded online store holds keys of at most {limit} bytes "
        "(LMDB's limit, project, view and join-key names included), so use shorter join-key "
        "values or the redis online store",
        field=f"rows.{col}",
    )


class Pushes:
    """Validated, time-limited writes of pushed rows (Engine's part)."""

    store: FeatureStore
    config: ServingConfig
    metrics: Metrics
    _pool: cf.ThreadPoolExecutor
    _grace_us: int
    _audit: AuditLog | None
    _observe: Callable[[str, float, bool, int], None]  # the engine's latency and counters

    def _push_fn(
        self, feature_view: str, rows: Any, to: str
    ) -> tuple[Callable[[], int], dict[str, list[Any]]]:
        """The write of a validated push, and its entity keys (for the audit log)."""
        from featurestore._cleanup import is_fenced
        from featurestore.offline.push import push_mode, push_target, write_offline_push
        from featurestore.online.codec import EVENT_TS
        from featurestore.online.writer import latest_rows, write_table

        offline, online = push_mode(to)
        if not isinstance(feature_view, str) or not feature_view:
            raise BadRequestError("feature_view must be a view's name", field="feature_view")
        state = self.store.registry
        view = state.feature_view(feature_view)
        record = state.pending_cleanup.get(view.name) if online else None
        if record is not None and is_fenced(record, view):
            # (its old-key rows are still to be deleted view-wide: a row written now would go too)
            raise NotReadyError(
                f"feature view '{view.name}' changed its join keys and its rows under the old "
                "keys are not deleted yet; run `featurestore apply` again once no ingest reads "
                "its stream, then push online"
            )
        now = now_us()
        cols = json_values(view, rq.to_columns(_plain_rows(rows), "rows"))
        table = rq.push_table(view, cols, now, self.config.max_entities, state.join_key_kinds)
        ts_name = view.source.timestamp_field
        ts_name = ts_name if ts_name in cols else "event_timestamp"
        check_not_future(view, table, ts_name, now, self.store.config.stream.max_future)
        if online:
            check_key_sizes(self.store.online, self.store.project, view, cols, state.join_key_kinds)
        # rows of one entity at one event time (the created time is the push's): the last
        # listed is kept, offline too, where a training set could otherwise pick either
        table = latest_rows(table, (*view.join_keys, EVENT_TS))
        target = push_target(view, self.store.config, state) if offline else None
        store, project = self.store.online, self.store.project
        batch = self.store.config.online_store.write_batch_size

        def write() -> int:
            if target is not None:  # first: the durable record
                write_offline_push(target, table, now_us=now)
            if not online:
                return table.num_rows
            # per key the row the point-in-time join picks, as offline: the push's latest,
            # unless the store already holds a newer one (checked and set atomically, so a
            # concurrent push or stream write of the same entity cannot slip in between)
            return write_table(
                store, project, view, latest_rows(table, view.join_keys), now_us=now,
                key_ttl_grace_us=self._grace_us, batch_size=batch, only_newer=True,
            )  # fmt: skip

        return write, {k: cols[k] for k in view.join_keys}

    def push(
        self,
        feature_view: str,
        rows: Any,
        *,
        to: str = "online",
        deadline_ms: float | None = None,
    ) -> int:
        """Validate rows against the view's schema and write them where ``to`` says ("online",
        "offline" or "online_and_offline"; see the module doc); returns rows written."""
        t0 = time.perf_counter()
        timeout = self._push_timeout(deadline_ms)
        write, keys = self._push_fn(feature_view, rows, to)
        fut = self._pool.submit(write)
        try:
            n = fut.result(timeout=timeout)
        except Exception as exc:
            raise self._push_error(exc, to) from None
        return self._pushed(feature_view, n, keys, t0, to)

    async def apush(
        self,
        feature_view: str,
        rows: Any,
        *,
        to: str = "online",
        deadline_ms: float | None = None,
    ) -> int:
        """``push`` for an event loop."""
        t0 = time.perf_counter()
        timeout = self._push_timeout(deadline_ms)
        write, keys = self._push_fn(feature_view, rows, to)
        fut = self._pool.submit(write)
        try:
            n = await asyncio.wait_for(asyncio.wrap_future(fut), timeout)
        except Exception as exc:
            raise self._push_error(exc, to) from None
        return self._pushed(feature_view, n, keys, t0, to)

    def _pushed(
        self, feature_view: str, n: int, keys: dict[str, list[Any]], t0: float, to: str
    ) -> int:
        """A push that landed: counted, timed and (when on) audited; returns its row count."""
        self._observe("push", t0, False, n)
        if self._audit is not None:
            self._audit.push(feature_view, n, keys, to)
        return n

    def _push_timeout(self, deadline_ms: float | None) -> float:
        """Seconds a push may take: 10x the read budget (writes may legitimately take longer),
        at least 1 s. A ``deadline_ms`` outside (0, MAX_DEADLINE_MS] is a BadRequestError, as
        for reads (every front end: gRPC cannot refuse it in its schema, as REST does)."""
        if deadline_ms is not None and (
            not isinstance(deadline_ms, (int, float))
            or isinstance(deadline_ms, bool)
            or not 0 < deadline_ms <= MAX_DEADLINE_MS  # NaN fails too
        ):
            raise BadRequestError(
                f"deadline_ms must be a number of milliseconds above 0 and up to "
                f"{MAX_DEADLINE_MS}, got {deadline_ms!r}",
                field="deadline_ms",
            )
        return max(1.0, (deadline_ms or self.config.deadline_ms) * 10 / 1000)

    def _push_error(self, exc: BaseException, to: str = "online") -> BaseException:
        """The error a failed write answers with. A store or disk failure is logged whole and
        answered without server paths; it is counted by the servers, as every failed push
        (``Metrics.failed``), so a request is counted once whatever failed."""
        from featurestore.offline.push import OfflineWriteError

        if isinstance(exc, FeatureStoreError) and not isinstance(
            exc, (OnlineStoreError, OfflineWriteError)
        ):
            return exc
        if isinstance(exc, (asyncio.TimeoutError, cf.TimeoutError)):
            if to == "online":
                return OnlineStoreUnavailableError("push: the online store did not answer in time")
            return OnlineStoreUnavailableError(
                f"push (to={to}): the writes did not finish in time; the offline file may still "
                "land (a retry then adds an identical row)"
            )
        log.error("push (to=%s) failed: %s", to, exc)
        why = without_paths(str(exc), self.store.config.repo_path)
        if isinstance(exc, OfflineWriteError):
            return OfflineWriteError(why)
        return OnlineStoreUnavailableError(f"push: the online store failed: {why}")
