"""Store-agnostic online reads: keys for every view, one ``store.read``, decode, status, defaults.

The hot path for a few entities is a handful of numpy calls per view: one ``np.frombuffer``
decodes every present row of a view, and ``records.tolist()`` + ``zip`` turns them into
per-feature Python lists without a Python loop per value.

Window views (online/windows.py) are read in the same ``store.read``: their values are
OnlineWindows states, read at ``now``. On-demand features are computed after the fetch, per
entity row, from ``request_data`` and the fetched features (inputs not requested by the caller
are fetched too and left out of the response).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np

from featurestore._time import EPOCH
from featurestore.online.base import OnlineStore, Status
from featurestore.online.codec import FEW_ROWS, DecodedRows, RowCodec
from featurestore.online.keys import as_pylist

if TYPE_CHECKING:
    import polars as pl
    import pyarrow as pa

    from featurestore.feature_view import FeatureView

_NONZERO = re.compile(b"[^\\x00]")
_STATUS = (Status.PRESENT, Status.NOT_FOUND, Status.EXPIRED)
# plain ints: comparing a numpy array with an IntEnum member is ~10x slower
_PRESENT, _NOT_FOUND, _EXPIRED = int(Status.PRESENT), int(Status.NOT_FOUND), int(Status.EXPIRED)
_PLANS: dict[tuple[int, tuple[str, ...]], _ViewPlan] = {}
_MAX_PLANS = 4096


def _us_to_datetime(us: int) -> datetime | None:
    """A stored time as a UTC datetime; None past the years 1-9999 a datetime holds, as the
    training set reads such a source value (see featurestore.types.TIME_MIN_US)."""
    try:
        return EPOCH + timedelta(microseconds=us)
    except OverflowError:
        return None


class _ViewPlan:
    """What one (view, features) request needs, computed once per view object."""

    def __init__(self, view: FeatureView, features: tuple[str, ...]) -> None:
        self.view = view  # keeps id(view) from being reused while the plan is cached
        self.codec = RowCodec(view)
        self.features = features
        fields = [view.field(f) for f in features]  # FeatureNotFoundError names the view
        self.fields = fields
        self.ttl_us = view.ttl_us
        self.join_keys = view.join_keys
        pos = {name: j for j, name in enumerate(self.codec.names)}
        self.field_idx = np.array([pos[f] for f in features], dtype=np.intp)
        fixed_pos = self.codec._fixed_pos
        self.record_fields = [f"c{fixed_pos[f]}" if f in fixed_pos else None for f in features]
        # When all fixed features share one dtype they form an (n, k) strided matrix.
        self.matrix: tuple[np.dtype, int, int] | None = None
        self.matrix_cols: list[int | None] | None = None
        fixed = self.codec.fixed
        dtypes = {f.dtype.numpy for _, f in fixed}
        if len(dtypes) == 1:
            dt = np.dtype(dtypes.pop())
            offset = self.codec.record_dtype.fields[f"c{fixed[0][0]}"][1]
            self.matrix = (dt, offset, len(fixed))
            order = {f.name: c for c, (_, f) in enumerate(fixed)}
            cols = [order.get(f) for f in features]
            has_ts = any(f.dtype.name == "timestamp" for f in fields)
            if has_ts or cols != list(range(len(fixed))):
                self.matrix_cols = cols
        # For a few rows of a fixed-only view: each row is one struct.unpack (see codec.row_struct)
        # and feature j is item 4 + (its place among the fixed features) of the tuple.
        self.row_struct = self.codec.row_struct
        self.no_nulls = bytes(self.codec.n_null_bytes)
        nulls_at = self.codec.record_dtype.fields["h_nulls"][1]
        self.nulls_span = (nulls_at, nulls_at + self.codec.n_null_bytes)  # in a stored value
        fixed_order = {f.name: c for c, (_, f) in enumerate(fixed)}
        self.struct_cols = [4 + fixed_order.get(f, 0) for f in features]
        self.ts_out = [c for c, f in enumerate(fields) if f.dtype.name == "timestamp"]
        self.defaults = [f.served_default for f in fields]
        cols_of: dict[int, list[int]] = {}
        for c, j in enumerate(self.field_idx.tolist()):
            cols_of.setdefault(j, []).append(c)
        self.cols_of_field = cols_of  # schema field index -> output columns
        self.unique = len(set(features)) == len(features)  # else output lists may be shared
        # the request is the view's float64 features, all of them in stored order: a row's
        # values are one run of its stored bytes (see _ViewResult.stored_block)
        self.as_stored = (
            self.matrix is not None
            and self.matrix_cols is None
            and self.matrix[0] == np.float64
            and self.unique
        )
        self._layout: Any = None  # StoredLayout, False (none), or None (not yet looked at)

    def stored_rows(self, values: list[Any], now_us: int) -> _ViewResult | None:
        """The view's result read straight from the stored bytes when the request is served
        as stored and every row is (see online/_stored.py); else None."""
        layout = self._layout
        if layout is None:
            from featurestore.online._stored import StoredLayout

            layout = self._layout = StoredLayout.of(self) or False
        return layout.result(self, values, now_us) if layout else None


def _plan(view: Any, features: list[str]) -> Any:
    key = (id(view), tuple(features))
    plan = _PLANS.get(key)
    if plan is None or plan.view is not view:
        if len(_PLANS) >= _MAX_PLANS:
            _PLANS.clear()
        from featurestore.online._computed import OnDemandPlan, WindowPlan

        if getattr(view, "is_window", False):
            plan = WindowPlan(view, key[1])
        elif not view.join_keys and hasattr(view, "inputs_of"):
            plan = OnDemandPlan(view, key[1])
        else:
            plan = _ViewPlan(view, key[1])
        _PLANS[key] = plan
    return plan


class _ViewResult:
    """Decoded rows and per-row status of one view in a response."""

    __slots__ = ("_rows", "_status", "_status_py", "all_served", "decoded", "now_us", "plan")

    def __init__(self, plan: _ViewPlan, decoded: DecodedRows, now_us: int) -> None:
        self.plan = plan
        self.decoded = decoded
        self.now_us = now_us
        self._status: np.ndarray | None = None
        self._status_py: list[int] | None = None
        ttl = plan.ttl_us
        raw = decoded.raw
        # a few rows of a fixed-only view: unpacked in plain Python on first use (see _unpacked)
        self._rows: list[tuple[Any, ...]] | bool = raw is not None and plan.row_struct is not None
        if not decoded.all_present:
            self.all_served = False
        elif ttl is None:
            self.all_served = True
        elif raw is not None:
            self.all_served = all(
                now_us - int.from_bytes(r[:8], "little", signed=True) <= ttl for r in raw
            )
        elif decoded.n <= 64:  # plain Python beats numpy's call overhead for a few rows
            self.all_served = all(now_us - e <= ttl for e in decoded.records["h_ev"].tolist())
        else:
            self.all_served = not bool((now_us - decoded.records["h_ev"] > ttl).any())

    @property
    def n(self) -> int:
        """The number of rows asked for."""
        return self.decoded.n

    def _unpacked(self) -> list[tuple[Any, ...]] | None:
        """The present rows as struct tuples, or None when this view is decoded by numpy."""
        rows = self._rows
        if rows is True:
            unpack = self.plan.row_struct.unpack  # type: ignore[union-attr]
            rows = self._rows = [unpack(r) for r in self.decoded.raw]  # type: ignore[union-attr]
        elif rows is False:
            return None
        return rows  # type: ignore[return-value]

    @property
    def status(self) -> np.ndarray:
        """int8 Status per row."""
        if self._status is None:
            if self.all_served:  # every row PRESENT (no decode needed to say so)
                self._status = np.zeros(self.n, dtype=np.int8)
                return self._status
            d = self.decoded
            if self._status_py is not None or self._rows is not False or d.n <= 1024:
                self._status = np.array(self._statuses(), dtype=np.int8)
            else:
                status = (~d.present).view(np.int8).copy()
                ttl = self.plan.ttl_us
                if ttl is not None:
                    status[d.present & (self.now_us - d.event_ts > ttl)] = _EXPIRED
                self._status = status
        return self._status

    def _statuses(self) -> list[int]:
        """Status per row as Python ints."""
        if self._status_py is None:
            if self.all_served:  # every row PRESENT (no decode needed to say so)
                self._status_py = [_PRESENT] * self.n
                return self._status_py
            rows = self._unpacked()
            d = self.decoded
            if self._status is not None or d.n > 1024:
                self._status_py = self.status.tolist()
            else:  # a Python pass beats a dozen numpy calls for a request-sized batch
                st = [_NOT_FOUND] * d.n
                ttl = self.plan.ttl_us
                now = self.now_us
                if ttl is None:
                    for i in d.present_idx:
                        st[i] = _PRESENT
                else:
                    ev = [r[0] for r in rows] if rows is not None else d.records["h_ev"].tolist()
                    for i, e in zip(d.present_idx, ev, strict=True):
                        st[i] = _EXPIRED if now - e > ttl else _PRESENT
                self._status_py = st
        return self._status_py

    def _null_rows(self) -> list[tuple[int, int]]:
        """(row, null bitmap as an int) of the present rows with a null feature."""
        d = self.decoded
        pidx = d.present_idx
        rows = self._unpacked()
        if rows is not None:
            zero = self.plan.no_nulls
            return [
                (i, int.from_bytes(r[3], "little"))
                for i, r in zip(pidx, rows, strict=True)
                if r[3] != zero
            ]
        if not len(d.records):
            return []
        nb = d.records["h_nulls"]
        w = nb.shape[1]
        flat = nb.tobytes()  # row k's bitmap is flat[k * w : (k + 1) * w]
        if not flat.strip(b"\0"):
            return []
        ks = dict.fromkeys(m.start() // w for m in _NONZERO.finditer(flat))
        return [(pidx[k], int.from_bytes(flat[k * w : (k + 1) * w], "little")) for k in ks]

    def _one_row_lists(self) -> list[list[Any]]:
        """:meth:`served_lists` of a one-row request of a fixed-only view, straight from its
        struct tuple: the general path's patching costs more than the row itself."""
        plan = self.plan
        rows = self._unpacked()
        if not rows or not self.all_served:  # not found, or present but past the ttl
            return [[default] for default in plan.defaults]
        row = rows[0]
        values = [row[c] for c in plan.struct_cols]
        for c in plan.ts_out:
            values[c] = _us_to_datetime(values[c])
        if row[3] != plan.no_nulls:
            for c, _ in self._null_cells([(0, int.from_bytes(row[3], "little"))], None):
                values[c] = None
        return [[v] for v in values]

    def _present_lists(self) -> list[list[Any]]:
        """Per requested feature, the raw values of the present rows (nulls not yet applied)."""
        plan, d = self.plan, self.decoded
        rows = self._unpacked()
        if rows is not None:
            if len(rows) == 1:
                row = rows[0]
                out = [[row[c]] for c in plan.struct_cols]
            elif rows:
                by_col = list(zip(*rows, strict=True))
                out = [list(by_col[c]) for c in plan.struct_cols]
            else:
                return [[] for _ in plan.features]
            for c in plan.ts_out:
                out[c] = [_us_to_datetime(v) for v in out[c]]
            return out
        rec = d.records
        if not len(rec):
            return [[] for _ in plan.features]
        if plan.matrix is not None:  # every fixed feature has one dtype: one tolist for all
            per_field = self._matrix().T.tolist()
            if plan.matrix_cols is None:
                return per_field
            fixed_lists: list[list[Any] | None] = [
                None if c is None else per_field[c] for c in plan.matrix_cols
            ]
        else:
            fixed_lists = [None if c is None else rec[c].tolist() for c in plan.record_fields]
        out = []
        pidx = d.present_idx
        for f, vals in zip(plan.fields, fixed_lists, strict=True):
            if vals is None:
                src = d.var_values[f.name]
                vals = [src[i] for i in pidx]
                if f.dtype.is_list:
                    vals = [v.tolist() if v is not None else None for v in vals]
            elif f.dtype.name == "timestamp":
                vals = [_us_to_datetime(v) for v in vals]
            out.append(vals)
        return out

    def _matrix(self) -> np.ndarray:
        """(rows, fixed features) over the present rows' records: a strided view, no copy."""
        dtype, offset, k = self.plan.matrix  # type: ignore[misc]
        return np.ndarray(
            (len(self.decoded.records), k), dtype=dtype, buffer=self.decoded.records.view(np.uint8),
            offset=offset, strides=(self.plan.codec.fixed_size, dtype.itemsize),
        )  # fmt: skip

    def dense(self) -> list[Any] | None:
        """Per requested feature, its served values without building the view's lists: a
        float64 array when the column has no null, else a list with None at the nulls; None
        for a feature outside the view's float64 matrix. None for the whole view unless every
        row is served as stored (no defaults) and the view is decoded by numpy. Encoders write
        the arrays as bytes instead of walking lists."""
        plan = self.plan
        if (
            self._rows is not False
            or plan.matrix is None
            or plan.matrix[0] != np.float64
            or not self.all_served
            or not len(self.decoded.records)
        ):
            return None
        rows = np.ascontiguousarray(self._matrix().T)  # one copy: feature c is row c
        cols = plan.matrix_cols or range(len(rows))
        out: list[Any] = [None if c is None else rows[c] for c in cols]
        # all rows served: row i of the view is entity i
        for c, i in self._null_cells(self._null_rows(), None):
            if type(out[c]) is np.ndarray:
                out[c] = out[c].tolist()
            if out[c] is not None:
                out[c][i] = None
        return out

    def stored_block(self) -> tuple[bytes, np.ndarray | None] | None:
        """The requested features' values as little-endian float64, one feature after another
        (n each), when the view serves them as stored: all its float64 features in stored
        order (``plan.as_stored``) and every row served. Null cells hold 0.0 and are marked in
        the (features, n) bool array that comes with them (None: no null). Else None. The
        protobuf encoder writes a column as a slice of these bytes instead of walking values."""
        plan = self.plan
        d = self.decoded
        if not plan.as_stored or not self.all_served or not len(d.records):
            return None
        raw = d.raw
        if raw is not None and len(raw) == 1:  # one entity: a slice of its stored value
            value = raw[0]
            a, b = plan.nulls_span
            if value[a:b] != plan.no_nulls:
                return None  # its lists say which are null
            _, offset, k = plan.matrix  # type: ignore[misc]
            return value[offset : offset + 8 * k], None
        matrix = self._matrix().T  # (features, n): every row served, so row i is entity i
        if not self._null_rows():
            return matrix.astype("<f8", copy=False).tobytes(), None
        bits = np.unpackbits(
            d.records["h_nulls"], axis=1, count=plan.codec.n_fields, bitorder="little"
        )
        nulls = bits[:, plan.field_idx].T.astype(bool)
        return np.where(nulls, 0.0, matrix).astype("<f8", copy=False).tobytes(), nulls

    def _null_cells(
        self, null_rows: list[tuple[int, int]], statuses: list[int] | None
    ) -> Iterator[tuple[int, int]]:
        """(output column, row) of each null cell in ``null_rows`` (of a PRESENT row when
        ``statuses`` are given): what serving turns into None."""
        cols_of = self.plan.cols_of_field
        for i, bits in null_rows:
            if statuses is not None and statuses[i] != _PRESENT:
                continue
            while bits:
                low = bits & -bits
                for c in cols_of.get(low.bit_length() - 1, ()):
                    yield c, i
                bits ^= low

    def served_lists(self) -> list[list[Any]]:
        """One Python list per requested feature: value, None (null) or the default.

        Starts from the present rows' values and patches only the cells that need it (rows not
        found or expired, null cells), so a batch with a few misses stays cheap.
        """
        if self.decoded.n == 1 and self._rows is not False:
            return self._one_row_lists()
        lists = self._present_lists()
        null_rows = self._null_rows()
        if self.all_served and not null_rows:
            return lists
        plan = self.plan
        if not plan.unique:  # one list may back two output columns: patch copies
            lists = [list(col) for col in lists]
        defaults = plan.defaults
        st = self._statuses()
        if not self.decoded.all_present:
            missing = [i for i, s in enumerate(st) if s == _NOT_FOUND]
            for col, default in zip(lists, defaults, strict=True):  # ascending: lands in place
                for i in missing:
                    col.insert(i, default)
        if not self.all_served:
            for i in [i for i, s in enumerate(st) if s == _EXPIRED]:
                for col, default in zip(lists, defaults, strict=True):
                    col[i] = default
        for c, i in self._null_cells(null_rows, st):
            lists[c][i] = None
        return lists


def _served(res: Any, *, dense: bool) -> list[Any]:
    """One view's served columns: lists, or (``dense``) float64 arrays where it has them."""
    arrays = res.dense() if dense and isinstance(res, _ViewResult) else None
    if arrays is None or any(a is None for a in arrays):
        return res.served_lists()  # type: ignore[no-any-return]
    return arrays


class OnlineResponse:
    """Online features for a batch of entities, kept columnar; ``to_dict`` gives plain lists."""

    def __init__(
        self,
        entity_columns: dict[str, Sequence[Any]],
        results: list[_ViewResult],
        names: list[list[str]],
        include_event_timestamps: bool,
        hidden: frozenset[str] = frozenset(),
    ) -> None:
        self._entity_columns = entity_columns
        self._results = results
        self._names = names
        self._include_ts = include_event_timestamps
        # output names of inputs fetched only for on-demand features: internal names that no
        # requested feature or join key has (online._shape), dropped from every answer
        self._hidden = hidden
        self._dict: dict[str, list[Any]] | None = None

    @property
    def feature_names(self) -> list[str]:
        """Output feature names in request order (``view__feature`` with full names)."""
        return [n for names in self._names for n in names if n not in self._hidden]

    def __len__(self) -> int:
        if not self._results:
            return 0
        res = self._results[0]
        return res.n if isinstance(res, _ViewResult) else res.decoded.n  # type: ignore[no-any-return]

    def to_dict(self) -> dict[str, list[Any]]:
        """Join keys, then features, then ``<view>__event_timestamp`` columns when asked for."""
        if self._dict is None:
            self._dict = self._columns(dense=False)
        return dict(self._dict)

    def wire_columns(self) -> dict[str, Any]:
        """:meth:`to_dict` for an encoder: float64 features of a view served as stored (no
        defaults) come as float64 arrays equal to their lists when they hold no null."""
        return self._columns(dense=True) if self._dict is None else self.to_dict()

    def wire_blocks(self) -> list[Any]:
        """:meth:`wire_columns` in blocks, for the protobuf encoder: dicts of columns, and
        ``(names, bytes, nulls)`` for a view that serves its features as stored (see
        ``_ViewResult.stored_block``; every status PRESENT). Same columns, same order. Several
        blocks: the first holds the join keys alone (columns without statuses)."""
        if self._dict is not None or self._hidden or self._include_ts:
            return [self.wire_columns()]
        dense = [
            res.stored_block() if isinstance(res, _ViewResult) else None for res in self._results
        ]
        if all(block is None for block in dense):
            return [self.wire_columns()]
        names = [n for view_names in self._names for n in view_names]
        if len(set(names).union(self._entity_columns)) != len(names) + len(self._entity_columns):
            return [self.wire_columns()]  # a name twice: the dict's one column decides
        cols: dict[str, Any] = {}
        blocks: list[Any] = [{k: as_pylist(v) for k, v in self._entity_columns.items()}, cols]
        for res, view_names, block in zip(self._results, self._names, dense, strict=True):
            if block is not None:
                blocks.append((view_names, *block))
                cols = {}
                blocks.append(cols)
                continue
            cols.update(zip(view_names, _served(res, dense=True), strict=True))
        return blocks

    def _columns(self, *, dense: bool) -> dict[str, Any]:
        out: dict[str, Any] = {k: as_pylist(v) for k, v in self._entity_columns.items()}
        for res, names in zip(self._results, self._names, strict=True):
            out.update(zip(names, _served(res, dense=dense), strict=True))
        for name in self._hidden:
            out.pop(name, None)
        if self._include_ts:
            out.update(self._event_timestamps())
        return out

    def _event_timestamps(self) -> dict[str, list[Any]]:
        """The ``<view>__event_timestamp`` columns (include_event_timestamps)."""
        out: dict[str, list[Any]] = {}
        for res, names in zip(self._results, self._names, strict=True):
            if all(n in self._hidden for n in names):
                continue
            ts = res.decoded.event_ts.tolist()
            present = res.decoded.present.tolist()
            out[f"{res.plan.view.name}__event_timestamp"] = [
                _us_to_datetime(t) if p else None for t, p in zip(ts, present, strict=True)
            ]
        return out

    @property
    def statuses(self) -> dict[str, list[Status]]:
        """Per output feature, the Status of each entity row."""
        out: dict[str, list[Status]] = {}
        for res, names in zip(self._results, self._names, strict=True):
            st = [_STATUS[s] for s in res.status.tolist()]
            for name in names:
                if name not in self._hidden:
                    out[name] = list(st)
        return out

    def _result(self, view_name: str) -> Any:
        for res in self._results:
            if res.plan.view.name == view_name:
                return res
        raise KeyError(view_name)

    def status_codes(self, view_name: str) -> list[int]:
        """:meth:`status_array` as a list of ints (shared by the view's features: do not edit)."""
        res = self._result(view_name)  # windows and on-demand results: status only
        return res._statuses() if isinstance(res, _ViewResult) else res.status.tolist()

    def status_array(self, view_name: str) -> np.ndarray:
        """The int8 Status codes of one view's rows (every feature of a view shares them)."""
        return self._result(view_name).status  # type: ignore[no-any-return]

    def to_arrow(self) -> pa.Table:
        """An Arrow table with the declared feature types."""
        import pyarrow as pa

        d = self.to_dict()
        types: dict[str, pa.DataType] = {}
        for res, names in zip(self._results, self._names, strict=True):
            for name, f in zip(names, res.plan.fields, strict=True):
                if name in d:
                    types[name] = f.dtype.to_arrow()
            if self._include_ts and f"{res.plan.view.name}__event_timestamp" in d:
                types[f"{res.plan.view.name}__event_timestamp"] = pa.timestamp("us", tz="UTC")
        return pa.table({k: pa.array(v, type=types.get(k)) for k, v in d.items()})

    def to_polars(self) -> pl.DataFrame:
        import polars as pl

        return pl.from_arrow(self.to_arrow())  # type: ignore[return-value]

    def to_df(self) -> Any:
        """A pandas DataFrame, as Feast's ``to_df()`` gives (needs pandas installed)."""
        try:
            import pandas  # noqa: F401
        except ImportError:
            raise ImportError(
                "to_df() gives a pandas DataFrame and pandas is not installed: pip install "
                "pandas (or 'featurestore[pandas]'), or use to_polars() / to_arrow()"
            ) from None
        return self.to_arrow().to_pandas()


class Lookup:
    """A planned read: the keys to fetch, and how their values become an OnlineResponse.

    Split from the read itself so an event-loop caller can await the store in between.
    """

    __slots__ = (
        "_columns",
        "_hidden",
        "_include_ts",
        "_n",
        "_names",
        "_now",
        "_plans",
        "_request_data",
        "keys",
    )

    def __init__(
        self,
        plans: list[Any],
        names: list[list[str]],
        columns: dict[str, list[Any]],
        n: int,
        keys: list[bytes],
        now_us: int,
        include_ts: bool,
        hidden: frozenset[str],
        request_data: dict[str, Sequence[Any]] | None,
    ) -> None:
        self._plans, self._names, self._columns, self._n = plans, names, columns, n
        self.keys = keys
        self._now, self._include_ts, self._hidden = now_us, include_ts, hidden
        self._request_data = request_data

    def read(self, store: OnlineStore) -> OnlineResponse:
        """One ``store.read`` of the keys (none when there are none), decoded."""
        return self.finish(store.read(self.keys) if self.keys else [])

    def finish(self, values: Sequence[bytes | None]) -> OnlineResponse:
        """Decode ``values`` (one per key, in key order) into the response."""
        plans, n, now = self._plans, self._n, self._now
        results: list[Any] = []
        v = 0
        for plan in plans:
            if getattr(plan, "on_demand", False):
                results.append(None)
                continue
            chunk = values[v * n : (v + 1) * n]
            v += 1
            if isinstance(plan, _ViewPlan):
                res = plan.stored_rows(chunk, now) if n > FEW_ROWS and plan.as_stored else None
                if res is None:
                    res = _ViewResult(plan, plan.codec.decode(chunk), now)
                results.append(res)
            else:
                results.append(plan.result(chunk, now))
        if v < len(plans):
            from featurestore.online._computed import compute_on_demand

            compute_on_demand(plans, results, self._request_data, n)
        return OnlineResponse(self._columns, results, self._names, self._include_ts, self._hidden)


def plan_lookup(
    project: str,
    requests: list[tuple[FeatureView, list[str]]],
    entity_rows: list[dict[str, Any]] | dict[str, Sequence[Any]],
    *,
    now_us: int,
    full_feature_names: bool = False,
    include_event_timestamps: bool = False,
    request_data: dict[str, Sequence[Any]] | None = None,
    key_kinds: Mapping[str, str] | None = None,
) -> Lookup:
    """The keys ``requests`` need for ``entity_rows`` (entity values checked, against
    ``key_kinds`` when given: see online.keys.build_keys), not yet read."""
    from featurestore.online._shape import request_shape

    return request_shape(project, requests, full_feature_names).plan(
        entity_rows, now_us, include_event_timestamps, request_data, key_kinds
    )


def get_online_features(
    store: OnlineStore,
    project: str,
    requests: list[tuple[FeatureView, list[str]]],
    entity_rows: list[dict[str, Any]] | dict[str, Sequence[Any]],
    *,
    now_us: int,
    full_feature_names: bool = False,
    include_event_timestamps: bool = False,
    request_data: dict[str, Sequence[Any]] | None = None,
    key_kinds: Mapping[str, str] | None = None,
) -> OnlineResponse:
    """Read ``requests`` (view, feature names) for ``entity_rows`` with one ``store.read``.

    ``request_data`` holds, per request field of the on-demand features asked for, one value
    per entity row; ``key_kinds`` is the registry's ``join_key_kinds``.
    """
    return plan_lookup(
        project,
        requests,
        entity_rows,
        now_us=now_us,
        full_feature_names=full_feature_names,
        include_event_timestamps=include_event_timestamps,
        request_data=request_data,
        key_kinds=key_kinds,
    ).read(store)
