"""The gRPC server (grpc.aio) over the shared engine; protobuf only at this edge."""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

import grpc

from featurestore.errors import FeatureStoreError
from featurestore.online.serving._proto import featurestore_pb2 as pb
from featurestore.online.serving._proto import featurestore_pb2_grpc as pb_grpc
from featurestore.online.serving._wire import (
    column_values,
    encode_features_response,
    encode_predict_response,
    from_value,
    read_columns,
    to_column,
    to_value,
)
from featurestore.online.serving.errors import BadRequestError

if TYPE_CHECKING:
    from featurestore.online.serving.engine import Engine

__all__ = [
    "SERVICE",
    "FeatureServingServicer",
    "column_values",
    "from_value",
    "start_grpc_server",
    "to_column",
    "to_value",
]

log = logging.getLogger("featurestore.serving")

SERVICE = "featurestore.serving.v1.FeatureServing"
_HTTP_TO_GRPC = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
    500: grpc.StatusCode.INTERNAL,
}


class FeatureServingServicer(pb_grpc.FeatureServingServicer):
    """Every RPC maps engine errors to gRPC status codes with the same messages as REST.

    GetOnlineFeatures and Predict return the response's wire bytes (written by ``_wire``, far
    cheaper than protobuf objects), so register the servicer with ``_handlers`` (which passes
    those bytes through), not with the generated ``add_FeatureServingServicer_to_server``.
    """

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
                entities=read_columns(request.entities, "entities"),
                request_data=read_columns(request.request_data, "request_data") or None,
                full_feature_names=request.full_feature_names,
                include_event_timestamps=request.include_event_timestamps,
                deadline_ms=request.deadline_ms or None,
            )
            return encode_features_response(res)  # wire bytes: see _handlers
        except Exception as exc:
            await self._fail(context, exc)

    async def Predict(self, request: Any, context: Any) -> Any:
        try:
            if not request.model:
                raise BadRequestError("model is required", field="model")
            res = await self.engine.apredict(
                request.model,
                entities=read_columns(request.entities, "entities"),
                request_data=read_columns(request.request_data, "request_data") or None,
                return_features=request.return_features,
                deadline_ms=request.deadline_ms or None,
            )
            return encode_predict_response(res)  # wire bytes: see _handlers
        except Exception as exc:
            await self._fail(context, exc)

    async def Push(self, request: Any, context: Any) -> Any:
        try:
            n = await self.engine.apush(
                request.feature_view,
                read_columns(request.rows, "rows"),
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


# these servicer methods return the response's wire bytes (built by _wire), passed through as is
_RAW_RESPONSES = frozenset({"GetOnlineFeatures", "Predict"})


def _raw(b: bytes) -> bytes:
    return b


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
                wrap(name, req),
                response_serializer=_raw if name in _RAW_RESPONSES else resp.SerializeToString,
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
