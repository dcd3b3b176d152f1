"""The ``serving:`` and ``models:`` sections of featurestore.yaml as small value objects."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from featurestore.config import check_types
from featurestore.errors import ConfigError

if TYPE_CHECKING:
    from featurestore.config import RepoConfig


@dataclass(frozen=True)
class BreakerConfig:
    """Circuit breaker: open after N failures in a row, probe after ``reset_ms``.

    (Closed -> open -> half-open: one probe request; its success closes the breaker.)
    """

    failure_threshold: int = 5
    reset_ms: int = 1000


@dataclass(frozen=True)
class TLSConfig:
    """TLS for both servers: PEM files, repo-relative; ``client_ca_file`` also requires every
    client to present a certificate signed by that CA (mutual TLS)."""

    cert_file: str = ""
    key_file: str = ""
    client_ca_file: str | None = None


@dataclass(frozen=True)
class AuthConfig:
    """API keys: every request but the health checks names a key with the scope it needs.

    The keys file (repo-relative, written by ``featurestore keys``) holds key hashes, never
    keys; a server re-reads it when it changes, so a revoked key stops working without a restart.
    """

    keys_file: str = "secrets/api_keys.json"
    reload_interval_s: float = 1.0


@dataclass(frozen=True)
class AuditConfig:
    """The audit log: one JSON line per prediction and per push, written off the request path.

    ``path`` is a folder (repo-relative); each worker process writes its own files in it,
    starting a new one after ``max_file_mb``.
    """

    path: str = "data/audit"
    include_features: bool = True
    max_file_mb: float = 100.0


@dataclass(frozen=True)
class ServingConfig:
    """Where the servers listen and the latency budget of a request."""

    host: str = "127.0.0.1"
    rest_port: int = 8000
    grpc_port: int = 50051  # 0: no gRPC server
    workers: int = 1
    deadline_ms: int = 50  # per request; a request may ask for another
    max_entities: int = 1000
    max_explained_entities: int = 100  # explain costs ~1 ms per entity (a 100-tree model)
    read_threads: int = 8  # store reads run here, so a hung store cannot hang a request
    # "auto": network stores (redis, redis_cluster) read on the thread pool under the deadline,
    # the embedded LMDB store reads inline (a memory-mapped read; a thread hop would cost more);
    # synchronous calls on a single Redis read on the caller's thread, on its own connection,
    # with the remaining deadline as the socket timeout ("always": the pool for every read)
    isolate_reads: str = "auto"  # auto | always | never
    breaker: BreakerConfig = BreakerConfig()
    log_level: str = "warning"
    tls: TLSConfig | None = None  # None: plain TCP
    auth: AuthConfig | None = None  # None: no API keys asked for
    audit: AuditConfig | None = None  # None: no audit log
    # SIGTERM: the longest a shutdown takes, half to take in what was sent, half for requests
    # in flight (see drain.py); under Kubernetes' 30 s terminationGracePeriodSeconds
    shutdown_grace_s: float = 20.0


# the longest per-request budget (config or request): a read must have an end
MAX_DEADLINE_MS = 60_000
# the longest serving.shutdown_grace_s: a SIGTERM must end
MAX_SHUTDOWN_GRACE_S = 600.0
# the servers' log levels (uvicorn's names)
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
# the shortest models.poll_interval_s: each poll reads the model registry, so 0 (or a tiny
# value) spins a core on an idle server; 20 reads a second already follow a promotion at once
MIN_POLL_INTERVAL_S = 0.05


@dataclass(frozen=True)
class ModelsConfig:
    """The model registry folder and how the server follows it."""

    path: str = "data/models"
    poll_interval_s: float = 1.0  # how often a server re-reads the registry for promotions
    # (at least MIN_POLL_INTERVAL_S: 0 would re-read it in a busy loop)
    shadow_log: str | None = None  # JSON lines of shadow scores (repo-relative); None: memory only
    shadow_buffer: int = 1000


def _build(cls: type, raw: Any, name: str) -> Any:
    if raw is None:
        return cls()
    if not isinstance(raw, dict):
        raise ConfigError(f"featurestore.yaml: '{name}' must be a mapping")
    known = {f.name for f in fields(cls)}
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(
            f"featurestore.yaml: unknown key(s) {sorted(unknown)} in '{name}'; "
            f"known: {sorted(known)}"
        )
    raw = dict(raw)
    if cls is ServingConfig:
        for key, sub in _SECTIONS.items():
            if key in raw:
                raw[key] = _build(sub, raw[key] if raw[key] is not None else {}, f"serving.{key}")
    if cls is ServingConfig and raw.get("isolate_reads", "auto") not in ("auto", "always", "never"):
        raise ConfigError(
            f"featurestore.yaml: serving.isolate_reads is {raw['isolate_reads']!r}; "
            "expected auto, always or never"
        )
    try:
        out = cls(**raw)
    except TypeError as exc:
        raise ConfigError(f"featurestore.yaml: bad '{name}': {exc}") from None
    check_types(out, name)  # before any comparison: `deadline_ms: abc` is one line, too
    for f in fields(cls):
        v = getattr(out, f.name)
        if isinstance(v, float) and not math.isfinite(v):  # .inf: a wait without end
            raise ConfigError(f"featurestore.yaml: {name}.{f.name} is {v}; give a finite number")
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v < 0:
            raise ConfigError(f"featurestore.yaml: {name}.{f.name} is {v}; it must not be negative")
    if cls is TLSConfig:
        for f in ("cert_file", "key_file"):
            if not isinstance(getattr(out, f), str) or not getattr(out, f):
                raise ConfigError(
                    f"featurestore.yaml: serving.tls.{f} is missing; give the PEM file's path"
                )
    if cls is ServingConfig:
        for key in ("workers", "max_entities"):
            if getattr(out, key) < 1:
                raise ConfigError(
                    f"featurestore.yaml: serving.{key} is {getattr(out, key)}; give 1 or more"
                )
        if out.log_level not in LOG_LEVELS:
            raise ConfigError(
                f"featurestore.yaml: serving.log_level is {out.log_level!r}; expected one of "
                f"{', '.join(LOG_LEVELS)}"
            )
        for port in ("rest_port", "grpc_port"):
            if getattr(out, port) > 65535:
                raise ConfigError(
                    f"featurestore.yaml: serving.{port} is {getattr(out, port)}; ports go up to "
                    "65535"
                )
        if out.rest_port and out.rest_port == out.grpc_port:
            raise ConfigError(
                f"featurestore.yaml: serving.rest_port and serving.grpc_port are both "
                f"{out.rest_port}; give the REST and gRPC servers different ports (grpc_port 0: "
                "no gRPC server)"
            )
        if out.shutdown_grace_s > MAX_SHUTDOWN_GRACE_S:
            raise ConfigError(
                f"featurestore.yaml: serving.shutdown_grace_s is {out.shutdown_grace_s}; give "
                f"seconds from 0 to {MAX_SHUTDOWN_GRACE_S}"
            )
        if not 0 < out.deadline_ms <= MAX_DEADLINE_MS:
            raise ConfigError(
                f"featurestore.yaml: serving.deadline_ms is {out.deadline_ms}; give milliseconds "
                f"above 0 and up to {MAX_DEADLINE_MS}"
            )
    if cls is ModelsConfig and not out.poll_interval_s >= MIN_POLL_INTERVAL_S:
        raise ConfigError(
            f"featurestore.yaml: models.poll_interval_s is {out.poll_interval_s}; give seconds "
            f"of at least {MIN_POLL_INTERVAL_S} (how often a server looks for promotions)"
        )
    return out


_SECTIONS: dict[str, type] = {
    "breaker": BreakerConfig,
    "tls": TLSConfig,
    "auth": AuthConfig,
    "audit": AuditConfig,
}


def serving_config(config: RepoConfig) -> ServingConfig:
    return _build(ServingConfig, config.extra.get("serving"), "serving")


def models_config(config: RepoConfig) -> ModelsConfig:
    return _build(ModelsConfig, config.extra.get("models"), "models")
