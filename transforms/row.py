"""Row transforms: a typed Python function compiled once with numba, used per row and per column.

``@transform`` records the function; ``compile()`` builds two kernels from the same source and
signature, both cached on disk (``cache=True``): ``njit`` for one row (online, per event or
request) and ``numba.vectorize`` for whole columns (offline). Neither uses fastmath, so both
follow IEEE rules and agree bit for bit (tests check it). ``apply`` calls ``check()``: it
compiles a function once and then trusts a record of that (``_compiled_record``) while the code
is the same; the kernels of a checked function load on its first call.

Types come from the annotations: ``float`` -> float64, ``int`` -> int64, ``bool`` -> boolean
(numpy scalar types and featurestore.types Float64/Int64/Bool/Float32/Int32 also work).
Nulls: if any input of a row is null (None, NaN or a null slot), the output is null and the
function is not asked; the function only ever sees real values.

Disk cache: numba keys the cache on the function's module file, so a function from a user file
loaded by path must be importable as a module: load it with ``load_module_from_path`` (it
registers the module in ``sys.modules``, without which numba writes a cache it cannot read back).
Helper functions the transform calls must be ``@numba.njit`` functions; numba compiles them into
the kernel, so the cache entry also carries a token of their code (``_compiled_record``): an
edit of a helper's own file compiles the kernel afresh.
"""

from __future__ import annotations

import inspect
import re
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

from featurestore.errors import DefinitionError

if TYPE_CHECKING:
    from collections.abc import Mapping
    from types import ModuleType

_PY_TYPES: dict[Any, str] = {float: "float64", int: "int64", bool: "boolean"}
_NAMED = {
    "float": "float64", "int": "int64", "bool": "boolean", "float64": "float64",
    "int64": "int64", "float32": "float32", "int32": "int32", "boolean": "boolean",
    "bool_": "boolean", "np.float64": "float64", "np.int64": "int64", "np.float32": "float32",
    "np.int32": "int32", "np.bool_": "boolean", "Float64": "float64", "Int64": "int64",
    "Float32": "float32", "Int32": "int32", "Bool": "boolean",
}  # fmt: skip
_NUMPY = {"float64": "float64", "int64": "int64", "float32": "float32", "int32": "int32",
          "boolean": "bool"}  # numpy dtype names; numpy itself loads on first use  # fmt: skip
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# one compile at a time: threads serving a checked transform wait for its kernels, not race
# them (numba compiles under a lock of its own anyway)
_COMPILING = threading.RLock()


class RowTransform:
    """A typed scalar function; call ``compile()`` before ``__call__`` or ``apply_columns``."""

    def __init__(self, func: Callable[..., Any], *, name: str | None = None) -> None:
        if not callable(func) or not hasattr(func, "__code__"):
            raise DefinitionError(f"@transform needs a plain Python function, got {func!r}")
        self.func = func
        self.name = name or func.__name__
        code = func.__code__
        self.source_file = code.co_filename
        self.source_line = code.co_firstlineno
        sig = inspect.signature(func)
        self.params: tuple[str, ...] = tuple(sig.parameters)
        self._scalar: Any = None
        self._ufunc: Any = None
        self._checked = False  # check() passed: the kernels load on first use
        # a bad annotation is reported by compile() (at apply), not when the file is imported
        self._error: DefinitionError | None = None
        self.param_types: tuple[str, ...] = ()
        self.return_type = "float64"
        try:
            self.param_types = tuple(
                self._type_of(p.annotation, f"argument '{p.name}'") for p in sig.parameters.values()
            )
            self.return_type = self._type_of(sig.return_annotation, "return value")
        except DefinitionError as exc:
            self._error = exc

    @property
    def where(self) -> str:
        """``file:line`` of the definition, for messages."""
        return f"{self.source_file}:{self.source_line}"

    def _type_of(self, ann: Any, what: str) -> str:
        if ann is inspect.Parameter.empty or ann is inspect.Signature.empty:
            raise DefinitionError(
                f"transform '{self.name}' ({self.where}): {what} has no type annotation; "
                "annotate it as float, int or bool"
            )
        key = ann if not isinstance(ann, str) else ann.strip()
        t = _PY_TYPES.get(key) if not isinstance(key, str) else _NAMED.get(key)
        if t is None and not isinstance(key, str):
            t = _NAMED.get(getattr(key, "__name__", None) or getattr(key, "name", ""))
            np_mod = sys.modules.get("numpy")  # a numpy annotation means numpy is loaded
            if t is None and np_mod and isinstance(key, type) and issubclass(key, np_mod.generic):
                t = _NAMED.get(key.__name__)
        if t is None:
            shown = getattr(ann, "__name__", ann)
            raise DefinitionError(
                f"transform '{self.name}' ({self.where}): {what} has type {shown!r}; "
                "use float, int or bool (or numpy float64/int64/float32/int32/bool_)"
            )
        return t

    @property
    def signature(self) -> str:
        return f"{self.return_type}({', '.join(self.param_types)})"

    @property
    def compiled(self) -> bool:
        return self._scalar is not None

    @property
    def checked(self) -> bool:
        """``check()`` passed (or ``compile()`` ran): calls load the kernels when needed."""
        return self._checked or self._scalar is not None

    def check(self) -> RowTransform:
        """Make sure both kernels compile, as ``compile()`` does, but without loading numba when
        a record beside the disk cache shows this very function compiled before (apply uses it:
        loading numba costs about a second); the kernels then load on first use."""
        if self._scalar is not None or self._checked:
            return self
        if self._error is not None:
            raise self._error
        from featurestore.transforms import _compiled_record

        if not _compiled_record.compiled_before(self):
            self.compile()
            _compiled_record.remember(self)
        self._checked = True
        return self

    def compile(self) -> RowTransform:
        """Build both kernels or load them from the disk cache; errors: one DefinitionError line.
        Safe from many threads: the column kernel is published before the row kernel, whose
        presence means both are ready."""
        if self._scalar is not None:
            return self
        with _COMPILING:
            if self._scalar is None:
                self._build()
        return self

    def _build(self) -> None:
        if self._error is not None:
            raise self._error
        import numba

        from featurestore.transforms._compiled_record import track_code

        try:
            # the disk cache must not hand back a kernel of older helper code (another file)
            cache = track_code(self.func)
            try:
                scalar = numba.njit(self.signature, cache=cache)(self.func)
            except ImportError:
                # a cache entry written when the module had another name (numba pickles the
                # module name): drop the stale index and compile afresh
                scalar = numba.njit(cache=True)(self.func)
                scalar._cache.flush()
                scalar.compile(self.signature)
            ufunc = numba.vectorize([self.signature], cache=cache)(self.func)
        except Exception as exc:  # numba raises many types; all mean "does not compile"
            raise DefinitionError(self._compile_message(exc)) from None
        self._ufunc = ufunc
        self._scalar = scalar  # last: callers take a set row kernel for both being ready

    def _compile_message(self, exc: BaseException) -> str:
        text = _ANSI.sub("", str(exc))
        line = self.source_line
        m = re.search(r'File "([^"]+)", line (\d+)', text)
        # numba prints the path relative to the working directory when it can
        if m and (
            self.source_file.endswith(m.group(1).lstrip("./")) or m.group(1) == self.source_file
        ):
            line = int(m.group(2))
        reason = _first_reason(text) or type(exc).__name__
        if "Numba type of <class 'function'>" in reason:  # a plain Python helper
            reason += " (decorate the helper function it calls with @numba.njit)"
        return (
            f"transform '{self.name}' ({self.source_file}:{line}) does not compile with numba "
            f"for {self.signature}: {reason}"
        )

    def _require(self) -> None:
        if self._scalar is None and self._checked:
            self.compile()  # checked at apply; load the kernels now
        if self._scalar is None:
            raise DefinitionError(
                f"transform '{self.name}' ({self.where}) is not compiled; call compile() "
                "(FeatureStore.apply does it)"
            )

    def __call__(self, *args: Any) -> Any:
        """One row: the njit kernel; None if any argument is null (None or NaN)."""
        self._require()
        for a in args:
            if a is None or (isinstance(a, float) and a != a):
                return None
        try:
            return self._scalar(*args)
        except ZeroDivisionError:
            # njit follows Python and raises; the column kernel follows numpy (inf, nan, 0):
            # answer with the column kernel, so a row gets the value a training set holds
            return self._one_row(args)

    def _one_row(self, args: tuple[Any, ...]) -> Any:
        """The vectorized kernel's value for one row, as a Python scalar."""
        import numpy as np

        with np.errstate(all="ignore"):
            return self._ufunc(*args).item()

    def apply_columns(self, columns: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """Columns by parameter name -> (values, valid); the vectorized kernel over all rows."""
        import numpy as np

        self._require()
        from featurestore.transforms._columns import to_numpy

        arrays, valid = [], None
        for p, t in zip(self.params, self.param_types, strict=True):
            if p not in columns:
                raise DefinitionError(
                    f"transform '{self.name}' ({self.where}) needs column '{p}'; "
                    f"have {sorted(columns)}"
                )
            arr, ok = to_numpy(columns[p])
            arr = self._cast(p, t, arr)
            if arr.dtype.kind == "f":
                nan_ok = ~np.isnan(arr)
                ok = nan_ok if ok is None else ok & nan_ok
            if ok is not None:
                valid = ok if valid is None else valid & ok
            arrays.append(arr)
        n = arrays[0].size if arrays else 0
        # a division by zero gives inf / nan / 0 as numpy does (the online rows give the same):
        # a value, not a warning per training set
        if valid is None or valid.all():  # no nulls: no compress, no scatter
            with np.errstate(all="ignore"):
                out = self._ufunc(*arrays)
            return np.asarray(out), np.ones(n, dtype=bool) if valid is None else valid
        out = np.zeros(n, dtype=_NUMPY[self.return_type])
        if valid.any():
            with np.errstate(all="ignore"):
                out[valid] = self._ufunc(*(a[valid] for a in arrays))
        if out.dtype.kind == "f":
            out[~valid] = np.nan
        return out, valid

    def _cast(self, param: str, t: str, arr: np.ndarray) -> np.ndarray:

        want = _NUMPY[t]
        kind = arr.dtype.kind
        if t in ("float64", "float32") and kind in "biuf":
            return arr.astype(want, copy=False)
        if t in ("int64", "int32") and kind in "biu":
            return arr.astype(want, copy=False)
        if t == "boolean" and kind == "b":
            return arr
        raise DefinitionError(
            f"transform '{self.name}' ({self.where}): argument '{param}' is {t} but its column "
            f"has dtype {arr.dtype}; cast the column or change the annotation"
        )

    def __repr__(self) -> str:
        return f"RowTransform({self.name}: {self.signature} at {self.where})"


def transform(func: Callable[..., Any] | None = None, *, name: str | None = None) -> Any:
    """Declare a row transform: ``@transform`` or ``@transform(name="...")`` on a typed function."""
    if func is None:
        return lambda f: RowTransform(f, name=name)
    return RowTransform(func, name=name)


row_transform = transform


def _first_reason(text: str) -> str:
    """The first line of a numba error that says what is wrong (not where, not which pass)."""
    skip = ("Failed in ", "During: ", "File ", "Enable logging", "This error may have",
            "For more information", "raise ", "^", "<source", "Compilation is falling")  # fmt: skip
    for raw in text.splitlines():
        line = raw.strip()
        if (
            not line
            or line.startswith(skip)
            or re.match(r"^\d+\s*\|", line)
            or line.startswith(">")
        ):
            continue
        return line.rstrip(":")[:300]
    return ""


def load_module_from_path(path: str, name: str | None = None) -> ModuleType:
    """Import a definitions file by path so numba can cache its functions on disk."""
    import hashlib
    import importlib.util
    from pathlib import Path

    p = Path(path).resolve()
    digest = hashlib.blake2b(str(p).encode(), digest_size=4).hexdigest()
    mod_name = name or f"_fs_defs_{p.stem}_{digest}"  # stable across processes, as numba needs
    spec = importlib.util.spec_from_file_location(mod_name, p)
    if spec is None or spec.loader is None:
        raise DefinitionError(f"cannot import definitions file {p}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    # its folder on the path while it runs, as for a script: a repo's files can import each
    # other and helper modules beside them (``from _common import user``)
    folder = str(p.parent)
    added = folder not in sys.path
    if added:
        sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
    finally:
        if added and folder in sys.path:
            sys.path.remove(folder)
    return module
