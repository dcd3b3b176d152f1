"""The REST server: FastAPI over the shared engine, orjson responses, errors as ``{"error": ...}``.

``create_app(engine)`` for tests and embedding; ``app_from_env`` is the uvicorn factory
``featurestore serve`` uses (one engine per worker process). The gRPC server, when configured,
runs inside the same event loop, started and stopped by the app's lifespan.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.message
import gc
import logging
import math
import os
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    WithJsonSchema,
)
from starlette.exceptions import HTTPException as StarletteHTTPException

from featurestore._jsonable import json_default
from featurestore.errors import (
    EntityDataError,
    FeatureNotFoundError,
    FeatureStoreError,
    OnlineStoreUnavailableError,
    RegistryError,
)
from featurestore.offline.push import OfflineWriteError
from featurestore.online.models.errors import (
    ModelLoadError,
    ModelNotFoundError,
    ModelPredictError,
    ModelRegistryError,
    without_paths,
)
from featurestore.online.serving._fast_rest import (
    AnswerErrors,
    HotRoutes,
    RequestGate,
    StartErrors,
    require_features_scope,
)
from featurestore.online.serving.auth import (
    OPEN_PATHS,
    AuthenticationError,
    PermissionDeniedError,
    keyring_for,
)
from featurestore.online.serving.config import MAX_DEADLINE_MS
from featurestore.online.serving.context import MAX_REQUEST_ID
from featurestore.online.serving.drain import Drain
from featurestore.online.serving.errors import (
    BadRequestError,
    NotReadyError,
    TooManyEntitiesError,
    UnsupportedMediaTypeError,
)
from featurestore.online.serving.errors import shown as _shown  # the wording every transport uses
from featurestore.online.serving.metrics import REST_ENDPOINTS

if TYPE_CHECKING:
    from featurestore.online.serving.engine import Engine
    from featurestore.online.serving.results import FeatureResult

log = logging.getLogger("featurestore.serving")

# join-key columns: any JSON values, checked by the engine, so a wrong key reads as over gRPC
# (one message, in the same order as the other checks); the spec still says ints or strings
KeyColumns = Annotated[
    dict[StrictStr, list[Any]],
    WithJsonSchema(
        {
            "type": "object",
            "additionalProperties": {
                "type": "array",
                "items": {"anyOf": [{"type": "integer"}, {"type": "string"}]},
            },
        }
    ),
]
Scalar = StrictBool | StrictInt | StrictFloat | StrictStr | None
AnyValue = Scalar | list[StrictBool | StrictInt | StrictFloat]
# a pushed array may hold the strings answers use for NaN and infinities ("NaN", "Infinity")
PushValue = Scalar | list[StrictBool | StrictInt | StrictFloat | StrictStr]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GetOnlineFeaturesRequest(_Body):
    """Features by ``features`` refs or by ``feature_service``, for a batch of entities."""

    features: list[StrictStr] | None = Field(None, description="'view:feature' references")
    feature_service: StrictStr | None = None
    entities: KeyColumns = Field(
        ..., description="join key -> one value per entity", examples=[{"user_id": [1, 2]}]
    )
    request_data: dict[StrictStr, list[AnyValue]] | None = None
    full_feature_names: StrictBool = False
    include_event_timestamps: StrictBool = False
    deadline_ms: float | None = Field(None, gt=0, le=MAX_DEADLINE_MS)


class PredictRequest(_Body):
    """Score a batch of entities with model ``NAME``, ``NAME@ALIAS`` or ``NAME@VERSION``."""

    model: StrictStr = Field(..., examples=["fraud", "fraud@canary", "fraud@2"])
    entities: KeyColumns
    request_data: dict[StrictStr, list[AnyValue]] | None = None
    return_features: StrictBool = False
    deadline_ms: float | None = Field(None, gt=0, le=MAX_DEADLINE_MS)
    explain: StrictBool = Field(False, description="also each feature's contribution to each score")


class PushRequest(_Body):
    """Rows for one feature view: join keys, every feature, optional ``event_timestamp``."""

    feature_view: StrictStr
    rows: dict[StrictStr, list[PushValue]] = Field(
        ..., description="column -> one value per row (event_timestamp: us since epoch or ISO)"
    )
    to: StrictStr = Field(
        "online",
        description="where the rows go: 'online' (the online store), 'offline' (a new Parquet "
        "file in the view's source folder, seen by training sets and materialize) or "
        "'online_and_offline' (both, the offline file first)",
        examples=["online", "offline", "online_and_offline"],
    )
    deadline_ms: float | None = Field(None, gt=0, le=MAX_DEADLINE_MS)


class ColumnOut(BaseModel):
    values: list[Any]
    statuses: list[str] | None = None


class FeaturesOut(BaseModel):
    feature_names: list[str]
    results: list[ColumnOut]
    degraded: bool


class ExplanationOut(BaseModel):
    """base_values[i] + sum(contributions[i]) is the model's output for entity i in the space
    ``output`` names ("raw": the margin, log-odds for a binary classifier)."""

    output: str
    feature_names: list[str]
    base_values: list[float | None]
    contributions: list[list[float | None]]


class PredictOut(BaseModel):
    model: str
    version: int
    scores: list[float | None]
    degraded: bool
    features: FeaturesOut | None = None
    request_id: str | None = Field(None, description="with serving.audit: its record's id")
    explanation: ExplanationOut | None = None


class PushOut(BaseModel):
    rows_written: int


class ErrorOut(BaseModel):
    error: str


_ERRORS: dict[int, dict[str, Any]] = {
    c: {"model": ErrorOut} for c in (400, 404, 413, 415, 422, 500, 503)
}


_JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
# JSON has no NaN or infinity: they go as these strings, as protobuf's JSON mapping sends them
_NON_FINITE = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


_PLAIN = frozenset({int, str, bool, bytes, type(None)})  # values that are never a float


def _dumps(data: Any) -> bytes:
    """``data`` as JSON (orjson writes a non-finite float as null: callers replace those in
    the values that can hold one first, see ``features_dict`` and ``_finite``)."""
    # json_default runs only for values orjson has no type for (a Bytes feature: base64)
    return orjson.dumps(data, default=json_default, option=_JSON_OPTIONS)


def _finite_column(values: Any) -> Any:
    """A feature column with NaN and +-infinity as their protobuf JSON strings; the column
    itself when it holds none (one C-level pass for a float array or a list of numbers)."""
    if isinstance(values, np.ndarray):
        if values.dtype.kind != "f" or np.isfinite(values).all():
            return values
        return _finite(values.tolist())
    return _finite_list(values)


def _finite_list(values: Any) -> Any:
    """``_finite_column`` for a list (or other sequence) column."""
    try:
        if all(map(math.isfinite, values)):  # numbers only, all finite: the usual column
            return values
    except (TypeError, OverflowError):  # strings, nulls, lists...
        try:  # finite numbers beside nulls (a feature with missing values): still no change
            if all(map(math.isfinite, [v for v in values if v is not None])):
                return values
        except (TypeError, OverflowError):  # look at each value
            pass
    return _finite(values)


def _finite(x: Any, nan: Any = "NaN") -> Any:
    """``x`` with every non-finite float (Python, numpy, inside lists, dicts and arrays)
    replaced by its protobuf JSON string, NaN by ``nan``; everything else is kept as is."""
    if isinstance(x, float):  # numpy float64 scalars too
        if math.isfinite(x):
            return x
        return nan if x != x else _NON_FINITE[repr(float(x))]
    if isinstance(x, np.ndarray):
        if x.dtype.kind == "f" and np.isfinite(x).all():
            return x
        return _finite(x.tolist(), nan) if x.dtype.kind in "fO" else x
    if isinstance(x, np.floating):
        return _finite(float(x), nan)
    if isinstance(x, dict):
        return {k: _finite(v, nan) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        try:
            if all(map(math.isfinite, x)):  # the usual list of scores: one C-level pass
                return x
        except (TypeError, OverflowError):  # not all (float-sized) numbers
            pass
        return [_finite(v, nan) for v in x]
    return x


def features_dict(res: FeatureResult) -> dict[str, Any]:
    """``res.to_dict()`` for orjson, each status list dumped once: the features of one view
    share one list, which plain dumping would write out again for every feature. A NaN or
    infinite value becomes its protobuf JSON string (JSON has neither; orjson writes null)."""
    done: dict[int, Any] = {}
    statuses = res.statuses
    results = []
    columns = res.wire_columns()  # float64 arrays dump exactly as their lists would
    arrays = [v for v in columns.values() if type(v) is np.ndarray and v.dtype.kind == "f"]
    # one pass over every float array says none holds a NaN or an infinity (not a sum: +inf
    # beside -inf, or an overflow, would warn)
    arrays_finite = not arrays or bool(np.isfinite(np.concatenate(arrays)).all())
    for name, values in columns.items():
        st = statuses.get(name)
        if st is not None:  # a feature (join-key columns have no statuses and no floats)
            frag = done.get(id(st))
            if frag is None:
                frag = done[id(st)] = orjson.Fragment(orjson.dumps(st))
            st = frag
            if type(values) is list and len(values) == 1:  # one entity: no call for most
                kind = type(values[0])
                if kind not in _PLAIN and (kind is not float or values[0] - values[0] != 0.0):
                    values = _finite_column(values)  # non-finite float (x - x is NaN), or a list
            elif type(values) is not np.ndarray or not arrays_finite:
                values = _finite_column(values)
        results.append({"values": values, "statuses": st})
    return {"feature_names": list(columns), "results": results, "degraded": res.degraded}


def _raw(body: bytes, status: int = 200) -> Response:
    return Response(body, status_code=status, media_type="application/json")


def _json(data: Any, status: int = 200) -> Response:
    return _raw(_dumps(data), status)


def _error_body(exc: BaseException) -> tuple[bytes, int]:
    """The JSON error answer and status of ``exc`` (what the exception handlers send)."""
    if isinstance(exc, FeatureStoreError):  # any server path left in it: cut to its name
        return _dumps({"error": without_paths(str(exc))}), _status_of(exc)
    return _dumps({"error": f"internal error ({type(exc).__name__}); see the server log"}), 500


def declares_json(content_type: str | None) -> bool:
    """Whether FastAPI parses a body of this Content-Type as JSON: ``application/json`` or
    ``application/*+json``, with any parameters; no Content-Type is not JSON (FastAPI's strict
    content type, which keeps a browser's plain cross-site form posts out)."""
    if not content_type:
        return False
    message = email.message.Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (
        subtype == "json" or subtype.endswith("+json")
    )


def not_json(path: str, content_type: str | None) -> UnsupportedMediaTypeError:
    """The 415 of a POST whose body is not declared JSON, naming its Content-Type."""
    if content_type is None:
        got = "has no Content-Type header"
    else:
        shown = content_type if len(content_type) <= 80 else content_type[:77] + "..."
        got = f"has Content-Type {shown!r}"
    return UnsupportedMediaTypeError(
        f"POST {path} takes a JSON body, but the request {got}; send the body as JSON with "
        "the header Content-Type: application/json",
        field="content-type",
    )


def validation_message(errs: Sequence[Any]) -> str:
    """One line for a body that failed its schema: the first wrong field as a path
    (``request_data.amount[0]``), its value as JSON and what it should be, then how many other
    fields are wrong. A value matching no member of a union yields an error per member (and
    per element of a list member): they count as one problem, shown by the deepest path."""
    problems: dict[str, tuple[str, Any]] = {}  # a value's path -> its deepest error
    for e in errs:
        where = _field_path(e.get("loc", ()))
        cut = where.find("]")
        group = where if cut < 0 else where[: cut + 1]
        seen = problems.get(group)
        if seen is None or len(where) > len(seen[0]):
            problems[group] = (where, e)
    if not problems:
        return "body: invalid request"
    where, first = next(iter(problems.values()))
    more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
    kind = first.get("type", "")
    if kind == "json_invalid":  # FastAPI's: loc (body, character offset), ctx.error the why
        why = (first.get("ctx") or {}).get("error") or "it does not parse"
        loc = first.get("loc", ())
        at = f" at character {loc[-1]}" if loc and isinstance(loc[-1], int) else ""
        return f"the request body is not valid JSON: {why}{at}"
    if kind == "missing":
        return f"{where} is missing{more}"
    if kind == "extra_forbidden":
        return f"{where} is not a field of this request{more}"
    shown = _shown(first.get("input"))
    if where.startswith(("request_data.", "rows.")) and where.endswith("]"):
        if where.count("[") > 1:
            return f"{where} is {shown}; list elements are numbers or booleans{more}"
        return (
            f"{where} is {shown}; values are numbers, strings, booleans, null or lists of "
            f"numbers{more}"
        )
    return f"{where} is {shown}: {first.get('msg', 'invalid')}{more}"


def validation_status(errs: Sequence[Any]) -> int:
    """The status of a body that failed its schema: 400 when it is not JSON at all, else 422
    (a field of the wrong type, missing, unknown or out of range). Join-key values are not
    judged by the schema: the engine refuses a wrong one with a 400, as over gRPC."""
    if any(e.get("type") == "json_invalid" for e in errs):
        return 400
    return 422


def _field_path(loc: Sequence[Any]) -> str:
    """A pydantic error location as ``a.b[0]``, without "body" and without the union member
    tags pydantic puts after a list index (``0, 'int'``): these lists hold no objects."""
    out = ""
    after_index = False
    for part in loc:
        if part == "body" and not out:
            continue
        if isinstance(part, int):
            out += f"[{part}]"
            after_index = True
            continue
        if not after_index:
            out += f".{part}" if out else str(part)
    return out or "body"


def _status_of(exc: BaseException) -> int:
    if isinstance(exc, AuthenticationError):
        return 401
    if isinstance(exc, PermissionDeniedError):
        return 403
    if isinstance(exc, TooManyEntitiesError):
        return 413
    if isinstance(exc, UnsupportedMediaTypeError):
        return 415
    if isinstance(exc, (FeatureNotFoundError, ModelNotFoundError)):
        return 404
    if isinstance(exc, (BadRequestError, EntityDataError)):
        return 400
    if isinstance(exc, (OnlineStoreUnavailableError, NotReadyError, RegistryError, ModelLoadError)):
        return 503
    if isinstance(exc, (ModelPredictError, OfflineWriteError)):  # the server's, not the request's
        return 500
    if isinstance(exc, (ModelRegistryError, FeatureStoreError)):
        return 400
    return 500


def create_app(
    engine: Engine,
    *,
    grpc_port: int | None = None,
    own_engine: bool = False,
    grpc_host: str = "127.0.0.1",
) -> FastAPI:
    """The FastAPI app over ``engine``; starts the engine (and a gRPC server) in its lifespan.

    With ``serving.auth`` on, the keys file is loaded here: a missing or bad one is a
    ConfigError before anything listens.
    """
    grpc_box: dict[str, Any] = {}
    keyring = keyring_for(engine)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from featurestore.online.serving.parent_watch import watch_parent

        watch_parent()  # a worker of `serve --workers N` ends with its supervisor
        # warm before taking traffic: uvicorn accepts (and with several workers, the kernel
        # hands this worker connections) only after startup, so a starting worker answers
        # nothing rather than 503; an engine that cannot start yet (e.g. apply not run)
        # keeps retrying in the background while the server reports not ready
        retry = None if await _try_start(engine) else asyncio.create_task(_start_engine(engine))
        drain = None
        try:  # a gRPC port it cannot bind fails the start: the engine is closed all the same
            if grpc_port is not None:
                from featurestore.online.serving.grpc_server import start_grpc_server

                grpc_box["server"], grpc_box["port"] = await start_grpc_server(
                    engine, grpc_port, host=grpc_host, keyring=keyring
                )
                app.state.grpc_port = grpc_box["port"]
            drain = Drain(engine, grpc_box.get("server"), engine.config.shutdown_grace_s)
            drain.catch_sigterm()
            yield
        finally:
            if retry is not None:
                retry.cancel()
            if drain is not None:
                drain.release()
                await drain.stop_grpc()  # health NOT_SERVING first; a SIGTERM started it
            if own_engine:
                engine.close()

    app = FastAPI(
        title="featurestore serving",
        version="1",
        lifespan=lifespan,
        default_response_class=Response,
    )
    app.state.engine = engine

    def failed(path: str, status: int) -> None:
        """Count an error answer of get features, predict or push (see Metrics.failed)."""
        endpoint = REST_ENDPOINTS.get(path)
        if endpoint is not None:
            engine.metrics.failed(endpoint, status)

    def _failure(request: Request, body: bytes, status: int) -> Response:
        failed(request.scope["path"], status)
        return _raw(body, status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        ctype = request.headers.get("content-type")
        if request.method == "POST" and not declares_json(ctype):
            # FastAPI did not parse the body (so it "is not an object"): say what to fix
            return _failure(request, *_error_body(not_json(request.url.path, ctype)))
        errs = exc.errors()
        return _failure(
            request, _dumps({"error": validation_message(errs)}), validation_status(errs)
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        # e.g. a body that is not UTF-8: the same {"error": ...} shape as every other error
        return _failure(request, _dumps({"error": str(exc.detail)}), exc.status_code)

    @app.exception_handler(FeatureStoreError)
    async def _fs_error(request: Request, exc: FeatureStoreError) -> Response:
        return _failure(request, *_error_body(exc))

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s", request.url.path)
        return _failure(request, *_error_body(exc))

    async def get_features_json(req: GetOnlineFeaturesRequest) -> bytes:
        res = await engine.aget_features(
            features=req.features,
            feature_service=req.feature_service,
            entities=req.entities,
            request_data=req.request_data,
            full_feature_names=req.full_feature_names,
            include_event_timestamps=req.include_event_timestamps,
            deadline_ms=req.deadline_ms,
        )
        return _dumps(features_dict(res))

    async def predict_json(req: PredictRequest) -> bytes:
        if req.return_features or req.explain:
            require_features_scope(req.return_features)
        res = await engine.apredict(
            req.model,
            entities=req.entities,
            request_data=req.request_data,
            return_features=req.return_features,
            deadline_ms=req.deadline_ms,
            explain=req.explain,
        )
        out = res.to_dict()
        # a NaN score (or contribution) is a row the model could not score: null, as documented
        out["scores"] = _finite(out["scores"], None)
        if "explanation" in out:
            out["explanation"] = _finite(out["explanation"], None)
        if res.features is not None:
            out["features"] = features_dict(res.features)
        return _dumps(out)

    @app.post("/get-online-features", response_model=FeaturesOut, responses=_ERRORS)
    async def get_online_features(req: GetOnlineFeaturesRequest) -> Response:
        return _raw(await get_features_json(req))

    @app.post("/predict", response_model=PredictOut, responses=_ERRORS)
    async def predict(req: PredictRequest) -> Response:
        return _raw(await predict_json(req))

    # a start that fails on one of our errors (a gRPC port it cannot bind): one line
    app.add_middleware(StartErrors)
    # an unexpected error is answered inside Starlette's error middleware (see AnswerErrors)
    app.add_middleware(AnswerErrors, error_body=_error_body, failed=failed)
    # well-formed requests to these two skip FastAPI's router (see _fast_rest); the routes
    # above stay for the OpenAPI spec and answer every request the fast path hands back
    app.add_middleware(
        HotRoutes,
        routes={
            "/get-online-features": (GetOnlineFeaturesRequest, get_features_json),
            "/predict": (PredictRequest, predict_json),
        },
        error_body=_error_body,
        failed=failed,
    )

    # outermost, so the fast path is covered too; only with auth or the audit log on, so the
    # default hot path pays nothing for it
    if keyring is not None or engine.config.audit is not None:
        app.add_middleware(RequestGate, keyring=keyring, error_body=_error_body, failed=failed)
        _declare_gate(app, keys=keyring is not None)
    app.state.keyring = keyring

    @app.post("/push", response_model=PushOut, responses=_ERRORS)
    async def push(req: PushRequest) -> Response:
        n = await engine.apush(req.feature_view, req.rows, to=req.to, deadline_ms=req.deadline_ms)
        return _json({"rows_written": n})

    @app.get("/health/live")
    async def live() -> Response:
        return _json({"live": True})

    @app.get("/health/ready", responses={503: {"description": "not ready yet"}})
    async def ready() -> Response:
        h = await asyncio.to_thread(engine.health)
        return _json(h, 200 if h["ready"] else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        body, ctype = engine.metrics.render()
        return Response(body, media_type=ctype)

    @app.get("/feature-services")
    async def feature_services() -> Response:
        return _json({"feature_services": engine.feature_services()})

    @app.get("/models")
    async def models() -> Response:
        return _json({"models": await asyncio.to_thread(engine.list_models)})

    return app


def _declare_gate(app: FastAPI, *, keys: bool) -> None:
    """Show what RequestGate adds in the OpenAPI spec: the ``x-request-id`` header of every
    request and answer and, with ``keys``, the API key schemes on every operation needing one."""
    build = app.openapi
    ref = {"$ref": "#/components/schemas/ErrorOut"}
    rid_doc = (
        f"1-{MAX_REQUEST_ID} printable ASCII characters without spaces; made by the server "
        "when absent or not so"
    )
    rid_param = {
        "name": "x-request-id",
        "in": "header",
        "required": False,
        "description": f"the request's id in the audit log and the answer: {rid_doc}",
        "schema": {"type": "string", "minLength": 1, "maxLength": MAX_REQUEST_ID},
    }
    rid_header = {"description": "the request's id", "schema": {"type": "string"}}

    patched: list[Any] = []

    def openapi() -> dict[str, Any]:
        spec = build()  # cached by FastAPI: patching it in place once is enough
        if patched and patched[0] is spec:
            return spec
        patched[:] = [spec]
        if keys:
            schemes = spec.setdefault("components", {}).setdefault("securitySchemes", {})
            schemes["bearer"] = {"type": "http", "scheme": "bearer", "description": "API key"}
            schemes["apiKey"] = {"type": "apiKey", "in": "header", "name": "X-API-Key"}
        for path, operations in spec.get("paths", {}).items():
            for op in operations.values():
                op.setdefault("parameters", []).append(rid_param)
                responses = op.setdefault("responses", {})
                if keys and path not in OPEN_PATHS:
                    op["security"] = [{"bearer": []}, {"apiKey": []}]
                    for code, what in (("401", "no or unknown API key"), ("403", "scope missing")):
                        responses[code] = {
                            "description": what,
                            "content": {"application/json": {"schema": ref}},
                        }
                for answer in responses.values():
                    answer.setdefault("headers", {})["x-request-id"] = rid_header
        return spec

    app.openapi = openapi  # type: ignore[method-assign]


async def _try_start(engine: Engine) -> bool:
    """Start and warm the engine off the loop (blocking and event-loop paths); False if not yet."""
    try:
        await asyncio.to_thread(engine.start)
        await engine.awarm()
    except Exception as exc:
        log.warning("engine not started yet: %s; retrying every second", exc)
        return False
    _freeze_heap()
    return True


async def _start_engine(engine: Engine) -> None:
    """Retry the engine's start every second until it works (e.g. apply not run yet)."""
    while not await _try_start(engine):
        await asyncio.sleep(1.0)


def _freeze_heap() -> None:
    """Move everything loaded so far (registry, kernels, models, codecs) out of the garbage
    collector's sight: a full collection over it stalls the event loop for 60-90 ms, which
    was the p99 of a loaded server. Objects made later are still collected as usual."""
    gc.collect()
    gc.freeze()


def app_from_env() -> FastAPI:
    """uvicorn factory: repo from ``FEATURESTORE_REPO``, gRPC port ``FEATURESTORE_GRPC_PORT``."""
    from featurestore.online.serving.engine import Engine

    engine = Engine.from_repo(os.environ.get("FEATURESTORE_REPO", "."))
    port = int(os.environ.get("FEATURESTORE_GRPC_PORT", "0") or 0)
    host = os.environ.get("FEATURESTORE_GRPC_HOST", engine.config.host)
    return create_app(engine, grpc_port=port or None, own_engine=True, grpc_host=host)
