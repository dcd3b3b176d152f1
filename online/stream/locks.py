"""The lock key beside each stream: who writes the online values of the views it feeds.

``featurestore ingest`` holds it while it reads the stream, and ``materialize`` holds it while it
writes a view fed by the stream: both write those views' window states by read-modify-write or
overwrite, so one of them at a time. The key expires ``LOCK_MS`` after its holder stops renewing
it (a holder killed with -9); a holder found dead on this host is taken over at once.

A materialize that cannot renew its lock (it paused past the expiry, or lost contact with the
stream server for longer than the lock's life, and an ingest may have taken the lock) stops before
its next write and records no watermark for what it did not finish.

The value names the holder: ``host:pid:nonce`` for an ingest, followed by ``:materialize
view,...`` for a materialize.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from featurestore.errors import FeatureStoreError
from featurestore.online.stream.events import as_text

if TYPE_CHECKING:
    from featurestore._cleanup import ViewWrites
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


class MaterializeLocks:
    """What one materialize holds: the views it may write, the ones it skipped (their stream's
    lock held by another) and why, ``ensure_held`` to call before each write, and ``writes``:
    view -> the guard each of its writes holds (featurestore._cleanup.ViewWrites; set by
    materialize once it checked the registry, none for a view written without one)."""

    def __init__(
        self,
        views: list[FeatureView],
        skipped: dict[str, str],
        guarded: set[str],
        renewer: _Renewer | None = None,
    ) -> None:
        self.views = views
        self.skipped = skipped
        self._guarded = guarded
        self._renewer = renewer
        self.writes: dict[str, ViewWrites] = {}

    def guards(self, view: FeatureView) -> bool:
        """Whether ``view``'s writes depend on a held stream lock (it is stream-fed)."""
        return view.name in self._guarded

    def ensure_held(self) -> None:
        """Raise a one-line error if a lock was lost (or may have been: see ``_Renewer``), so
        materialize writes no row, and records no watermark, after another may have written."""
        if self._renewer is not None:
            self._renewer.ensure_held()


@contextmanager
def materialize_lock(
    store: FeatureStore, views: list[FeatureView], *, skip_busy: bool = False
) -> Iterator[MaterializeLocks]:
    """Hold the lock of every stream feeding ``views`` while materialize writes them (renewed
    by a thread), so no ingest writes their states meanwhile; refused while another holds one,
    or with ``skip_busy`` the views of that stream are left out (``skipped``: view -> why).

    An unreachable stream server has no ingest running (it could not read), so it does not
    stop materialize, which then runs without the locks. A server that stops answering after
    the locks were taken stops it once they may have expired (see ``_Renewer``)."""
    from featurestore.online.stream.streams import redis_client, stream_errors

    by_stream = _streams_of(views)
    if not by_stream:
        yield MaterializeLocks(list(views), {}, set())
        return
    token = new_token(sorted({v.name for fed in by_stream.values() for v in fed}))
    client = redis_client(store, timeout=2.0, connect_timeout=0.5)
    held: list[str] = []
    skipped: dict[str, str] = {}
    try:
        try:
            for stream, fed in by_stream.items():
                key = stream + LOCK_SUFFIX
                if acquire(client, key, token):
                    held.append(key)
                    continue
                holder = client.get(key)
                if skip_busy:
                    skipped.update((v.name, _skip_reason(v, holder)) for v in fed)
                    continue
                for taken in held:  # the ones taken so far: free for ingest again at once
                    release(client, taken, token)
                raise FeatureStoreError(_busy(fed[0], holder))
        except stream_errors():
            held = []  # the server is gone: it holds no lock, nothing to renew or release
        sources = {s + LOCK_SUFFIX: (s, fed[0].source.name) for s, fed in by_stream.items()}
        renewer = _Renewer(client, held, token, sources)
        guarded = {v.name for s, fed in by_stream.items() if s + LOCK_SUFFIX in held for v in fed}
        todo = [v for v in views if v.name not in skipped]
        try:
            yield MaterializeLocks(todo, skipped, guarded, renewer)
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


def _skip_reason(view: FeatureView, holder: Any) -> str:
    """Why a view was left out: who holds the lock of the stream feeding it."""
    src = view.source.name
    if is_materialize(holder):
        return f"stream source '{src}' is being written by {holder_text(holder)}"
    return (
        f"stream source '{src}' is being read by featurestore ingest "
        f"({as_text(holder or b'?')}), which keeps the view fresh itself"
    )


class _Renewer:
    """A daemon thread extending the held locks every third of their life until stopped.

    A lock it cannot extend is lost, even one that merely expired and is free now: an ingest
    may have taken it, written and let go meanwhile. So is one it could not reach the server
    to extend for longer than the lock's life (a partition on this host's side: ingest, on the
    other side, may see the key expire). Materialize then stops at its next write
    (``ensure_held``), which also renews at once when the thread missed its beat (the process
    was paused), so a write never trusts a renewal older than half the lock's life."""

    def __init__(
        self, client: Any, keys: list[str], token: str, sources: dict[str, tuple[str, str]]
    ) -> None:
        self._client, self._keys, self._token = client, keys, token
        self._sources = sources  # lock key -> (stream, the name of a source reading it)
        self._mutex = threading.Lock()
        self._renewed_at = time.monotonic()  # when the last round that renewed every lock began
        self.lost: str | None = None  # the one-line error, once a lock is lost
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        if keys:
            self._thread = threading.Thread(target=self._run, name="materialize-lock", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._done.wait(LOCK_MS / 3000) and self.lost is None:
            self.check()

    def check(self) -> None:
        """One renewal round now; a lock this token no longer holds, or could not renew for
        longer than its life, is recorded in ``lost``."""
        with self._mutex:
            began = time.monotonic()
            unreached: str | None = None  # the first lock whose server did not answer
            for key in self._keys:
                if self.lost is not None:
                    return
                try:
                    if renew(self._client, key, self._token):
                        continue
                    holder = self._client.get(key)
                except Exception:  # unreachable: the lock lives on until it expires
                    unreached = unreached or key
                    continue
                self.lost = self._lost_text(key, _taken_or_expired(holder))
            if self.lost is not None:
                return
            if unreached is None:
                self._renewed_at = began
            elif time.monotonic() - self._renewed_at > LOCK_MS / 1000:
                self.lost = self._lost_text(
                    unreached,
                    f"the stream server did not answer for longer than the lock's "
                    f"{LOCK_MS / 1000:g} s life (it may have expired)",
                )

    def ensure_held(self) -> None:
        """Raise ``lost``; renew first if the last round is older than half the lock's life."""
        if (
            self._keys
            and self.lost is None
            and time.monotonic() - self._renewed_at > LOCK_MS / 2000
        ):
            self.check()
        if self.lost is not None:
            raise FeatureStoreError(self.lost)

    def _lost_text(self, key: str, why: str) -> str:
        """The one-line error for the lock ``key``, lost because of ``why``."""
        stream, source = self._sources.get(key, (key, "?"))
        return (
            f"materialize stopped: lost the lock of stream '{stream}' (stream source '{source}'): "
            f"{why}, so an ingest may have written its views meanwhile; rerun materialize (the "
            "views it did not finish keep their watermark)"
        )

    def stop(self) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join()


def _taken_or_expired(holder: Any) -> str:
    """Why a lock this token could not renew is lost: another holds it, or it expired."""
    if holder is not None:
        return f"it is now held by {holder_text(holder)}"
    return f"it expired, unrenewed for {LOCK_MS / 1000:g} s (a paused process?)"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True
