"""The lock key beside each stream: who writes the online values of the views it feeds.

``featurestore ingest`` holds it while it reads the stream, and ``materialize`` holds it while it
writes a view fed by the stream: both write those views' window states by read-modify-write or
overwrite, so one of them at a time. The key expires ``LOCK_MS`` after its holder stops renewing
it (a holder killed with -9); a holder found dead on this host is taken over at once.

The value names the holder: ``host:pid:nonce`` for an ingest, followed by ``:materialize
view,...`` for a materialize.
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from featurestore.errors import FeatureStoreError
from featurestore.online.stream.events import as_text

if TYPE_CHECKING:
    from featurestore.feature_view import FeatureView
    from featurestore.store import FeatureStore

LOCK_SUFFIX = ":ingest-lock"  # the key beside a stream that says who writes its views
LOCK_MS = 15_000
_MATERIALIZE = ":materialize "
_RENEW = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then "
    "return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end"
)
_SWAP = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then "
    "return redis.call('set', KEYS[1], ARGV[2], 'PX', ARGV[3]) else return 0 end"
)
_RELEASE = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) "
    "else return 0 end"
)


def new_token(materializing: list[str] | None = None) -> str:
    """A lock value naming this process; ``materializing``: the views a materialize writes."""
    token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    return token + _MATERIALIZE + ",".join(materializing) if materializing else token


def holder_text(holder: Any) -> str:
    """Who holds a lock, in words: ``featurestore ingest (host:pid:nonce)`` or
    ``featurestore materialize of view(s) 'a', 'b' (host:pid:nonce)``."""
    text = as_text(holder or b"?")
    who, sep, views = text.partition(_MATERIALIZE)
    if not sep:
        return f"featurestore ingest ({text})"
    names = ", ".join(f"'{v}'" for v in views.split(","))
    return f"featurestore materialize of view(s) {names} ({who})"


def is_materialize(holder: Any) -> bool:
    """Whether a lock value is a materialize's."""
    return _MATERIALIZE in as_text(holder or b"")


def acquire(client: Any, key: str, token: str) -> bool:
    """Take the lock if free, or if its holder died on this host (a restart after a crash
    need not wait for the key to expire)."""
    if client.set(key, token, nx=True, px=LOCK_MS):
        return True
    holder = client.get(key)
    host, _, rest = as_text(holder or b"").partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit() or _alive(int(pid)):
        return False
    return bool(client.eval(_SWAP, 1, key, holder, token, LOCK_MS))


def renew(client: Any, key: str, token: str) -> bool:
    """Extend the lock if this token still holds it."""
    return bool(client.eval(_RENEW, 1, key, token, LOCK_MS))


def release(client: Any, key: str, token: str) -> None:
    """Delete the lock if this token holds it (never another holder's)."""
    client.eval(_RELEASE, 1, key, token)


@contextmanager
def materialize_lock(store: FeatureStore, views: list[FeatureView]) -> Iterator[None]:
    """Hold the lock of every stream feeding ``views`` while materialize writes them (renewed
    by a thread), so no ingest writes their states meanwhile; refused while another holds one.

    An unreachable stream server has no ingest running (it could not read), so it does not
    stop materialize, which then runs without the locks."""
    from featurestore.online.stream.streams import redis_client, stream_errors

    by_stream = _streams_of(views)
    if not by_stream:
        yield
        return
    token = new_token(sorted({v.name for fed in by_stream.values() for v in fed}))
    client = redis_client(store, timeout=2.0, connect_timeout=0.5)
    held: list[str] = []
    try:
        try:
            for stream, fed in by_stream.items():
                key = stream + LOCK_SUFFIX
                if not acquire(client, key, token):
                    busy = _busy(fed[0], client.get(key))
                    for taken in held:  # the ones taken so far: free for ingest again at once
                        release(client, taken, token)
                    raise FeatureStoreError(busy)
                held.append(key)
        except stream_errors():
            held = []  # the server is gone: it holds no lock, nothing to renew or release
        renewer = _Renewer(client, held, token)
        try:
            yield
        finally:
            renewer.stop()
            for key in held:
                try:
                    release(client, key, token)
                except stream_errors():  # it expires by itself
                    pass
    finally:
        client.close()


def _streams_of(views: list[FeatureView]) -> dict[str, list[FeatureView]]:
    from featurestore.sources import StreamSource

    out: dict[str, list[FeatureView]] = {}
    for v in views:
        if isinstance(v.source, StreamSource):
            out.setdefault(v.source.stream, []).append(v)
    return out


def _busy(view: FeatureView, holder: Any) -> str:
    src = view.source
    if is_materialize(holder):
        return (
            f"feature view '{view.name}' is fed by stream source '{src.name}', which "
            f"{holder_text(holder)} is writing; wait for it to finish"
        )
    return (
        f"feature view '{view.name}' is fed by stream source '{src.name}', which featurestore "
        f"ingest is reading ({as_text(holder or b'?')}); stop it before materializing this view, "
        "then start it again"
    )


class _Renewer:
    """A daemon thread extending the held locks every third of their life until stopped."""

    def __init__(self, client: Any, keys: list[str], token: str) -> None:
        self._client, self._keys, self._token = client, keys, token
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        if keys:
            self._thread = threading.Thread(target=self._run, name="materialize-lock", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._done.wait(LOCK_MS / 3000):
            for key in self._keys:
                try:  # expired (a long pause): take it again if still free
                    if not renew(self._client, key, self._token):
                        self._client.set(key, self._token, nx=True, px=LOCK_MS)
                except Exception:  # an unreachable server: no ingest can start either
                    pass

    def stop(self) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True
