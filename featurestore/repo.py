"""Loading a feature repo's definition files and checking them against each other."""

from __future__ import annotations

import traceback
from dataclasses import dataclass, field
from pathlib import Path

from featurestore.config import RepoConfig
from featurestore.entity import Entity
from featurestore.errors import DefinitionError, FeatureStoreError
from featurestore.feature_service import FeatureService
from featurestore.feature_view import FeatureView
from featurestore.on_demand_view import OnDemandFeatureView


@dataclass
class RepoDefinitions:
    """Everything a repo's definition files declare, with the file each object came from."""

    entities: dict[str, Entity] = field(default_factory=dict)
    feature_views: dict[str, FeatureView] = field(default_factory=dict)
    feature_services: dict[str, FeatureService] = field(default_factory=dict)
    on_demand_views: dict[str, OnDemandFeatureView] = field(default_factory=dict)
    origin: dict[tuple[str, str], str] = field(default_factory=dict)  # (kind, name) -> file

    def where(self, kind: str, name: str) -> str:
        return self.origin.get((kind, name), "definitions")


def definition_files(config: RepoConfig) -> list[Path]:
    """The files named in featurestore.yaml ``definitions``, else every ``*.py`` in the repo root."""
    if config.definitions:
        files = [Path(config.resolve(p)) for p in config.definitions]
        for f in files:
            if not f.is_file():
                raise DefinitionError(
                    f"featurestore.yaml lists definitions file {f.name}, which does not exist"
                )
        return files
    files = sorted(p for p in config.repo_path.glob("*.py") if not p.name.startswith("_"))
    if not files:  # a renamed or missing file must not read as "remove every view"
        raise DefinitionError(
            f"no definitions file in {config.repo_path} (every *.py there but _*.py is read); "
            "add one, or list them under 'definitions:' in featurestore.yaml (an empty file "
            "removes every definition)"
        )
    return files


def load_definitions(config: RepoConfig) -> RepoDefinitions:
    """Import each definition file and collect its objects; duplicates and dangling names fail here."""
    defs = RepoDefinitions()
    for path in definition_files(config):
        module = _import_file(path, config)
        for value in list(vars(module).values()):
            _collect(defs, value, path.name)
    _check_references(defs)
    return defs


def _import_file(path: Path, config: RepoConfig) -> object:
    """Import one definitions file under a stable module name (numba's disk cache needs it)."""
    from featurestore._transform_refs import CURRENT_REPO
    from featurestore.transforms.row import load_module_from_path

    token = CURRENT_REPO.set(Path(config.repo_path))
    try:
        return load_module_from_path(str(path))
    except FeatureStoreError as exc:
        raise DefinitionError(f"{path.name}:{_line_in(exc, path)}: {exc}") from None
    except Exception as exc:  # the user's file failed: name the file and line, not our stack
        raise DefinitionError(
            f"{path.name}:{_line_in(exc, path)}: {type(exc).__name__}: {exc}"
        ) from None
    finally:
        CURRENT_REPO.reset(token)


def _line_in(exc: BaseException, path: Path) -> int | str:
    if isinstance(exc, SyntaxError) and exc.lineno:
        return exc.lineno
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if Path(frame.filename).resolve() == path.resolve():
            return frame.lineno or "?"
    return "?"


def _collect(defs: RepoDefinitions, value: object, filename: str) -> None:
    if isinstance(value, Entity):
        _add(defs, defs.entities, "entity", value.name, value, filename)
    elif isinstance(value, FeatureView):
        _add(defs, defs.feature_views, "feature view", value.name, value, filename)
        for e in value.entities:  # an entity used by a view counts as declared there
            if e.name not in defs.entities:
                _add(defs, defs.entities, "entity", e.name, e, filename)
    elif isinstance(value, FeatureService):
        _add(defs, defs.feature_services, "feature service", value.name, value, filename)
    elif isinstance(value, OnDemandFeatureView):
        _add(defs, defs.on_demand_views, "feature view", value.name, value, filename)
    elif isinstance(value, (list, tuple)):
        for item in value:
            if isinstance(item, (Entity, FeatureView, FeatureService, OnDemandFeatureView)):
                _collect(defs, item, filename)


def _add(
    defs: RepoDefinitions, table: dict, kind: str, name: str, value: object, filename: str
) -> None:
    existing = table.get(name)
    if existing is None:
        table[name] = value
        defs.origin[(kind, name)] = filename
    elif existing is not value and existing != value:
        raise DefinitionError(
            f"{filename}: {kind} '{name}' is defined twice (also in {defs.origin[(kind, name)]}); "
            f"give each {kind} a unique name"
        )


def _check_references(defs: RepoDefinitions) -> None:
    for v in defs.feature_views.values():
        for e in v.entities:
            if defs.entities.get(e.name) != e:
                raise DefinitionError(
                    f"{defs.where('feature view', v.name)}: feature view '{v.name}' uses a different "
                    f"entity '{e.name}' than the one declared in {defs.where('entity', e.name)}; "
                    "use the same Entity object"
                )
    for name in defs.on_demand_views.keys() & defs.feature_views.keys():
        raise DefinitionError(
            f"{defs.where('feature view', name)}: '{name}' is both a feature view and an "
            "on-demand feature view; rename one"
        )
    _check_full_names(defs)
    for odfv in defs.on_demand_views.values():
        for feat in odfv.feature_names:
            for ref in odfv.inputs_of(feat):
                if ":" not in ref:
                    continue
                view_name, name = ref.split(":", 1)
                view = defs.feature_views.get(view_name)
                if view is None or name not in view.feature_names:
                    raise DefinitionError(
                        f"{defs.where('feature view', odfv.name)}: on-demand feature "
                        f"'{odfv.name}:{feat}' reads '{ref}', which no feature view defines"
                    )
    for s in defs.feature_services.values():
        for ref in s.features:
            view_name, feat = ref.split(":")
            view = defs.feature_views.get(view_name) or defs.on_demand_views.get(view_name)
            where = defs.where("feature service", s.name)
            if view is None:
                raise DefinitionError(
                    f"{where}: feature service '{s.name}' references view '{view_name}', which is not defined"
                )
            if feat not in view.feature_names:
                raise DefinitionError(
                    f"{where}: feature service '{s.name}' references '{ref}', but view '{view_name}' "
                    f"has no feature '{feat}'"
                )


def _check_full_names(defs: RepoDefinitions) -> None:
    """Refuse two features with one full name (``x:a__b`` and ``x__a:b`` are both ``x__a__b``)
    and a join key named like a feature's full name: with full feature names, one column
    would overwrite the other in training sets and online answers."""
    full: dict[str, tuple[str, str]] = {}  # full name -> (kind, "view:feature")
    for kind, views in (
        ("feature view", defs.feature_views),
        ("on-demand feature view", defs.on_demand_views),
    ):
        for v in views.values():
            for feat in v.feature_names:
                ref = f"{v.name}:{feat}"
                other = full.setdefault(f"{v.name}__{feat}", (kind, ref))[1]
                if other != ref:
                    raise DefinitionError(
                        f"{defs.where(kind, v.name)}: features '{other}' and '{ref}' share the "
                        f"full feature name '{v.name}__{feat}'; rename one"
                    )
    for e in defs.entities.values():
        for key in e.join_keys:
            if key in full:
                kind, ref = full[key]
                raise DefinitionError(
                    f"{defs.where('entity', e.name)}: entity '{e.name}' has join key '{key}', "
                    f"the full feature name of '{ref}'; rename one"
                )
