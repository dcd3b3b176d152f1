"""OnDemandFeatureView: features computed per request from request fields and fetched features.

``features`` are ``@on_demand_feature`` functions whose inputs are request fields (from a
``RequestSource``) or ``view:feature`` references to views in ``sources``. Their outputs are
referenced as ``<this view>:<output>`` like any other feature. Offline the functions run
vectorized over the training set (request fields are spine columns); online once per request
after the fetch; both are kernels compiled by numba from the same function.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from featurestore.errors import DefinitionError, FeatureNotFoundError
from featurestore.feature_view import FeatureView, _brief
from featurestore.field import Field

if TYPE_CHECKING:
    from featurestore.transforms.on_demand import OnDemandFeature
    from featurestore.types import DType


class OnDemandFeatureView:
    """A named group of on-demand features; ``join_keys`` is empty (it has no rows of its own)."""

    join_keys: tuple[str, ...] = ()
    ttl_us: int | None = None
    online = True
    is_window = False

    def __init__(
        self,
        *,
        name: str,
        sources: Sequence[Any],
        features: Sequence[OnDemandFeature],
        description: str = "",
        owner: str = "",
        tags: dict[str, str] | None = None,
        _spec: dict[str, Any] | None = None,
        _repo_path: Path | None = None,
    ) -> None:
        from featurestore._transform_refs import CURRENT_REPO, function_ref

        if not name or not isinstance(name, str) or ":" in name:
            raise DefinitionError(
                f"on-demand feature view name {name!r} must be a non-empty string without ':'"
            )
        self.name = name
        self.description = description
        self.owner = owner
        self.tags = dict(tags or {})
        self.repo_path = _repo_path if _repo_path is not None else CURRENT_REPO.get()
        self._features: tuple[OnDemandFeature, ...] | None = None
        self._source_views: dict[str, FeatureView] = {}
        if _spec is not None:
            self.spec = _spec
            self._check()
            return
        from featurestore.transforms.on_demand import OnDemandFeature, RequestSource

        requests, views = [], []
        for s in sources or ():
            if isinstance(s, RequestSource):
                requests.append(s)
            elif isinstance(s, FeatureView):
                views.append(s.name)
                self._source_views[s.name] = s
            else:
                raise DefinitionError(
                    f"on-demand feature view '{name}': sources must be RequestSource or "
                    f"FeatureView objects, got {s!r}"
                )
        feats = tuple(features or ())
        if not feats or not all(isinstance(f, OnDemandFeature) for f in feats):
            raise DefinitionError(
                f"on-demand feature view '{name}' needs features=[<@on_demand_feature function>]"
            )
        self._features = feats
        self.spec = {
            "request_sources": [
                {"name": r.name, "schema": [f.to_dict() for f in r.schema]} for r in requests
            ],
            "views": views,
            "features": [
                {
                    **function_ref(f, self.repo_path),
                    "inputs": list(f.inputs),
                    "output": f.output.to_dict(),
                }
                for f in feats
            ],
        }
        self._check()

    def _check(self) -> None:
        req = {f.name for f in self.request_schema}
        seen: set[str] = set()
        for f in self.spec["features"]:
            out = f["output"]["name"]
            if out in seen:
                raise DefinitionError(
                    f"on-demand feature view '{self.name}' defines output '{out}' twice"
                )
            seen.add(out)
            for i in f["inputs"]:
                if ":" in i:
                    if i.split(":", 1)[0] not in self.spec["views"]:
                        raise DefinitionError(
                            f"on-demand feature view '{self.name}': input '{i}' of "
                            f"'{f['function']}' names a view that is not in sources=[...]; add it"
                        )
                elif i not in req:
                    raise DefinitionError(
                        f"on-demand feature view '{self.name}': input '{i}' of "
                        f"'{f['function']}' is neither a request field ({sorted(req)}) nor a "
                        "'view:feature' reference"
                    )

    # -- FeatureView-like surface ------------------------------------------------------------

    @property
    def schema(self) -> tuple[Field, ...]:
        return tuple(Field.from_dict(f["output"]) for f in self.spec["features"])

    features = schema

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(f["output"]["name"] for f in self.spec["features"])

    def field(self, feature: str) -> Field:
        for f in self.schema:
            if f.name == feature:
                return f
        raise FeatureNotFoundError(
            f"on-demand feature view '{self.name}' has no feature '{feature}'; it has "
            f"{_brief(self.feature_names)}"
        )

    @property
    def request_schema(self) -> tuple[Field, ...]:
        """Every request field of every request source."""
        return tuple(Field.from_dict(f) for r in self.spec["request_sources"] for f in r["schema"])

    @property
    def source_views(self) -> tuple[str, ...]:
        return tuple(self.spec["views"])

    def inputs_of(self, feature: str) -> tuple[str, ...]:
        """The inputs (request fields and ``view:feature`` refs) of one output."""
        for f in self.spec["features"]:
            if f["output"]["name"] == feature:
                return tuple(f["inputs"])
        raise self._missing(feature)

    def _missing(self, feature: str) -> FeatureNotFoundError:
        return FeatureNotFoundError(
            f"on-demand feature view '{self.name}' has no feature '{feature}'"
        )

    def feature(self, name: str) -> OnDemandFeature:
        """The live on-demand feature computing output ``name`` (imported on first use)."""
        for f in self.on_demand_features:
            if f.name == name:
                return f
        raise self._missing(name)

    @property
    def on_demand_features(self) -> tuple[OnDemandFeature, ...]:
        if self._features is None:
            from featurestore._transform_refs import resolve_ref
            from featurestore.transforms.on_demand import OnDemandFeature, RequestSource

            sources = [
                RequestSource(r["name"], [Field.from_dict(f) for f in r["schema"]])
                for r in self.spec["request_sources"]
            ]
            what = f"on-demand feature view '{self.name}'"
            feats = []
            for f in self.spec["features"]:
                live = resolve_ref(f, self.repo_path, what)
                feats.append(
                    OnDemandFeature(
                        getattr(live, "transform", live),
                        inputs=f["inputs"],
                        output=Field.from_dict(f["output"]),
                        sources=sources,
                    )
                )
            for f in feats:  # types were checked at apply; load the kernels (disk cache)
                if not f.transform.checked:
                    f.transform.compile()
            self._features = tuple(feats)
        return self._features

    def compile(self, feature_types: dict[str, DType]) -> None:
        """Check types against the functions' annotations and compile them."""
        for f in self.on_demand_features:
            f.compile(feature_types)

    def check(self, feature_types: dict[str, DType]) -> None:
        """As ``compile``, but a function known to compile loads its kernels on first use
        (apply does this; see ``RowTransform.check``)."""
        for f in self.on_demand_features:
            f.check(feature_types)

    @property
    def schema_version(self) -> int:
        import hashlib
        import json

        text = json.dumps(self.spec, sort_keys=True)
        return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=4).digest(), "little")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, OnDemandFeatureView) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(self.name)

    def __repr__(self) -> str:
        return f"OnDemandFeatureView({self.name!r}, features={list(self.feature_names)})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            **self.spec,
            "description": self.description,
            "owner": self.owner,
            "tags": self.tags,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], repo_path: Path | None = None) -> OnDemandFeatureView:
        spec = {k: d[k] for k in ("request_sources", "views", "features")}
        return cls(
            name=d["name"],
            sources=(),
            features=(),
            description=d.get("description", ""),
            owner=d.get("owner", ""),
            tags=d.get("tags") or {},
            _spec=spec,
            _repo_path=repo_path,
        )
