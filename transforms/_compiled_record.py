"""A record of the row transforms that compiled, kept beside numba's disk cache.

``apply`` must know that every transform compiles, but loading a numba kernel costs about a
second of start-up (numba's import and its first-use setup), even from the disk cache. So the
first apply compiles each transform and writes a small file under ``__pycache__`` naming what
compiled; a later apply reads that file instead of loading numba while the function's code
(its syntax and the constants and functions it reads), signature, Python and numba are the
same. Anything else, or any error reading or writing the record, means compile again.

numba's own disk cache is keyed on the function's file alone: a helper of another file that
the function calls (``helpers.scale``) is compiled into its kernel, yet editing only that file
would hand back the old kernel. ``track_code`` makes numba's index for a function also carry a
token of its code (helpers included, see ``code_hash``), so another token compiles afresh.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import re
import sys
import types
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from featurestore.transforms.row import RowTransform

_FORMAT = "1"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
_INSTALL: str | None = None
_TOKENS: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
_LOCATOR: Any = None


def compiled_before(t: RowTransform) -> bool:
    """Whether the record says ``t`` compiled, with this code, signature, Python and numba."""
    where = _record_path(t)
    if where is None:
        return False
    try:
        return where.read_text(encoding="ascii") == _key(t)
    except (OSError, UnicodeDecodeError, ValueError):
        return False


def remember(t: RowTransform) -> None:
    """Record that ``t`` compiled (best effort: a folder that cannot be written is skipped)."""
    where = _record_path(t)
    if where is None:
        return
    tmp = where.with_name(f".{where.name}.{os.getpid()}.tmp")
    try:
        where.parent.mkdir(exist_ok=True)
        tmp.write_text(_key(t), encoding="ascii")
        os.replace(tmp, where)
    except (OSError, ValueError):
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def _record_path(t: RowTransform) -> Path | None:
    """``__pycache__/<file stem>.<function>.fscompiled`` beside the function's file; None for
    a function without a file or with a closure (whose cells the record cannot vouch for)."""
    func = t.func
    if getattr(func, "__closure__", None):
        return None
    src = Path(t.source_file)
    if not src.is_file():
        return None
    name = _UNSAFE.sub("_", getattr(func, "__qualname__", t.name))
    return src.parent / "__pycache__" / f"{src.stem}.{name}.fscompiled"


def _key(t: RowTransform) -> str:
    """What compiled: the function's code hash, what it reads that the hash leaves out (by
    type), its signature, the Python build, the installed numba and llvmlite, numba settings."""
    from featurestore._transform_refs import code_hash

    func = t.func
    parts = [_FORMAT, code_hash(func), t.signature, sys.version, _install(), _others(func)]
    parts += sorted(f"{k}={v}" for k, v in os.environ.items() if k.startswith("NUMBA_"))
    return hashlib.blake2b("\n".join(parts).encode(), digest_size=16).hexdigest()


def _install() -> str:
    """numba and llvmlite as installed (path, size and time of their ``__init__``): a new
    install changes it, without importing either."""
    global _INSTALL
    if _INSTALL is None:
        out = []
        for mod in ("numba", "llvmlite"):
            spec = importlib.util.find_spec(mod)
            origin = spec.origin if spec is not None else None
            if origin is None:
                out.append(f"{mod}=missing")
                continue
            out.append(f"{mod}={origin}:{_stamp(origin)}")
        _INSTALL = ";".join(out)
    return _INSTALL


def _stamp(path: str | None) -> str:
    """``size:mtime`` of a file, empty when there is none."""
    try:
        st = os.stat(path) if path else None
    except OSError:
        return ""
    return "" if st is None else f"{st.st_size}:{st.st_mtime_ns}"


def _others(func: Any) -> str:
    """Globals ``func`` reads that the code hash leaves out: modules by name and file (size
    and time, so an edited helper module compiles again), classes and objects by type."""
    from featurestore._transform_refs import _names, _value_text

    code = getattr(func, "__code__", None)
    module_globals = getattr(func, "__globals__", {})
    if code is None:
        return ""
    out = []
    for name in sorted(_names(code)):
        if name not in module_globals:
            continue
        value = module_globals[name]
        if _value_text(value, set()) is not None:
            continue  # in the code hash already
        if isinstance(value, types.ModuleType):  # its file's size and time: an edited helper
            out.append(f"{name}=module {value.__name__} {_stamp(getattr(value, '__file__', ''))}")
        else:
            kind = type(value)
            out.append(f"{name}={kind.__module__}.{kind.__qualname__}")
    return ";".join(out)


def code_token(func: Any) -> str:
    """What ``func`` computes as numba compiles it: its code hash (constants and helper
    functions of any user module included) and the modules and objects it reads."""
    from featurestore._transform_refs import code_hash

    text = f"{code_hash(func)}\n{_others(func)}"
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def track_code(func: Any) -> bool:
    """Make numba's disk cache for ``func`` hold only kernels of its current code (see the
    module docstring); False when numba is set to other cache locators, which would not see
    the token: then ``func`` must be compiled without the disk cache."""
    import numba.core.caching as caching
    from numba.core import config

    if getattr(config, "CACHE_LOCATOR_CLASSES", None):  # a locator list of its own
        return False
    try:  # numba's internals: a numba without them gets no disk cache, never a stale kernel
        impl = getattr(caching, "CacheImpl", None) or caching._CacheImpl
        locators = impl._locator_classes
        locator = _locator_class(caching)
    except AttributeError:
        return False
    if locator not in locators:
        locators.insert(0, locator)
    _TOKENS[func] = code_token(func)
    return True


def _locator_class(caching: Any) -> Any:
    """A numba cache locator for tracked functions: numba's own (same folder and file names),
    with the code token added to the source stamp its index is checked against."""
    global _LOCATOR
    if _LOCATOR is not None:
        return _LOCATOR
    base = getattr(caching, "_CacheLocator", None) or caching.CacheLocator

    class CodeTokenLocator(base):  # type: ignore[misc, valid-type]
        def __init__(self, inner: Any, token: str) -> None:
            self._inner = inner
            self._token = token

        def ensure_cache_path(self) -> None:
            self._inner.ensure_cache_path()

        def get_cache_path(self) -> str:
            return self._inner.get_cache_path()

        def get_source_stamp(self) -> Any:
            return (self._inner.get_source_stamp(), "featurestore-code", self._token)

        def get_disambiguator(self) -> str:
            return self._inner.get_disambiguator()

        @classmethod
        def from_function(cls, py_func: Any, py_file: str) -> Any:
            token = _TOKENS.get(py_func)
            if token is None:
                return None
            impl = getattr(caching, "CacheImpl", None) or caching._CacheImpl
            for other in impl._locator_classes:
                if other is not cls:
                    inner = other.from_function(py_func, py_file)
                    if inner is not None:
                        return cls(inner, token)
            return None

    _LOCATOR = CodeTokenLocator
    return _LOCATOR
