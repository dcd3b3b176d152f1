"""Online store keys: ``<project>:{<project>|k1=v1|k2=v2}:<view>``, hash-tagged by entity.

The Redis Cluster hash tag ``{...}`` covers the project and the join-key names and values only,
so every view of one entity lands in one slot and a multi-view lookup of one entity is one
round trip to one node. Integers are written in decimal (``user_id=42``); strings are quoted
and percent-escaped (``city="a%7Cb"``), so ``42`` and ``"42"`` never collide and no value can
close the hash tag or fake a separator.
"""

from __future__ import annotations

import numbers
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np

from featurestore.errors import EntityDataError
from featurestore.types import KEY_KIND_NOUNS, KEY_KIND_TYPES

_INT64_MIN, _INT64_END = -(1 << 63), 1 << 63  # the keys a source can hold

# Characters that would end the hash tag, split join keys or quotes: escaped in string values.
_ESCAPE_VALUE = str.maketrans({"%": "%25", '"': "%22", "|": "%7C", "{": "%7B", "}": "%7D"})
_ESCAPE_NAME = str.maketrans({"%": "%25", "=": "%3D", "|": "%7C", "{": "%7B", "}": "%7D"})


def key_prefix(project: str) -> bytes:
    """The bytes every key of ``project`` starts with (for scans and deletes)."""
    return f"{project}:{{{project}|".encode()


def key_suffix(view_name: str) -> bytes:
    """The bytes every key of ``view_name`` ends with."""
    return f"}}:{view_name}".encode()


def watermark_key(project: str, view_name: str, tag: str | None = None) -> bytes:
    """The key of a view's materialization watermark inside the online store: what the store
    itself holds, so a store that lost its data (a Redis restarted without persistence) is seen
    to have lost it. Outside every view's key space (no ``{`` after the project). ``tag``: the
    hash tag of one Redis Cluster node's copy (see :func:`node_tags`)."""
    if tag is None:
        return f"{project}:__watermark__:{view_name}".encode()
    return f"{project}:__watermark__:{{{tag}}}:{view_name}".encode()


def node_tags(slot_owners: Mapping[int, Hashable]) -> dict[Hashable, str]:
    """One short hash tag per Redis Cluster node (``slot_owners``: slot -> the node serving
    it), each hashing to a slot of that node: a key holding the tag lives on that node. The
    first of "0", "1", ... per node, so one slot map always gives the same tags."""
    from redis.crc import key_slot

    owners = set(slot_owners.values())
    tags: dict[Hashable, str] = {}
    i = 0
    while len(tags) < len(owners):  # every slot is the slot of some tag below 110000
        if i > 200_000:  # a slot map naming slots past 16383: never loop for ever
            raise ValueError(f"no hash tag reaches the slots of {len(owners) - len(tags)} node(s)")
        tag = str(i)
        node = slot_owners.get(key_slot(tag.encode()))
        if node is not None and node not in tags:
            tags[node] = tag
        i += 1
    return tags


def is_watermark_key(key: bytes) -> bool:
    """Whether ``key`` is a view's stored watermark (see :func:`watermark_key`), not a row."""
    return b":__watermark__:" in key and b"{" not in key.partition(b":__watermark__:")[0]


def build_key(project: str, view_name: str, entity_key: dict[str, Any]) -> bytes:
    """The key of one entity (join key -> value) in one view; see :func:`build_keys`."""
    names = tuple(entity_key)
    return build_keys(project, view_name, names, [[entity_key[n]] for n in names])[0]


def build_keys(
    project: str,
    view_name: str,
    join_keys: tuple[str, ...],
    key_columns: list[Sequence[Any]],
    kinds: Mapping[str, str] | None = None,
) -> list[bytes]:
    """One key per row; ``key_columns`` holds one column (ints or strings) per join key.

    ``kinds`` (join key -> "int" / "str", the registry's ``join_key_kinds``) makes a value of
    the other kind an EntityDataError: it could only ever read as not found.
    """
    if len(join_keys) != len(key_columns):
        raise EntityDataError(
            f"view '{view_name}' has join keys {list(join_keys)} but {len(key_columns)} key "
            "column(s) were given"
        )
    if not join_keys:
        raise EntityDataError(f"view '{view_name}' needs at least one join key")
    head = f"{project}:{{{project}|"
    tail = f"}}:{view_name}"
    if len(join_keys) == 1:  # the common case: one pass over the values
        pre = head + join_keys[0].translate(_ESCAPE_NAME) + "="
        ints = signed_int_array(key_columns[0])
        if ints is not None and (not kinds or kinds.get(join_keys[0], "int") == "int"):
            return _int_keys(pre.encode(), tail.encode(), ints)
        values = as_pylist(key_columns[0])
        kind = _column_kind(values)
        if kinds:
            _check_kind(join_keys[0], values, kind, kinds)
        if kind is int:  # C-level: one format over a repeated template, split
            if not values:
                return []
            _check_int_range(join_keys[0], view_name, values)
            one = _literal(pre) + b"%d" + _literal(tail) + b"\0"
            return ((one * len(values))[:-1] % tuple(values)).split(b"\0")
        if kind is str:
            return [f'{pre}"{v.translate(_ESCAPE_VALUE)}"{tail}'.encode() for v in values]
    parts = [
        _render_column(name, col, view_name, kinds)
        for name, col in zip(join_keys, key_columns, strict=True)
    ]
    if len(parts) == 1:
        return [(head + p + tail).encode() for p in parts[0]]
    n = len(parts[0])
    for name, p in zip(join_keys, parts, strict=True):
        if len(p) != n:
            raise EntityDataError(
                f"join key '{name}' of view '{view_name}' has {len(p)} values, expected {n}"
            )
    return [(head + "|".join(row) + tail).encode() for row in zip(*parts, strict=True)]


class OneEntityKeys:
    """The keys of one entity in several views, as :func:`build_keys` renders them (same bytes).

    Built once per request shape: a one-entity lookup renders its plain int / str join-key
    values with one format per distinct join-key set instead of the batched machinery. Values
    of any other type, or of the other kind than ``kinds`` expects, get None from :meth:`keys`:
    the caller falls back to :func:`build_keys`, which renders or rejects them.
    """

    __slots__ = ("_groups", "_head", "_n")

    def __init__(self, project: str, views: Sequence[tuple[str, tuple[str, ...]]]) -> None:
        self._head = f"{project}:{{{project}|"
        groups: dict[tuple[str, ...], list[tuple[int, str]]] = {}
        for i, (view_name, join_keys) in enumerate(views):
            groups.setdefault(join_keys, []).append((i, f"}}:{view_name}"))
        # per distinct join-key set: (join keys, their escaped "name=" prefixes, (slot, tail)s)
        self._groups = [
            (jk, [k.translate(_ESCAPE_NAME) + "=" for k in jk], ts) for jk, ts in groups.items()
        ]
        self._n = len(views)

    def keys(
        self, columns: Mapping[str, Sequence[Any]], kinds: Mapping[str, str] | None
    ) -> list[bytes] | None:
        """One key per view for the one-row list ``columns`` (join key -> [value]), or None."""
        out: list[bytes] = [b""] * self._n
        for join_keys, prefixes, tails in self._groups:
            parts = []
            for name, prefix in zip(join_keys, prefixes, strict=True):
                col = columns[name]
                if type(col) is not list:  # e.g. a pandas Series: col[0] is not positional
                    return None
                v = col[0]
                want = kinds.get(name) if kinds else None
                if (
                    type(v) is int
                    and (want is None or want == "int")
                    and _INT64_MIN <= v < _INT64_END
                ):
                    parts.append(f"{prefix}{v}")
                elif type(v) is str and (want is None or want == "str"):
                    parts.append(f'{prefix}"{v.translate(_ESCAPE_VALUE)}"')
                else:
                    return None
            body = self._head + "|".join(parts)
            for i, tail in tails:
                out[i] = (body + tail).encode()
        return out


def _literal(text: str) -> bytes:
    """``text`` as bytes that a ``%`` format leaves as they are."""
    return text.encode().replace(b"%", b"%%")


def build_keys_views(
    project: str,
    view_names: Sequence[str],
    join_keys: tuple[str, ...],
    key_columns: list[Sequence[Any]],
    kinds: Mapping[str, str] | None = None,
) -> list[bytes]:
    """:func:`build_keys` for several views with the same join keys, concatenated in order.

    Int values of a single join key are rendered once for all views.
    """
    if len(join_keys) == 1 and len(key_columns) == 1 and len(view_names) > 1:
        values = as_pylist(key_columns[0])
        kind = _column_kind(values)
        if kinds:
            _check_kind(join_keys[0], values, kind, kinds)
        if values and kind is int:
            _check_int_range(join_keys[0], view_names[0], values)
            pre = f"{project}:{{{project}|" + join_keys[0].translate(_ESCAPE_NAME) + "="
            body = "\0".join(map(str, values))
            joined = "\0".join(
                pre + body.replace("\0", f"}}:{name}\0{pre}") + f"}}:{name}" for name in view_names
            )
            return joined.encode().split(b"\0")
    out: list[bytes] = []
    for name in view_names:
        out += build_keys(project, name, join_keys, key_columns, kinds)
    return out


def kind_mismatch(values: Sequence[Any], want: str) -> tuple[int, Any] | None:
    """The first (row, value) of ``values`` that is of the other join-key kind than ``want``
    ("int": a string; "str": an integer), or None. Other types are not judged here."""
    if want == "int":
        bad = next((i for i, v in enumerate(values) if isinstance(v, str)), None)
    else:
        bad = next((i for i, v in enumerate(values) if _is_int(v)), None)
    return None if bad is None else (bad, values[bad])


def _is_int(v: Any) -> bool:
    """An int or a numpy integer, not a bool."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _check_kind(name: str, values: list[Any], kind: type | None, kinds: Mapping[str, str]) -> None:
    """EntityDataError when join key ``name`` is given a value of the other kind."""
    want = kinds.get(name)
    if want is None or kind is KEY_KIND_TYPES[want]:
        return
    hit = kind_mismatch(values, want)
    if hit is not None:
        i, v = hit
        raise EntityDataError(
            f"join key '{name}' holds {KEY_KIND_NOUNS[want]} (its column in the feature views' "
            f"sources), but entity row {i} gives {v!r} ({type(v).__name__}); pass "
            f"{KEY_KIND_NOUNS[want]}, as no key written from the sources can match it"
        )


def _render_column(
    name: str, col: Sequence[Any], view_name: str, kinds: Mapping[str, str] | None = None
) -> list[str]:
    """``name=value`` strings for one join-key column."""
    prefix = name.translate(_ESCAPE_NAME) + "="
    values = as_pylist(col)
    kind = _column_kind(values)
    if kinds:
        _check_kind(name, values, kind, kinds)
    if kind is int:
        _check_int_range(name, view_name, values)
        return [prefix + str(v) for v in values]
    if kind is str:
        return [prefix + '"' + v.translate(_ESCAPE_VALUE) + '"' for v in values]
    if any(_is_null(v) for v in values):  # report a null before any type problem
        _render_one(None, name, view_name)
    return [prefix + _render_one(v, name, view_name) for v in values]


def _is_null(v: Any) -> bool:
    if v is None or type(v).__name__ in ("NAType", "NaTType"):
        return True
    try:
        return bool(v != v)  # NaN
    except (TypeError, ValueError):
        return False


def as_pylist(col: Sequence[Any]) -> list[Any]:
    """Python scalars from a list, tuple, numpy array or Arrow array (numpy ints -> int)."""
    if isinstance(col, list):
        return col
    if _is_arrow_int_without_nulls(col):  # numpy's tolist makes the same ints, faster
        return col.to_numpy().tolist()  # type: ignore[attr-defined]
    if isinstance(col, np.ndarray) and col.dtype.kind == "M":
        # datetime64 in ns would list as bare ints; in us it lists as (naive, UTC) datetimes
        return col.astype("datetime64[us]").tolist()  # type: ignore[no-any-return]
    tolist = getattr(col, "tolist", None) or getattr(col, "to_list", None)
    if tolist is not None:  # numpy (int64 -> int, str_ -> str), polars
        return tolist()
    to_pylist = getattr(col, "to_pylist", None)
    if to_pylist is not None:  # Arrow
        return to_pylist()
    return list(col)


POW10 = np.array([10**i for i in range(20)], dtype=np.uint64)


def decimal_digits(v: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Of int64 values: which are negative, their magnitudes as uint64 (exact for the
    smallest int64 too) and how many decimal digits each magnitude has (0 has one)."""
    neg = v < 0
    mag = v.astype(np.uint64)
    mag[neg] = ~mag[neg] + np.uint64(1)
    return neg, mag, np.maximum(np.searchsorted(POW10, mag, side="right"), 1)


def signed_int_array(col: Any) -> np.ndarray | None:
    """An int64 numpy copy of a signed-integer Arrow or numpy column without nulls, else None."""
    if isinstance(col, np.ndarray):
        return col.astype(np.int64) if col.dtype.kind == "i" and col.ndim == 1 else None
    if not _is_arrow_int_without_nulls(col):
        return None
    import pyarrow as pa

    if not pa.types.is_signed_integer(col.type):  # type: ignore[attr-defined]
        return None
    return col.to_numpy().astype(np.int64)  # type: ignore[attr-defined]


def _int_keys(pre: bytes, tail: bytes, v: np.ndarray) -> list[bytes]:
    """``pre + b"%d" % x + tail`` for every x of ``v``, written as digits into byte rows.

    Rows of one text width form one uint8 block (a row: prefix, digits, suffix), cut into
    bytes by numpy; a batch has only a few widths.
    """
    n = len(v)
    if not n:
        return []
    neg, mag, digits = decimal_digits(v)
    width = digits + neg
    lo, hi = int(width.min()), int(width.max())
    if lo == hi:
        return _int_key_block(pre, tail, mag, neg, lo)
    out = np.empty(n, dtype=object)
    for w in range(lo, hi + 1):
        idx = np.flatnonzero(width == w)
        if len(idx):
            out[idx] = _int_key_block(pre, tail, mag[idx], neg[idx], w)
    return out.tolist()


def _int_key_block(pre: bytes, tail: bytes, mag: np.ndarray, neg: np.ndarray, w: int) -> list:
    """Keys of magnitudes ``mag`` whose text (sign included) is ``w`` characters long."""
    p = len(pre)
    size = p + w + len(tail)
    buf = np.empty((len(mag), size), dtype=np.uint8)
    buf[:, :p] = np.frombuffer(pre, dtype=np.uint8)
    buf[:, p + w :] = np.frombuffer(tail, dtype=np.uint8)
    rest = mag.copy()
    for j in range(p + w - 1, p - 1, -1):  # right to left; a negative's first place is its sign
        buf[:, j] = rest % np.uint64(10) + np.uint64(48)
        rest //= np.uint64(10)
    if neg.any():
        buf[neg, p] = ord("-")
    return buf.view(f"V{size}").ravel().tolist()


def _is_arrow_int_without_nulls(col: Any) -> bool:
    """Whether ``col`` is an Arrow (chunked) array of integers with no nulls."""
    t = getattr(col, "type", None)
    if (
        t is None
        or getattr(col, "null_count", 1) != 0
        or type(col).__module__.split(".")[0] != ("pyarrow")
    ):
        return False
    import pyarrow as pa

    return bool(pa.types.is_integer(t))


def _check_int_range(name: str, view_name: str, values: list[int]) -> None:
    """Refuse an int no stored key can hold (a source's keys are int64), as the servers do."""
    if values and not (_INT64_MIN <= min(values) and max(values) < _INT64_END):
        v = next(v for v in values if not _INT64_MIN <= v < _INT64_END)
        raise EntityDataError(
            f"join key '{name}' of view '{view_name}' has value {v}, outside the 64-bit range "
            "of integer join keys"
        )


def _column_kind(values: list[Any]) -> type | None:
    """``int`` or ``str`` when every value has exactly that type, else None (mixed/other)."""
    if not values:
        return int
    types = set(map(type, values))
    if len(types) == 1:
        (kind,) = types
        if kind is int or kind is str:
            return kind
    return None


def _render_one(v: Any, name: str, view_name: str) -> str:
    """One value of a mixed column: ints, numpy ints, strings; None/NaN raise."""
    if v is None or (isinstance(v, float) and v != v):
        raise EntityDataError(
            f"join key '{name}' of view '{view_name}' has a null value; every entity row needs a "
            f"value for '{name}'"
        )
    if isinstance(v, bool):
        raise EntityDataError(
            f"join key '{name}' of view '{view_name}' has bool value {v!r}; use an int or a string"
        )
    if isinstance(v, int):
        _check_int_range(name, view_name, [int(v)])
        return str(int(v))
    if isinstance(v, str):
        return '"' + v.translate(_ESCAPE_VALUE) + '"'
    item = getattr(v, "item", None)  # numpy scalar
    if item is not None:
        return _render_one(item(), name, view_name)
    if type(v).__name__ in ("NAType", "NaTType"):
        return _render_one(None, name, view_name)
    raise EntityDataError(
        f"join key '{name}' of view '{view_name}' has value {v!r} of type {type(v).__name__}; "
        "join-key values must be ints or strings"
    )
