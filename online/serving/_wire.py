"""Protobuf wire bytes of the serving responses, written by hand, and fast request decoding.

Building a response with the Python protobuf API costs a few microseconds per column (one
message object, a copy and a merge each); writing the wire bytes directly costs a fraction of
that. ``encode_features_response`` / ``encode_predict_response`` produce bytes that parse to a
message equal to the one ``build_features_response`` / ``build_predict_response`` (the protobuf
API reference) make: same column layout, same errors for values protobuf cannot hold.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from featurestore._time import to_us
from featurestore.online.serving._proto import featurestore_pb2 as pb
from featurestore.online.serving.errors import BadRequestError, join_key_error

if TYPE_CHECKING:
    from featurestore.online.models import Explanation
    from featurestore.online.serving.results import FeatureResult, PredictResult

_STATUS = {
    "PRESENT": pb.PRESENT,
    "NOT_FOUND": pb.NOT_FOUND,
    "EXPIRED": pb.EXPIRED,
    "UNAVAILABLE": pb.UNAVAILABLE,
}
_NONE = type(None)
# packed FeatureColumn fields by the Python type of every non-null value, with the filler of
# a null row; other columns (timestamps, bytes, lists, mixed types) go as generic Values
_PACKED: dict[type, tuple[str, Any]] = {
    float: ("doubles", 0.0),
    int: ("ints", 0),
    bool: ("bools", False),
    str: ("strings", ""),
}
# the list kinds of a Value: an array feature's values go as the list of its element kind
ListKind = Literal["double", "int64", "bool"]
_LIST_KINDS = frozenset({"double_list_val", "int64_list_val", "bool_list_val"})
_ELEMENT_KINDS: dict[str, ListKind] = {
    "float32": "double",
    "float64": "double",
    "int32": "int64",
    "int64": "int64",
    "bool": "bool",
}

# ------------------------------------------------------------------ protobuf API (reference)


def to_value(v: Any) -> pb.Value:
    """A Python value as a protobuf Value (None -> no kind set)."""
    if v is None:
        return pb.Value()
    if isinstance(v, bool):
        return pb.Value(bool_val=v)
    if isinstance(v, int):
        return pb.Value(int64_val=v)
    if isinstance(v, float):
        return pb.Value(double_val=v)
    if isinstance(v, str):
        return pb.Value(string_val=v)
    if isinstance(v, bytes):
        return pb.Value(bytes_val=v)
    if isinstance(v, datetime):
        return pb.Value(timestamp_us_val=to_us(v))
    if isinstance(v, np.ndarray) and v.ndim == 1 and v.dtype.kind in "fb":
        # a float or bool array keeps its element type even when empty (it is in the dtype)
        return list_value(v.tolist(), "double" if v.dtype.kind == "f" else "bool")
    if hasattr(v, "tolist"):
        return to_value(v.tolist())
    if isinstance(v, (list, tuple)):
        return list_value(v)
    raise TypeError(f"cannot send a {type(v).__name__} value over gRPC")


def list_value(v: list[Any] | tuple[Any, ...], kind: ListKind | None = None) -> pb.Value:
    """A list as a Value of the list ``kind`` (an array feature's element kind, as responses
    send every array: see ``_list_kinds``), else of its elements' kind: all bools a bool list,
    all ints an int64 list (an empty list too: it has no element type), else a double list."""
    if kind is None:
        if v and all(type(x) is bool for x in v):
            kind = "bool"
        elif all(isinstance(x, int) and not isinstance(x, bool) for x in v):
            kind = "int64"
        else:
            kind = "double"
    if kind == "bool":
        return pb.Value(bool_list_val=pb.BoolList(values=v))
    if kind == "int64":
        return pb.Value(int64_list_val=pb.Int64List(values=v))
    return pb.Value(double_list_val=pb.DoubleList(values=[float(x) for x in v]))


def from_value(v: pb.Value) -> Any:
    """A protobuf Value as a Python value (no kind set -> None; lists as Python lists)."""
    kind = v.WhichOneof("kind")
    if kind is None:
        return None
    if kind in _LIST_KINDS:
        return list(getattr(v, kind).values)
    return getattr(v, kind)


def to_column(
    name: str,
    values: list[Any],
    statuses: list[int] | pb.FeatureColumn | None = None,
    *,
    into: pb.FeatureColumn | None = None,
    list_kind: ListKind | None = None,
) -> pb.FeatureColumn:
    """One response column, packed (one C-level fill per column) when its values allow.

    ``statuses``: FieldStatus codes, or a FeatureColumn holding them (merged: cheaper when
    many columns share one status list). ``into``: an empty column to fill. ``list_kind``:
    the column is an array feature of that element kind, so every list goes as a list of that
    kind (an empty one too, which has no element type of its own).
    """
    col = pb.FeatureColumn() if into is None else into
    col.name = name
    kinds = set(map(type, values))
    has_null = _NONE in kinds
    kinds.discard(_NONE)
    packed = _PACKED.get(kinds.pop()) if len(kinds) == 1 else None
    if packed is None:
        if list_kind is not None:
            col.values.extend(
                [list_value(x, list_kind) if type(x) is list else to_value(x) for x in values]
            )
        else:
            col.values.extend([to_value(x) for x in values])
    else:
        field, zero = packed
        if has_null:
            col.nulls.extend([v is None for v in values])
            values = [zero if v is None else v for v in values]
        sub = getattr(col, field)
        sub.SetInParent()  # the oneof is set even for zero rows
        sub.values.extend(values)
    if isinstance(statuses, pb.FeatureColumn):
        col.statuses.MergeFrom(statuses.statuses)
    elif statuses:
        col.statuses.extend(statuses)
    return col


def column_values(col: pb.FeatureColumn) -> list[Any]:
    """A response column's values as Python values (None for nulls), packed or generic."""
    kind = col.WhichOneof("packed")
    if kind is None:
        return [from_value(x) for x in col.values]
    values = list(getattr(col, kind).values)
    if col.nulls:
        return [None if null else v for v, null in zip(values, col.nulls, strict=True)]
    return values


def _list_kinds(res: FeatureResult) -> dict[str, ListKind]:
    """The columns of ``res`` holding an array feature, with its element's list kind, known
    from the request it answers; none when it was built from plain columns."""
    req = getattr(res, "_requests", None)  # (requests, full names) of a lookup's result
    if not req:
        return {}
    requests, full = req
    out: dict[str, ListKind] = {}
    for view, feats in requests:
        for f in feats:
            inner = view.field(f).dtype.inner
            if inner is not None and inner.name in _ELEMENT_KINDS:
                out[f"{view.name}__{f}" if full else f] = _ELEMENT_KINDS[inner.name]
    return out


def _feature_columns(res: FeatureResult, out: Any) -> None:
    """Append ``res``'s columns to the repeated FeatureColumn field ``out``."""
    shared: dict[int, pb.FeatureColumn] = {}
    kinds = _list_kinds(res)
    for name, values in res.columns.items():
        st = res.statuses.get(name)
        tmpl = None
        if st:
            tmpl = shared.get(id(st))
            if tmpl is None:
                tmpl = shared[id(st)] = pb.FeatureColumn(statuses=[_STATUS[s] for s in st])
        to_column(name, values, tmpl, into=out.add(), list_kind=kinds.get(name))


def build_features_response(res: FeatureResult) -> pb.GetOnlineFeaturesResponse:
    """The response built with the protobuf API: the reference the wire encoder must match."""
    out = pb.GetOnlineFeaturesResponse(degraded=res.degraded)
    _feature_columns(res, out.columns)
    return out


def build_predict_response(res: PredictResult) -> pb.PredictResponse:
    """The response built with the protobuf API: the reference the wire encoder must match."""
    out = pb.PredictResponse(
        model=res.model, version=res.version, scores=res.scores, degraded=res.degraded
    )
    if res.features is not None:
        _feature_columns(res.features, out.features)
    if res.request_id:
        out.request_id = res.request_id
    ex = res.explanation
    if ex is not None:
        out.explanation.CopyFrom(
            pb.Explanation(
                output=ex.output,
                feature_names=ex.feature_names,
                base_values=ex.base_values.tolist(),
                contributions=ex.contributions.ravel().tolist(),
            )
        )
    return out


# ------------------------------------------------------------------------- wire encoding

_BYTE = [bytes((i,)) for i in range(128)]
# varints of 0..16383 (every length of a column up to 16 KiB): a lookup instead of a loop
_VARINT = _BYTE + [bytes(((i & 0x7F) | 0x80, i >> 7)) for i in range(128, 1 << 14)]
_INT64_MIN = -(1 << 63)
_INT64_END = 1 << 63
_SMALL_INTS = 4  # up to this many varints are cheaper in Python than through Int64List
_SMALL_STRS = 8  # likewise for strings through StringList
_DOUBLES: dict[int, Any] = {}  # rows -> struct.Struct packing that many little-endian doubles
_NAMES: dict[str, bytes] = {}  # column name -> its encoded field 1 (names repeat across calls)
# 8 x rows -> a stored float64 column's bytes between its name and its values (_stored_columns)
_STORED_MID: dict[int, bytes] = {}
# (id of a names list, 8 x rows, tag) -> (that list, and what _stored_layout returns for it)
_STORED_LAYOUT: dict[tuple[int, int, bytes], tuple[Any, ...]] = {}
_MAX_NAMES = 4096


def _varint(n: int) -> bytes:
    """The base-128 varint of a non-negative int (a length, or an int64 as uint64)."""
    if n < 0x4000:
        return _VARINT[n]
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _len(n: int) -> bytes:
    """A length as a varint (one table lookup for the usual short ones)."""
    return _VARINT[n] if n < 0x4000 else _varint(n)


def _len_field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field: tag, length, payload."""
    n = len(payload)
    return tag + (_VARINT[n] if n < 0x4000 else _varint(n)) + payload


def _doubles(values: list[Any]) -> bytes:
    """Little-endian IEEE doubles, 8 bytes each (NaN and inf keep their bits)."""
    s = _DOUBLES.get(len(values))
    if s is None:
        s = struct.Struct(f"<{len(values)}d")
        if len(_DOUBLES) < 1024:
            _DOUBLES[len(values)] = s
    return s.pack(*values)


def _int64_list(values: list[int]) -> bytes:
    """The body of an Int64List holding ``values`` (packed varints, negatives in 10 bytes)."""
    if len(values) > _SMALL_INTS:
        if 0 <= values[0] < 0x80:  # maybe all one byte each (checked in C; else ValueError)
            try:
                small = bytes(values)
            except ValueError:
                small = b"\x80"
            if small.isascii():
                return _len_field(b"\n", small)
        return pb.Int64List(values=values).SerializeToString()  # C; and its range errors
    parts = []
    for v in values:
        if not _INT64_MIN <= v < _INT64_END:
            return pb.Int64List(values=values).SerializeToString()  # raises protobuf's error
        parts.append(_varint(v if v >= 0 else v + (1 << 64)))
    return _len_field(b"\n", b"".join(parts)) if parts else b""


def _string_list(values: list[str]) -> bytes:
    """The body of a StringList holding ``values`` (UTF-8; lone surrogates raise as protobuf's)."""
    if len(values) > _SMALL_STRS:
        return pb.StringList(values=values).SerializeToString()
    parts = []
    for s in values:
        b = s.encode()
        n = len(b)
        parts += (b"\n", _VARINT[n] if n < 0x4000 else _varint(n), b)
    return b"".join(parts)


def _name_field(name: str) -> bytes:
    """A column's encoded field 1 (nothing for "", as protobuf omits a default string)."""
    head = _NAMES.get(name)
    if head is None:
        head = _len_field(b"\n", name.encode()) if name else b""
        if len(_NAMES) >= _MAX_NAMES:
            _NAMES.clear()
        _NAMES[name] = head
    return head


_ONE_DOUBLE = b'"\n\n\x08'  # field 4 (10 bytes): DoubleList field 1 (8 bytes)
_ONE_INT = [b"*\x03\n\x01" + _BYTE[i] for i in range(128)]  # field 5: Int64List of one
_ONE_BOOL = {False: b"2\x03\n\x01\x00", True: b"2\x03\n\x01\x01"}  # field 6: BoolList of one
_D1 = struct.Struct("<d")


def _packed_fields(values: list[Any]) -> bytes | None:
    """A column's packed oneof (fields 4-7) and nulls (8); None when it must go generic."""
    if len(values) == 1:  # the common online case: cheap paths without a type scan
        v = values[0]
        kind = type(v)
        if kind is float:
            return _ONE_DOUBLE + _D1.pack(v)
        if kind is int:
            if 0 <= v < 0x80:
                return _ONE_INT[v]
            if not _INT64_MIN <= v < _INT64_END:
                pb.Int64List(values=values)  # raises protobuf's own range error
            b = _varint(v if v >= 0 else v + (1 << 64))
            return b"*" + _BYTE[len(b) + 2] + b"\n" + _BYTE[len(b)] + b
        if kind is str:
            b = v.encode()
            n = len(b)
            if n < 0x7E:
                return b":" + _BYTE[n + 2] + b"\n" + _BYTE[n] + b
            return _len_field(b":", _string_list(values))
        if kind is bool:
            return _ONE_BOOL[v]
        return None
    if len(values) == 0:  # (len: values may be a numpy array)
        return None  # zero rows: no packed kind, like the protobuf API builder (empty values)
    types = [*map(type, values)]
    kind = types[0]
    nulls = b""
    if types.count(kind) != len(types):  # cheaper than a set when (as usual) all agree
        kinds = set(types)
        if len(kinds) != 2 or _NONE not in kinds:
            return None
        kinds.discard(_NONE)
        kind = kinds.pop()
        if kind not in _PACKED:
            return None
        flags = bytes([v is None for v in values])
        nulls = b"B" + _len(len(flags)) + flags  # field 8
        zero = _PACKED[kind][1]
        values = [zero if v is None else v for v in values]
    if kind is float:  # field 4: a DoubleList
        sub = _doubles(values)
        sub = b"\n" + _len(len(sub)) + sub
        return b'"' + _len(len(sub)) + sub + nulls
    if kind is int:  # field 5: an Int64List
        sub = _int64_list(values)
        return b"*" + _len(len(sub)) + sub + nulls
    if kind is str:  # field 7: a StringList
        sub = _string_list(values)
        return b":" + _len(len(sub)) + sub + nulls
    if kind is bool:  # field 6: a BoolList
        sub = b"\n" + _len(len(values)) + bytes(values)
        return b"2" + _len(len(sub)) + sub + nulls
    return None


def _dense_doubles(arr: Any) -> bytes:
    """Field 4 (a DoubleList, no nulls) of a float64 array: what ``_packed_fields`` writes for
    the equal list of floats, without walking it."""
    sub = arr.astype("<f8", copy=False).tobytes()
    sub = b"\n" + _len(len(sub)) + sub
    return b'"' + _len(len(sub)) + sub


def _columns(res: FeatureResult, tag: bytes, parts: list[bytes]) -> None:
    """Append ``res``'s columns as repeated field ``tag`` to ``parts``."""
    shared: dict[int, tuple[bytes, list[int]]] = {}  # one view's features share one list
    blocks = res.wire_blocks()
    if len(blocks) == 1:
        _dict_columns(blocks[0], res.statuses, tag, parts, shared, res)
        return
    _dict_columns(blocks[0], None, tag, parts, shared, res)  # the join keys: no statuses
    for block in blocks[1:]:
        if type(block) is not dict:
            _stored_columns(*block, tag, parts)
        elif block:  # statuses named only when a column needs them
            _dict_columns(block, res.statuses, tag, parts, shared, res)


def _stored_columns(
    names: list[str], raw: bytes, nulls: np.ndarray | None, tag: bytes, parts: list[bytes]
) -> None:
    """A view's float64 columns served as stored: ``raw`` holds each column's n doubles, one
    column after another (0.0 where ``nulls``, a (columns, n) bool array, marks a null); every
    status is PRESENT. The bytes ``_dict_columns`` writes for their lists, without their walk."""
    w = len(raw) // len(names)  # 8 n
    heads, mid, cuts = _stored_layout(names, w, tag)
    cols = [b""] * (2 * len(names))  # each column: its remembered head, then its slice of raw
    cols[::2] = heads
    cols[1::2] = map(raw.__getitem__, cuts)
    if nulls is not None:  # rewrite the columns that have a null
        n = w // 8
        for c, count in enumerate(nulls.sum(axis=1).tolist()):
            if not count:
                continue
            head = _name_field(names[c])
            if count == n:  # every value null: n empty generic Values, as protobuf's API
                body = head + b"\x12\x00" * n + mid[: 1 + len(_len(n)) + n]
                cols[2 * c] = tag + _len(len(body))
                cols[2 * c + 1] = body
            else:
                flags = b"B" + _len(n) + nulls[c].tobytes()  # field 8
                size = len(head) + len(mid) + w + len(flags)
                cols[2 * c] = tag + _len(size) + head + mid
                cols[2 * c + 1] = raw[cuts[c]] + flags
    parts += cols


def _stored_layout(names: list[str], w: int, tag: bytes) -> tuple[list[bytes], bytes, list[slice]]:
    """For a stored block of ``names`` with ``w`` bytes of values per column: each column's
    bytes up to its values when it has no null (tag, size, name, statuses, DoubleList head),
    the part after the name, and each column's slice of the block. Remembered per names list,
    since a request shape's lists are reused call after call."""
    key = (id(names), w, tag)
    hit = _STORED_LAYOUT.get(key)
    if hit is not None and hit[0] is names:
        return hit[1], hit[2], hit[3]
    n = w // 8
    mid = _STORED_MID.get(w)
    if mid is None:  # statuses (n zeros), then the DoubleList's field 4 head
        sub = b"\n" + _len(w)
        mid = b"\x1a" + _len(n) + bytes(n) + b'"' + _len(len(sub) + w) + sub
        if len(_STORED_MID) < 1024:
            _STORED_MID[w] = mid
    heads = []
    for name in names:
        head = _name_field(name)
        heads.append(tag + _len(len(head) + len(mid) + w) + head + mid)
    cuts = [slice(at, at + w) for at in range(0, w * len(names), w)]
    if len(_STORED_LAYOUT) >= 1024:
        _STORED_LAYOUT.clear()
    _STORED_LAYOUT[key] = (names, heads, mid, cuts)
    return heads, mid, cuts


def _dict_columns(
    columns: dict[str, Any],
    statuses: dict[str, list[str]] | None,
    tag: bytes,
    parts: list[bytes],
    shared: dict[int, tuple[bytes, list[int]]],
    res: FeatureResult,
) -> None:
    """Append ``columns`` (with their ``statuses``, if any) as repeated field ``tag``;
    ``res``, their result, says which hold array features (see ``list_value``)."""
    no_status = (b"", None)
    kinds: dict[str, ListKind] | None = None
    for name, values in columns.items():
        st = statuses.get(name) if statuses is not None else None
        if st:
            status, codes = shared.get(id(st)) or _status_field(st, shared)
        else:
            status, codes = no_status
        if type(values) is np.ndarray:  # float64, read as stored: bytes, no walk
            packed = _dense_doubles(values) if len(values) > 1 else _packed_fields(values.tolist())
        else:
            packed = _packed_fields(values)
        if packed is None:  # timestamps, bytes, lists, mixed types: built with the protobuf API
            kinds = _list_kinds(res) if kinds is None else kinds
            body = to_column(name, values, codes, list_kind=kinds.get(name)).SerializeToString()
        else:
            head = _NAMES.get(name)
            body = (_name_field(name) if head is None else head) + status + packed
        n = len(body)
        parts += (tag, _VARINT[n] if n < 0x4000 else _varint(n), body)


def _status_field(st: list[str], shared: dict[int, tuple[bytes, list[int]]]) -> tuple[Any, ...]:
    """A status list's encoded field 3 and its codes, remembered by the list's identity."""
    codes = bytes([_STATUS[s] for s in st])
    enc = shared[id(st)] = (_len_field(b"\x1a", codes), list(codes))
    return enc


def encode_features_response(res: FeatureResult) -> bytes:
    """A GetOnlineFeaturesResponse's wire bytes, straight from a FeatureResult."""
    parts: list[bytes] = []
    _columns(res, b"\n", parts)
    if res.degraded:
        parts.append(b"\x10\x01")
    return b"".join(parts)


def encode_predict_response(res: PredictResult) -> bytes:
    """A PredictResponse's wire bytes, straight from a PredictResult."""
    parts: list[bytes] = []
    if res.model:
        parts.append(_len_field(b"\n", res.model.encode()))
    version = res.version
    if version:
        if not _INT64_MIN <= version < _INT64_END:
            raise ValueError(f"Value out of range: {version}")
        parts += (b"\x10", _varint(version if version >= 0 else version + (1 << 64)))
    scores = res.scores
    if len(scores):
        parts.append(_len_field(b"\x1a", _doubles(scores)))
    if res.degraded:
        parts.append(b"\x20\x01")
    if res.features is not None:
        _columns(res.features, b"*", parts)
    if res.request_id:
        parts.append(_len_field(b"2", res.request_id.encode()))
    if res.explanation is not None:
        parts.append(_len_field(b":", _explanation(res.explanation)))
    return b"".join(parts)


def _explanation(ex: Explanation) -> bytes:
    """An Explanation message's bytes (empty fields left out, as protobuf does)."""
    parts = [_len_field(b"\n", ex.output.encode())] if ex.output else []
    parts += [_len_field(b"\x12", name.encode()) for name in ex.feature_names]
    for tag, values in ((b"\x1a", ex.base_values), (b'"', ex.contributions)):
        if values.size:
            parts.append(_len_field(tag, values.astype("<f8", copy=False).tobytes()))
    return b"".join(parts)


# ------------------------------------------------------------------------ request decoding


def _generic(values: Any, one: Callable[[pb.Value], Any] = from_value) -> list[Any]:
    """Generic Values as Python values (``one`` reads a Value); a whole column of one common
    kind skips WhichOneof."""
    if len(values) < 3:
        return [one(v) for v in values]
    kind = values[0].WhichOneof("kind")
    if kind == "int64_val":
        return [v.int64_val if v.HasField("int64_val") else one(v) for v in values]
    if kind == "string_val":
        return [v.string_val if v.HasField("string_val") else one(v) for v in values]
    if kind == "double_val":
        return [v.double_val if v.HasField("double_val") else one(v) for v in values]
    return [one(v) for v in values]


def read_column(col: pb.ValueList, where: str) -> list[Any]:
    """One request column (packed or generic) as Python values; ``where`` names it in errors."""
    return _read(col, where, None)


def _read(col: pb.ValueList, what: str, key: str | None) -> list[Any]:
    """A column as Python values; its name in errors is ``what.key`` (built only on error)."""
    fields = col.ListFields()  # the non-empty fields, by number: one C call
    if len(fields) == 1:
        fd, got = fields[0]
        number = fd.number
        if number == 1:  # generic `values`
            return _generic(got)
        if number != 6:  # one packed field, no nulls: one C-level copy
            return list(got)
    elif not fields:
        return []  # zero rows
    return _read_with_nulls(fields, what if key is None else f"{what}.{key}")


def _read_with_nulls(fields: list[Any], where: str) -> list[Any]:
    """A packed column with `nulls`, or an invalid mix of forms (BadRequestError)."""
    forms = {fd.name: got for fd, got in fields}
    nulls = forms.pop("nulls", None)
    if len(forms) > 1:
        raise BadRequestError(
            f"{where} sets {' and '.join(forms)}: send a column as either generic `values` "
            "or exactly one packed field (ints, doubles, strings, bools)",
            field=where,
        )
    if not forms or "values" in forms:
        raise BadRequestError(
            f"{where} sets `nulls` without a packed field: mark nulls in a packed column "
            "(ints, doubles, strings, bools), or send Values with no kind set",
            field=where,
        )
    (out,) = forms.values()
    if len(nulls) != len(out):
        raise BadRequestError(
            f"{where} has {len(nulls)} `nulls` for {len(out)} values: send one per row "
            "(or none when no row is null)",
            field=where,
        )
    return [None if z else v for v, z in zip(out, nulls, strict=True)]


def read_columns(m: Any, what: str, *, keys: bool = False) -> dict[str, list[Any]]:
    """A request's map<string, ValueList> as columns of Python values (``what``: its name).
    ``keys``: the columns are join keys, and a timestamp Value (an int on the wire) is refused
    naming the key, as REST refuses any value that is not an int or a string."""
    out = {}
    for k, col in m.items():  # _read, inlined for the common one-field columns
        fields = col.ListFields()
        if len(fields) == 1:
            fd, got = fields[0]
            number = fd.number
            if number == 1:
                if keys:
                    out[k] = _key_column(got, f"{what}.{k}")
                else:
                    out[k] = [from_value(v) for v in got] if len(got) < 3 else _generic(got)
                continue
            if number != 6:
                out[k] = list(got)
                continue
        out[k] = _read(col, what, k)
    return out


def _key_column(values: Any, where: str) -> list[Any]:
    """Generic Values of a join-key column, as ``_generic`` reads them, refusing timestamps (on
    the wire an int, which the key checks downstream could not tell from one)."""
    try:
        return _generic(values, _not_a_timestamp)
    except _TimestampKey:
        i = next(i for i, v in enumerate(values) if v.WhichOneof("kind") == "timestamp_us_val")
        us = values[i].timestamp_us_val
        raise join_key_error(where, i, us, shown_as=f"a timestamp ({us} us)") from None


class _TimestampKey(Exception):
    """Internal: a join-key column holds a timestamp Value (``_key_column`` names it)."""


def _not_a_timestamp(v: pb.Value) -> Any:
    """``from_value`` for a join-key Value, raising _TimestampKey for a timestamp."""
    if v.WhichOneof("kind") == "timestamp_us_val":
        raise _TimestampKey
    return from_value(v)
