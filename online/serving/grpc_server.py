"""The gRPC server (grpc.aio) over the shared engine; protobuf only at this edge."""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import TYPE_CHECKING, Any

import grpc

from featurestore._time import to_us
from featurestore.errors import FeatureStoreError
from featurestore.online.serving._proto import featurestore_pb2 as pb
from featurestore.online.serving._proto import featurestore_pb2_grpc as pb_grpc
from featurestore.online.serving.errors import BadRequestError

if TYPE_CHECKING:
    from featurestore.online.serving.engine import Engine, FeatureResult

log = logging.getLogger("featurestore.serving")

SERVICE = "featurestore.serving.v1.FeatureServing"
_HTTP_TO_GRPC = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
    500: grpc.StatusCode.INTERNAL,
}
_STATUS = {
    "PRESENT": pb.PRESENT,
    "NOT_FOUND": pb.NOT_FOUND,
    "EXPIRED": pb.EXPIRED,
    "UNAVAILABLE": pb.UNAVAILABLE,
}


def to_value(v: Any) -> pb.Value:
    """A Python value as a protobuf Value (None -> no kind set)."""
    if v is None:
        return pb.Value()
    if isinstance(v, bool):
        return pb.Value(bool_val=v)
    if isinstance(v, int):
        return pb.Value(int64_val=v)
    if isinstance(v, float):
        return pb.Value(double_val=v)
    if isinstance(v, str):
        return pb.Value(string_val=v)
    if isinstance(v, bytes):
        return pb.Value(bytes_val=v)
    if isinstance(v, datetime):
        return pb.Value(timestamp_us_val=to_us(v))
    if hasattr(v, "tolist"):
        return to_value(v.tolist())
    if isinstance(v, (list, tuple)):
        if all(isinstance(x, int) and not isinstance(x, bool) for x in v):
            return pb.Value(int64_list_val=pb.Int64List(values=v))
        return pb.Value(double_list_val=pb.DoubleList(values=[float(x) for x in v]))
    raise TypeError(f"cannot send a {type(v).__name__} value over gRPC")


def from_value(v: pb.Value) -> Any:
    kind = v.WhichOneof("kind")
    if kind is None:
        return None
    if kind in ("double_list_val", "int64_list_val"):
        return list(getattr(v, kind).values)
    return getattr(v, kind)


def _columns(m: Any, what: str) -> dict[str, list[Any]]:
    return {k: [from_value(x) for x in col.values] for k, col in m.items()}


# packed FeatureColumn fields by the Python type of every non-null value, with the filler of
# a null row; other columns (timestamps, bytes, lists, mixed types) go as generic Values
_PACKED: dict[type, tuple[str, Any]] = {
    float: ("doubles", 0.0),
    int: ("ints", 0),
    bool: ("bools", False),
    str: ("strings", ""),
}
_NONE = type(None)


def to_column(
    name: str,
    values: list[Any],
    statuses: list[int] | pb.FeatureColumn | None = None,
    *,
    into: pb.FeatureColumn | None = None,
) -> pb.FeatureColumn:
    """One response column, packed (one C-level fill per column) when its values allow.

    ``statuses``: FieldStatus codes, or a FeatureColumn holding them (merged: cheaper when
    many columns share one status list). ``into``: an empty column to fill (e.g. one just
    added to a response, which saves copying the column into it).
    """
    col = pb.FeatureColumn() if into is None else into
    col.name = name
    kinds = set(map(type, values))
    has_null = _NONE in kinds
    kinds.discard(_NONE)
    packed = _PACKED.get(kinds.pop()) if len(kinds) == 1 else None
    if packed is None:
        col.values.extend([to_value(x) for x in values])
    else:
        field, zero = packed
        if has_null:
            col.nulls.extend([v is None for v in values])
            values = [zero if v is None else v for v in values]
        sub = getattr(col, field)
        sub.SetInParent()  # the oneof is set even for zero rows
        sub.values.extend(values)  # one C-level fill (cheaper than a constructor's copy)
    if isinstance(statuses, pb.FeatureColumn):
        col.statuses.MergeFrom(statuses.statuses)
    elif statuses:
        col.statuses.extend(statuses)
    return col


def column_values(col: pb.FeatureColumn) -> list[Any]:
    """A response column's values as Python values (None for nulls), packed or generic."""
    kind = col.WhichOneof("packed")
    if kind is None:
        return [from_value(x) for x in col.values]
    values = list(getattr(col, kind).values)
    if col.nulls:
        return [None if null else v for v, null in zip(values, col.nulls, strict=True)]
    return values


def _feature_columns(res: FeatureResult, out: Any) -> None:
    """Append ``res``'s columns to the repeated FeatureColumn field ``out``."""
    # features of one view share one status list: encode it once, merge it into each column
    shared: dict[int, pb.FeatureColumn] = {}
    for name, values in res.columns.items():
        st = res.statuses.get(name)
        tmpl = None
        if st:
            tmpl = shared.get(id(st))
            if tmpl is None:
                tmpl = shared[id(st)] = pb.FeatureColumn(statuses=[_STATUS[s] for s in st])
        to_column(name, values, tmpl, into=out.add())


class FeatureServingServicer(pb_grpc.FeatureServingServicer):
    """Every RPC maps engine errors to gRPC status codes with the same messages as REST."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def _fail(self, context: grpc.aio.ServicerContext, exc: BaseException) -> None:
        from featurestore.online.serving.rest import _status_of

        if isinstance(exc, FeatureStoreError):
            await context.abort(
                _HTTP_TO_GRPC.get(_status_of(exc), grpc.StatusCode.INTERNAL), str(exc)
            )
        log.exception("unhandled gRPC error")
        await context.abort(
            grpc.StatusCode.INTERNAL, f"internal error ({type(exc).__name__}); see the server log"
        )

    async def GetOnlineFeatures(self, request: Any, context: Any) -> Any:
        try:
            res = await self.engine.aget_features(
                features=list(request.features) or None,
                feature_service=request.feature_service or None,
                entities=_columns(request.entities, "entities"),
                request_data=_columns(request.request_data, "request_data") or None,
                full_feature_names=request.full_feature_names,
                include_event_timestamps=request.include_event_timestamps,
                deadline_ms=request.deadline_ms or None,
            )
            out = pb.GetOnlineFeaturesResponse(degraded=res.degraded)
            _feature_columns(res, out.columns)
            return out
        except Exception as exc:
            await self._fail(context, exc)

    async def Predict(self, request: Any, context: Any) -> Any:
        try:
            if not request.model:
                raise BadRequestError("model is required", field="model")
            res = await self.engine.apredict(
                request.model,
                entities=_columns(request.entities, "entities"),
                request_data=_columns(request.request_data, "request_data") or None,
                return_features=request.return_features,
                deadline_ms=request.deadline_ms or None,
            )
            out = pb.PredictResponse(
                model=res.model, version=res.version, scores=res.scores, degraded=res.degraded
            )
            if res.features is not None:
                _feature_columns(res.features, out.features)
            return out
        except Exception as exc:
            await self._fail(context, exc)

    async def Push(self, request: Any, context: Any) -> Any:
        try:
            n = await self.engine.apush(
                request.feature_view,
                _columns(request.rows, "rows"),
                deadline_ms=request.deadline_ms or None,
            )
            return pb.PushResponse(rows_written=n)
        except Exception as exc:
            await self._fail(context, exc)

    async def Live(self, request: Any, context: Any) -> Any:
        return pb.HealthResponse(live=True, ready=False, detail="{}")  # see Ready for readiness

    async def Ready(self, request: Any, context: Any) -> Any:
        import asyncio

        h = await asyncio.to_thread(self.engine.health)
        return pb.HealthResponse(live=True, ready=h["ready"], detail=json.dumps(h))

    async def ListFeatureServices(self, request: Any, context: Any) -> Any:
        return pb.ListFeatureServicesResponse(
            feature_services=[
                pb.FeatureServiceInfo(
                    name=s["name"], features=s["features"], description=s.get("description", "")
                )
                for s in self.engine.feature_services()
            ]
        )

    async def ListModels(self, request: Any, context: Any) -> Any:
        import asyncio

        out = []
        for m in await asyncio.to_thread(self.engine.list_models):
            aliases = {k: a["version"] for k, a in m["aliases"].items()}
            canary = m["aliases"].get("canary", {}).get("share") or 0.0
            prod = m["aliases"].get("production", {}).get("version")
            svc = next((v["feature_service"] for v in m["versions"] if v["version"] == prod), "")
            out.append(
                pb.ModelInfo(
                    name=m["name"],
                    versions=[v["version"] for v in m["versions"]],
                    aliases=aliases,
                    canary_share=canary,
                    feature_service=svc,
                    loaded_version=(m["loaded"] or {}).get("production") or 0,
                )
            )
        return pb.ListModelsResponse(models=out)


_METHODS = {
    "GetOnlineFeatures": (pb.GetOnlineFeaturesRequest, pb.GetOnlineFeaturesResponse),
    "Predict": (pb.PredictRequest, pb.PredictResponse),
    "Push": (pb.PushRequest, pb.PushResponse),
    "Live": (pb.HealthRequest, pb.HealthResponse),
    "Ready": (pb.HealthRequest, pb.HealthResponse),
    "ListFeatureServices": (pb.ListFeatureServicesRequest, pb.ListFeatureServicesResponse),
    "ListModels": (pb.ListModelsRequest, pb.ListModelsResponse),
}


def _handlers(servicer: FeatureServingServicer) -> grpc.GenericRpcHandler:
    """Handlers that parse the request bytes themselves, so a corrupt message is an
    INVALID_ARGUMENT naming the message type (grpc's own deserializer would answer UNKNOWN)."""
    from google.protobuf.message import DecodeError

    def wrap(name: str, req_type: Any) -> Any:
        method = getattr(servicer, name)

        async def handle(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
            try:
                request = req_type.FromString(raw)
            except DecodeError as exc:
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"malformed {req_type.DESCRIPTOR.name} protobuf: {exc}",
                )
            return await method(request, context)

        return handle

    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            name: grpc.unary_unary_rpc_method_handler(
                wrap(name, req), response_serializer=resp.SerializeToString
            )
            for name, (req, resp) in _METHODS.items()
        },
    )


async def start_grpc_server(
    engine: Engine, port: int, *, host: str = "127.0.0.1"
) -> tuple[Any, int]:
    """Start a grpc.aio server on ``host:port`` (0: a free port); returns (server, bound port)."""
    server = grpc.aio.server(options=[("grpc.so_reuseport", 1)])
    server.add_generic_rpc_handlers((_handlers(FeatureServingServicer(engine)),))
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"gRPC server cannot bind {host}:{port}")
    await server.start()
    return server, bound
