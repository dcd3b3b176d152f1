"""The file-based model registry: ``<root>/<name>/index.json`` plus one folder per version.

Layout::

    data/models/fraud/index.json      versions, aliases (production, shadow, canary + share)
    data/models/fraud/v1/model.txt    the artifact, copied in at register time
    data/models/fraud/v2/...

Every index write is atomic (temp file + rename) under a file lock, so a running server that
re-reads the index sees either the old or the new document, never half of one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from featurestore._atomic import atomic_write
from featurestore.online.models.errors import (
    ModelNotFoundError,
    ModelRegistryError,
    one_line,
    without_paths,
)
from featurestore.online.models.flavors import Predictor, check_flavor, load_predictor

ALIASES = ("production", "shadow", "canary")
INDEX = "index.json"
_NAME = re.compile(r"[A-Za-z0-9_\-]{1,100}")  # fullmatch: a folder name on every file system


@dataclass(frozen=True)
class ModelVersion:
    """One registered artifact of a model."""

    name: str
    version: int
    flavor: str
    artifact: str  # path relative to the model folder, or a python module name
    feature_service: str
    feature_names: tuple[str, ...]  # model input order
    created_at: str
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "flavor": self.flavor,
            "artifact": self.artifact,
            "feature_service": self.feature_service,
            "feature_names": list(self.feature_names),
            "created_at": self.created_at,
            "description": self.description,
        }


@dataclass(frozen=True)
class Alias:
    """An alias pointing at a version; ``share`` is the canary's fraction of traffic."""

    version: int
    share: float | None = None


@dataclass
class ModelEntry:
    """Everything the index holds for one model name."""

    name: str
    versions: dict[int, ModelVersion] = field(default_factory=dict)
    aliases: dict[str, Alias] = field(default_factory=dict)

    def version(self, v: int) -> ModelVersion:
        try:
            return self.versions[v]
        except KeyError:
            raise ModelNotFoundError(
                f"model '{self.name}' has no version {v}; it has {sorted(self.versions) or 'none'}"
            ) from None

    def alias(self, alias: str) -> ModelVersion:
        a = self.aliases.get(alias)
        if a is None:
            raise ModelNotFoundError(
                f"model '{self.name}' has no '{alias}' alias; set one with "
                f"`featurestore models promote {self.name} VERSION --alias {alias}`"
            )
        return self.version(a.version)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "versions": [v.to_dict() for v in self.versions.values()],
            "aliases": {
                k: {"version": a.version, **({"share": a.share} if a.share is not None else {})}
                for k, a in self.aliases.items()
            },
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelEntry:
        name = d["name"]
        versions = {
            int(v["version"]): ModelVersion(
                name=name,
                version=int(v["version"]),
                flavor=v["flavor"],
                artifact=v["artifact"],
                feature_service=v["feature_service"],
                feature_names=tuple(v["feature_names"]),
                created_at=v["created_at"],
                description=v.get("description", ""),
            )
            for v in d.get("versions", [])
        }
        aliases = {
            k: Alias(int(a["version"]), a.get("share")) for k, a in d.get("aliases", {}).items()
        }
        return cls(name, versions, aliases)


def check_features(
    model: str,
    model_names: list[str] | None,
    n_inputs: int | None,
    service: str,
    service_names: list[str],
) -> tuple[str, ...]:
    """The model's input order, after checking its names and count against the feature service.

    A service with two features of one bare name is refused: a model reads its inputs by bare
    name (as online predict does), so no input could say which of the two it is.
    """
    clash = name_clash(service, service_names)
    if clash is not None:
        raise ModelRegistryError(f"model '{model}': {clash}")
    if model_names is not None:
        want, have = set(model_names), set(service_names)
        if want != have or len(model_names) != len(service_names):
            missing = [n for n in model_names if n not in have]
            unused = [n for n in service_names if n not in want]
            parts = [
                f"model '{model}' takes {len(model_names)} inputs but feature service "
                f"'{service}' has {len(service_names)} features"
            ]
            if missing:
                parts.append(f"not in the service: {missing}")
            if unused:
                parts.append(f"not used by the model: {unused}")
            if not missing and not unused:
                parts.append("the model lists some inputs twice")
            raise ModelRegistryError(
                "; ".join(parts) + "; retrain on the service's features or "
                "register with the matching --features service"
            )
        return tuple(model_names)
    if n_inputs is not None and n_inputs != len(service_names):
        raise ModelRegistryError(
            f"model '{model}' takes {n_inputs} inputs but feature service '{service}' has "
            f"{len(service_names)} features; register it with the service it was trained on"
        )
    return tuple(service_names)  # unnamed inputs: the service's order


def name_clash(service: str, names: Sequence[str], refs: Sequence[str] | None = None) -> str | None:
    """Why a model cannot read ``names`` (a feature service's features by bare name; ``refs``,
    when given, their ``view:feature`` references, to name both) when two are one name, else
    None: a model reads its inputs by bare name, as online predict does."""
    i, dup = next(((i, n) for i, n in enumerate(names) if n in names[:i]), (-1, None))
    if dup is None:
        return None
    both = f" ('{refs[list(names).index(dup)]}' and '{refs[i]}')" if refs is not None else ""
    return (
        f"feature service '{service}' has two features named '{dup}'{both}; a model reads its "
        "inputs by bare feature name, so it cannot tell them apart: keep one of them in the "
        "service, or rename one in its view"
    )


_ONE_SCORE = (
    "the service returns one score per entity: binary classifiers score P(positive class), "
    "regressors the value"
)


def check_scores(model: str, pred: Predictor, n_features: int) -> None:
    """Refuse a model that does not give one number per row, by a trial prediction on zeros.

    Catches what the artifact's metadata cannot: multiclass and multi-output models, inputs
    of a free width that do not fit, predict functions that fail or return labels.
    """
    if pred.n_classes is not None and pred.n_classes > 2:
        raise ModelRegistryError(
            f"model '{model}' is a {pred.n_classes}-class {pred.flavor} classifier; "
            f"{_ONE_SCORE}; register a binary classifier or a regressor"
        )
    x = np.zeros((2, n_features), dtype=np.float64)
    try:
        out = np.asarray(pred.predict(x))
    except Exception as exc:
        hint = ""
        if pred.n_inputs is None:
            hint = f" (the model does not declare its input count: does it take {n_features}?)"
        raise ModelRegistryError(
            f"model '{model}' failed a trial prediction on 2 rows of the service's "
            f"{n_features} features{hint}: {type(exc).__name__}: {one_line(exc)}"
        ) from exc
    if out.ndim == 2 and out.shape[0] == 2 and out.shape[1] > 1:
        k = out.shape[1]
        raise ModelRegistryError(
            f"model '{model}' returns {k} numbers per row (a {k}-class or {k}-output model); "
            f"{_ONE_SCORE}; register a binary classifier or a single-output regressor"
        )
    if out.shape != (2,):
        raise ModelRegistryError(
            f"model '{model}' returns shape {out.shape} for 2 rows; {_ONE_SCORE}, so predict "
            "must return one number per row"
        )
    if out.dtype.kind not in "biuf":
        raise ModelRegistryError(
            f"model '{model}' returns {out.dtype} values {out.tolist()} for 2 rows, not numbers; "
            f"{_ONE_SCORE}"
        )
    if np.isinf(out).any():
        raise ModelRegistryError(
            f"model '{model}' returns {out.tolist()} for 2 rows of zeros; scores must be "
            "finite numbers (or NaN)"
        )


def check_reference(ref: str) -> None:
    """Refuse a model reference with an empty side of its '@' (``fraud@``, ``@1``): neither
    is read as production or as a model named ''."""
    name, at, sel = ref.partition("@")
    if at and (not name or not sel):
        shown = ref if len(ref) <= 80 else ref[:80] + "..."
        what = "no model name before" if not name else "nothing after"
        raise ModelNotFoundError(
            f"model: bad model reference {shown!r}, {what} '@'; expected NAME, NAME@ALIAS "
            f"({', '.join(ALIASES)}) or NAME@VERSION"
        )


class ModelRegistry:
    """Versions and aliases of models under one folder (default ``data/models`` in the repo)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    # ---- reading ----------------------------------------------------------------------------
    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / INDEX).is_file())

    def index_path(self, name: str) -> Path:
        return self.root / name / INDEX

    def get(self, name: str) -> ModelEntry:
        # a name register refuses is never a folder here: no path is built from it (a name
        # with "/" or ".." must not reach outside the registry, a huge one not hit the OS limit)
        if not _NAME.fullmatch(name):
            raise self._not_found(name)
        path = self.index_path(name)
        try:
            return ModelEntry.from_dict(json.loads(path.read_text()))
        except FileNotFoundError:
            raise self._not_found(name) from None
        except (ValueError, KeyError, TypeError) as exc:
            # named by the model, not by path: this message reaches clients of the servers
            raise ModelRegistryError(f"model index of '{name}' is corrupt: {exc}") from None

    def _not_found(self, name: str) -> ModelNotFoundError:
        # the model's name only, never the registry's folder: servers answer clients with it
        known = ", ".join(self.names()) or "none (register one with `featurestore models register`)"
        shown = name if len(name) <= 80 else name[:80] + "..."
        return ModelNotFoundError(f"no model '{shown}'; known models: {known}")

    def resolve(self, ref: str) -> ModelVersion:
        """``name`` (production), ``name@alias`` or ``name@3`` / ``name@v3`` -> a version."""
        check_reference(ref)
        name, _, sel = ref.partition("@")
        entry = self.get(name)
        if not sel:
            return entry.alias("production")
        if sel in ALIASES:
            return entry.alias(sel)
        m = re.fullmatch(r"v?(\d+)", sel)
        if not m:
            raise ModelNotFoundError(
                f"bad model reference {ref!r}; expected NAME, NAME@ALIAS ({', '.join(ALIASES)}) "
                "or NAME@VERSION"
            )
        return entry.version(int(m.group(1)))

    def artifact_path(self, mv: ModelVersion) -> str:
        if mv.flavor == "python" and not mv.artifact.endswith(".py"):
            return mv.artifact  # a module name on sys.path
        return str(self.root / mv.name / mv.artifact)

    # ---- writing ----------------------------------------------------------------------------
    def register(
        self,
        name: str,
        *,
        flavor: str,
        artifact: str | os.PathLike[str],
        feature_service: str,
        service_features: list[str],
        description: str = "",
    ) -> ModelVersion:
        """Copy the artifact in as the next version after checking it loads and fits the service.

        Checked before anything is copied: the model loads, its input names or count match
        the service's features, and a trial prediction gives one number per row.
        """
        if not _NAME.fullmatch(name):
            raise ModelRegistryError(f"model name {name!r} must be 1-100 letters, digits, _ or -")
        check_flavor(flavor)
        src = str(artifact)
        is_module = flavor == "python" and not src.endswith(".py")
        if not is_module and not Path(src).exists():
            raise ModelRegistryError(f"model artifact {src} does not exist")
        pred = load_predictor(flavor, src)
        order = check_features(
            name, pred.input_names, pred.n_inputs, feature_service, service_features
        )
        check_scores(name, pred, len(order))
        with self._lock(name):
            entry = self._get_or_new(name)
            version = max(entry.versions, default=0) + 1
            folder = self.root / name / f"v{version}"
            if folder.exists():
                shutil.rmtree(folder)
            folder.mkdir(parents=True)
            if is_module:
                rel = src
            else:
                dst = folder / Path(src).name
                (shutil.copytree if Path(src).is_dir() else shutil.copy2)(src, dst)
                rel = f"v{version}/{Path(src).name}"
            mv = ModelVersion(
                name,
                version,
                flavor,
                rel,
                feature_service,
                order,
                datetime.now(timezone.utc).isoformat(timespec="seconds"),
                description,
            )
            entry.versions[version] = mv
            self._write(entry)
        return mv

    def set_alias(
        self,
        name: str,
        version: int,
        alias: str,
        *,
        share: float | None = None,
        registered: ModelVersion | None = None,
    ) -> None:
        """Point ``alias`` at ``version`` (atomically) once its stored artifact is checked to
        still load and score (see ``check_loads``); ``share`` is required for ``canary``.

        ``registered``: the version as ``register`` just returned it (register --alias): its
        artifact was loaded and checked there and copied in unchanged, so it is not loaded again.
        """
        if alias not in ALIASES:
            raise ModelRegistryError(f"unknown alias {alias!r}; expected one of {list(ALIASES)}")
        if alias == "canary":
            if share is None:
                raise ModelRegistryError(
                    "canary alias needs a traffic share: pass --share, a fraction between 0 "
                    "and 1 such as 0.1"
                )
            if not 0.0 < share < 1.0:
                raise ModelRegistryError(
                    f"canary alias needs a traffic share between 0 and 1 (exclusive); got {share}"
                )
        elif share is not None:
            raise ModelRegistryError(f"only the canary alias takes a traffic share, not '{alias}'")
        mv = self.get(name).version(version)
        # a python module may read files beside it: its stored copy is loaded again
        if registered is not None and registered == mv and mv.flavor != "python":
            self._check_stored(mv, alias)  # loaded and checked a moment ago by register
        else:
            self.check_loads(mv, alias)  # before the lock: slow
        with self._lock(name):
            entry = self.get(name)
            entry.version(version)
            entry.aliases[alias] = Alias(version, share)
            self._write(entry)

    def check_loads(self, mv: ModelVersion, alias: str) -> None:
        """Refuse to point ``alias`` at ``mv`` unless its stored artifact still loads and
        passes register's checks (inputs of distinct names among them): servers would
        otherwise be left unable to serve it."""
        path = self._check_stored(mv, alias)
        head = f"model '{mv.name}' v{mv.version} cannot become {alias}: its artifact"
        shown = mv.artifact  # relative to the model's folder (or a module name)
        try:
            pred = load_predictor(mv.flavor, path)
        except (ModelRegistryError, ImportError) as exc:
            why = one_line(without_paths(str(exc), self.root / mv.name))
            why = why.removeprefix(f"cannot load {mv.flavor} model from {shown}: ")
            raise ModelRegistryError(f"{head} {shown} no longer loads: {why}") from exc
        names = list(mv.feature_names)
        try:
            check_features(mv.name, pred.input_names, pred.n_inputs, mv.feature_service, names)
            check_scores(mv.name, pred, len(names))
        except ModelRegistryError as exc:  # another model put in its place
            why = one_line(without_paths(str(exc), self.root / mv.name))
            raise ModelRegistryError(f"{head} {shown} fails register's checks: {why}") from exc

    def _check_stored(self, mv: ModelVersion, alias: str) -> str:
        """``check_loads``'s checks short of loading: inputs of distinct names, and the stored
        artifact still there; its path."""
        clash = name_clash(mv.feature_service, mv.feature_names)  # registered before the check
        if clash is not None:
            raise ModelRegistryError(
                f"model '{mv.name}' v{mv.version} cannot become {alias}: {clash}"
            )
        path = self.artifact_path(mv)
        if path != mv.artifact and not Path(path).exists():
            raise ModelRegistryError(
                f"model '{mv.name}' v{mv.version} cannot become {alias}: its artifact "
                f"{mv.artifact} is missing from the model registry; register the model file "
                "again (as a new version) and promote that"
            )
        return path

    def remove_alias(self, name: str, alias: str) -> int | None:
        """Remove ``alias`` (atomically); the version it pointed at, None when it was not set.
        ``production`` cannot be removed: servers would lose the model; promote another."""
        if alias not in ALIASES:
            raise ModelRegistryError(f"unknown alias {alias!r}; expected one of {list(ALIASES)}")
        if alias == "production":
            raise ModelRegistryError(
                f"model '{name}': the production alias cannot be removed (servers answer the "
                f"model's name with it); point it at another version with `featurestore models "
                f"promote {name} VERSION`"
            )
        self.get(name)  # an unknown model: not found, and no folder made for its lock
        with self._lock(name):
            entry = self.get(name)
            old = entry.aliases.pop(alias, None)
            if old is not None:
                self._write(entry)
        return None if old is None else old.version

    def _get_or_new(self, name: str) -> ModelEntry:
        try:
            return self.get(name)
        except ModelNotFoundError:
            return ModelEntry(name)

    def _lock(self, name: str) -> Any:
        from filelock import FileLock

        (self.root / name).mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.root / name / ".lock"), timeout=30)

    def _write(self, entry: ModelEntry) -> None:
        atomic_write(self.index_path(entry.name), json.dumps(entry.to_dict(), indent=2).encode())
