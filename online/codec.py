"""The online row codec: one value per (view, entity) holding the whole row, decoded by numpy.

Layout of one value (little endian, no padding)::

    int64  event_ts_us
    int64  created_ts_us          (INT64_MIN when null)
    uint32 schema_version         (FeatureView.schema_version; a mismatch reads as absent)
    uint8  null_bitmap[ceil(F/8)] (bit i set: feature i is null; bit order little)
    ...    fixed-width features   (schema order, one numpy structured record)
    then per variable-width feature, in schema order: uint32 length + payload
         string: utf-8; bytes: raw; array<T>: the elements as raw little-endian T (a null
         element as the training set serves it: NaN, or an int or bool array null as a whole)

Everything up to the variable part is one numpy structured record, so a batch of rows with no
variable fields encodes with one ``tobytes`` and decodes with one ``np.frombuffer``.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any

import numpy as np

from featurestore.errors import OnlineStoreError
from featurestore.types import served_lists

if TYPE_CHECKING:
    import pyarrow as pa

    from featurestore.feature_view import FeatureView

NULL_TS = np.iinfo(np.int64).min
EVENT_TS = "__event_ts"
CREATED_TS = "__created_ts"
_H_EV, _H_CR, _H_VER, _H_NULLS = "h_ev", "h_cr", "h_ver", "h_nulls"
_LEAD = "lead"  # the optional int64 in front of a value (see RowCodec.encode_table)
_U32 = struct.Struct("<I")
ROW_HEAD = struct.Struct("<qqI")  # a stored row starts: event time, created time, schema version
# struct codes that unpack exactly as numpy's tolist() does for these dtypes
_STRUCT_CODE = {"<i4": "i", "<i8": "q", "<f4": "f", "<f8": "d", "|b1": "?"}
FEW_ROWS = 16  # up to this many rows decode in plain Python (see RowCodec.decode)
_BLOCK_BYTES = 256 * 1024  # records filled per block: stays in L2 while columns are copied in


def row_replaces(new: bytes, old: bytes | None, at: int = 0) -> bool:
    """Whether row ``new`` may overwrite the stored row ``old`` (heads at offset ``at``): yes
    unless ``old`` has the same schema version and a later (event time, created time). Rows
    equal in both keep the last written. The rule of pushes and stream ingest (see
    ``_redis_wire.CAS_LUA`` for the same rule inside Redis)."""
    if old is None or len(old) < at + ROW_HEAD.size:
        return True
    o_ev, o_cr, o_ver = ROW_HEAD.unpack_from(old, at)
    n_ev, n_cr, n_ver = ROW_HEAD.unpack_from(new, at)
    return o_ver != n_ver or (n_ev, n_cr) >= (o_ev, o_cr)


class DecodedRows:
    """Decoded values of ``n`` requested rows of one view (arrays are built on first use).

    ``present[i]``: a current-schema value exists for row i. ``valid[i, j]``: row i is present
    and feature j is not null. ``event_ts``/``created_ts`` are 0 / NULL_TS where absent.
    ``records`` holds the fixed part of the present rows, in order; ``present_idx`` their rows.
    ``raw``: the present rows' bytes, kept for a few rows of a fixed-only view (see
    ``RowCodec.row_struct``), else None.
    """

    def __init__(
        self,
        codec: RowCodec,
        n: int,
        records: np.ndarray,
        present_idx: list[int],
        var_values: dict[str, list[Any]] | None = None,
        raw: list[bytes] | None = None,
    ) -> None:
        self.codec = codec
        self.raw = raw
        self.names = codec.names
        self.n = n
        self.records = records
        self.present_idx = present_idx
        self.var_values = var_values or {}
        self.all_present = len(present_idx) == n
        self._cache: dict[str, Any] = {}

    def _spread(self, name: str, values: np.ndarray, fill: Any) -> np.ndarray:
        """An n-long array: ``values`` at the present rows, ``fill`` elsewhere."""
        if self.all_present:
            return np.array(values)
        out = np.full((self.n, *values.shape[1:]), fill, dtype=values.dtype)
        out[self.present_idx] = values
        return out

    def _cached(self, key: str, make: Any) -> Any:
        v = self._cache.get(key)
        if v is None:
            v = self._cache[key] = make()
        return v

    @property
    def present(self) -> np.ndarray:
        def make() -> np.ndarray:
            out = np.zeros(self.n, dtype=bool)
            out[self.present_idx] = True
            return out

        return self._cached("present", make)

    @property
    def event_ts(self) -> np.ndarray:
        return self._cached("ev", lambda: self._spread("ev", self.records[_H_EV], 0))

    @property
    def created_ts(self) -> np.ndarray:
        return self._cached("cr", lambda: self._spread("cr", self.records[_H_CR], NULL_TS))

    @property
    def has_nulls(self) -> bool:
        """Whether any present row has a null feature."""
        return self._cached("has_nulls", lambda: bool(self.records[_H_NULLS].any()))

    @property
    def valid(self) -> np.ndarray:
        """(n, features) bool: present and not null."""

        def make() -> np.ndarray:
            bits = np.unpackbits(
                self.records[_H_NULLS], axis=1, count=self.codec.n_fields, bitorder="little"
            )
            return self._spread("valid", bits == 0, False)

        return self._cached("valid", make)

    def column(self, name: str) -> Any:
        """One feature for all n rows: a numpy array for fixed types (0 where not valid), else a
        list (None where not valid)."""
        return self.columns[name]

    @property
    def columns(self) -> dict[str, Any]:
        """Every feature as a column (built once, on first use)."""

        def make() -> dict[str, Any]:
            cols: dict[str, Any] = {}
            pos = self.codec._fixed_pos
            valid = self.valid
            for j, name in enumerate(self.names):
                if name in pos:
                    col = self._spread(name, self.records[f"c{pos[name]}"], 0)
                    col[~valid[:, j]] = 0
                    cols[name] = col
                else:
                    cols[name] = self.var_values[name]
            return cols

        return self._cached("columns", make)


class RowCodec:
    """Encodes Arrow tables into row values and decodes row values, for one feature view."""

    def __init__(self, view: FeatureView) -> None:
        self.view_name = view.name
        self.join_keys: tuple[str, ...] = tuple(getattr(view, "join_keys", ()))
        self.schema_version = view.schema_version
        self.fields = view.features
        self.names = tuple(f.name for f in self.fields)
        self.n_fields = len(self.fields)
        self.n_null_bytes = (self.n_fields + 7) // 8
        self.fixed = [(i, f) for i, f in enumerate(self.fields) if f.dtype.fixed_width]
        self.var = [(i, f) for i, f in enumerate(self.fields) if not f.dtype.fixed_width]
        spec: list[tuple[Any, ...]] = [
            (_H_EV, "<i8"),
            (_H_CR, "<i8"),
            (_H_VER, "<u4"),
            (_H_NULLS, "u1", (self.n_null_bytes,)),
        ]
        spec += [(f"c{i}", f.dtype.numpy) for i, f in self.fixed]
        self.record_dtype = np.dtype(spec)
        self.fixed_size = self.record_dtype.itemsize
        self.fixed_only = not self.var
        self._fixed_pos = {f.name: i for i, f in self.fixed}
        self._ver_bytes = _U32.pack(self.schema_version)
        # A value's fixed part as a struct (header, null bitmap, then fixed feature k at item
        # 4 + k): unpacking a few rows in Python is cheaper than numpy's per-call overhead.
        # ``row_struct`` is the whole value of a fixed-only view.
        codes = [_STRUCT_CODE.get(np.dtype(f.dtype.numpy).str) for _, f in self.fixed]
        fmt = f"<qqI{self.n_null_bytes}s" + "".join(c or "" for c in codes)
        self.fixed_struct: struct.Struct | None = None
        if None not in codes and struct.calcsize(fmt) == self.fixed_size:
            self.fixed_struct = struct.Struct(fmt)
        self.row_struct = self.fixed_struct if self.fixed_only else None
        self._lead_record: np.dtype | None = None
        self._inner = {
            f.name: np.dtype(f.dtype.inner.numpy)  # type: ignore[union-attr]
            for _, f in self.var
            if f.dtype.is_list
        }
        self._list_types = {f.name: f.dtype for _, f in self.var if f.dtype.is_list}

    # ---------------------------------------------------------------- encode

    def encode_table(self, table: pa.Table, *, lead: np.ndarray | None = None) -> list[bytes]:
        """One value per table row; columns: the features, ``__event_ts``, ``__created_ts``.

        ``lead`` (int64 per row) is written little-endian in front of each value, in the same
        pass: the embedded store keeps a value's expiry there, and one copy per row is cheaper
        than prefixing afterwards.
        """
        n = table.num_rows
        have = set(table.column_names)
        missing = [c for c in (*self.names, EVENT_TS) if c not in have]
        if missing:
            raise OnlineStoreError(
                f"cannot encode rows of view '{self.view_name}': table lacks column(s) {missing}"
            )
        ev, ev_null = int64_column(table.column(EVENT_TS))
        if ev_null is not None and ev_null.any():
            raise OnlineStoreError(
                f"cannot encode rows of view '{self.view_name}': {int(ev_null.sum())} row(s) have "
                "a null event timestamp"
            )
        columns: list[tuple[str, Any]] = [(_H_EV, ev), (_H_VER, self.schema_version)]
        if CREATED_TS in have:
            cr, cr_null = int64_column(table.column(CREATED_TS))
            if cr_null is not None:
                cr = np.where(cr_null, NULL_TS, cr)
            columns.append((_H_CR, cr))
        else:
            columns.append((_H_CR, NULL_TS))
        nulls: np.ndarray | None = None
        for i, f in self.fixed:
            col = table.column(f.name)
            if f.dtype.name == "timestamp":
                values, mask = int64_column(col)
            else:
                values, mask = _numeric_column(col)
            columns.append((f"c{i}", values))
            if mask is not None:
                nulls = _mark_nulls(nulls, n, self.n_null_bytes, i, mask)
        var_parts: list[list[bytes]] = []
        for i, f in self.var:
            parts, mask = self._encode_var(table, f.name)
            var_parts.append(parts)
            if mask is not None:
                nulls = _mark_nulls(nulls, n, self.n_null_bytes, i, mask)
        columns.append((_H_NULLS, 0 if nulls is None else nulls))
        dtype = self.record_dtype
        if lead is not None:
            if len(lead) != n:
                raise OnlineStoreError(
                    f"cannot encode rows of view '{self.view_name}': {len(lead)} lead values "
                    f"for {n} rows"
                )
            dtype = self._lead_dtype()
            columns.append((_LEAD, lead))
        fixed = self._pack_records(n, columns, dtype)
        if not var_parts:
            return fixed
        return [b"".join(row) for row in zip(fixed, *var_parts, strict=True)]

    def _lead_dtype(self) -> np.dtype:
        """The record dtype with an int64 ``lead`` field in front (see ``encode_table``)."""
        if self._lead_record is None:
            fields = [(_LEAD, "<i8")]
            fields += [
                (name, self.record_dtype.fields[name][0]) for name in self.record_dtype.names
            ]
            self._lead_record = np.dtype(fields)
        return self._lead_record

    def _pack_records(self, n: int, columns: list[tuple[str, Any]], dtype: np.dtype) -> list[bytes]:
        """Fill the structured record block by block (cache-sized) and cut it into values."""
        block = max(1, _BLOCK_BYTES // dtype.itemsize)
        buf = np.empty(min(n, block), dtype=dtype)
        as_void = f"V{dtype.itemsize}"
        arrays = []
        for name, values in columns:
            if np.ndim(values) == 0:
                buf[name] = values  # the same in every row: set once, kept across blocks
            else:
                arrays.append((name, values))
        out: list[bytes] = []
        for start in range(0, n, block):
            stop = min(n, start + block)
            rec = buf[: stop - start]
            for name, values in arrays:
                rec[name] = values[start:stop]
            out += rec.view(as_void).tolist()
        return out

    def _encode_var(self, table: pa.Table, name: str) -> tuple[list[bytes], np.ndarray | None]:
        """Length-prefixed payloads of one variable-width column, and its null mask.

        An array's null element is stored as the training set serves it
        (``types.served_lists``): NaN in a float array; an int or bool array holding one is
        null as a whole.
        """
        col = table.column(name)
        inner = self._inner.get(name)
        if inner is not None:
            col = served_lists(col, self._list_types[name])
        values = col.to_pylist()
        mask = None
        if col.null_count:
            mask = np.fromiter((v is None for v in values), dtype=bool, count=len(values))
        pack = _U32.pack
        out: list[bytes] = []
        for v in values:
            if v is None:
                out.append(b"\0\0\0\0")
                continue
            if inner is not None:
                b = np.asarray(v, dtype=inner).tobytes()
            elif isinstance(v, str):
                b = v.encode()
            else:
                b = bytes(v)
            out.append(pack(len(b)) + b)
        return out, mask

    # ---------------------------------------------------------------- decode

    def decode(self, values: list[bytes | None]) -> DecodedRows:
        """Decode stored values (None: no value). Other schema versions read as absent."""
        n = len(values)
        size = self.fixed_size
        ver = self._ver_bytes
        if self.fixed_only:
            if n <= FEW_ROWS:  # a few bytes compares beat numpy's call overhead
                idx = [
                    i
                    for i, v in enumerate(values)
                    if v is not None and len(v) == size and v[16:20] == ver
                ]
                chosen = values if len(idx) == n else [values[i] for i in idx]
                rec = np.frombuffer(b"".join(chosen), dtype=self.record_dtype)  # type: ignore[arg-type]
                return DecodedRows(self, n, rec, idx, None, chosen)  # type: ignore[arg-type]
            if None not in values and set(map(len, values)) == {size}:  # type: ignore[arg-type]
                idx = list(range(n))  # every row present at the current width
                chosen = values
            else:
                idx = [i for i, v in enumerate(values) if v is not None and len(v) == size]
                chosen = [values[i] for i in idx]
            rec = np.frombuffer(b"".join(chosen), dtype=self.record_dtype)  # type: ignore[arg-type]
            ok = rec[_H_VER] == self.schema_version
            if not ok.all():
                rec, idx = rec[ok], [i for i, k in zip(idx, ok.tolist(), strict=True) if k]
            return DecodedRows(self, n, rec, idx)
        idx = [
            i for i, v in enumerate(values) if v is not None and len(v) >= size and v[16:20] == ver
        ]
        rows: list[bytes] = [values[i] for i in idx]  # type: ignore[misc]
        var_values: dict[str, list[Any]] = {}
        keep = self._decode_var(rows, n, idx, var_values)
        if keep is not None:  # drop corrupt rows
            idx = [i for i, k in zip(idx, keep, strict=True) if k]
            rows = [r for r, k in zip(rows, keep, strict=True) if k]
        rec = np.frombuffer(b"".join(v[:size] for v in rows), dtype=self.record_dtype)
        return DecodedRows(self, n, rec, idx, var_values)

    def _decode_var(
        self,
        rows: list[bytes],
        n: int,
        present_idx: list[int],
        out: dict[str, list[Any]],
    ) -> list[bool] | None:
        """Fill ``out`` with one n-long list per variable feature; returns a keep-mask or None."""
        cols: list[list[Any]] = [[None] * n for _ in self.var]
        keep = None
        unpack = _U32.unpack_from
        for k, (row, i) in enumerate(zip(rows, present_idx, strict=True)):
            pos = self.fixed_size
            try:
                for c, (_, f) in enumerate(self.var):
                    (length,) = unpack(row, pos)
                    pos += 4
                    payload = row[pos : pos + length]
                    if len(payload) != length:
                        raise ValueError("truncated")
                    pos += length
                    cols[c][i] = self._var_value(f.name, f.dtype.name, payload)
            except (ValueError, struct.error):
                if keep is None:
                    keep = [True] * len(rows)
                keep[k] = False
                for col in cols:
                    col[i] = None
        for c, (_, f) in enumerate(self.var):
            out[f.name] = cols[c]
        return keep

    def _var_value(self, name: str, type_name: str, payload: bytes) -> Any:
        if type_name == "string":
            return payload.decode()
        if type_name == "bytes":
            return payload
        return np.frombuffer(payload, dtype=self._inner[name])


def _mark_nulls(
    nulls: np.ndarray | None, n: int, n_bytes: int, i: int, mask: np.ndarray
) -> np.ndarray:
    """Set bit ``i`` (little-endian bit order: byte i // 8, bit i % 8) of the null bitmap
    (n rows x n_bytes) where ``mask`` is true."""
    if nulls is None:
        nulls = np.zeros((n, n_bytes), dtype=np.uint8)
    nulls[:, i // 8] |= mask.astype(np.uint8) << np.uint8(i % 8)
    return nulls


def _numeric_column(col: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """Values (nulls as 0) and null mask (None when no nulls) of a numeric/bool Arrow column."""
    if col.null_count:
        mask = col.is_null().to_numpy(zero_copy_only=False)
        import pyarrow as pa

        zero = False if pa.types.is_boolean(col.type) else 0
        return col.fill_null(zero).to_numpy(), mask
    return col.to_numpy(), None


def int64_column(col: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """An int64-microseconds view of an int or timestamp/date Arrow column, and its null mask."""
    import pyarrow as pa

    t = col.type
    if pa.types.is_timestamp(t) or pa.types.is_date(t):
        if not (pa.types.is_timestamp(t) and t.unit == "us"):
            col = col.cast(pa.timestamp("us", tz=getattr(t, "tz", None)))
        col = col.cast(pa.int64())
    return _numeric_column(col)
