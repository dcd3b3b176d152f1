"""A feature repo's model registry: where it lives, and registering a model for a service.

Shared by the ``models`` CLI, the quickstart's demo model, batch scoring and the test and
benchmark helpers, so every path registers against the service's features the same way.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from featurestore.types import NUMERIC_TYPES

if TYPE_CHECKING:
    from featurestore.feature_service import FeatureService
    from featurestore.online.models.registry import ModelEntry, ModelRegistry, ModelVersion
    from featurestore.store import FeatureStore

log = logging.getLogger("featurestore.models")


def model_registry(store: FeatureStore) -> ModelRegistry:
    """The model registry folder ``models.path`` of the repo names (default data/models)."""
    from featurestore.online.models.registry import ModelRegistry
    from featurestore.online.serving.config import models_config

    return ModelRegistry(store.config.resolve(models_config(store.config).path))


def service_feature_names(store: FeatureStore, service: str, who: str | None = None) -> list[str]:
    """The features of a feature service, by bare name, in service order (the model's inputs).

    Raises when one is not a number or bool (models take a float matrix), or when two share a
    bare name (see ``input_features``; ``who`` names the model there).
    """
    from featurestore.online.models.errors import ModelRegistryError

    names: list[str] = []
    for name, (view, f) in input_features(store, service, who).items():
        dtype = view.field(f).dtype.name
        if dtype not in NUMERIC_TYPES:
            raise ModelRegistryError(
                f"feature service '{service}' has feature '{view.name}:{f}' of type {dtype}; "
                "a model takes numbers only: serve it through a service of numeric features"
            )
        names.append(name)
    return names


def input_features(
    store: FeatureStore, service: str, who: str | None = None
) -> dict[str, tuple[Any, str]]:
    """Each feature of ``service`` (in service order) by the name a model reads it under, to
    its view and feature: its bare name, as online predict reads a model's inputs (from a
    get-features answer without full names). Two features of one bare name are refused, in
    one line naming ``who`` (the model), the service and both features: no model input
    could say which of them it is, so predict and batch scoring could not agree."""
    from featurestore.online.models.errors import ModelRegistryError
    from featurestore.online.models.registry import name_clash

    out: dict[str, tuple[Any, str]] = {}
    names: list[str] = []
    refs: list[str] = []
    for view, feats in store.resolve_features(service):
        for f in feats:
            names.append(f)
            refs.append(f"{view.name}:{f}")
            out.setdefault(f, (view, f))
    clash = name_clash(service, names, refs)
    if clash is not None:
        raise ModelRegistryError(f"{who}: {clash}" if who else clash)
    return out


def register_model(
    store: FeatureStore,
    name: str,
    *,
    flavor: str,
    artifact: str | os.PathLike[str],
    service: str,
    description: str = "",
    alias: str | None = None,
) -> ModelVersion:
    """Register ``artifact`` as the next version of model ``name`` reading feature service
    ``service`` (checked against its features), and point ``alias`` at it when given."""
    reg = model_registry(store)
    mv = reg.register(
        name,
        flavor=flavor,
        artifact=artifact,
        feature_service=service,
        service_features=service_feature_names(store, service, f"model '{name}'"),
        description=description,
    )
    if alias:
        for warning in promote_model(store, name, mv.version, alias, registered=mv):
            log.warning("%s", warning)
    return mv


def shadow_problem(shadow: ModelVersion, primary: ModelVersion, alias: str) -> str | None:
    """Why ``shadow`` cannot be scored on the rows of ``primary`` (the model serving ``alias``),
    or None: a shadow takes its inputs by name from the rows the request's model was given."""
    missing = [n for n in shadow.feature_names if n not in primary.feature_names]
    if not missing:
        return None
    return (
        f"model '{shadow.name}' v{shadow.version} reads {missing} (feature service "
        f"'{shadow.feature_service}'), which its {alias} v{primary.version} (feature service "
        f"'{primary.feature_service}') does not read; a shadow is scored on the features "
        "fetched for the request, so register it on a service within its production's"
    )


def promote_model(
    store: FeatureStore,
    name: str,
    version: int,
    alias: str,
    *,
    share: float | None = None,
    registered: ModelVersion | None = None,
) -> list[str]:
    """Point ``alias`` of model ``name`` at ``version``; a shadow that could not read its
    inputs from the rows of production (and canary) is refused, and so is a version whose
    feature service now has two features of one bare name (register's check, see
    ``input_features``), and a change leaving a canary or shadow that needs request data
    production does not (see ``request_problem``). Returns warnings: a new production or
    canary whose rows lack the current shadow's inputs. ``registered``: the version as
    ``register`` just returned it, not loaded again (see ``ModelRegistry.set_alias``)."""
    from featurestore.online.models.errors import ModelRegistryError

    reg = model_registry(store)
    entry = reg.get(name)
    mv = entry.version(version)
    if mv.feature_service in store.registry.feature_services:  # (a lost service: see health)
        try:
            input_features(store, mv.feature_service)
        except ModelRegistryError as exc:
            raise ModelRegistryError(
                f"model '{name}' v{version} cannot become {alias}: {exc}"
            ) from None
    warnings: list[str] = []
    if alias == "shadow":
        for other in ("production", "canary"):
            if other in entry.aliases:
                why = shadow_problem(mv, entry.alias(other), other)
                if why is not None:
                    raise ModelRegistryError(why)
    elif "shadow" in entry.aliases:
        why = shadow_problem(entry.alias("shadow"), mv, f"new {alias}")
        if why is not None:
            warnings.append(
                f"{why}; the shadow is not scored on those requests (counted in "
                "featurestore_shadow_errors_total)"
            )
    why = request_problem(store, entry, mv, alias)
    if why is not None:
        raise ModelRegistryError(why)
    reg.set_alias(name, version, alias, share=share, registered=registered)
    return warnings


def needed_request_data(store: FeatureStore, service: str) -> set[str] | None:
    """What a predict through feature ``service`` must carry, as the servers demand it: its
    join keys (``"join key 'k'"``) and its on-demand features' request fields (``"request
    field 'f'"``); None when the service is not defined."""
    if service not in store.registry.feature_services:
        return None
    from featurestore.online._shape import request_shape
    from featurestore.online.serving._requests import request_fields

    requests = list(store.resolve_features(service))
    keys = request_shape(store.config.project, requests, False).needed
    return {f"join key '{k}'" for k in keys} | {
        f"request field '{f}'" for f in request_fields(requests)
    }


def request_problem(
    store: FeatureStore, entry: ModelEntry, mv: ModelVersion, alias: str
) -> str | None:
    """Why ``alias`` cannot point at ``mv``: after the change a canary or shadow would need
    request data (join keys, request fields) production does not. Clients send what production
    needs, so a canary's share of requests would fail with a 400, and a shadow (scored on the
    features fetched for production) would never get the features computed from them. None
    when every such alias needs a subset of production's (or there is no production, or a
    service is not defined: health reports that)."""
    after = {a: entry.alias(a) for a in entry.aliases if a in ("production", "canary", "shadow")}
    after[alias] = mv
    prod = after.get("production")
    if prod is None:
        return None
    have = needed_request_data(store, prod.feature_service)
    if have is None:
        return None
    # only the pairs this change makes: a canary or shadow already set is not this one's fault
    for other in ("canary", "shadow") if alias == "production" else (alias,):
        ov = after.get(other)
        if ov is None:
            continue
        extra = sorted((needed_request_data(store, ov.feature_service) or set()) - have)
        if not extra:
            continue
        fields = ", ".join(extra)
        what = (
            "its share of requests would fail with a 400"
            if other == "canary"
            else "the shadow, scored on the features fetched for production, would never get "
            "the ones computed from them"
        )
        if alias == "production":
            return (
                f"model '{entry.name}' v{mv.version} cannot become production: its {other} "
                f"v{ov.version} (feature service '{ov.feature_service}') needs {fields}, which "
                f"v{mv.version} (feature service '{mv.feature_service}') does not; clients send "
                f"what production needs, so {what}: unset the {other} first (`featurestore "
                f"models unset {entry.name} --alias {other}`) or point it at a version needing "
                "only production's request data"
            )
        return (
            f"model '{entry.name}' v{mv.version} cannot become {alias}: its feature service "
            f"'{mv.feature_service}' needs {fields}, which production v{prod.version} (feature "
            f"service '{prod.feature_service}') does not; clients send what production needs, "
            f"so {what}: promote a production version needing them first, or register the "
            f"{alias} on a service needing only production's request data"
        )
    return None


def service_problem(
    mv: ModelVersion, services: Mapping[str, FeatureService], who: str | None = None
) -> str | None:
    """Why version ``mv`` cannot be served from the feature services ``services`` (a registry
    state's, or the definitions about to be applied): its service is gone, or no longer serves
    a feature it reads; None when it can be. ``who`` names the model in the line."""
    svc = services.get(mv.feature_service)
    if svc is not None:
        return lost_features(mv, svc, who)
    return (
        f"{who or _who(mv)} reads feature service '{mv.feature_service}', which is no longer "
        "defined: it cannot be served until the service is restored or the model is registered "
        "on another"
    )


def lost_features(mv: ModelVersion, svc: FeatureService, who: str | None = None) -> str | None:
    """Why version ``mv`` cannot be served from ``svc``, its feature service as now defined:
    the features it reads (by name) that ``svc`` no longer serves, or two features of one bare
    name in ``svc`` (no input could say which it reads); None when it serves all."""
    from featurestore.online.models.registry import name_clash

    bare = [ref.partition(":")[2] for ref in svc.features]
    clash = name_clash(svc.name, bare, svc.features)
    if clash is not None:
        return f"{who or _who(mv)} cannot be served: {clash}"
    served = set(bare)
    missing = [n for n in mv.feature_names if n not in served]
    if not missing:
        return None
    what, them = (f"feature '{missing[0]}'", "it") if len(missing) == 1 else (missing, "them")
    return (
        f"{who or _who(mv)} reads {'' if them == 'it' else 'features '}{what}, which its "
        f"feature service '{svc.name}' no longer serves: it cannot be served until the service "
        f"has {them} again or the model is registered again on the service's features"
    )


def _who(mv: ModelVersion) -> str:
    return f"model '{mv.name}' v{mv.version}"


def models_reading_missing_services(
    store: FeatureStore,
    services: set[str] | frozenset[str] | Mapping[str, FeatureService],
) -> list[str]:
    """One line per model alias whose version cannot be served from ``services`` (the feature
    services a registry state about to be applied, or applied, holds): its service is not
    among them or, given the services themselves (a mapping by name), lacks a feature the
    version reads. Such a model answers 503 until the service is fixed or it is registered
    again."""
    from featurestore.online.models.errors import ModelRegistryError

    reg = model_registry(store)
    out = []
    for name in reg.names():
        try:
            entry = reg.get(name)
        except ModelRegistryError:
            continue
        for alias in sorted(entry.aliases):
            try:
                mv = entry.alias(alias)
            except ModelRegistryError:
                continue
            who = f"model '{name}@{alias}' (v{mv.version})"
            if isinstance(services, Mapping):
                why = service_problem(mv, services, who)
            elif mv.feature_service not in services:
                why = service_problem(mv, {}, who)
            else:
                why = None
            if why is not None:
                out.append(why)
    return out
