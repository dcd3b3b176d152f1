"""The hot REST routes (get features, predict) answered before FastAPI's router.

FastAPI's routing, dependency solving and request objects cost about as much per request as
the whole feature lookup. This ASGI middleware answers ``POST /get-online-features`` and
``POST /predict`` itself when the request is well formed: a JSON content type and a body that
validates against the route's pydantic model (the same model the OpenAPI spec is built from,
validated by pydantic-core straight from the bytes). Anything else (another content type, bad
JSON, a body that does not validate) is handed to FastAPI with the body replayed, so error
answers come from the one place that makes them.

``RequestGate`` sits outside them all (installed only when auth or the audit log is on): it
gives every request its id and, with API keys on, lets through only keys with the route's scope.

Each of them reports the errors it answers to ``failed(path, status)`` (the metrics), so
failed requests are counted on their own path and a successful one pays nothing for it.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any

from pydantic import BaseModel, ValidationError

from featurestore.errors import FeatureStoreError
from featurestore.online.serving.auth import (
    OPEN_REQUEST_PATHS,
    REST_SCOPES,
    AuthenticationError,
    KeyRing,
    PermissionDeniedError,
    bearer,
    valid_request_id,
)
from featurestore.online.serving.context import CALLER, REQUEST_ID, new_request_id

log = logging.getLogger("featurestore.serving")

Handler = Callable[[Any], Awaitable[bytes]]
ErrorBody = Callable[[BaseException], tuple[bytes, int]]
Failed = Callable[[str, int], None]  # (request path, status) of an error answer

# with API keys on: the request's key ring and key, for a scope its body asks for beyond its
# route's (see require_scope); set by RequestGate and by the gRPC server's gate
KEY_GRANT: ContextVar[tuple[KeyRing, str | bytes] | None] = ContextVar(
    "featurestore_key_grant", default=None
)


def require_scope(scope: str, why: str) -> None:
    """With API keys on, a PermissionDeniedError unless the request's key also holds ``scope``
    (``why``: what in the request needs it, said first); nothing with keys off."""
    grant = KEY_GRANT.get()
    if grant is None:
        return
    keyring, key = grant
    try:
        keyring.authorize(key, scope)
    except PermissionDeniedError as exc:
        raise PermissionDeniedError(f"{why} needs scope '{scope}': {exc}") from None


def require_features_scope(return_features: bool) -> None:
    """A predict that returns feature values, or explanations, needs the ``features`` scope
    too: an explanation is computed from the values (a linear model's is each value times
    its weight), so it gives them away as surely as return_features does."""
    require_scope("features", "predict with return_features" if return_features else "explain")


def _ignore(path: str, status: int) -> None:
    """The default ``failed``: count nothing."""


_JSON_HEADERS = [(b"content-type", b"application/json")]


def _is_json(scope: dict[str, Any]) -> bool:
    for name, value in scope["headers"]:
        if name == b"content-type":
            kind = value.split(b";", 1)[0].strip().lower()
            return kind == b"application/json" or (
                kind.startswith(b"application/") and kind.endswith(b"+json")
            )
    return False  # FastAPI requires a JSON content type: let it say so


class HotRoutes:
    """ASGI middleware: ``routes`` maps a POST path to (request model, handler -> JSON bytes)."""

    def __init__(
        self,
        app: Any,
        *,
        routes: dict[str, tuple[type[BaseModel], Handler]],
        error_body: ErrorBody,
        failed: Failed = _ignore,
    ) -> None:
        self.app = app
        self.routes = routes
        self.error_body = error_body
        self.failed = failed

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        route = self.routes.get(scope["path"]) if scope["type"] == "http" else None
        if route is None or scope["method"] != "POST" or not _is_json(scope):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        model, handler = route
        try:
            request = model.model_validate_json(body)
        except ValidationError:
            await self.app(scope, _replay(body, receive), send)
            return
        status = 200
        try:
            out = await handler(request)
        except FeatureStoreError as exc:
            out, status = self.error_body(exc)
            self.failed(scope["path"], status)
        except Exception as exc:
            log.exception("unhandled error on %s", scope["path"])
            out, status = self.error_body(exc)
            self.failed(scope["path"], status)
        await _answer(send, status, out)


class AnswerErrors:
    """ASGI middleware: an unexpected exception under it becomes the JSON 500 answer here.

    Starlette's outermost error middleware would answer it too, but then re-raises, and uvicorn
    closes the connection of an app that raised: a client's next request on that kept-alive
    connection would fail. Answered here, the connection stays open.
    """

    def __init__(self, app: Any, *, error_body: ErrorBody, failed: Failed = _ignore) -> None:
        self.app = app
        self.error_body = error_body
        self.failed = failed

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: dict[str, Any]) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:
            if started:  # half an answer is out: all that is left is to drop the connection
                raise
            log.exception("unhandled error on %s", scope["path"])
            body, status = self.error_body(exc)
            self.failed(scope["path"], status)
            await _answer(send, status, body)


class RequestGate:
    """ASGI middleware, outermost: the request's id, and its API key when ``keyring`` is set.

    The id is the client's ``x-request-id`` when valid, else (none sent, or one that is not
    1-128 printable characters without spaces) a fresh one; it goes back as ``x-request-id``
    on every answer. With a key ring, a request names its key as ``Authorization: Bearer KEY``
    or ``X-API-Key: KEY``: none or an unknown one is a 401, one without the route's scope a
    403 (the health checks and docs need none, with or without a trailing slash). Both land
    in contextvars (REQUEST_ID, CALLER) for the engine, e.g. its audit log.
    """

    def __init__(
        self,
        app: Any,
        *,
        keyring: KeyRing | None,
        error_body: ErrorBody,
        failed: Failed = _ignore,
    ) -> None:
        self.app = app
        self.keyring = keyring
        self.error_body = error_body
        self.failed = failed

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client_id = authorization = api_key = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                client_id = value if client_id is None else client_id
            elif name == b"authorization":
                authorization = value
            elif name == b"x-api-key":
                api_key = value
        if client_id is not None and valid_request_id(client_id):
            request_id = client_id.decode("ascii")
        else:  # none, or one that cannot be echoed safely: an id of ours, never a refusal
            request_id = new_request_id()
        id_header = (b"x-request-id", request_id.encode("ascii"))
        caller = grant = None
        path = scope["path"]
        if self.keyring is not None and path not in OPEN_REQUEST_PATHS:
            key = bearer(authorization) or api_key
            try:
                entry = self.keyring.authorize(key, REST_SCOPES.get(path))
            except (AuthenticationError, PermissionDeniedError) as exc:
                await self._refuse(send, exc, id_header, path)
                return
            caller = entry.name
            grant = (self.keyring, key)

        async def send_with_id(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), id_header]}
            await send(message)

        id_token = REQUEST_ID.set(request_id)
        caller_token = CALLER.set(caller)
        grant_token = KEY_GRANT.set(grant)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            KEY_GRANT.reset(grant_token)
            CALLER.reset(caller_token)
            REQUEST_ID.reset(id_token)

    async def _refuse(self, send: Any, exc: FeatureStoreError, id_header: Any, path: str) -> None:
        body, status = self.error_body(exc)
        self.failed(path, status)
        headers = [id_header]
        if isinstance(exc, AuthenticationError):
            headers.append((b"www-authenticate", b"Bearer"))
        await _answer(send, status, body, headers)


class StartErrors:
    """ASGI middleware: a start that fails on a FeatureStoreError (e.g. a gRPC port it cannot
    listen on) is reported to the server as that error's one line, not as a traceback."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def one_line(message: dict[str, Any]) -> None:
            # sent while the failed start's exception is being handled: that is the one
            exc = sys.exception()
            if message["type"] == "lifespan.startup.failed" and isinstance(exc, FeatureStoreError):
                message = {**message, "message": str(exc)}
            await send(message)

        await self.app(scope, receive, one_line)


async def _answer(send: Any, status: int, body: bytes, headers: Any = ()) -> None:
    """Send a complete JSON answer."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*_JSON_HEADERS, (b"content-length", b"%d" % len(body)), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _replay(body: bytes, receive: Any) -> Any:
    """A ``receive`` that hands out ``body`` once, then defers to the real one."""
    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
