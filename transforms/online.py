"""Online window state: a bounded, time-sorted event buffer per entity, read by the offline kernel.

Per entity the state buffers the events newer than ``watermark - horizon`` where the watermark
is the largest event time ingested and ``horizon = plan.max_window_us + allowed_lateness_us``.
``read(t)`` computes each output over the events of its own window ``(t - w, t]`` only (binary
search on the sorted buffer): distinct_count as the distinct keys of the window's counted
events (an integer, as the offline kernel's multiset gives), the others from the same exact
accumulators and the same final rounding. Every value depends only on the set of events in its
window, so the online value at t equals the offline value at t to the last bit.
``read_values`` reads many encoded states (a lookup's entities) in one kernel call.

Late events: an event older than events already buffered is inserted in (ts, arrival) order
and handled exactly while ``event_ts > watermark - horizon``; older ones are rejected: counted
in ``state.rejected`` and, with ``on_late="raise"`` (the default), raised as LateEventError.
Reads are exact for ``t >= watermark - allowed_lateness``; earlier reads raise LateEventError.

Tiles: a state with at least ``TILE_MIN_EVENTS`` events is encoded with partial aggregates per
tile ``(b * tile_us, (b + 1) * tile_us]`` (``tile_us`` = largest window / 64): per non-empty
tile and input (those read by count/sum/mean/var/stddev/min/max) the valid count, min, max
and the exact sum (and sum of squares) limbs. A read merges the tiles wholly inside
``(t - w, t]`` and scans raw events only in the two edge tiles, so its cost no longer grows
with the events buffered. Exact sums are integers, so merged tiles give the bits of a raw
scan. Tiles describe the buffer they were built from: ``update``/``ingest`` drop them (reads
then scan raw events) and ``encode`` rebuilds them.

Encoded layout (little-endian, one bytes value per entity, e.g. one Redis/LMDB value):

========================  =====================================================
int64[12] header          version (2), n, n_inputs, n_keys, watermark,
                          has_watermark, rejected, horizon_us, tile_us,
                          n_tiles, n_tiled_inputs (r), pool size (p)
int64[n]                  event timestamps (sorted)
float64[n_inputs*n]       input values, input-major
int64[n_keys*n]           distinct-count keys, key-major
uint8[n_inputs*n]         validity (1 = counted by the aggregations)
int64[n_tiles]            tile ids b (sorted)
int64[r*n_tiles*5]        per tiled input and tile: count, min bits, max bits,
                          sum offset, squares offset (-1: not kept)
int64[p]                  exact sums: [lo, hi, n_pos_inf, n_neg_inf, limbs lo..hi]
========================  =====================================================

Version 1 (an 8-field header, no tiles) still decodes. Memory per entity:
``96 + n * (8 + 9 * n_inputs + 8 * n_keys)`` bytes for ``n`` buffered events, e.g. 100
events of 2 inputs, 1 distinct key: 3,496 bytes; tiles add about 150-250 bytes per
non-empty tile and tiled input (at most ~65 tiles, from TILE_MIN_EVENTS events on).
"""

from __future__ import annotations

import math
import struct
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import numpy as np

from featurestore.errors import DefinitionError
from featurestore.transforms._errors import LateEventError

_LAST, _VAR, _STDDEV, _DISTINCT = 5, 6, 7, 8  # function codes (transforms._kernel, no numba here)

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from featurestore.transforms.aggregation import WindowPlan

_VERSION = 2
_HEADER = 12
_HEADER_V1 = 8
_I8 = struct.Struct("<q")
_HEAD = struct.Struct(f"<{_HEADER}q")
_HEAD_V1 = struct.Struct(f"<{_HEADER_V1}q")
_I64 = np.dtype("<i8")
_F64 = np.dtype("<f8")
TILE_MIN_EVENTS = 256  # fewer buffered events: reads scan them raw, the state keeps no tiles
TILES_PER_WINDOW = 64
READ, ABSENT, LATE = 0, 1, 2  # read_values codes (transforms._online_kernel R_*)
_PADS = [b"\0" * (-r % 8) for r in range(8)]
_NO_TILES = (
    np.zeros(0, dtype=np.int64),
    np.zeros((1, 0, 5), dtype=np.int64),
    np.zeros(0, dtype=np.int64),
)


class StateHead(NamedTuple):
    """What ``OnlineWindows.peek`` reads from an encoded state's header."""

    version: int
    n_inputs: int
    n_keys: int
    watermark: int | None
    size: int


class WindowState:
    """One entity's buffered events for a plan; mutate with ``update``/``ingest``."""

    __slots__ = ("keys", "meta", "tiles", "ts", "valid", "vals")

    def __init__(self, n_inputs: int, n_keys: int, capacity: int = 16) -> None:
        self.meta = np.zeros(5, dtype=np.int64)  # n, watermark, has_watermark, rejected, start
        self.ts = np.empty(capacity, dtype=np.int64)
        self.vals = np.empty((n_inputs, capacity), dtype=np.float64)
        self.valid = np.empty((n_inputs, capacity), dtype=np.uint8)
        self.keys = np.empty((n_keys, capacity), dtype=np.int64)
        self.tiles: tuple[int, np.ndarray, np.ndarray, np.ndarray] | None = None

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

    def thaw(self) -> None:
        """Copy read-only arrays (a decoded state views its bytes) into growable ones."""
        if self.ts.flags.writeable and self.ts.flags.aligned:
            return
        s, n = self.meta[4], self.meta[0]
        cap = max(16, n + 8)
        ts = np.empty(cap, dtype=np.int64)
        ts[:n] = self.ts[s : s + n]
        vals = np.empty((self.vals.shape[0], cap), dtype=np.float64)
        vals[:, :n] = self.vals[:, s : s + n]
        valid = np.empty((self.valid.shape[0], cap), dtype=np.uint8)
        valid[:, :n] = self.valid[:, s : s + n]
        keys = np.empty((self.keys.shape[0], cap), dtype=np.int64)
        keys[:, :n] = self.keys[:, s : s + n]
        self.ts, self.vals, self.valid, self.keys = ts, vals, valid, keys
        self.meta[4] = 0

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
        self.tile_us = max(1, -(-plan.max_window_us // TILES_PER_WINDOW))
        self.tile_min_events = TILE_MIN_EVENTS
        fns = plan.fns.tolist()
        inps = plan.inps.tolist()
        tin = sorted({i for f, i in zip(fns, inps, strict=True) if f not in (_LAST, _DISTINCT)})
        self._tin = np.array(tin, dtype=np.int64)
        self._need2 = np.array(
            [any(f in (_VAR, _STDDEV) and i == r for f, i in zip(fns, inps, strict=True))
             for r in tin],
            dtype=np.bool_,
        )  # fmt: skip
        self._tmap = np.full(self._n_in, -1, dtype=np.int64)
        self._tmap[self._tin] = np.arange(len(tin), dtype=np.int64)
        self._dims = np.array([self._n_in, self._n_keys, len(tin), *self._tmap], dtype=np.int64)
        self._stack = np.stack([plan.fns, plan.inps, plan.wins, plan.dins]).astype(np.int64)

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
        return self.ingest_prepared(state, event_ts, *self.prepare(columns))

    def prepare(self, columns: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The kernel's inputs for events: (values float64, validity uint8, distinct keys int64),
        each [inputs, n]; columns [:, a:b] of them (made contiguous) are events a..b's."""
        from featurestore.transforms.aggregation import prepare_inputs

        vals, valid, keys = prepare_inputs(self.plan, columns)
        kmat = np.vstack(keys) if keys else np.zeros((0, vals.shape[1]), dtype=np.int64)
        return vals, np.ascontiguousarray(valid).view(np.uint8), kmat

    def ingest_prepared(
        self, state: WindowState, event_ts: np.ndarray, vals: Any, valid8: Any, kmat: Any
    ) -> int:
        """``ingest`` of events already through ``prepare``; returns how many were late."""
        ts = np.ascontiguousarray(event_ts, dtype=np.int64)
        before = state.rejected
        state.tiles = None
        state.thaw()
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
        st.tiles = None
        st.thaw()
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
        tile_us, tids, rec, pool = state.tiles or (1, *_NO_TILES)
        return self._k.read(
            state.meta, state.ts, state.vals, state.valid, state.keys, int(t),
            p.fns, p.inps, p.wins, p.dins, tile_us, tids, self._tmap, rec, pool,
        )  # fmt: skip

    def read_values(
        self, values: Sequence[bytes | None], t: int, prefix: bytes = b""
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``read_array`` at ``t`` of many encoded states in one kernel call (batched lookups).

        Each value is ``prefix + encode(state)`` (``prefix``: 0, 8, 16... bytes); one that is
        None, shorter than ``prefix`` or starts otherwise is absent. Returns ``out``
        float64[n, n_outputs] (NaN rows unless read), ``code`` int8[n] (READ, ABSENT, or LATE
        where ``read_array`` raises LateEventError) and the watermarks int64[n] (0 when absent
        or without one). Bit for bit ``decode`` + ``read_array``; a layout that does not match
        the plan raises as ``decode`` does.
        """
        if len(prefix) % 8:
            raise ValueError(f"prefix must be a multiple of 8 bytes, got {len(prefix)}")
        n = len(values)
        out = np.empty((n, len(self.plan.outputs)), dtype=np.float64)
        code = np.empty(n, dtype=np.int8)
        wm = np.zeros(n, dtype=np.int64)
        if n == 0:
            return out, code, wm
        blobs, buf, lens = _words(values, prefix)
        n_bad = self._k.read_batch(
            buf, lens, np.frombuffer(prefix, np.uint8), int(t), self.lateness_us, self._stack,
            self._dims, out, code, wm,
        )  # fmt: skip
        bad = np.flatnonzero(code == self._k.R_BAD).tolist() if n_bad else []
        for i in bad:  # decode raises for these (or reads them, exactly as before)
            st = self.decode(memoryview(blobs[i])[len(prefix) :])
            wm[i] = st.watermark or 0
            try:
                out[i] = self.read_array(st, t)
                code[i] = READ
            except LateEventError:
                code[i] = LATE
        return out, code, wm

    def ingest_encoded(
        self,
        values: Sequence[bytes | None],
        prefix: bytes,
        bounds: np.ndarray,
        ts: np.ndarray,
        vals: Any,
        valid8: Any,
        kmat: Any,
    ) -> list[bytes]:
        """``encode(ingest_prepared(state_i, events bounds[i]..bounds[i + 1]))`` of many encoded
        states in one kernel call (a stream round's entities), byte for byte.

        ``values`` as ``read_values`` takes them (None, short or another prefix: a new
        state); the events (``ts`` and ``prepare``'s arrays) must be newer than each state's
        watermark minus the horizon (callers filter late ones first): a late one raises
        LateEventError whatever ``on_late`` says. Returns the new states, without the prefix.
        """
        if len(prefix) % 8:
            raise ValueError(f"prefix must be a multiple of 8 bytes, got {len(prefix)}")
        n = len(values)
        if n == 0:
            return []
        from featurestore.transforms import _online_ingest as ki

        blobs, buf, lens = _words(values, prefix)
        c = np.ascontiguousarray
        ts = c(ts, dtype=np.int64)
        bounds = c(bounds, dtype=np.int64)
        vals, valid8, kmat = c(vals, np.float64), c(valid8, np.uint8), c(kmat, np.int64)
        out, offs, code, stop = ki.ingest_batch(
            buf, lens, np.frombuffer(prefix, np.uint8), bounds, ts, vals, valid8, kmat,
            self._dims, self._tin, self._need2, self.tile_us, self.tile_min_events,
            self.horizon_us,
        )  # fmt: skip
        if stop[0] >= 0:
            raise LateEventError(
                f"event at {stop[1]} us is older than watermark {stop[2]} minus the horizon "
                f"{self.horizon_us} us (largest window + allowed lateness); raise "
                "allowed_lateness_us to accept it"
            )
        blob = out.tobytes()
        o = offs.tolist()
        states = [blob[o[i] : o[i + 1]] for i in range(n)]
        for i in np.flatnonzero(code == ki.I_BAD).tolist():  # decode raises (or reads it)
            st = self.decode(memoryview(blobs[i])[len(prefix) :])
            a, b = int(bounds[i]), int(bounds[i + 1])
            part = (c(m[:, a:b]) for m in (vals, valid8, kmat))
            late = self.ingest_prepared(st, ts[a:b], *part)
            if late:
                raise LateEventError(
                    f"{late} event(s) of entity {i} are older than its watermark minus "
                    f"the horizon {self.horizon_us} us; raise allowed_lateness_us to accept them"
                )
            states[i] = self.encode(st)
        return states

    def build_tiles(self, state: WindowState) -> None:
        """Attach tiles of the current buffer to ``state`` (``encode`` does it when worth it)."""
        ids, rec, pool = self._k.build_tiles(
            state.meta, state.ts, state.vals, state.valid, self._tin, self._need2, self.tile_us
        )
        state.tiles = (self.tile_us, ids, rec, pool)

    def encode(self, state: WindowState) -> bytes:
        """The state as one bytes value (layout in the module docstring)."""
        n = state.n_events
        if state.tiles is None and n >= self.tile_min_events and self._tin.size:
            self.build_tiles(state)
        tile_us, tids, rec, pool = state.tiles or (0, *_NO_TILES)
        head = np.array(
            [_VERSION, n, self._n_in, self._n_keys, state.meta[1], state.meta[2],
             state.meta[3], self.horizon_us, tile_us, tids.size, self._tin.size, pool.size],
            dtype="<i8",
        )  # fmt: skip
        parts = [  # tobytes() writes C order whatever the strides: no copies before it
            head.tobytes(),
            state.live("ts").astype("<i8", copy=False).tobytes(),
            state.live("vals").astype("<f8", copy=False).tobytes(),
            state.live("keys").astype("<i8", copy=False).tobytes(),
            state.live("valid").tobytes(),
        ]
        if tids.size:
            parts += [tids.astype("<i8").tobytes(), rec.astype("<i8").tobytes(),
                      pool.astype("<i8").tobytes()]  # fmt: skip
        return b"".join(parts)

    @staticmethod
    def peek(data: bytes) -> StateHead:
        """The header of the encoded state at the start of ``data``, without decoding it: its
        layout, watermark and size in bytes (what follows the size is not the state's)."""
        version = _I8.unpack_from(data)[0]
        head = (_HEAD if version == _VERSION else _HEAD_V1).unpack_from(data)
        n, n_in, n_keys = head[1], head[2], head[3]
        size = 8 * len(head) + 8 * n + 9 * n * n_in + 8 * n * n_keys
        if version == _VERSION and head[9]:
            size += 8 * (head[9] + head[10] * head[9] * 5 + head[11])
        return StateHead(version, n_in, n_keys, head[4] if head[5] else None, size)

    def decode(self, data: bytes) -> WindowState:
        """Inverse of ``encode``; a layout that does not match the plan -> DefinitionError."""
        version = _I8.unpack_from(data)[0]
        size = _HEADER if version == _VERSION else _HEADER_V1
        head = (_HEAD if version == _VERSION else _HEAD_V1).unpack_from(data)
        _, n, n_in, n_keys = head[:4]
        n_tiles, n_tin = (head[9], head[10]) if version == _VERSION else (0, 0)
        if (
            version not in (1, _VERSION)
            or n_in != self._n_in
            or n_keys != self._n_keys
            or (n_tiles and n_tin != self._tin.size)
        ):
            raise DefinitionError(
                f"window state layout (version {version}, {n_in} inputs, {n_keys} keys) does "
                f"not match the plan ({self._n_in} inputs, {self._n_keys} keys); "
                "re-materialize the view"
            )
        # read-only views of ``data`` (no copy: a lookup only reads); the first update copies
        st = WindowState.__new__(WindowState)
        st.meta = np.array((n, head[4], head[5], head[6], 0), dtype=np.int64)
        off = 8 * size
        st.ts = np.frombuffer(data, _I64, n, off)
        off += 8 * n
        st.vals = np.frombuffer(data, _F64, n * n_in, off).reshape(n_in, n)
        off += 8 * n * n_in
        st.keys = np.frombuffer(data, _I64, n * n_keys, off).reshape(n_keys, n)
        off += 8 * n * n_keys
        st.valid = np.frombuffer(data, np.uint8, n * n_in, off).reshape(n_in, n)
        off += n * n_in
        st.tiles = None
        if not (st.ts.flags.aligned and st.vals.flags.aligned and st.keys.flags.aligned):
            st.thaw()
        if n_tiles:
            tids = np.frombuffer(data, _I64, n_tiles, off).astype(np.int64)
            off += 8 * n_tiles
            rec = np.frombuffer(data, _I64, n_tin * n_tiles * 5, off).astype(np.int64)
            off += 8 * rec.size
            pool = np.frombuffer(data, _I64, head[11], off).astype(np.int64)
            st.tiles = (head[8], tids, rec.reshape(n_tin, n_tiles, 5), pool)
        return st


def _words(values: Sequence[bytes | None], prefix: bytes) -> tuple[list[Any], np.ndarray, Any]:
    """(values with b"" for None, their bytes as one read-only int64 buffer, lengths): each
    value padded to 8 bytes so its words align; a None value's length is -1 without a prefix."""
    n = len(values)
    blobs = [b"" if v is None else v for v in values]
    lens = np.fromiter(map(len, blobs), np.int64, n)
    parts: list[Any] = [b""] * (2 * n)
    parts[::2] = blobs
    parts[1::2] = map(_PADS.__getitem__, (lens & 7).tolist())
    buf = np.frombuffer(b"".join(parts), np.int64)  # read-only, as decode's arrays
    if not buf.flags.aligned:
        buf = buf.copy()
        buf.flags.writeable = False
    if not prefix:
        lens[[i for i, v in enumerate(values) if v is None]] = -1
    return blobs, buf, lens
