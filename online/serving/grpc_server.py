"""The gRPC server (grpc.aio) over the shared engine; protobuf only at this edge."""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import grpc

from featurestore.errors import FeatureStoreError
from featurestore.online.models.errors import without_paths
from featurestore.online.serving._fast_rest import KEY_GRANT, require_features_scope
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
from featurestore.online.serving.auth import (
    GRPC_OPEN,
    GRPC_SCOPES,
    AuthenticationError,
    KeyRing,
    PermissionDeniedError,
    bearer,
    keyring_for,
    valid_request_id,
)
from featurestore.online.serving.context import CALLER, REQUEST_ID, new_request_id
from featurestore.online.serving.errors import BadRequestError
from featurestore.online.serving.grpc_health import HealthReporter
from featurestore.online.serving.metrics import GRPC_ENDPOINTS
from featurestore.online.serving.tls import grpc_credentials

if TYPE_CHECKING:
    from featurestore.online.serving.engine import Engine

__all__ = [
    "SERVICE",
    "FeatureServingServicer",
    "GrpcBindError",
    "GrpcServer",
    "column_values",
    "from_value",
    "grpc_address",
    "start_grpc_server",
    "to_column",
    "to_value",
]

log = logging.getLogger("featurestore.serving")

SERVICE = "featurestore.serving.v1.FeatureServing"
_HTTP_TO_GRPC = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
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

    async def _fail(
        self, context: grpc.aio.ServicerContext, exc: BaseException, endpoint: str | None = None
    ) -> None:
        """Abort the call with ``exc``'s status; with ``endpoint``, counted in the metrics."""
        from featurestore.online.serving.rest import _status_of

        if isinstance(exc, FeatureStoreError):
            status = _status_of(exc)
            if endpoint is not None:
                self.engine.metrics.failed(endpoint, status)
            code = _HTTP_TO_GRPC.get(status, grpc.StatusCode.INTERNAL)
            await context.abort(code, without_paths(str(exc)))  # as REST: no server paths
        if endpoint is not None:
            self.engine.metrics.failed(endpoint, 500)
        log.exception("unhandled gRPC error")
        await context.abort(
            grpc.StatusCode.INTERNAL, f"internal error ({type(exc).__name__}); see the server log"
        )

    async def GetOnlineFeatures(self, request: Any, context: Any) -> Any:
        try:
            res = await self.engine.aget_features(
                features=list(request.features) or None,
                feature_service=request.feature_service or None,
                entities=read_columns(request.entities, "entities", keys=True),
                request_data=read_columns(request.request_data, "request_data") or None,
                full_feature_names=request.full_feature_names,
                include_event_timestamps=request.include_event_timestamps,
                deadline_ms=request.deadline_ms or None,
            )
            return encode_features_response(res)  # wire bytes: see _handlers
        except Exception as exc:
            await self._fail(context, exc, "get_features")

    async def Predict(self, request: Any, context: Any) -> Any:
        try:
            if not request.model:
                raise BadRequestError("model is required", field="model")
            if request.return_features or request.explain:
                require_features_scope(request.return_features)
            res = await self.engine.apredict(
                request.model,
                entities=read_columns(request.entities, "entities", keys=True),
                request_data=read_columns(request.request_data, "request_data") or None,
                return_features=request.return_features,
                deadline_ms=request.deadline_ms or None,
                explain=request.explain,
            )
            return encode_predict_response(res)  # wire bytes: see _handlers
        except Exception as exc:
            await self._fail(context, exc, "predict")

    async def Push(self, request: Any, context: Any) -> Any:
        try:
            keys = self.engine.join_keys(request.feature_view)  # their timestamps are refused
            rows: dict[str, list[Any]] = {}
            for name, col in request.rows.items():
                rows.update(read_columns({name: col}, "rows", keys=name in keys))
            n = await self.engine.apush(
                request.feature_view,
                rows,
                to=request.to or "online",
                deadline_ms=request.deadline_ms or None,
            )
            return pb.PushResponse(rows_written=n)
        except Exception as exc:  # (a disk that refuses the offline file is a 500: INTERNAL)
            await self._fail(context, exc, "push")

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
        """Every model; one whose index cannot be read is listed by name (and its loaded
        version, if any) with its error in an ``x-model-error`` trailing metadata entry."""
        import asyncio

        out = []
        broken = []
        for m in await asyncio.to_thread(self.engine.list_models):
            if "error" in m:  # a corrupt index: listed by name, the reason in the trailers
                text = f"{m['name']}: {m['error']}"[:1000]
                broken.append(("x-model-error", text.encode("ascii", "replace").decode()))
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
                    explainable=bool((m["loaded"] or {}).get("explainable")),
                )
            )
        if broken:
            context.set_trailing_metadata(tuple(broken))
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


def _handlers(
    servicer: FeatureServingServicer, *, keyring: KeyRing | None = None, gate: bool = False
) -> grpc.GenericRpcHandler:
    """Handlers that parse the request bytes themselves, so a corrupt message is an
    INVALID_ARGUMENT naming the message type (grpc's own deserializer would answer UNKNOWN).

    With ``gate`` (or a ``keyring``) each call first gets its request id and, with a key
    ring, has its API key checked (see ``_gated``); without, calls pay nothing for either.
    """
    from google.protobuf.message import DecodeError

    metrics = servicer.engine.metrics

    def wrap(name: str, req_type: Any) -> Any:
        method = getattr(servicer, name)
        endpoint = GRPC_ENDPOINTS.get(name)

        async def handle(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
            try:
                request = req_type.FromString(raw)
            except DecodeError as exc:
                if endpoint is not None:
                    metrics.failed(endpoint, 400)
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"malformed {req_type.DESCRIPTOR.name} protobuf: {exc}",
                )
            return await method(request, context)

        if keyring is None and not gate:
            return handle
        return _gated(
            handle,
            None if name in GRPC_OPEN else keyring,
            GRPC_SCOPES.get(name),
            None if endpoint is None else functools.partial(metrics.failed, endpoint),
        )

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


def _gated(
    handle: Any,
    keyring: KeyRing | None,
    scope: str | None,
    failed: Callable[[int], None] | None = None,
) -> Any:
    """``handle`` behind the request id and (with ``keyring``) the API key check.

    The id is the client's ``x-request-id`` metadata when valid, else (none, or not 1-128
    printable characters without spaces) a fresh one, and goes back in the initial metadata;
    the key comes as ``authorization: Bearer KEY`` or ``x-api-key: KEY`` (UNAUTHENTICATED when
    missing or unknown, PERMISSION_DENIED without ``scope``: the same messages as REST).
    ``failed(status)`` counts a refusal (401, 403) in the metrics.
    """

    async def gated(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
        client_id = authorization = api_key = None
        for item in context.invocation_metadata() or ():
            key, value = item
            if key == "x-request-id":
                client_id = value if client_id is None else client_id
            elif key == "authorization":
                authorization = value
            elif key == "x-api-key":
                api_key = value
        ok_id = client_id is not None and valid_request_id(client_id)
        request_id = client_id if ok_id else new_request_id()
        await context.send_initial_metadata((("x-request-id", request_id),))
        caller = grant = None
        if keyring is not None:
            key = bearer(authorization) or api_key
            try:
                caller = keyring.authorize(key, scope).name
                grant = (keyring, key)
            except AuthenticationError as exc:
                if failed is not None:
                    failed(401)
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
            except PermissionDeniedError as exc:
                if failed is not None:
                    failed(403)
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
        id_token = REQUEST_ID.set(request_id)
        caller_token = CALLER.set(caller)
        grant_token = KEY_GRANT.set(grant)
        try:
            return await handle(raw, context)
        finally:
            KEY_GRANT.reset(grant_token)
            CALLER.reset(caller_token)
            REQUEST_ID.reset(id_token)

    return gated


class GrpcBindError(FeatureStoreError):
    """The gRPC server cannot listen on its host and port (one line, naming both)."""


def grpc_address(host: str, port: int) -> str:
    """``host:port`` as gRPC takes it: an IPv6 literal in brackets (``[::1]:50051``)."""
    if ":" in host and not host.startswith("["):
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def _bind_failure(host: str, port: int) -> str:
    """Why ``host:port`` cannot be listened on, from a plain socket's bind (gRPC only says that
    it failed)."""
    from featurestore.online.serving._bind import bound_socket

    try:
        bound_socket(host, port).close()
    except OSError as exc:  # a host that does not resolve too (socket.gaierror)
        return str(exc.strerror)
    return "gRPC refused the address"


class GrpcServer:
    """A started gRPC server with its health service (see grpc_health)."""

    def __init__(self, server: Any, health: HealthReporter) -> None:
        self.server = server
        self.health = health

    async def not_serving(self) -> None:
        """Every health status NOT_SERVING for good, the server still answering calls: what a
        draining server shows before it stops."""
        await self.health.close()

    async def stop(self, grace: float | None) -> None:
        """Every health status NOT_SERVING, then stop: no new calls, and ``grace`` seconds for
        the calls in flight to finish before they are cancelled."""
        await self.health.close()
        await self.server.stop(grace)


async def start_grpc_server(
    engine: Engine, port: int, *, host: str = "127.0.0.1", keyring: KeyRing | None = None
) -> tuple[GrpcServer, int]:
    """Start a grpc.aio server on ``host:port`` (0: a free port), over TLS when the engine's
    config asks for it; returns (server, bound port). It also serves the standard health
    service (grpc.health.v1) and reflection.

    With ``serving.auth`` on, calls are checked against ``keyring`` (default: one loaded from
    the keys file here); with auth or the audit log on, every call gets a request id.
    A host and port it cannot listen on is a GrpcBindError.
    """
    if keyring is None:
        keyring = keyring_for(engine)
    gate = keyring is not None or engine.config.audit is not None
    server = grpc.aio.server(options=[("grpc.so_reuseport", 1)])
    servicer = FeatureServingServicer(engine)
    server.add_generic_rpc_handlers((_handlers(servicer, keyring=keyring, gate=gate),))
    health = HealthReporter(engine, SERVICE)
    await health.add_to(server)
    tls = engine.config.tls
    address = grpc_address(host, port)
    try:
        if tls is None:
            bound = server.add_insecure_port(address)
        else:
            creds = grpc_credentials(tls, engine.store.config.resolve)
            bound = server.add_secure_port(address, creds)
    except RuntimeError:  # grpc's "Failed to bind to address ...": no reason given
        bound = 0
    if bound == 0:
        raise GrpcBindError(
            f"the gRPC server cannot listen on {address}: {_bind_failure(host, port)}; pick "
            "another with --host / --grpc-port or serving.host / serving.grpc_port"
        )
    await server.start()
    health.start()
    return GrpcServer(server, health), bound
