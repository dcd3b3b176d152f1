"""Online window state: a bounded, time-sorted event buffer per entity, read by the offline kernel.

Per entity the state buffers the events newer than ``watermark - horizon`` where the watermark
is the largest event time ingested and ``horizon = plan.max_window_us + allowed_lateness_us``.
``read(t)`` runs ``window_core`` (the offline kernel) over the buffer with the one query ``t``,
so the online value at t equals the offline value at t to the last bit.

Late events: an event older than events already buffered is inserted in (ts, arrival) order
and handled exactly while ``event_ts > watermark - horizon``; older ones are rejected: counted
in ``state.rejected`` and, with ``on_late="raise"`` (the default), raised as LateEventError.
Reads are exact for ``t >= watermark - allowed_lateness``; earlier reads raise LateEventError.

Encoded layout (little-endian, one bytes value per entity, e.g. one Redis/LMDB value):

====================  =========================================================
int64[8] header       version, n, n_inputs, n_keys, watermark, has_watermark,
                      rejected, horizon_us
int64[n]              event timestamps (sorted)
float64[n_inputs*n]   input values, input-major
int64[n_keys*n]       distinct-count keys, key-major
uint8[n_inputs*n]     validity (1 = counted by the aggregations)
====================  =========================================================

Memory per entity: ``64 + n * (8 + 9 * n_inputs + 8 * n_keys)`` bytes for ``n`` buffered
events, e.g. 100 events of 2 inputs, 1 distinct key: 3,464 bytes.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from featurestore.errors import DefinitionError
from featurestore.transforms._errors import LateEventError

if TYPE_CHECKING:
    from collections.abc import Mapping

    from featurestore.transforms.aggregation import WindowPlan

_VERSION = 1
_HEADER = 8


class WindowState:
    """One entity's buffered events for a plan; mutate with ``update``/``ingest``."""

    __slots__ = ("keys", "meta", "ts", "valid", "vals")

    def __init__(self, n_inputs: int, n_keys: int, capacity: int = 16) -> None:
        self.meta = np.zeros(5, dtype=np.int64)  # n, watermark, has_watermark, rejected, start
        self.ts = np.empty(capacity, dtype=np.int64)
        self.vals = np.empty((n_inputs, capacity), dtype=np.float64)
        self.valid = np.empty((n_inputs, capacity), dtype=np.uint8)
        self.keys = np.empty((n_keys, capacity), dtype=np.int64)

    @property
    def n_events(self) -> int:
        return int(self.meta[0])

    @property
    def watermark(self) -> int | None:
        return int(self.meta[1]) if self.meta[2] else None

    @property
    def rejected(self) -> int:
        """How many late events this state refused."""
        return int(self.meta[3])

    def live(self, name: str) -> np.ndarray:
        """The buffered part of array ``name`` ("ts", "vals", "valid" or "keys"), a view."""
        s, n = int(self.meta[4]), int(self.meta[0])
        return getattr(self, name)[..., s : s + n]

    def _grow(self) -> None:
        cap = self.ts.size * 2
        n = self.n_events
        for name in ("ts", "vals", "valid", "keys"):
            new = np.empty((*getattr(self, name).shape[:-1], cap), dtype=getattr(self, name).dtype)
            new[..., :n] = self.live(name)
            setattr(self, name, new)
        self.meta[4] = 0


class OnlineWindows:
    """The online side of a window plan: create, update, read, encode and decode entity states."""

    def __init__(
        self,
        plan: WindowPlan,
        *,
        allowed_lateness_us: int = 0,
        on_late: Literal["raise", "count"] = "raise",
    ) -> None:
        if allowed_lateness_us < 0:
            raise DefinitionError(f"allowed_lateness_us must be >= 0, got {allowed_lateness_us}")
        if on_late not in ("raise", "count"):
            raise DefinitionError(f"on_late must be 'raise' or 'count', got {on_late!r}")
        from featurestore.transforms import _online_kernel as k

        self._k = k
        self.plan = plan
        self.lateness_us = int(allowed_lateness_us)
        self.horizon_us = plan.max_window_us + self.lateness_us
        self.on_late = on_late
        self._n_in = len(plan.inputs)
        self._n_keys = len(plan.distinct_inputs)

    def new_state(self) -> WindowState:
        return WindowState(self._n_in, self._n_keys)

    def update(self, state: WindowState, event_ts: int, row: Mapping[str, Any]) -> bool:
        """Ingest one event (``row`` maps column -> scalar); False if rejected as late."""
        vals = np.empty(self._n_in, dtype=np.float64)
        valid = np.empty(self._n_in, dtype=np.uint8)
        raw = []
        for i, (col, where) in enumerate(self.plan.inputs):
            v = row.get(col)
            x = math.nan if v is None else float(v) + 0.0
            ok = not math.isnan(x)
            if ok and where is not None:
                args = [row.get(p) for p in where.params]
                ok = None not in args and bool(where(*args))
            vals[i] = x
            valid[i] = ok
            raw.append(v)
        keys = np.empty(self._n_keys, dtype=np.int64)
        for j, idx in enumerate(self.plan.distinct_inputs):
            v = raw[idx]
            if isinstance(v, (bool, int, np.integer, np.bool_)):
                keys[j] = int(v)
            else:
                keys[j] = np.float64(vals[idx]).view(np.int64)
        return self._insert(state, int(event_ts), vals, valid, keys)

    def ingest(self, state: WindowState, event_ts: np.ndarray, columns: Mapping[str, Any]) -> int:
        """Ingest a batch of events in arrival order; returns how many were rejected as late."""
        from featurestore.transforms.aggregation import prepare_inputs

        vals, valid, keys = prepare_inputs(self.plan, columns)
        kmat = np.vstack(keys) if keys else np.zeros((0, vals.shape[1]), dtype=np.int64)
        valid8 = np.ascontiguousarray(valid).view(np.uint8)
        ts = np.ascontiguousarray(event_ts, dtype=np.int64)
        before = state.rejected
        i = 0
        while True:
            i, code = self._k.insert_many(
                state.meta, state.ts, state.vals, state.valid, state.keys, ts, vals, valid8,
                kmat, self.horizon_us, i, self.on_late == "raise",
            )  # fmt: skip
            if code == self._k.FULL:
                state._grow()
                continue
            if code == self._k.LATE:
                raise self._late(state, int(ts[i]))
            return state.rejected - before

    def _late(self, st: WindowState, ts: int) -> LateEventError:
        return LateEventError(
            f"event at {ts} us is older than watermark {st.watermark} minus the horizon "
            f"{self.horizon_us} us (largest window + allowed lateness); raise "
            "allowed_lateness_us to accept it"
        )

    def _insert(self, st: WindowState, ts: int, vals: Any, valid: Any, keys: Any) -> bool:
        while True:
            code = self._k.insert(
                st.meta, st.ts, st.vals, st.valid, st.keys, ts,
                np.ascontiguousarray(vals), np.ascontiguousarray(valid, dtype=np.uint8),
                np.ascontiguousarray(keys, dtype=np.int64), self.horizon_us,
            )  # fmt: skip
            if code == self._k.FULL:
                st._grow()
                continue
            if code == self._k.LATE:
                if self.on_late == "raise":
                    raise self._late(st, ts)
                return False
            return True

    def read(self, state: WindowState, t: int) -> dict[str, Any]:
        """Every output of the plan at time ``t`` (int for counts, float, NaN = null)."""
        values = self.read_array(state, t)
        return {
            o.name: (int(values[i]) if o.is_int else float(values[i]))
            for i, o in enumerate(self.plan.outputs)
        }

    def read_array(self, state: WindowState, t: int) -> np.ndarray:
        """Every output at ``t`` as one float64 array in plan order (the serving fast path)."""
        wm = state.watermark
        if wm is not None and t < wm - self.lateness_us:
            raise LateEventError(
                f"read at {t} us is older than watermark {wm} minus the allowed lateness "
                f"{self.lateness_us} us; events it needs may have been evicted"
            )
        p = self.plan
        return self._k.read(
            state.meta, state.ts, state.vals, state.valid, state.keys, int(t),
            p.fns, p.inps, p.wins, p.dins,
        )  # fmt: skip

    def encode(self, state: WindowState) -> bytes:
        """The state as one bytes value (layout in the module docstring)."""
        n = state.n_events
        head = np.array(
            [_VERSION, n, self._n_in, self._n_keys, state.meta[1], state.meta[2],
             state.meta[3], self.horizon_us],
            dtype="<i8",
        )  # fmt: skip
        return b"".join(
            (
                head.tobytes(),
                state.live("ts").astype("<i8").tobytes(),
                np.ascontiguousarray(state.live("vals")).astype("<f8").tobytes(),
                np.ascontiguousarray(state.live("keys")).astype("<i8").tobytes(),
                np.ascontiguousarray(state.live("valid")).tobytes(),
            )
        )

    def decode(self, data: bytes) -> WindowState:
        """Inverse of ``encode``; a layout that does not match the plan -> DefinitionError."""
        head = np.frombuffer(data, dtype="<i8", count=_HEADER)
        version, n, n_in, n_keys = (int(v) for v in head[:4])
        if version != _VERSION or n_in != self._n_in or n_keys != self._n_keys:
            raise DefinitionError(
                f"window state layout (version {version}, {n_in} inputs, {n_keys} keys) does "
                f"not match the plan ({self._n_in} inputs, {self._n_keys} keys); "
                "re-materialize the view"
            )
        st = WindowState(n_in, n_keys, capacity=max(16, n + 8))
        st.meta[:] = (n, head[4], head[5], head[6], 0)
        off = 8 * _HEADER
        st.ts[:n] = np.frombuffer(data, "<i8", n, off)
        off += 8 * n
        st.vals[:, :n] = np.frombuffer(data, "<f8", n * n_in, off).reshape(n_in, n)
        off += 8 * n * n_in
        st.keys[:, :n] = np.frombuffer(data, "<i8", n * n_keys, off).reshape(n_keys, n)
        off += 8 * n * n_keys
        st.valid[:, :n] = np.frombuffer(data, "u1", n * n_in, off).reshape(n_in, n)
        return st
