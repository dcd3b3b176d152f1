"""FeatureService: the named set of features one model uses."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from featurestore.errors import DefinitionError
from featurestore.feature_view import FeatureView, FeatureViewProjection


@dataclass(frozen=True)
class FeatureService:
    """A name for a list of ``view:feature`` references that a model reads; ``features`` may
    also hold whole views (on-demand ones too) and projections (``view[["a", "b"]]``)."""

    name: str
    features: tuple[str, ...]
    description: str = ""
    owner: str = ""
    tags: dict[str, str] = field(default_factory=dict, hash=False)

    def __init__(
        self,
        *,
        name: str,
        features: list[Any],
        description: str = "",
        owner: str = "",
        tags: dict[str, str] | None = None,
    ) -> None:
        if not name:
            raise DefinitionError("a FeatureService needs a name")
        from featurestore.on_demand_view import OnDemandFeatureView

        refs: list[str] = []
        for item in features or ():
            if isinstance(item, (FeatureView, OnDemandFeatureView)):
                refs.extend(f"{item.name}:{f}" for f in item.feature_names)
            elif isinstance(item, FeatureViewProjection):
                refs.extend(item.refs)
            elif isinstance(item, str) and item.count(":") == 1:
                refs.append(item)
            else:
                raise DefinitionError(
                    f"feature service '{name}': {item!r} is neither a feature view (or some of "
                    "its features, view[['a', 'b']]) nor a 'view:feature' reference"
                )
        if not refs:
            raise DefinitionError(f"feature service '{name}' lists no features")
        if len(set(refs)) != len(refs):
            dup = sorted({r for r in refs if refs.count(r) > 1})
            raise DefinitionError(f"feature service '{name}' lists {dup} more than once")
        for attr, val in (
            ("name", name),
            ("features", tuple(refs)),
            ("description", description),
            ("owner", owner),
            ("tags", dict(tags or {})),
        ):
            object.__setattr__(self, attr, val)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "features": list(self.features),
            "description": self.description,
            "owner": self.owner,
            "tags": self.tags,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureService:
        return cls(
            name=d["name"],
            features=d["features"],
            description=d.get("description", ""),
            owner=d.get("owner", ""),
            tags=d.get("tags") or {},
        )
