"""API keys: the keys file, the key ring the servers check requests against, and scopes.

The keys file (``serving.auth.keys_file``, written by ``featurestore keys``) is JSON holding,
per key, its name, the SHA-256 of the key, its scopes and when it was made; never the key.
A server loads it at start (a missing or bad file stops the start: a server must not come up
open by mistake) and re-reads it when it changes, so a revoke takes effect without a restart.
Deleting the file while serving refuses every key until it is back; a file that is there but
does not parse (or cannot be read) keeps the keys loaded before.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import re
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from featurestore._atomic import atomic_write
from featurestore.errors import ConfigError, FeatureStoreError
from featurestore.online.serving.context import MAX_REQUEST_ID

if TYPE_CHECKING:
    from featurestore.online.serving.config import AuthConfig
    from featurestore.online.serving.engine import Engine

log = logging.getLogger("featurestore.serving")

Scope = Literal["features", "predict", "push", "read", "metrics"]
SCOPES: tuple[Scope, ...] = ("features", "predict", "push", "read", "metrics")
SCOPE_HELP: dict[Scope, str] = {
    "features": "get online features",
    "predict": "score with a model",
    "push": "push rows into a feature view",
    "read": "list feature services and models",
    "metrics": "scrape /metrics",
}

# REST path -> the scope it needs; OPEN_PATHS need no key; any other path needs some valid key
# (so an unknown path answers 401 without one, and does not reveal what exists)
REST_SCOPES: dict[str, Scope] = {
    "/get-online-features": "features",
    "/predict": "predict",
    "/push": "push",
    "/feature-services": "read",
    "/models": "read",
    "/metrics": "metrics",
}
OPEN_PATHS = frozenset(
    {"/health/live", "/health/ready", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}
)
# the REST paths a request may name without a key: OPEN_PATHS with or without a trailing slash
# (the router redirects "/health/ready/" to "/health/ready": neither needs a key)
OPEN_REQUEST_PATHS = OPEN_PATHS | {p + "/" for p in OPEN_PATHS}
# gRPC method -> scope; GRPC_OPEN need no key (the health checks)
GRPC_SCOPES: dict[str, Scope] = {
    "GetOnlineFeatures": "features",
    "Predict": "predict",
    "Push": "push",
    "ListFeatureServices": "read",
    "ListModels": "read",
}
GRPC_OPEN = frozenset({"Live", "Ready"})

KEY_PREFIX = "fs_"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_REQUEST_ID = re.compile(rf"[\x21-\x7e]{{1,{MAX_REQUEST_ID}}}", re.ASCII)
_CREATE_HINT = "featurestore keys create NAME --scope features"


class AuthenticationError(FeatureStoreError):
    """No API key, or one the keys file does not hold (HTTP 401, gRPC UNAUTHENTICATED)."""


class PermissionDeniedError(FeatureStoreError):
    """A valid API key without the scope the request needs (HTTP 403, gRPC PERMISSION_DENIED)."""


@dataclass(frozen=True)
class ApiKey:
    """One entry of the keys file: the key's name, its SHA-256 (hex) and scopes."""

    name: str
    sha256: str
    scopes: frozenset[str]
    created: str

    @property
    def scope_list(self) -> list[str]:
        """The scopes in the order of SCOPES."""
        return [s for s in SCOPES if s in self.scopes]

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "sha256": self.sha256,
            "scopes": self.scope_list,
            "created": self.created,
        }


def new_key() -> str:
    """A fresh API key: ``fs_`` and 43 URL-safe characters (256 random bits)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str | bytes) -> str:
    """The SHA-256 (hex) of a key, as the keys file holds it."""
    return hashlib.sha256(key.encode() if isinstance(key, str) else key).hexdigest()


def check_name(name: str) -> str:
    """``name`` if it is a valid key name, else a ConfigError saying what is allowed."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(
            f"API key name {name!r} is not allowed; use 1-64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return name


def check_scopes(scopes: Iterable[str]) -> frozenset[str]:
    """The scopes as a set, or a ConfigError naming the unknown one and the known ones."""
    out = frozenset(scopes)
    for s in sorted(out):
        if s not in SCOPES:
            raise ConfigError(f"unknown scope {s!r}; scopes are {', '.join(SCOPES)}")
    if not out:
        raise ConfigError(f"an API key needs at least one scope; scopes are {', '.join(SCOPES)}")
    return out


def make_entry(name: str, key: str, scopes: Iterable[str]) -> ApiKey:
    """The keys-file entry of ``key`` (its hash, never the key), created now."""
    created = dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()
    return ApiKey(
        check_name(name), hash_key(key), check_scopes(scopes), created.replace("+00:00", "Z")
    )


def parse_keys(raw: bytes | str, where: str) -> list[ApiKey]:
    """The entries of a keys file's text; ConfigError naming ``where`` and the problem."""
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise ConfigError(f"API keys file {where}: not valid JSON ({exc})") from None
    items = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise ConfigError(f'API keys file {where}: expected {{"keys": [...]}} at the top level')
    out: list[ApiKey] = []
    names: set[str] = set()
    hashes: set[str] = set()
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise ConfigError(f"API keys file {where}: entry {i} is not an object")
        name, digest, scopes = item.get("name"), item.get("sha256"), item.get("scopes")
        try:
            check_name(name)  # type: ignore[arg-type]
        except ConfigError as exc:
            raise ConfigError(f"API keys file {where}: entry {i}: {exc}") from None
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            raise ConfigError(
                f"API keys file {where}: key {name!r} has no sha256 (64 lowercase hex digits)"
            )
        if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
            raise ConfigError(f"API keys file {where}: key {name!r}: scopes must be a list")
        try:
            scope_set = check_scopes(scopes)
        except ConfigError as exc:
            raise ConfigError(f"API keys file {where}: key {name!r}: {exc}") from None
        if name in names:
            raise ConfigError(f"API keys file {where}: key name {name!r} appears twice")
        if digest in hashes:
            raise ConfigError(f"API keys file {where}: key {name!r} repeats another key's hash")
        names.add(name)  # type: ignore[arg-type]
        hashes.add(digest)
        out.append(ApiKey(name, digest, scope_set, str(item.get("created", ""))))  # type: ignore[arg-type]
    return out


def read_keys(path: str | os.PathLike[str]) -> list[ApiKey]:
    """The entries of the keys file at ``path``; ConfigError if it is missing or bad."""
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            f"API keys file {path} does not exist; create a key with `{_CREATE_HINT}`"
        ) from None
    except OSError as exc:
        raise ConfigError(f"API keys file {path} cannot be read: {exc.strerror}") from None
    return parse_keys(raw, str(path))


def write_keys(path: str | os.PathLike[str], keys: Iterable[ApiKey]) -> None:
    """Write the keys file atomically (a temporary file renamed over it), readable by its owner
    only; the folder is made (owner only) when missing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    body = json.dumps({"keys": [k.to_json() for k in keys]}, indent=2).encode() + b"\n"
    atomic_write(path, body, mode=0o600)


def _signature(st: os.stat_result) -> tuple[int, int, int, int]:
    # the inode too: a rewrite is a rename, which a same-size, same-tick write could hide
    return (st.st_ino, st.st_dev, st.st_mtime_ns, st.st_size)


_GONE = (-1, -1, -1, -1)  # could not be read: read again once it can be stat'ed
_MISSING = (-2, -2, -2, -2)  # deleted: whatever comes back in its place is read (and reported)


class KeyRing:
    """The keys of one keys file by hash; re-read when the file changes.

    Checks are lazy: a lookup stats the file when ``reload_interval_s`` has passed since the
    last stat and re-reads it when its inode, mtime or size changed. A file that no longer
    parses, or cannot be read, keeps the last good keys (with a warning), so a botched edit
    does not lock everyone out or let anyone in. A file that is gone (deleted) holds no keys:
    deleting it is how an operator shuts every client out, and its keys come back with it.
    (``featurestore keys`` replaces the file by a rename, so it is never missing in between.)
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        reload_interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = str(path)
        self.reload_interval_s = reload_interval_s
        self._clock = clock
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            raise ConfigError(
                f"serving.auth is on but the API keys file {self.path} does not exist; create a "
                f"key with `{_CREATE_HINT}` (or remove serving.auth from featurestore.yaml)"
            ) from None
        except OSError as exc:
            raise ConfigError(f"API keys file {self.path} cannot be read: {exc.strerror}") from None
        try:
            keys = read_keys(self.path)
        except ConfigError as exc:
            raise ConfigError(
                f"serving.auth: {exc}; fix it or write a new one with `{_CREATE_HINT}`"
            ) from None
        self._by_hash: Mapping[str, ApiKey] = {k.sha256: k for k in keys}
        self._gone = False  # the file was deleted while serving: no key is valid
        self._seen = _signature(st)
        self._next_check = clock() + reload_interval_s
        if not keys:
            log.warning("API keys file %s holds no keys: every request but health is refused", path)

    @classmethod
    def from_config(cls, auth: AuthConfig, resolve: Callable[[str], str]) -> KeyRing:
        """The key ring of ``serving.auth`` (``resolve`` makes the repo-relative path absolute)."""
        return cls(resolve(auth.keys_file), reload_interval_s=auth.reload_interval_s)

    @property
    def keys(self) -> list[ApiKey]:
        """The keys in force (after a reload check)."""
        self._maybe_reload()
        return list(self._by_hash.values())

    def _maybe_reload(self) -> None:
        now = self._clock()
        if now < self._next_check:
            return
        self._next_check = now + self.reload_interval_s
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._removed()
            return
        except OSError as exc:
            self._unreadable(exc)
            return
        sig = _signature(st)
        if sig == self._seen:
            return
        self._seen = sig  # a bad file is reported once, and read again only when it changes
        try:
            raw = Path(self.path).read_bytes()
        except FileNotFoundError:  # deleted between the stat and the read
            self._removed()
            return
        except OSError as exc:
            self._unreadable(exc)
            return
        try:
            keys = parse_keys(raw, self.path)
        except ConfigError as exc:
            log.warning("%s; keeping the %d key(s) loaded before", exc, len(self._by_hash))
            return
        self._by_hash = {k.sha256: k for k in keys}
        if self._gone:
            self._gone = False
            log.warning("API keys file %s is back: %d key(s) in force", self.path, len(keys))
        else:
            log.info("API keys file %s reloaded: %d key(s)", self.path, len(keys))

    def _unreadable(self, exc: OSError) -> None:
        """The file is there but cannot be read (permissions...): keep the keys, warn once."""
        if self._seen != _GONE:
            self._seen = _GONE
            log.warning(
                "API keys file %s cannot be read (%s); keeping the %d key(s) loaded before",
                self.path,
                exc.strerror,
                len(self._by_hash),
            )

    def _removed(self) -> None:
        """The file is gone: no key is valid until it is back (logged once)."""
        self._seen = _MISSING
        if self._gone:
            return
        dropped = len(self._by_hash)
        self._gone, self._by_hash = True, {}
        log.warning(
            "API keys file %s was deleted: every request but the health checks is refused "
            "(401) until it is back (%d key(s) dropped)",
            self.path,
            dropped,
        )

    def lookup(self, key: str | bytes) -> ApiKey | None:
        """The entry of a presented key, or None."""
        self._maybe_reload()
        return self._by_hash.get(hash_key(key))

    def authorize(self, key: str | bytes | None, scope: str | None) -> ApiKey:
        """The entry of ``key`` if it holds ``scope`` (None: any valid key will do); else
        AuthenticationError (no key, unknown key) or PermissionDeniedError (scope missing)."""
        if not key:
            raise AuthenticationError(
                "missing API key: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'"
            )
        entry = self.lookup(key)
        if entry is None and self._gone:
            raise AuthenticationError(
                "no API key is valid: the server's API keys file has been removed (keys work "
                "again once it is back)"
            )
        if entry is None:
            raise AuthenticationError("unknown API key (revoked, mistyped or never created)")
        if scope is not None and scope not in entry.scopes:
            has = ", ".join(entry.scope_list)
            raise PermissionDeniedError(
                f"API key '{entry.name}' lacks scope '{scope}' (it has: {has}); use a key "
                f"created with --scope {scope}"
            )
        return entry


def check_keys_file(auth: AuthConfig | None, resolve: Callable[[str], str]) -> None:
    """Load the keys file as a server would: a ConfigError when it is missing or bad (nothing
    to check with auth off). For ``featurestore serve``, before any worker starts."""
    if auth is not None:
        KeyRing.from_config(auth, resolve)


def keyring_for(engine: Engine) -> KeyRing | None:
    """The key ring of the engine's ``serving.auth``, or None when auth is off."""
    auth = engine.config.auth
    if auth is None:
        return None
    return KeyRing.from_config(auth, engine.store.config.resolve)


def bearer(value: str | bytes | None) -> str | bytes | None:
    """The key of an ``Authorization: Bearer KEY`` value (None for another scheme)."""
    if not value:
        return None
    scheme, _, token = value.partition(" " if isinstance(value, str) else b" ")
    if scheme.lower() not in ("bearer", b"bearer"):
        return None
    return token.strip() or None


def valid_request_id(value: str | bytes) -> bool:
    """True if a client's x-request-id is 1..MAX_REQUEST_ID printable ASCII, no spaces."""
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    return _REQUEST_ID.fullmatch(value) is not None
