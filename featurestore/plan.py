"""Plan: what an apply would change in the registry, with breaking schema changes flagged."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from featurestore._transform_refs import carry_code_epoch, code_changes, window_refs, without_code
from featurestore.feature_service import FeatureService
from featurestore.feature_view import FeatureView
from featurestore.registry import RegistryState, keys_changed
from featurestore.repo import RepoDefinitions
from featurestore.sources import StreamSource
from featurestore.types import KEY_KIND_NOUNS

Action = Literal["add", "change", "remove"]


@dataclass(frozen=True)
class Change:
    """One object that apply would add, change or remove; ``details`` says what changed."""

    kind: str
    name: str
    action: Action
    details: tuple[str, ...] = ()
    breaking: bool = False

    def __str__(self) -> str:
        sign = {"add": "+", "change": "~", "remove": "-"}[self.action]
        head = f"{sign} {self.kind} {self.name}"
        if self.breaking:
            head += "  [BREAKING]"
        return "\n".join([head, *(f"    {d}" for d in self.details)])


@dataclass
class Plan:
    """The list of changes; empty when the registry already matches the definitions."""

    changes: list[Change] = field(default_factory=list)
    # removed views whose online rows an earlier apply could not delete (the next one retries)
    pending_cleanup: list[str] = field(default_factory=list)
    # the feature services of the definitions (what apply writes): what registered models are
    # checked against (see featurestore.online.models.repo.models_reading_missing_services)
    feature_services: dict[str, FeatureService] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not self.changes

    @property
    def breaking(self) -> list[Change]:
        return [c for c in self.changes if c.breaking]

    @property
    def narrows_services(self) -> bool:
        """Whether apply removes a feature service, or a feature from one: a registered model
        reading it may then be left unable to be served."""
        return any(
            c.kind == "feature service" and (c.action == "remove" or c.breaking)
            for c in self.changes
        )

    def __str__(self) -> str:
        pending = ""
        if self.pending_cleanup:
            names = ", ".join(self.pending_cleanup)
            pending = (
                "\nOnline rows of removed views (or of old join keys) still to delete (apply "
                f"retries): {names}."
            )
        if self.empty:
            return "No changes: the registry matches the definitions." + pending
        adds = sum(c.action == "add" for c in self.changes)
        chg = sum(c.action == "change" for c in self.changes)
        rem = sum(c.action == "remove" for c in self.changes)
        lines = [str(c) for c in self.changes]
        lines.append(
            f"Plan: {adds} to add, {chg} to change, {rem} to remove"
            + (f", {len(self.breaking)} breaking" if self.breaking else "")
            + "."
        )
        return "\n".join(lines) + pending


def make_plan(
    current: RegistryState, defs: RepoDefinitions, key_kinds: dict[str, str] | None = None
) -> Plan:
    """Compare the applied registry with the definitions loaded from the repo (and with the
    join-key kinds read from the sources, when given)."""
    plan = Plan(
        pending_cleanup=sorted(current.pending_cleanup),
        feature_services=dict(defs.feature_services),
    )
    kinds = current.join_key_kinds if key_kinds is None else key_kinds
    for name, view in defs.feature_views.items():  # before any schema version is compared
        carry_code_epoch(current.feature_views.get(name), view)
    _diff(plan, "entity", current.entities, defs.entities, _entity_details)
    _diff(
        plan,
        "feature view",
        current.feature_views,
        defs.feature_views,
        lambda old, new: _view_details(old, new, current.join_key_kinds, kinds),
        # a view's entity may change its join keys with the view itself unchanged (a key that
        # only changed kind is listed under that key, with the views it affects)
        changed=lambda old, new: (
            old.to_dict() != new.to_dict()
            or old.schema_version != new.schema_version
            or old.join_keys != new.join_keys
        ),
    )
    _diff(
        plan,
        "on-demand feature view",
        current.on_demand_views,
        defs.on_demand_views,
        _on_demand_details,
    )
    _diff(
        plan, "feature service", current.feature_services, defs.feature_services, _service_details
    )
    if key_kinds is not None:
        rekeyed = [
            v
            for n, v in sorted(defs.feature_views.items())
            if n in current.feature_views
            and current.feature_views[n].join_keys == v.join_keys
            and keys_changed(current.feature_views[n], v, current.join_key_kinds, key_kinds)
        ]
        _diff_kinds(plan, current.join_key_kinds, key_kinds, rekeyed)
    return plan


def _diff_kinds(
    plan: Plan, old: dict[str, str], new: dict[str, str], rekeyed: Sequence[FeatureView] = ()
) -> None:
    """Join keys whose kind (integers or strings) apply records, drops or changes; a change
    names the views keyed by it (``rekeyed``), whose online rows apply deletes."""
    for key in sorted(new.keys() - old.keys()):
        plan.changes.append(Change("join key", key, "add", (f"holds {KEY_KIND_NOUNS[new[key]]}",)))
    for key in sorted(old.keys() - new.keys()):
        plan.changes.append(Change("join key", key, "remove"))
    for key in sorted(k for k in old.keys() & new.keys() if old[k] != new[k]):
        was, now = KEY_KIND_NOUNS[old[key]], KEY_KIND_NOUNS[new[key]]
        line = f"{was} -> {now} (breaking: rows stored under the old keys are not found)"
        views = sorted(v.name for v in rekeyed if key in v.join_keys)
        lines = (line,) + (
            (f"views {', '.join(views)}: online rows are deleted; materialize them again",)
            if views
            else ()
        )
        lines += tuple(_ingest_note([v for v in rekeyed if key in v.join_keys]))
        plan.changes.append(Change("join key", key, "change", lines, breaking=True))


def _ingest_note(views: Sequence[FeatureView]) -> list[str]:
    """What a join-key change of stream-fed ``views`` asks of their ingest (see
    featurestore/_cleanup.py), as one plan line; none for other views."""
    streams = sorted({v.source.stream for v in views if isinstance(v.source, StreamSource)})
    if not streams:
        return []
    return [
        f"fed by stream(s) {', '.join(repr(s) for s in streams)}: stop their ingest first (one "
        "still running stops at its next event for the view, and no ingest writes it until "
        "apply runs again with none running)"
    ]


def _diff(plan: Plan, kind: str, old: dict, new: dict, details, changed=None) -> None:  # type: ignore[no-untyped-def]
    for name in sorted(new.keys() - old.keys()):
        plan.changes.append(Change(kind, name, "add"))
    for name in sorted(old.keys() - new.keys()):
        plan.changes.append(Change(kind, name, "remove", breaking=kind == "feature view"))
    for name in sorted(old.keys() & new.keys()):
        if (changed or _dict_changed)(old[name], new[name]):
            lines, breaking = details(old[name], new[name])
            plan.changes.append(Change(kind, name, "change", tuple(lines), breaking))


def _entity_details(old, new) -> tuple[list[str], bool]:  # type: ignore[no-untyped-def]
    lines = _field_diffs(old.to_dict(), new.to_dict())
    return lines, old.join_keys != new.join_keys


def _service_details(old, new) -> tuple[list[str], bool]:  # type: ignore[no-untyped-def]
    added = [f for f in new.features if f not in old.features]
    removed = [f for f in old.features if f not in new.features]
    lines = [f"+ {f}" for f in added] + [f"- {f}" for f in removed]
    return lines or _field_diffs(old.to_dict(), new.to_dict()), bool(removed)


def _dict_changed(old, new) -> bool:  # type: ignore[no-untyped-def]
    return bool(old.to_dict() != new.to_dict())


def _view_details(old, new, old_kinds, kinds) -> tuple[list[str], bool]:  # type: ignore[no-untyped-def]
    lines: list[str] = []
    breaking = False
    old_f = {f.name: f for f in old.schema}
    new_f = {f.name: f for f in new.schema}
    for n in new_f.keys() - old_f.keys():
        lines.append(f"+ feature {n}: {new_f[n].dtype.name}")
    for n in sorted(old_f.keys() - new_f.keys()):
        lines.append(f"- feature {n} (breaking: readers of it will fail)")
        breaking = True
    for n in sorted(old_f.keys() & new_f.keys()):
        if old_f[n].dtype != new_f[n].dtype:
            lines.append(
                f"~ feature {n}: {old_f[n].dtype.name} -> {new_f[n].dtype.name} (breaking)"
            )
            breaking = True
        elif old_f[n].to_dict() != new_f[n].to_dict():
            lines.append(f"~ feature {n}: {_field_diffs(old_f[n].to_dict(), new_f[n].to_dict())}")
    rows_gone = "its online rows are deleted; materialize it again"
    if old.join_keys != new.join_keys:
        lines.append(
            f"~ join keys {list(old.join_keys)} -> {list(new.join_keys)} (breaking: {rows_gone})"
        )
        lines += _ingest_note([old, new])
        breaking = True
    else:
        for k in new.join_keys:
            if k in old_kinds and k in kinds and old_kinds[k] != kinds[k]:
                was, now = KEY_KIND_NOUNS[old_kinds[k]], KEY_KIND_NOUNS[kinds[k]]
                lines.append(f"~ join key {k}: {was} -> {now} (breaking: {rows_gone})")
                lines += _ingest_note([old, new])
                breaking = True
    od, nd = old.to_dict(), new.to_dict()
    for k in ("source", "online", "description", "owner", "tags"):
        if od.get(k) != nd.get(k):
            lines.append(f"~ {k}: {od.get(k)!r} -> {nd.get(k)!r}")
    if od.get("ttl") != nd.get("ttl"):
        lines.append(
            f"~ ttl {od.get('ttl') or 'none'} -> {nd.get('ttl') or 'none'}: online rows are "
            "rewritten with the new expiry at the next materialize"
        )
    ow, nw = od.get("window"), nd.get("window")
    if without_code(ow) != without_code(nw):
        lines.append(f"~ window: {without_code(ow)!r} -> {without_code(nw)!r}")
    for place, ref, changed in code_changes(window_refs(ow), window_refs(nw)):
        if changed:
            lines.append(f"~ code of function '{ref['function']}' ({place}) changed (breaking)")
            breaking = True
        else:  # a registry written before code hashes were kept: nothing to rebuild
            lines.append(f"~ code of function '{ref['function']}' ({place}) recorded")
    if old.schema_version != new.schema_version:
        lines.append(
            "online rows of the old schema are not served until the view is materialized again"
        )
    return lines, breaking


def _on_demand_details(old, new) -> tuple[list[str], bool]:  # type: ignore[no-untyped-def]
    """Definition changes plus the functions whose code changed; not breaking: on-demand
    features are computed per request, no stored rows hold the old results."""
    od, nd = old.to_dict(), new.to_dict()
    lines = _field_diffs(without_code(od), without_code(nd))
    refs = [{f["output"]["name"]: f for f in d["features"]} for d in (od, nd)]
    code = code_changes(*({f"output '{n}'": f for n, f in r.items()} for r in refs))
    return lines + [
        f"~ code of function '{ref['function']}' ({place}) changed (computed per request: the "
        "new code applies at once)"
        if changed
        else f"~ code of function '{ref['function']}' ({place}) recorded"
        for place, ref, changed in code
    ], False


def _field_diffs(old: dict, new: dict) -> list[str]:
    return [
        f"~ {k}: {old.get(k)!r} -> {new.get(k)!r}"
        for k in sorted(set(old) | set(new))
        if old.get(k) != new.get(k)
    ]
