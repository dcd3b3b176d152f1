"""A batch of one view's stored rows straight to a column block, in one compiled pass.

For a request that reads every float64 feature of a fixed-width view in stored order (the
common batch shape: 100 candidates x one view's numbers), each row's values are one run of its
stored bytes. When every row is present, of the current schema version and fresh within the
TTL, the response columns are those runs transposed, with 0.0 under the null cells and the
nulls marked. The numpy path (decode, status, matrix, null bitmap) does the same in a dozen
calls per view; this kernel does it in one pass and declines (-1) on the first row it cannot
serve as stored, so the general path answers from the same values. ``StoredRows`` is the
view's result built from the block (lists, arrays and wire bytes alike).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit

from featurestore.online.codec import DecodedRows
from featurestore.online.lookup import _ViewPlan, _ViewResult

_INT64_MIN = -(2**63)
_VER_AT = 16  # a stored value: int64 event ts, int64 created ts, uint32 schema version, ...


@njit(cache=True, nogil=True)
def _block(
    rows: Any,
    values: Any,
    version: int,
    oldest: int,
    has_ttl: bool,
    nulls_at: int,
    n_null_bytes: int,
    bits: Any,
    out: Any,
    nulls: Any,
) -> int:  # pragma: no cover - compiled
    """Fill ``out`` ((k, n) uint64: the features' bits, 0 at a null) and ``nulls`` ((k, n)
    bool, all False on entry) from n stored rows: ``rows`` their (n, size) bytes, ``values``
    their (n, k) features' bits. The null cells' count, or -1 (declined) at a row of another
    schema version or (``has_ttl``) whose event time is before ``oldest``."""
    n = rows.shape[0]
    k = len(bits)
    n_null = 0
    for i in range(n):
        row = rows[i]
        ver = np.int64(0)
        for b in range(_VER_AT + 3, _VER_AT - 1, -1):  # uint32, little endian
            ver = (ver << 8) | np.int64(row[b])
        if ver != version:
            return -1
        if has_ttl:
            ev = np.int64(0)
            for b in range(7, -1, -1):  # int64, little endian, at the start
                ev = (ev << 8) | np.int64(row[b])
            if ev < oldest:
                return -1
        flagged = False
        for b in range(n_null_bytes):
            if row[nulls_at + b] != 0:
                flagged = True
        if not flagged:
            for c in range(k):
                out[c, i] = values[i, c]
            continue
        for c in range(k):
            j = bits[c]
            if (row[nulls_at + j // 8] >> (j % 8)) & 1:
                out[c, i] = 0  # the bits of 0.0
                nulls[c, i] = True
                n_null += 1
            else:
                out[c, i] = values[i, c]
    return n_null


class StoredLayout:
    """Where a view's stored value keeps what the kernel reads (built once per plan)."""

    __slots__ = ("bits", "n_null_bytes", "nulls_at", "size", "ttl", "values_at", "version")

    def __init__(self, plan: Any) -> None:
        codec = plan.codec
        self.size = codec.fixed_size
        self.version = codec.schema_version
        self.ttl = plan.ttl_us
        self.nulls_at = plan.nulls_span[0]
        self.n_null_bytes = codec.n_null_bytes
        self.values_at = plan.matrix[1]
        self.bits = plan.field_idx.astype(np.int64)

    @classmethod
    def of(cls, plan: Any) -> StoredLayout | None:
        """None when the request is not served as stored or the view has variable-width
        fields (its values are not one size)."""
        if not plan.as_stored or not plan.codec.fixed_only:
            return None
        return cls(plan)

    def result(self, plan: _ViewPlan, values: list[Any], now_us: int) -> StoredRows | None:
        """``values`` (one stored value per row) as the view's result, or None when a row is
        missing, of another size or version, or expired at ``now_us``."""
        try:
            if set(map(len, values)) != {self.size}:
                return None
        except TypeError:  # None: a row not found
            return None
        size = self.size
        buf = b"".join(values)
        n = len(values)
        k = len(self.bits)
        ttl = self.ttl
        out = np.empty((k, n), dtype=np.uint64)
        nulls = np.zeros((k, n), dtype=bool)
        n_null = _block(
            np.frombuffer(buf, dtype=np.uint8).reshape(n, size),
            np.ndarray((n, k), "<u8", buf, self.values_at, (size, 8)),
            self.version,
            0 if ttl is None else max(now_us - ttl, _INT64_MIN),  # expired: now - event > ttl
            ttl is not None,
            self.nulls_at,
            self.n_null_bytes,
            self.bits,
            out,
            nulls,
        )
        if n_null < 0:
            return None
        return StoredRows(plan, values, now_us, out.view(np.float64), nulls if n_null else None)


class StoredRows(_ViewResult):
    """A view's rows, every one served as stored, from their float64 block: every status is
    PRESENT, and the rows are decoded only if event timestamps are asked for."""

    __slots__ = ("_block", "_decoded", "_n", "_nulls", "_values")

    def __init__(
        self, plan: _ViewPlan, values: list[Any], now_us: int, block: Any, nulls: Any
    ) -> None:
        self.plan = plan
        self.now_us = now_us
        self._values = values
        self._n = len(values)
        self._block = block  # (features, n) float64, 0.0 under nulls
        self._nulls = nulls  # (features, n) bool, or None: no null
        self._decoded: DecodedRows | None = None
        self._status: np.ndarray | None = None
        self._status_py: list[int] | None = None
        self._rows = False  # (not read by struct)
        self.all_served = True

    @property  # type: ignore[override]
    def decoded(self) -> DecodedRows:
        d = self._decoded
        if d is None:
            d = self._decoded = self.plan.codec.decode(self._values)
        return d

    @property
    def n(self) -> int:
        return self._n

    def dense(self) -> list[Any] | None:
        """Each feature's row of the block; a list with None at the nulls where it has one."""
        out: list[Any] = list(self._block)
        nulls = self._nulls
        if nulls is not None:
            for c in np.flatnonzero(nulls.any(axis=1)).tolist():
                col = out[c].tolist()
                for i in np.flatnonzero(nulls[c]).tolist():
                    col[i] = None
                out[c] = col
        return out

    def served_lists(self) -> list[list[Any]]:
        lists: list[list[Any]] = self._block.tolist()
        if self._nulls is not None:
            rows, cols = np.nonzero(self._nulls)
            for c, i in zip(rows.tolist(), cols.tolist(), strict=True):
                lists[c][i] = None
        return lists

    def stored_block(self) -> tuple[bytes, np.ndarray | None] | None:
        return self._block.tobytes(), self._nulls


def warm() -> None:
    """Compile (or load from numba's disk cache) the kernel now, not on a first batch lookup:
    for rows of a size that keeps their features 8-byte aligned and one that does not."""
    for size in (32, 33):
        buf = bytes(2 * size)
        out = np.empty((1, 2), dtype=np.uint64)
        _block(
            np.frombuffer(buf, dtype=np.uint8).reshape(2, size),
            np.ndarray((2, 1), "<u8", buf, 24, (size, 8)),
            0, 0, True, 20, 1, np.zeros(1, dtype=np.int64), out, np.zeros(out.shape, dtype=bool),
        )  # fmt: skip
