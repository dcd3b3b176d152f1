"""FeatureView: a group of features of one entity (or entity tuple), read from one source."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from featurestore._time import duration_us, format_duration, parse_duration
from featurestore.entity import Entity
from featurestore.errors import DefinitionError
from featurestore.field import Field
from featurestore.sources import Source, source_from_dict
from featurestore.window_spec import WindowSpec


@dataclass(frozen=True)
class FeatureView:
    """Features of ``entities`` taken from ``source``; rows older than ``ttl`` are not served.

    ``schema`` lists the feature columns (join keys and timestamps may be listed too; they are
    recognised and left out of the features).

    With ``aggregations=[Aggregation(...)]`` the view is a window view: each source row is an
    event and the features are the aggregation outputs (``schema`` is then optional; when given
    it must name outputs with their types). ``derived`` adds row-transform columns aggregations
    can read; ``allowed_lateness`` widens the online state for late events (see
    featurestore.transforms.online).
    """

    name: str
    entities: tuple[Entity, ...]
    source: Source
    schema: tuple[Field, ...]
    ttl: timedelta | None = None
    online: bool = True
    description: str = ""
    owner: str = ""
    tags: dict[str, str] = field(default_factory=dict, hash=False)
    window: WindowSpec | None = field(default=None, hash=False, repr=False)
    # how many times apply saw the code of a where/derived function change: part of the
    # schema version, so states built by older code are not served (see carry_code_epoch)
    code_epoch: int = field(default=0, hash=False, repr=False)

    def __init__(
        self,
        *,
        name: str,
        entities: list[Entity] | tuple[Entity, ...],
        source: Source,
        schema: list[Field] | tuple[Field, ...] | None = None,
        ttl: timedelta | str | int | None = None,
        online: bool = True,
        description: str = "",
        owner: str = "",
        tags: dict[str, str] | None = None,
        aggregations: list[Any] | None = None,
        derived: dict[str, tuple[Any, list[str]]] | None = None,
        allowed_lateness: timedelta | str | int | None = None,
        _window: WindowSpec | None = None,
        _code_epoch: int = 0,
    ) -> None:
        if not name or not isinstance(name, str) or ":" in name:
            raise DefinitionError(
                f"feature view name {name!r} must be a non-empty string without ':'"
            )
        ents = tuple(entities or ())
        if not ents:
            raise DefinitionError(f"feature view '{name}' has no entities; add entities=[...]")
        for e in ents:
            if not isinstance(e, Entity):
                raise DefinitionError(
                    f"feature view '{name}': entities must be Entity objects, got {e!r}"
                )
        try:
            ttl_td = parse_duration(ttl)
        except ValueError as exc:
            raise DefinitionError(f"feature view '{name}': {exc}") from None
        if ttl_td is not None and ttl_td <= timedelta(0):
            raise DefinitionError(
                f"feature view '{name}' has ttl {ttl!r}; a ttl must be positive, or None for "
                "rows that never expire (Feast's ttl of 0)"
            )
        keys = {k for e in ents for k in e.join_keys}
        reserved = keys | {source.timestamp_field, source.created_timestamp_field}
        window = _window
        if window is None and (aggregations or derived or allowed_lateness is not None):
            if not aggregations:
                raise DefinitionError(
                    f"feature view '{name}' has derived columns or allowed_lateness but no "
                    "aggregations; add aggregations=[Aggregation(...)]"
                )
            window = WindowSpec(name, aggregations, derived, allowed_lateness)
        schema = list(schema or ())
        if window is not None:
            if ttl_td is not None:
                raise DefinitionError(
                    f"feature view '{name}' has aggregations and a ttl; window features need "
                    "no ttl (the windows bound the events), remove ttl"
                )
            schema = _window_schema(name, window, [f for f in schema if f.name not in reserved])
        feats = tuple(f for f in schema if f.name not in reserved)
        if not feats:
            raise DefinitionError(f"feature view '{name}' has no features in its schema")
        seen: set[str] = set()
        for f in feats:
            if not isinstance(f, Field):
                raise DefinitionError(
                    f"feature view '{name}': schema entries must be Field objects, got {f!r}"
                )
            if f.name in seen:
                raise DefinitionError(f"feature view '{name}' lists feature '{f.name}' twice")
            seen.add(f.name)
        for attr, val in (
            ("name", name),
            ("entities", ents),
            ("source", source),
            ("schema", feats),
            ("ttl", ttl_td),
            ("online", online),
            ("description", description),
            ("owner", owner),
            ("tags", dict(tags or {})),
            ("window", window),
            ("code_epoch", int(_code_epoch)),
        ):
            object.__setattr__(self, attr, val)

    @property
    def is_window(self) -> bool:
        """Whether the features are window aggregations over events."""
        return self.window is not None

    @property
    def join_keys(self) -> tuple[str, ...]:
        """The join-key columns of all entities, in declaration order."""
        return tuple(k for e in self.entities for k in e.join_keys)

    @property
    def features(self) -> tuple[Field, ...]:
        return self.schema

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.schema)

    @property
    def ttl_us(self) -> int | None:
        return duration_us(self.ttl)

    def __getitem__(self, features: list[str] | tuple[str, ...] | str) -> FeatureViewProjection:
        """Some of the view's features, ``view[["a", "b"]]`` as in Feast: a FeatureService
        lists them as ``view:a``, ``view:b``. An unknown name fails here, naming the view."""
        names = (features,) if isinstance(features, str) else tuple(features)
        if not names or not all(isinstance(n, str) for n in names):
            raise DefinitionError(
                f"feature view '{self.name}'[{features!r}]: give a list of its feature names"
            )
        for n in names:
            self.field(n)
        return FeatureViewProjection(self.name, names)

    def field(self, feature: str) -> Field:
        for f in self.schema:
            if f.name == feature:
                return f
        from featurestore.errors import FeatureNotFoundError

        raise FeatureNotFoundError(
            f"feature view '{self.name}' has no feature '{feature}'; it has {_brief(self.feature_names)}"
        )

    @property
    def schema_version(self) -> int:
        """A 32-bit fingerprint of the feature names and types; online rows carry it."""
        cached = self.__dict__.get("_schema_version")
        if cached is not None:
            return cached
        text = "|".join(f"{f.name}:{f.dtype.name}" for f in self.schema)
        if self.window is not None:  # a new plan means new state bytes: re-materialize
            import json

            from featurestore._transform_refs import without_code

            # the functions' code hashes stay out (a registry written before they were kept
            # must keep its version); a code change counts through code_epoch instead
            text += "|window:" + json.dumps(without_code(self.window.spec), sort_keys=True)
            if self.code_epoch:
                text += f"|code:{self.code_epoch}"
        version = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=4).digest(), "little")
        object.__setattr__(self, "_schema_version", version)  # immutable view: compute once
        return version

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "entities": [e.name for e in self.entities],
            "source": self.source.to_dict(),
            "schema": [f.to_dict() for f in self.schema],
            "ttl": format_duration(self.ttl),
            "online": self.online,
            "description": self.description,
            "owner": self.owner,
            "tags": self.tags,
            **({"window": self.window.spec} if self.window is not None else {}),
            **({"code_epoch": self.code_epoch} if self.code_epoch else {}),
        }

    @classmethod
    def from_dict(
        cls, d: dict[str, Any], entities: dict[str, Entity], repo_path: Any = None
    ) -> FeatureView:
        win = d.get("window")
        return cls(
            name=d["name"],
            entities=[entities[n] for n in d["entities"]],
            source=source_from_dict(d["source"]),
            schema=[Field.from_dict(f) for f in d["schema"]],
            ttl=d.get("ttl"),
            online=d.get("online", True),
            description=d.get("description", ""),
            owner=d.get("owner", ""),
            tags=d.get("tags") or {},
            _window=None if win is None else WindowSpec(d["name"], spec=win, repo_path=repo_path),
            _code_epoch=d.get("code_epoch", 0),
        )


@dataclass(frozen=True)
class FeatureViewProjection:
    """Some features of one view (``view[["a", "b"]]``): what a FeatureService lists."""

    view: str
    features: tuple[str, ...]

    @property
    def refs(self) -> list[str]:
        """The ``view:feature`` references of the projection, in its order."""
        return [f"{self.view}:{f}" for f in self.features]


def _window_schema(name: str, window: WindowSpec, declared: list[Field]) -> list[Field]:
    """The outputs of ``window`` as fields; a declared field must be an output of that type."""
    outputs = {f.name: f for f in window.output_fields()}
    by_name = {f.name: f for f in declared}
    for f in declared:
        out = outputs.get(f.name)
        if out is None:
            raise DefinitionError(
                f"feature view '{name}' declares '{f.name}', which no aggregation produces; "
                f"its outputs are {_brief(list(outputs))}"
            )
        if f.dtype != out.dtype:
            raise DefinitionError(
                f"feature view '{name}': '{f.name}' is {out.dtype.name} but declared "
                f"{f.dtype.name}; declare it {out.dtype.name}"
            )
        if f.default is not None:
            raise DefinitionError(
                f"feature view '{name}': window feature '{f.name}' cannot have a default (an "
                "empty window is 0 for counts and null otherwise); remove default="
            )
    return [by_name.get(n, f) for n, f in outputs.items()]


def _brief(names: tuple[str, ...] | list[str]) -> str:
    names = list(names)
    if len(names) <= 8:
        return ", ".join(names)
    return ", ".join(names[:6]) + f", ... ({len(names)} in all)"
