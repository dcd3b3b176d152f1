"""What a pushed row may hold, checked before anything is written (see ``_push``): the JSON
forms answers use read back (``json_values``), event times not past ``stream.max_future``
(``check_not_future``), and join keys the embedded store can hold (``check_key_sizes``); and
when an online push may land (``wait_for_cleanup``): not before apply deleted the online rows of
its view's earlier definition."""

from __future__ import annotations

import base64
import math
import numbers
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from featurestore._time import duration_us, parse_duration, to_utc
from featurestore.online.serving.errors import BadRequestError, NotReadyError
from featurestore.types import FLOAT32_END, past_float32

if TYPE_CHECKING:
    from featurestore.feature_view import FeatureView
    from featurestore.registry import Registry

CLEANUP_POLL_S = 0.05  # how often a push waiting for a cleanup that has not started looks again

# JSON has no NaN or infinity: answers spell them so (protobuf's JSON mapping), pushes read them
_NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
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
    return not f32 or all(-FLOAT32_END < v < FLOAT32_END for v in nums)


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
    if f32 and past_float32(v):
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
    return to_utc(us).isoformat().replace("+00:00", "Z")


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


class CleanupPendingError(NotReadyError):
    """An online push into a view whose earlier definition's online rows apply has not deleted
    yet (HTTP 503 / UNAVAILABLE): the delete would take the pushed rows too; retry."""


def wait_for_cleanup(registry: Registry, view: FeatureView, wait_s: float) -> None:
    """Return once the cleanup record of ``view`` (redefined while apply deletes the online rows
    of its earlier definition) is gone: a record goes only after that delete, so a push written
    next outlives it. Waits under the view's cleanup lock (the cleanup holds it while deleting;
    without it where the registry's folder is read-only), looking again every CLEANUP_POLL_S
    while no cleanup holds it; CleanupPendingError once ``wait_s`` passed, or at once if an
    apply redefined ``view`` again (the rows were checked against the definition before)."""
    from filelock import Timeout

    from featurestore.registry import row_identity

    deadline = time.monotonic() + wait_s
    lock: Any = None
    try:  # (a registry folder this server cannot write: it looks without the lock)
        lock = registry.cleanup_lock(view.name)
    except OSError:
        pass
    while True:
        if lock is not None:
            try:
                lock.acquire(timeout=max(0.0, deadline - time.monotonic()))
            except Timeout:
                break
            except OSError:
                lock = None
        try:
            state = registry.reload()
        finally:
            if lock is not None:
                lock.release()
        if view.name not in state.pending_cleanup:
            now = state.feature_views.get(view.name)
            if now is None or row_identity(now) != row_identity(view):
                raise CleanupPendingError(
                    f"push: feature view '{view.name}' was removed or redefined by featurestore "
                    "apply while the push waited; push again (checked against its definition now)"
                )
            return
        left = deadline - time.monotonic()
        if left <= 0:
            break
        time.sleep(min(CLEANUP_POLL_S, left))
    raise CleanupPendingError(
        f"push: feature view '{view.name}' was redefined and featurestore apply has not deleted "
        f"the online rows of its earlier definition yet (waited {wait_s:g} s), which would take "
        "these rows too; push again once that apply has finished (run apply again if it failed)"
    )
