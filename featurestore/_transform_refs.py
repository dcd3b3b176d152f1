"""Transform references: a function is stored as (definitions file, name, code hash) and
re-imported lazily.

The registry holds JSON only, so a row transform, ``where`` predicate or on-demand function is
recorded as the file it was defined in (relative to the repo when inside it), its Python name
and a hash of its code (``code_hash``), so that editing a function's body is a change plan and
apply see. ``resolve_ref`` imports that file with ``transforms.load_module_from_path`` (the
stable module name numba's disk cache needs) the first time a view using it is read, and
refuses a function whose code is no longer the code that was applied. A registry from the
previous release (its hash left out helpers read through a module) is served as it is, and the
next apply records the new hash of the same code without a rebuild (``code_changes``).
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import sys
import textwrap
import types
import weakref
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from featurestore.errors import DefinitionError

# the repo whose definitions files are being imported (so refs are stored repo-relative)
CURRENT_REPO: ContextVar[Path | None] = ContextVar("featurestore_current_repo", default=None)

# the function behind each ref made in this process, by (file, name, code hash): code_changes
# asks it for the hash the previous release gave it (see ``older_code_hash``)
_LIVE: weakref.WeakValueDictionary[tuple[str, str, str], Any] = weakref.WeakValueDictionary()


def function_ref(obj: Any, repo_path: Path | None) -> dict[str, str]:
    """``{"file", "function", "code"}`` for a RowTransform / OnDemandFeature (its source, name
    and code hash)."""
    t = getattr(obj, "transform", obj)  # an OnDemandFeature wraps a RowTransform
    func = getattr(t, "func", None)
    if func is None:
        raise DefinitionError(f"{obj!r} is not a @transform function; decorate it with @transform")
    path = Path(t.source_file).resolve()
    shown = str(path)
    if repo_path is not None:
        try:
            shown = path.relative_to(Path(repo_path).resolve()).as_posix()
        except ValueError:
            pass
    code = code_hash(func)
    _LIVE[(shown, func.__name__, code)] = func
    return {"file": shown, "function": func.__name__, "code": code}


def resolve_ref(ref: dict[str, str], repo_path: Path | None, what: str) -> Any:
    """The live object ``ref`` names (a RowTransform or OnDemandFeature), importing its file."""
    from featurestore.transforms.row import load_module_from_path

    path = Path(ref["file"])
    if not path.is_absolute() and repo_path is not None:
        path = Path(repo_path) / path
    if not path.is_file():
        raise DefinitionError(
            f"{what}: definitions file {ref['file']} of function '{ref['function']}' is gone; "
            "restore it or re-run `featurestore apply`"
        )
    name = ref["function"]
    want = ref.get("code")  # absent in a registry written before code was hashed
    module = _loaded_module(path)
    found = None if module is None else _find(module, name)
    if found is None or (want is not None and not _same_code(found, want)):
        # not imported yet, or imported before the file was edited and applied again
        found = _find(load_module_from_path(str(path)), name)
    if found is None:
        raise DefinitionError(
            f"{what}: function '{name}' is no longer defined in {path.name}; restore it or "
            "re-run `featurestore apply`"
        )
    if want is not None and not _same_code(found, want):
        raise DefinitionError(
            f"{what}: function '{name}' in {path.name} was edited after the last apply (the "
            "registry holds other code); run `featurestore apply` or restore it"
        )
    return found


def _find(module: Any, name: str) -> Any:
    """The RowTransform / OnDemandFeature of function ``name`` in ``module``, or None."""
    from featurestore.transforms.on_demand import OnDemandFeature
    from featurestore.transforms.row import RowTransform

    found = getattr(module, name, None)
    if isinstance(found, (RowTransform, OnDemandFeature)):
        return found
    return next(
        (
            v
            for v in vars(module).values()
            if isinstance(v, (RowTransform, OnDemandFeature))
            and getattr(getattr(v, "transform", v), "func", None) is not None
            and getattr(v, "transform", v).func.__name__ == name
        ),
        None,
    )


def _func_of(obj: Any) -> Any:
    return getattr(getattr(obj, "transform", obj), "func", obj)


def _loaded_module(path: Path) -> Any:
    """A module already imported from ``path`` (so a repo's file is not executed twice)."""
    target = path.resolve()
    for mod in list(sys.modules.values()):
        f = getattr(mod, "__file__", None)
        if f and mod.__name__.startswith("_fs_defs_") and Path(f).resolve() == target:
            return mod
    return None


def code_hash(func: Any) -> str:
    """16 hex digits identifying what ``func`` computes: its syntax tree (comments, layout,
    docstring and line numbers left out) plus the constants and functions it reads from its
    module or from the user's own modules it imports (numba compiles those in, helpers of
    another file included). The same in every process and Python run."""
    return hashlib.blake2b(_code_text(func, set()).encode(), digest_size=8).hexdigest()


def older_code_hash(func: Any) -> str:
    """The code hash the previous release gave ``func``: helpers read through a module
    (``helpers.fn(x)``) left out. A registry it wrote holds these."""
    return hashlib.blake2b(_code_text(func, {_NO_MODULES}).encode(), digest_size=8).hexdigest()


def _same_code(found: Any, want: str) -> bool:
    """``found`` has the code hash ``want``, or the hash an older version gave it (which left
    out helpers read through a module): a registry applied before is still served."""
    return code_hash(found) == want or older_code_hash(found) == want


_NO_MODULES = object()  # in ``seen``: leave modules out of the text (the older hash)


def _code_text(func: Any, seen: set[Any]) -> str:
    func = getattr(func, "py_func", None) or _func_of(func)  # a numba dispatcher, a transform
    code = getattr(func, "__code__", None)
    if code is None or code in seen:
        return ""
    seen.add(code)
    parts = [_syntax(func)]
    values = dict(zip(code.co_freevars, _cells(func), strict=False))
    module_globals = getattr(func, "__globals__", {})
    names = _names(code)
    for name in sorted(names):
        if name in module_globals:
            values.setdefault(name, module_globals[name])
    for name in sorted(values):
        value = values[name]
        if isinstance(value, types.ModuleType):
            text = _module_text(value, names, seen)
        else:
            text = _value_text(value, seen)
        if text is not None:
            parts.append(f"{name}={text}")
    return "\n".join(parts)


def _module_text(module: types.ModuleType, names: set[str], seen: set[Any]) -> str | None:
    """A user's module the code reads attributes of (``helpers.scale(x)``): those attributes
    by value or code, as for a global; None for an installed or standard library module.

    ``seen`` holds (module, attribute) pairs, not modules: a module reached along two paths
    (``mathx.a`` from the transform, ``mathx.c`` from a helper in another module) has the
    attributes read along either path in the text, each once."""
    walk = (module, frozenset(names))  # modules that import each other end here
    if _NO_MODULES in seen or walk in seen or not is_user_module(module):
        return None
    seen.add(walk)
    found = vars(module)
    parts = []
    for attr in sorted(names):
        if attr not in found:
            continue
        value = found[attr]
        if isinstance(value, types.ModuleType):  # ``pkg.sub.fn``: read along this path's names
            text = _module_text(value, names, seen)
        elif (module, attr) in seen:
            continue  # in the text already, from another path
        else:
            seen.add((module, attr))
            text = _value_text(value, seen)
        if text is not None:
            parts.append(f"{attr}={text}")
    return "module{" + ";".join(parts) + "}" if parts else None


def is_user_module(module: types.ModuleType) -> bool:
    """Whether ``module`` is the user's own code: a file outside the Python installation and
    its site-packages (a repo's helper module), whose edits change what a transform computes."""
    file = getattr(module, "__file__", None)
    if not file or module.__name__.partition(".")[0] == "featurestore":
        return False
    path = str(Path(file).resolve())
    return not path.startswith(_installed_roots())


_ROOTS: tuple[str, ...] | None = None


def _installed_roots() -> tuple[str, ...]:
    """Folders holding the standard library and installed packages (resolved, with a slash)."""
    global _ROOTS
    if _ROOTS is None:
        import site
        import sysconfig

        found = sysconfig.get_paths()
        paths = {found.get(k) for k in ("stdlib", "platstdlib", "purelib", "platlib")}
        paths.update(getattr(site, "getsitepackages", list)())
        user = getattr(site, "getusersitepackages", lambda: None)()
        if user:
            paths.add(user)
        _ROOTS = tuple(sorted({str(Path(p).resolve()).rstrip("/") + "/" for p in paths if p}))
    return _ROOTS


def _syntax(func: Any) -> str:
    """The function's syntax tree as text; its bytecode when the source cannot be read."""
    try:
        node = ast.parse(textwrap.dedent(inspect.getsource(func))).body[0]
    except (OSError, TypeError, SyntaxError, IndexError):
        code = func.__code__
        return repr((code.co_code, _consts(code), code.co_names, code.co_varnames))
    body = getattr(node, "body", None)
    if (
        isinstance(body, list)
        and len(body) > 1
        and isinstance(body[0], ast.Expr)
        and isinstance(body[0].value, ast.Constant)
        and isinstance(body[0].value.value, str)
    ):
        body.pop(0)  # the docstring
    return _tree_text(node)


def _tree_text(node: Any) -> str:
    """A syntax tree as text without positions; fields that are empty are left out, so a field
    a newer Python adds (empty in old code) does not change the text."""
    if isinstance(node, ast.AST):
        inner = ",".join(
            f"{f}={_tree_text(v)}"
            for f in node._fields
            if (v := getattr(node, f, None)) is not None and not (isinstance(v, list) and not v)
        )
        return f"{type(node).__name__}({inner})"
    if isinstance(node, list):
        return "[" + ",".join(_tree_text(v) for v in node) + "]"
    return repr(node)


def _consts(code: types.CodeType) -> tuple[Any, ...]:
    return tuple(
        _consts(c) if isinstance(c, types.CodeType) else c
        for c in code.co_consts
        if not isinstance(c, (frozenset, set))
    )


def _names(code: types.CodeType) -> set[str]:
    """Every global (or attribute) name the code and the code nested in it reads."""
    names = set(code.co_names)
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            names |= _names(c)
    return names


def _cells(func: Any) -> list[Any]:
    out = []
    for cell in func.__closure__ or ():
        try:
            out.append(cell.cell_contents)
        except ValueError:  # an empty cell
            out.append(None)
    return out


_SCALARS = (bool, int, float, complex, str, bytes, type(None))


def _value_text(value: Any, seen: set[Any]) -> str | None:
    """A global's part of the hash: constants by value, functions by their code; modules,
    classes and other objects (which numba cannot compile in) are left out."""
    if isinstance(value, _SCALARS):
        return repr(value)
    if isinstance(value, tuple):
        items = [_value_text(v, seen) for v in value]
        return None if None in items else "(" + ",".join(items) + ")"  # type: ignore[arg-type]
    if hasattr(value, "dtype") and hasattr(value, "tobytes") and hasattr(value, "shape"):
        data = hashlib.blake2b(value.tobytes(), digest_size=8).hexdigest()
        return f"array({value.dtype}, {tuple(value.shape)}, {data})"
    if isinstance(value, (types.ModuleType, type)):
        return None
    func = getattr(value, "py_func", None) or _func_of(value)
    if isinstance(func, types.FunctionType):
        return "{" + _code_text(func, seen) + "}"
    return None


def without_code(value: Any) -> Any:
    """``value`` (JSON) without the code hashes of its function refs."""
    if isinstance(value, dict):
        return {k: without_code(v) for k, v in value.items() if k != "code"}
    if isinstance(value, list):
        return [without_code(v) for v in value]
    return value


def window_refs(spec: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """Function refs of a window spec by where they are used."""
    if not spec:
        return {}
    refs = {f"derived column '{d['name']}'": d for d in spec.get("derived", ())}
    for a in spec.get("aggregations", ()):
        if a.get("where") is not None:
            stem = a.get("name") or f"{a['column']}_{a['function']}"
            refs[f"where of aggregation '{stem}'"] = a["where"]
    return refs


def code_changes(
    old: dict[str, dict[str, Any]], new: dict[str, dict[str, Any]]
) -> list[tuple[str, dict[str, Any], bool]]:
    """(place, new ref, changed) per function kept in place (same file and name) whose code
    hash differs; ``changed`` False: only the way of hashing changed (the old ref has no hash,
    or the hash the previous release gave this very code), so apply records the new hash
    without a rebuild."""
    out = []
    for place in sorted(old.keys() & new.keys()):
        o, n = old[place], new[place]
        if (o["file"], o["function"]) != (n["file"], n["function"]):
            continue  # another function: the definition diff shows it
        was, now = o.get("code"), n.get("code")
        if was != now:
            changed = was is not None and now is not None and not _older_hash_of(n, was)
            out.append((place, n, changed))
    return out


def _older_hash_of(ref: dict[str, Any], stored: str) -> bool:
    """Whether ``stored`` is the hash the previous release gave the function ``ref`` (made in
    this process) names: the same code, hashed without the helpers read through a module."""
    func = _LIVE.get((ref["file"], ref["function"], ref.get("code", "")))
    return func is not None and older_code_hash(func) == stored


def carry_code_epoch(prev: Any, new: Any) -> None:
    """Give window view ``new`` (being applied) its code epoch: ``prev``'s (the applied
    definition), one more when the code of one of its functions changed since."""
    if new.window is None:
        return
    epoch = prev.code_epoch if prev is not None and prev.window is not None else 0
    if prev is not None and prev.window is not None:
        changes = code_changes(window_refs(prev.window.spec), window_refs(new.window.spec))
        if any(changed for _, _, changed in changes):
            epoch += 1
    if new.code_epoch != epoch:
        object.__setattr__(new, "code_epoch", epoch)
        new.__dict__.pop("_schema_version", None)  # computed from the epoch
