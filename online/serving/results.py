"""What the engine hands back: columnar feature results and predictions, built from a lookup
response or, when the store is unavailable, from the fields' defaults (degraded)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from featurestore.feature_view import FeatureView
    from featurestore.online.models import Explanation

FeatureRequest = list[tuple["FeatureView", list[str]]]
_STATUS_NAMES = ("PRESENT", "NOT_FOUND", "EXPIRED")


class FeatureResult:
    """Columnar features of n entities: join keys first, then features (request order).

    From a lookup, ``columns`` (plain lists) are built on first use: the servers encode
    :meth:`wire_columns` instead, where float features served as stored are float64 arrays.
    """

    __slots__ = (
        "_columns",
        "_requests",
        "_source",
        "_statuses",
        "degraded",
        "degraded_reason",
        "feature_names",
    )

    def __init__(
        self,
        columns: dict[str, list[Any]] | None,
        # per feature: PRESENT / NOT_FOUND / EXPIRED / UNAVAILABLE (None: named from
        # ``source`` when first asked for)
        statuses: dict[str, list[str]] | None,
        feature_names: list[str],
        degraded: bool = False,
        degraded_reason: str | None = None,
        *,
        source: Any = None,  # an OnlineResponse, when columns is None
        requests: tuple[FeatureRequest, bool] | None = None,  # source's (requests, full names)
    ) -> None:
        self._columns = columns
        self._source = source
        self._statuses = statuses
        self._requests = requests
        self.feature_names = feature_names
        self.degraded = degraded
        self.degraded_reason = degraded_reason

    @property
    def statuses(self) -> dict[str, list[str]]:
        """Per feature, each entity's status name (a view's features share one list). From a
        lookup they are named on first use: the protobuf encoder mostly writes codes."""
        if self._statuses is None:
            requests, full = self._requests  # type: ignore[misc]
            st: dict[str, list[str]] = {}
            for view, feats in requests:
                names = list(map(_STATUS_NAMES.__getitem__, self._source.status_codes(view.name)))
                for f in feats:
                    st[f"{view.name}__{f}" if full else f] = names
            self._statuses = st
        return self._statuses

    @statuses.setter
    def statuses(self, value: dict[str, list[str]]) -> None:
        self._statuses = value

    @property
    def columns(self) -> dict[str, list[Any]]:
        if self._columns is None:
            self._columns = self._source.to_dict()
        return self._columns

    def wire_columns(self) -> dict[str, Any]:
        """The columns as encoders write them: lists, or float64 arrays equal to the lists."""
        if self._columns is None:
            return self._source.wire_columns()  # type: ignore[no-any-return]
        return self._columns

    def wire_blocks(self) -> list[Any]:
        """:meth:`wire_columns` for the protobuf encoder: dicts of columns, and ``(names, bytes,
        nulls)`` blocks of float64 features served as stored; several blocks start with the
        join keys' (see OnlineResponse.wire_blocks)."""
        if self._columns is None:
            return self._source.wire_blocks()  # type: ignore[no-any-return]
        return [self._columns]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FeatureResult):
            return NotImplemented
        return (self.columns, self.statuses, self.feature_names, self.degraded) == (
            other.columns, other.statuses, other.feature_names, other.degraded,
        ) and self.degraded_reason == other.degraded_reason  # fmt: skip

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"FeatureResult(columns={self.columns!r}, statuses={self.statuses!r}, "
            f"feature_names={self.feature_names!r}, degraded={self.degraded!r}, "
            f"degraded_reason={self.degraded_reason!r})"
        )

    def to_dict(self) -> dict[str, Any]:
        names = list(self.columns)
        return {
            "feature_names": names,
            "results": [
                {"values": self.columns[n], "statuses": self.statuses.get(n)} for n in names
            ],
            "degraded": self.degraded,
        }


@dataclass
class PredictResult:
    """Scores (one per entity), the version that produced them, optionally the features, and
    (audit on) the request id its audit record carries."""

    model: str
    version: int
    scores: list[float]
    degraded: bool
    features: FeatureResult | None = None
    timings_us: dict[str, float] = field(default_factory=dict)
    # the id of this prediction's audit record (serving.audit on), else None
    request_id: str | None = None
    explanation: Explanation | None = None  # asked for with explain=True

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "model": self.model,
            "version": self.version,
            "scores": self.scores,
            "degraded": self.degraded,
        }
        if self.features is not None:
            out["features"] = self.features.to_dict()
        if self.request_id is not None:
            out["request_id"] = self.request_id
        ex = self.explanation
        if ex is not None:
            out["explanation"] = {
                "output": ex.output,
                "feature_names": list(ex.feature_names),
                "base_values": ex.base_values.tolist(),
                "contributions": ex.contributions.tolist(),
            }
        return out


@dataclass
class Prepared:
    """A validated request: views and features, entity columns, and its deadline."""

    requests: FeatureRequest
    entities: dict[str, list[Any]]
    n: int
    full: bool
    include_ts: bool
    deadline: float  # time.monotonic() by which the answer must be out
    request_data: dict[str, list[Any]] | None = None


def from_response(p: Prepared, resp: Any) -> FeatureResult:
    """A lookup's OnlineResponse as a FeatureResult (statuses by name, shared per view, named
    when first asked for)."""
    return FeatureResult(None, None, resp.feature_names, source=resp, requests=(p.requests, p.full))


def degraded_result(p: Prepared, reason: str) -> FeatureResult:
    """Every feature at its field default, status UNAVAILABLE: the answer when the store is not."""
    cols: dict[str, list[Any]] = {k: list(v) for k, v in p.entities.items()}
    st: dict[str, list[str]] = {}
    names: list[str] = []
    for view, feats in p.requests:
        for f in feats:
            fld = view.field(f)
            name = f"{view.name}__{f}" if p.full else f
            cols[name] = [fld.served_default] * p.n
            st[name] = ["UNAVAILABLE"] * p.n
            names.append(name)
    if p.include_ts:
        for view, _ in p.requests:
            cols[f"{view.name}__event_timestamp"] = [None] * p.n
    return FeatureResult(
        cols, st, names, degraded=True, degraded_reason=reason, requests=(p.requests, p.full)
    )
