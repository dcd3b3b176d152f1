"""The hot REST routes (get features, predict) answered before FastAPI's router.

FastAPI's routing, dependency solving and request objects cost about as much per request as
the whole feature lookup. This ASGI middleware answers ``POST /get-online-features`` and
``POST /predict`` itself when the request is well formed: a JSON content type and a body that
validates against the route's pydantic model (the same model the OpenAPI spec is built from,
validated by pydantic-core straight from the bytes). Anything else (another content type, bad
JSON, a body that does not validate) is handed to FastAPI with the body replayed, so error
answers come from the one place that makes them.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel, ValidationError

from featurestore.errors import FeatureStoreError

log = logging.getLogger("featurestore.serving")

Handler = Callable[[Any], Awaitable[bytes]]
ErrorBody = Callable[[BaseException], tuple[bytes, int]]
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
    ) -> None:
        self.app = app
        self.routes = routes
        self.error_body = error_body

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
        except Exception as exc:
            log.exception("unhandled error on %s", scope["path"])
            out, status = self.error_body(exc)
        await _answer(send, status, out)


class AnswerErrors:
    """ASGI middleware: an unexpected exception under it becomes the JSON 500 answer here.

    Starlette's outermost error middleware would answer it too, but then re-raises, and uvicorn
    closes the connection of an app that raised: a client's next request on that kept-alive
    connection would fail. Answered here, the connection stays open.
    """

    def __init__(self, app: Any, *, error_body: ErrorBody) -> None:
        self.app = app
        self.error_body = error_body

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
            await _answer(send, status, body)


async def _answer(send: Any, status: int, body: bytes) -> None:
    """Send a complete JSON answer."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*_JSON_HEADERS, (b"content-length", b"%d" % len(body))],
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
