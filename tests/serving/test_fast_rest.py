"""The hot REST routes answered before FastAPI: same answers as FastAPI's own routes, or handed on.

Two apps over one engine, each behind a real uvicorn: ``fast`` is ``create_app`` as shipped
(HotRoutes in front), ``plain`` is the same app with HotRoutes taken out of its middleware. Every
request goes to both; status, content type and body must be byte-for-byte equal, and counters on
the fast app show which requests the middleware answered itself and which it handed to FastAPI.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from featurestore.online.serving._fast_rest import HotRoutes
from tests.serving.conftest import ServerThread, expected_user, make_repo

GF = "/get-online-features"
PR = "/predict"
JSON = {"content-type": "application/json"}


@dataclass
class Counters:
    """Requests the middleware answered (``fast``) and the ones it handed to FastAPI."""

    fast: list[str] = field(default_factory=list)
    handed: list[str] = field(default_factory=list)


def _find_hot(app: Any) -> HotRoutes:
    node = app.middleware_stack
    while not isinstance(node, HotRoutes):
        node = node.app  # every middleware in the stack keeps the next one as .app
    return node


def _instrument(app: Any) -> Counters:
    """Build the stack now and count what passes through HotRoutes (both ways)."""
    if app.middleware_stack is None:
        app.middleware_stack = app.build_middleware_stack()
    hot = _find_hot(app)
    seen = Counters()

    def counted(path: str, handler: Any) -> Any:
        async def run(req: Any) -> bytes:
            seen.fast.append(path)
            return await handler(req)

        return run

    hot.routes = {p: (model, counted(p, h)) for p, (model, h) in hot.routes.items()}
    inner = hot.app

    async def handed(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            seen.handed.append(scope["path"])
        await inner(scope, receive, send)

    hot.app = handed
    return seen


@dataclass
class Pair:
    fast: ServerThread
    plain: ServerThread
    seen: Counters
    engine: Any
    fast_client: httpx.Client
    plain_client: httpx.Client

    def both(
        self, method: str, path: str, content: Any = None, headers: dict | None = None
    ) -> tuple[httpx.Response, str]:
        """(the fast app's answer, which path answered); asserts the plain app's is the same."""
        n_fast, n_handed = len(self.seen.fast), len(self.seen.handed)
        a = self.fast_client.request(method, path, content=content, headers=headers)
        b = self.plain_client.request(method, path, content=content, headers=headers)
        if b.status_code == 500:  # uvicorn closes the connection after an app exception
            self.plain_client.close()
            self.plain_client = httpx.Client(base_url=self.plain.url, timeout=10)
        assert a.status_code == b.status_code, (a.text, b.text)
        assert a.content == b.content
        assert a.headers.get("content-type") == b.headers.get("content-type")
        took = (len(self.seen.fast) - n_fast, len(self.seen.handed) - n_handed)
        assert took in ((1, 0), (0, 1), (0, 0)), took
        return a, {(1, 0): "fast", (0, 1): "fastapi", (0, 0): "none"}[took]


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    from featurestore.online.serving.engine import Engine
    from featurestore.online.serving.rest import create_app

    repo = make_repo(tmp_path_factory.mktemp("fast_rest") / "repo")
    engine = Engine.from_repo(str(repo))
    fast_app = create_app(engine)
    plain_app = create_app(engine)
    plain_app.user_middleware = [m for m in plain_app.user_middleware if m.cls is not HotRoutes]
    assert len(plain_app.user_middleware) == len(fast_app.user_middleware) - 1
    seen = _instrument(fast_app)
    fast = ServerThread(fast_app).start()
    plain = ServerThread(plain_app).start()
    try:
        with (
            httpx.Client(base_url=fast.url, timeout=10) as fc,
            httpx.Client(base_url=plain.url, timeout=10) as pc,
        ):
            pair = Pair(fast, plain, seen, engine, fc, pc)
            yield pair
            pair.plain_client.close()
    finally:
        fast.stop()
        plain.stop()
        engine.close()


def _cols(body: dict) -> dict:
    return {n: r for n, r in zip(body["feature_names"], body["results"], strict=True)}


def _dump(obj: Any) -> bytes:
    return json.dumps(obj).encode()


ENT = {"user_id": [1, 2, 10_000], "merchant_id": [3, 3, 1]}


# ---- well-formed requests: answered by the middleware, same bytes as FastAPI -------------------


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (GF, {"feature_service": "everything", "entities": ENT}),
        (
            GF,
            {
                "features": ["user_stats:amount_mean", "merchant_stats:risk"],
                "entities": ENT,
                "full_feature_names": True,
                "include_event_timestamps": True,
                "deadline_ms": 500,
            },
        ),
        (GF, {"feature_service": "scoring", "entities": {"user_id": [7], "merchant_id": [1]}}),
        (PR, {"model": "fraud", "entities": ENT}),
        (PR, {"model": "fraud@2", "entities": ENT, "return_features": True}),
    ],
)
def test_well_formed_requests_are_answered_by_the_middleware(
    pair: Pair, path: str, body: dict
) -> None:
    r, who = pair.both("POST", path, _dump(body), JSON)
    assert who == "fast" and r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    assert int(r.headers["content-length"]) == len(r.content)
    out = r.json()
    cols = _cols(out.get("features") or out) if path == GF or body.get("return_features") else {}
    want = {1: expected_user(1)["tx_count"], 2: expected_user(2)["tx_count"], 7: 70}
    for name in ("tx_count", "user_stats__tx_count"):
        if name in cols:
            ids = [int(u) for u in body["entities"]["user_id"]]
            assert cols[name]["values"] == [want.get(u, 0) for u in ids]


@pytest.mark.parametrize(
    "ctype",
    [
        "application/json; charset=utf-8",
        "Application/JSON",
        "application/vnd.featurestore+json",
        "application/json ; charset=utf-8",
    ],
)
def test_json_content_types_take_the_fast_path(pair: Pair, ctype: str) -> None:
    body = _dump({"feature_service": "scoring", "entities": ENT})
    r, who = pair.both("POST", GF, body, {"content-type": ctype})
    assert (who, r.status_code) == ("fast", 200)


# ---- engine errors: answered by the middleware with the exception handlers' JSON ---------------


@pytest.mark.parametrize(
    ("path", "body", "status", "needle"),
    [
        (GF, {"feature_service": "nope", "entities": {"user_id": [1]}}, 404, "nope"),
        (
            GF,
            {
                "feature_service": "scoring",
                "entities": {"user_id": list(range(1001)), "merchant_id": [1] * 1001},
            },
            413,
            "limit",
        ),
        (GF, {"feature_service": "everything", "entities": {"user_id": [1]}}, 400, "merchant_id"),
        (GF, {"entities": {"user_id": [1]}}, 400, "exactly one"),
        (PR, {"model": "ghost", "entities": ENT}, 404, "ghost"),
        (PR, {"model": "fraud", "entities": {"user_id": [1]}}, 400, "merchant_id"),
        (PR, {"model": "fraud@9", "entities": ENT}, 404, "version 9"),
        # a join-key value of the wrong type: the engine's 400, as over gRPC (and as one of
        # the wrong kind); the schema leaves key values to the engine
        (
            GF,
            {"feature_service": "scoring", "entities": {"user_id": [1.5], "merchant_id": [1]}},
            400,
            "entities.user_id[0] is 1.5 (float); join keys are ints or strings",
        ),
        (
            PR,
            {"model": "fraud", "entities": {"user_id": [1.0], "merchant_id": [1]}},
            400,
            "entities.user_id[0] is 1.0 (float); join keys are ints or strings",
        ),
    ],
)
def test_engine_errors_are_the_same_json_and_status(
    pair: Pair, path: str, body: dict, status: int, needle: str
) -> None:
    r, who = pair.both("POST", path, _dump(body), JSON)
    assert who == "fast"
    assert r.status_code == status and needle in r.json()["error"], r.text
    assert set(r.json()) == {"error"}


# ---- anything else: handed to FastAPI (with the body replayed), which makes the answer ------------

VALID = _dump({"feature_service": "scoring", "entities": ENT})


@pytest.mark.parametrize(
    ("content", "headers", "status"),
    [
        (b"{not json", JSON, 400),  # not JSON at all: a bad request, as a body not UTF-8
        (b"", JSON, 422),
        (b"[1, 2]", JSON, 422),
        (b"null", JSON, 422),
        (_dump({"feature_service": 3, "entities": ENT}), JSON, 422),
        (_dump({"feature_service": "scoring", "entities": ENT, "bogus": 1}), JSON, 422),
        (_dump({"feature_service": "scoring", "entities": ENT, "deadline_ms": -1}), JSON, 422),
        (_dump({"feature_service": "scoring", "entities": ENT, "deadline_ms": 1e9}), JSON, 422),
        (VALID, {}, 415),  # no content type: refused, naming the header (not read as JSON)
        (VALID, {"content-type": "text/plain"}, 415),
        (VALID, {"content-type": "application/x-www-form-urlencoded"}, 415),
        (VALID, {"content-type": "application/json+xml"}, 415),
        (b"\xef\xbb\xbf" + VALID, JSON, 200),  # a UTF-8 BOM: python's json reads it
        (VALID.decode().encode("utf-16"), JSON, 200),  # so is UTF-16
        (b'{"feature_service": "\\ud800", "entities": {"user_id": [1]}}', JSON, None),
    ],
)
def test_malformed_requests_are_handed_to_fastapi(
    pair: Pair, content: bytes, headers: dict, status: int | None
) -> None:
    r, who = pair.both("POST", GF, content, headers)
    assert who == "fastapi"
    if status is not None:
        assert r.status_code == status, r.text
    if r.status_code != 200:
        assert "error" in r.json() and "Traceback" not in r.text


def test_other_methods_and_paths_pass_through(pair: Pair) -> None:
    r, who = pair.both("GET", PR)
    assert (who, r.status_code) == ("fastapi", 405)
    r, who = pair.both("PUT", GF, VALID, JSON)
    assert (who, r.status_code) == ("fastapi", 405)
    r, who = pair.both("GET", "/health/live")
    assert (who, r.json()) == ("fastapi", {"live": True})
    r, who = pair.both("POST", "/push", _dump({"feature_view": "ghost", "rows": {}}), JSON)
    assert (who, r.status_code) == ("fastapi", 404)


def test_a_chunked_request_body_over_http(pair: Pair) -> None:
    def chunks() -> Iterator[bytes]:
        for i in range(0, len(VALID), 7):
            yield VALID[i : i + 7]

    n_fast = len(pair.seen.fast)
    a = pair.fast_client.post(GF, content=chunks(), headers=JSON)
    b = pair.plain_client.post(GF, content=chunks(), headers=JSON)
    assert len(pair.seen.fast) == n_fast + 1
    assert a.status_code == b.status_code == 200 and a.content == b.content


_I64 = st.integers(-(2**63), 2**63 - 1)  # beyond int64: a 500 on both paths (see below)
_json_leaf = st.one_of(st.none(), st.booleans(), _I64, st.floats(), st.text(max_size=6))
_json = st.recursive(
    _json_leaf,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)
_ids = st.integers(-2, 60) | st.sampled_from([2**63 - 1, -(2**63), "7", "x", ""])
_REFS = ["user_stats:tx_count", "user_stats:country", "merchant_stats:risk", "user_stats:nope"]


@st.composite
def _bodies(draw: Any, path: str) -> dict:
    """Mostly well-formed bodies of ``path``, then 0-2 random mutations (wrong types, extras)."""
    n = draw(st.integers(0, 3))
    entities: dict[str, Any] = {"user_id": draw(st.lists(_ids, min_size=n, max_size=n))}
    if draw(st.integers(0, 3)):
        m = n if draw(st.integers(0, 5)) else n + 1
        entities["merchant_id"] = draw(st.lists(_ids, min_size=m, max_size=m))
    body: dict[str, Any] = {"entities": entities}
    if path == PR:
        body["model"] = draw(st.sampled_from(["fraud", "fraud@2", "fraud@production", "ghost"]))
        if draw(st.booleans()):
            body["return_features"] = draw(st.booleans())
    elif draw(st.booleans()):
        body["feature_service"] = draw(st.sampled_from(["scoring", "everything", "nope"]))
    else:
        body["features"] = draw(st.lists(st.sampled_from(_REFS), min_size=1, max_size=3))
    for opt in ("full_feature_names", "include_event_timestamps") if path == GF else ():
        if draw(st.booleans()):
            body[opt] = draw(st.booleans())
    if draw(st.booleans()):
        body["deadline_ms"] = draw(st.floats(1, 60_000) | st.integers(1, 60_000))
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2]))):
        key = draw(st.sampled_from([*body, "bogus"]))
        if draw(st.integers(0, 4)):
            body[key] = draw(_json)
        else:
            body.pop(key, None)
    return body


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data(), path=st.sampled_from([GF, PR]))
def test_random_bodies_get_the_same_answer_either_way(pair: Pair, data: Any, path: str) -> None:
    body = data.draw(_bodies(path))
    r, who = pair.both("POST", path, _dump(body), JSON)
    assert who in ("fast", "fastapi")
    assert r.status_code in (200, 400, 404, 413, 422), r.text
    assert "Traceback" not in r.text
    # a body failing validation goes to FastAPI: a 422, or a 400 when only join-key values fail
    assert who == "fast" or r.status_code in (400, 422)
    assert r.status_code != 422 or who == "fastapi"


# ---- unexpected exceptions ---------------------------------------------------------------------


def test_an_unexpected_exception_is_a_logged_500_without_traceback(
    pair: Pair, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(**kwargs: Any) -> Any:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(pair.engine, "aget_features", broken)
    n_fast = len(pair.seen.fast)
    caplog.set_level(logging.ERROR, logger="featurestore.serving")
    a = pair.fast_client.post(GF, content=VALID, headers=JSON)
    assert len(pair.seen.fast) == n_fast + 1  # answered by the middleware
    assert a.status_code == 500
    assert a.json() == {"error": "internal error (RuntimeError); see the server log"}
    assert "secret" not in a.text and "Traceback" not in a.text
    logged = [r for r in caplog.records if r.name == "featurestore.serving"]
    assert any(
        f"unhandled error on {GF}" in r.getMessage()
        and r.exc_info
        and isinstance(r.exc_info[1], RuntimeError)
        for r in logged
    )
    with httpx.Client(base_url=pair.plain.url, timeout=10) as plain:  # uvicorn closes it after
        b = plain.post(GF, content=VALID, headers=JSON)  # FastAPI's handler: the same answer
    assert (b.status_code, b.content) == (a.status_code, a.content)


# ---- ASGI level: chunks, disconnects, other scopes ------------------------------------------------


class _Inner:
    """A stand-in for FastAPI: records what it got and answers 299 with the body it read."""

    def __init__(self) -> None:
        self.calls: list[tuple[dict, bytes, dict | None]] = []

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        body = b""
        if scope["type"] == "http":
            while True:
                m = await receive()
                body += m.get("body", b"")
                if not m.get("more_body"):
                    break
        after = await receive() if scope["type"] == "http" else None
        self.calls.append((scope, body, after))
        await send({"type": "http.response.start", "status": 299, "headers": []})
        await send({"type": "http.response.body", "body": body})


def _asgi(hot: HotRoutes, scope_extra: dict, messages: list[dict]) -> tuple[list[dict], list[dict]]:
    scope = {"type": "http", "method": "POST", "path": GF, "headers": [], **scope_extra}
    queue = list(messages)
    sent: list[dict] = []

    async def receive() -> dict:
        return queue.pop(0) if queue else {"type": "http.disconnect"}

    async def send(m: dict) -> None:
        sent.append(m)

    asyncio.run(hot(scope, receive, send))
    return sent, queue


def _hot(inner: _Inner, handled: list[Any]) -> HotRoutes:
    from featurestore.online.serving.rest import GetOnlineFeaturesRequest, _error_body

    async def handler(req: Any) -> bytes:
        handled.append(req)
        if req.feature_service == "boom":
            raise ValueError("boom")
        return b'{"ok":true}'

    return HotRoutes(
        inner, routes={GF: (GetOnlineFeaturesRequest, handler)}, error_body=_error_body
    )


def _parts(body: bytes, n: int) -> list[dict]:
    size = max(1, len(body) // n + 1)
    pieces = [body[i : i + size] for i in range(0, len(body), size)] or [b""]
    return [
        {"type": "http.request", "body": p, "more_body": i < len(pieces) - 1}
        for i, p in enumerate(pieces)
    ]


def test_asgi_a_body_in_several_messages_is_joined_and_validated() -> None:
    inner, handled = _Inner(), []
    sent, _ = _asgi(
        _hot(inner, handled),
        {"headers": [(b"content-type", b"application/json")]},
        _parts(VALID, 5),
    )
    assert len(handled) == 1 and handled[0].entities == ENT and not inner.calls
    assert sent[0]["status"] == 200
    assert (b"content-length", b"11") in sent[0]["headers"]
    assert sent[1]["body"] == b'{"ok":true}'


def test_asgi_an_invalid_chunked_body_is_replayed_whole_then_receive_goes_on() -> None:
    inner, handled = _Inner(), []
    body = _dump({"feature_service": "scoring", "entities": ENT, "bogus": 1})
    messages = [*_parts(body, 4), {"type": "http.disconnect"}]
    sent, left = _asgi(
        _hot(inner, handled), {"headers": [(b"content-type", b"application/json")]}, messages
    )
    assert not handled and len(inner.calls) == 1
    _, got, after = inner.calls[0]
    assert got == body  # the whole body, as one message
    assert after == {"type": "http.disconnect"}  # then the real receive again
    assert sent[0]["status"] == 299 and not left


def test_asgi_a_non_json_request_is_passed_on_untouched() -> None:
    inner, handled = _Inner(), []
    sent, _ = _asgi(
        _hot(inner, handled), {"headers": [(b"content-type", b"text/plain")]}, _parts(VALID, 3)
    )
    assert not handled and inner.calls[0][1] == VALID and sent[1]["body"] == VALID
    inner2 = _Inner()
    _asgi(_hot(inner2, handled), {"method": "GET"}, [{"type": "http.request", "body": b""}])
    assert not handled and inner2.calls[0][0]["method"] == "GET"


def test_asgi_a_client_gone_mid_body_gets_no_answer() -> None:
    inner, handled = _Inner(), []
    messages = [{"type": "http.request", "body": VALID[:10], "more_body": True}]
    sent, _ = _asgi(  # the fake receive says http.disconnect once the messages run out
        _hot(inner, handled), {"headers": [(b"content-type", b"application/json")]}, messages
    )
    assert sent == [] and not handled and not inner.calls


def test_asgi_a_handler_bug_is_a_500_json() -> None:
    inner, handled = _Inner(), []
    body = _dump({"feature_service": "boom", "entities": ENT})
    sent, _ = _asgi(
        _hot(inner, handled), {"headers": [(b"content-type", b"application/json")]}, _parts(body, 1)
    )
    assert sent[0]["status"] == 500 and (b"content-type", b"application/json") in sent[0]["headers"]
    assert json.loads(sent[1]["body"]) == {
        "error": "internal error (ValueError); see the server log"
    }


def test_asgi_other_scope_types_pass_through() -> None:
    seen: list[str] = []

    async def inner(scope: dict, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    hot = HotRoutes(inner, routes={}, error_body=lambda e: (b"", 500))
    asyncio.run(hot({"type": "lifespan"}, None, None))
    asyncio.run(hot({"type": "websocket", "path": GF}, None, None))
    assert seen == ["lifespan", "websocket"]


@pytest.mark.parametrize(
    "content",
    [
        b'{"feature_service": "scoring", "entities": {"user_id": [1], "merchant_id": [1]}, '
        b'"deadline_ms": NaN}',
        b'{"feature_service": "scoring", "entities": {"user_id": [1], "merchant_id": [1]}, '
        b'"deadline_ms": Infinity}',
        b'{"feature_service": "scoring", "entities": {"user_id": [1], "merchant_id": [1]}, '
        b'"deadline_ms": 1e400}',
        b'{"feature_service": "nope", "feature_service": "scoring", '
        b'"entities": {"user_id": [1], "merchant_id": [1]}}',
        b'{"feature_service": "scoring", "entities": {"user_id": [1180591620717411303424], '
        b'"merchant_id": [1]}}',
        b'{"feature_service": "scoring", "entities": {"user_id": [-9223372036854775809], '
        b'"merchant_id": [1]}}',
        b'{"feature_service": "scoring", "entities": {"user_id": [9223372036854775807], '
        b'"merchant_id": [1]}}',
        b'{"feature_service": "sc\\u006fring", "entities": {"user_id": [1], "merchant_id": [1]}}',
        b'{"feature_service": "scoring\\u0000", "entities": {"user_id": [1], "merchant_id": [1]}}',
        b'{"feature_service": "scoring", "entities": {"user_id": [1], "merchant_id": [1]}} x',
        b'  {"feature_service": "scoring", "entities": {"user_id": [1], "merchant_id": [1]}}\n\n',
        b'{"feature_service": "scoring", "entities": {"user_id": [1], "merchant_id": [1]}, '
        b'"deadline_ms": "25"}',
        b'{"feature_service": "scoring", "entities": {"user_id": [1], "merchant_id": [1]}, '
        b'"full_feature_names": "true"}',
        b'{"feature_service": "scoring", "entities": {"user_id": [1], "merchant_id": [1]}, '
        b'"full_feature_names": 1}',
        b'{"feature_service": "scoring", "entities": {"user_id": ["1"], "merchant_id": [1]}}',
        b'{"features": ["user_stats:tx_count"], "entities": {"user_id": [1]}, '
        b'"request_data": {"x": [1, 2.5, "a", null, true, [1, 2]]}}',
        b'{"feature_service": "scoring", "entities": {"user_id": [1], "merchant_id": [1]}, '
        b'"deadline_ms": 0}',
        '{"feature_service": "sc\u00f6ring", "entities": {"user_id": [1]}}'.encode(),
        b'{"feature_service": "sc\xff", "entities": {"user_id": [1]}}',
    ],
)
def test_json_corner_cases_get_the_same_answer_either_way(pair: Pair, content: bytes) -> None:
    # pydantic's JSON parser (fast path) and python's json + pydantic (FastAPI) must agree on
    # NaN/Infinity, duplicate keys, escapes, trailing data, lax strings, huge ints, bad UTF-8.
    r, who = pair.both("POST", GF, content, JSON)
    assert who in ("fast", "fastapi")
    assert "Traceback" not in r.text
    assert r.status_code < 500, r.text


@pytest.mark.parametrize("key", [2**63, -(2**63) - 1, 2**70])
def test_join_keys_beyond_int64_are_a_400_naming_the_key(pair: Pair, key: int) -> None:
    body = (
        b'{"feature_service": "scoring", "entities": {"user_id": [1, %d], "merchant_id": [1, 2]}}'
    )
    r, who = pair.both("POST", GF, body % key, JSON)
    assert who == "fast"
    assert r.status_code == 400
    assert "entities.user_id[1]" in r.json()["error"] and "64-bit" in r.json()["error"]


def test_a_body_that_is_not_utf8_is_a_400_in_the_error_shape(pair: Pair) -> None:
    r, _ = pair.both("POST", GF, b'{"feature_service": "sc\xff"}', JSON)
    assert r.status_code == 400
    assert set(r.json()) == {"error"}


def test_fast_path_over_a_redis_store_reads_through_the_event_loop_reader(
    redis_url: str, tmp_path_factory: pytest.TempPathFactory, serve: Any
) -> None:
    repo = make_repo(
        tmp_path_factory.mktemp("fast_redis") / "repo", online="redis", redis_url=redis_url
    )
    s = serve(repo)
    engine = s.app.state.engine
    reader = engine._aredis
    assert reader is not None
    calls: list[int] = []
    real = reader.mget

    async def counted(keys: Any, deadline: float) -> Any:
        calls.append(len(keys))
        return await real(keys, deadline)

    reader.mget = counted
    seen = _instrument(s.app)  # the running stack (built for the lifespan already)
    body = {"feature_service": "everything", "entities": ENT}
    with httpx.Client(base_url=s.url, timeout=10) as c:
        r = c.post(GF, content=_dump(body), headers=JSON)
        p = c.post(PR, content=_dump({"model": "fraud", "entities": ENT}), headers=JSON)
    assert r.status_code == 200 and p.status_code == 200, (r.text, p.text)
    assert seen.fast == [GF, PR] and seen.handed == []
    assert calls.count(6) == 2  # one MGET each: 3 entities x 2 views (the warm-up reads 1 entity)
    want = engine.get_features(feature_service="everything", entities=ENT).to_dict()
    assert r.json() == json.loads(json.dumps(want))
    assert r.json()["degraded"] is False and p.json()["degraded"] is False
