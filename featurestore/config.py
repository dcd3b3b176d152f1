"""featurestore.yaml: the one config file of a feature repo, as small value objects."""

from __future__ import annotations

import functools
import math
import os
import re
import sys
import types
import typing
from collections.abc import Collection
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from featurestore.errors import ConfigError

CONFIG_FILE = "featurestore.yaml"
OnlineStoreType = Literal["embedded", "redis", "redis_cluster"]
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


@dataclass(frozen=True)
class OfflineStoreConfig:
    """DuckDB over Parquet. ``memory_limit`` lets DuckDB spill to ``temp_directory`` beyond it."""

    type: Literal["duckdb"] = "duckdb"
    memory_limit: str = "75%"
    threads: int | None = None
    temp_directory: str = "data/.duckdb_tmp"


@dataclass(frozen=True)
class OnlineStoreConfig:
    """Where online values live: ``embedded`` (LMDB file, no server), ``redis`` or ``redis_cluster``."""

    type: OnlineStoreType = "embedded"
    path: str = "data/online_store"  # embedded: folder of the LMDB environment
    map_size: str = "64GB"  # embedded: the most the file may grow to (sparse, not preallocated)
    url: str = "redis://localhost:6379/0"  # redis / redis_cluster (any node of the cluster)
    connect_timeout: float = 1.0  # seconds to wait for a connection before failing
    socket_timeout: float = 1.0  # seconds to wait for an answer before failing
    max_connections: int = 64
    key_ttl_grace: str = "1d"  # redis keys expire this long after their row's ttl runs out
    write_batch_size: int = 10_000


def online_store_id(online: OnlineStoreConfig) -> str:
    """Which online store a materialization watermark belongs to: the embedded store's path as
    configured (the same store wherever the repo is mounted), or a digest of the Redis URL (it
    may hold a password, and the registry is a plain file)."""
    if online.type == "embedded":
        return f"embedded:{online.path}"
    import hashlib

    return f"{online.type}:{hashlib.blake2b(online.url.encode(), digest_size=8).hexdigest()}"


@dataclass(frozen=True)
class StreamConfig:
    """Where stream events are read (a Redis server) and how ``featurestore ingest`` reads them.

    ``url`` None: the online store's url when it is Redis, else redis://localhost:6379/0.
    """

    url: str | None = None
    group: str = "featurestore"  # consumer group of the ingesters
    batch_size: int = 1000  # entries read per round
    block_ms: int = 200  # how long a read waits for new entries
    dead_letter_suffix: str = ":dead"  # bad events go to <stream><suffix>
    dead_letter_maxlen: int | None = None  # keep only the newest N dead letters (None: all)
    write_offline: bool = True  # append valid events to the batch source's folder
    offline_flush_s: float = 60.0  # a Parquet file (and the acknowledgements) at most this often
    offline_flush_events: int = 100_000  # ... or once this many events wait
    max_future: str = "1h"  # events further ahead of their XADD time are dead-lettered
    max_past: str | None = None  # ... further behind it too (None: no bound; replays stay open)
    trim: bool = True  # drop the entries every consumer group has acknowledged (XTRIM MINID)
    trim_interval_s: float = 10.0  # a stream is trimmed at most this often (after its acks)

    def __post_init__(self) -> None:
        from featurestore._time import parse_duration

        for name in ("max_future", "max_past"):
            value = getattr(self, name)
            if value is None and name == "max_past":
                continue
            try:
                parse_duration(value)
            except (ValueError, TypeError) as exc:
                raise ConfigError(f"{CONFIG_FILE}: stream.{name}: {exc}") from None

    def redis_url(self, online: OnlineStoreConfig) -> str:
        """The url ingest and send_events connect to."""
        if self.url:
            return self.url
        if online.type in ("redis", "redis_cluster"):
            return online.url
        return "redis://localhost:6379/0"


@dataclass(frozen=True)
class RepoConfig:
    """The parsed featurestore.yaml; paths in it are relative to ``repo_path``."""

    project: str
    repo_path: Path
    registry: str = "data/registry.json"
    offline_store: OfflineStoreConfig = field(default_factory=OfflineStoreConfig)
    online_store: OnlineStoreConfig = field(default_factory=OnlineStoreConfig)
    stream: StreamConfig = field(default_factory=StreamConfig)
    definitions: tuple[str, ...] = ()  # definition files; empty means every *.py in the repo root
    extra: dict[str, Any] = field(default_factory=dict)

    def resolve(self, path: str) -> str:
        """A repo-relative path made absolute (absolute paths and URLs pass through)."""
        if "://" in path or os.path.isabs(path):
            return path
        return str((self.repo_path / path).resolve())

    @property
    def registry_path(self) -> Path:
        return Path(self.resolve(self.registry))


def load_config(repo_path: str | os.PathLike[str]) -> RepoConfig:
    """Read ``featurestore.yaml`` from a repo folder; ``${VAR:-default}`` in its values expands
    from the env. Every section is checked here, ``serving:`` and ``models:`` too, so a bad value
    stops any command before it starts (``serve`` before it prints where it listens)."""
    import yaml

    repo = Path(repo_path).resolve()
    path = repo / CONFIG_FILE
    if not path.is_file():
        raise ConfigError(f"no {CONFIG_FILE} in {repo}; run `featurestore init` to create a repo")
    try:
        raw = _parse_yaml(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path.name}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path.name}: expected a mapping at the top level")
    config = config_from_dict(raw, repo)
    from featurestore.online.serving.config import models_config, serving_config

    serving_config(config)
    models_config(config)
    return config


def config_from_dict(raw: dict[str, Any], repo: Path) -> RepoConfig:
    """The RepoConfig of a parsed featurestore.yaml; a bad value is a ConfigError naming its key."""
    raw = dict(raw)
    project = raw.pop("project", None)
    if not project or not isinstance(project, str) or not re.fullmatch(r"[A-Za-z0-9_\-]+", project):
        raise ConfigError(
            f"{CONFIG_FILE}: 'project' must be a name of letters, digits, _ or -; got {project!r}"
        )
    offline = _section(OfflineStoreConfig, raw.pop("offline_store", None), "offline_store")
    if offline.threads is not None and offline.threads < 1:
        raise ConfigError(
            f"{CONFIG_FILE}: offline_store.threads is {offline.threads}; give 1 or more "
            "(or null for every core)"
        )
    online = _section(OnlineStoreConfig, raw.pop("online_store", None), "online_store")
    _check_online(online)
    stream = _section(StreamConfig, raw.pop("stream", None), "stream")
    # block_ms 0 would be Redis's BLOCK 0: wait for ever (an idle ingest would never stop)
    _at_least(stream, "stream", batch_size=1, block_ms=1)
    _at_least(stream, "stream", offline_flush_s=0, offline_flush_events=1)
    if not math.isfinite(stream.trim_interval_s) or stream.trim_interval_s < 0:
        raise ConfigError(
            f"{CONFIG_FILE}: stream.trim_interval_s is {stream.trim_interval_s}; give 0 or more "
            "seconds (0: after every acknowledgement)"
        )
    if stream.dead_letter_maxlen is not None and stream.dead_letter_maxlen < 1:
        raise ConfigError(
            f"{CONFIG_FILE}: stream.dead_letter_maxlen is {stream.dead_letter_maxlen}; give 1 or "
            "more (or null to keep every dead letter)"
        )
    if not stream.group:
        raise ConfigError(f"{CONFIG_FILE}: stream.group is empty; give the consumer group's name")
    defs = _definitions(raw.pop("definitions", None))
    registry = raw.pop("registry", "data/registry.json")
    if not isinstance(registry, str) or not registry:
        raise ConfigError(
            f"{CONFIG_FILE}: registry is {registry!r}; expected the registry file's path "
            "(a string such as data/registry.json)"
        )
    known = {"serving", "models"}
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(f"{CONFIG_FILE}: unknown key(s) {sorted(unknown)}")
    return RepoConfig(
        project=project,
        repo_path=repo,
        registry=registry,
        offline_store=offline,
        online_store=online,
        stream=stream,
        definitions=defs,
        extra=raw,
    )


def _definitions(raw: Any) -> tuple[str, ...]:
    """``definitions:`` as a tuple of file names: absent or null for none, one name, or a list."""
    if raw is None:
        return ()
    names = [raw] if isinstance(raw, str) else raw
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise ConfigError(
            f"{CONFIG_FILE}: definitions is {raw!r}; expected a file name or a list of file names"
        )
    return tuple(names)


def _check_online(online: OnlineStoreConfig) -> None:
    """Values the online store section must hold beyond their types, each error naming its key."""
    from featurestore._time import parse_duration

    if online.type != "embedded" and (not isinstance(online.url, str) or not online.url):
        raise ConfigError(f"{CONFIG_FILE}: online_store.url is {online.url!r}; give a redis:// URL")
    _at_least(online, "online_store", connect_timeout=0, socket_timeout=0)
    _at_least(online, "online_store", max_connections=1, write_batch_size=1)
    try:
        parse_duration(online.key_ttl_grace)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{CONFIG_FILE}: online_store.key_ttl_grace: {exc}") from None


def _at_least(section: Any, where: str, **least: float) -> None:
    """A ConfigError naming the first of ``least``'s fields below its bound (0: above zero)."""
    for key, low in least.items():
        v = getattr(section, key)
        if not math.isfinite(v) or v < low or (low == 0 and v <= 0):  # .inf: a wait without end
            need = "a number above 0" if low == 0 else f"{low} or more"
            need = need if math.isfinite(v) else f"a finite number ({need})"
            raise ConfigError(f"{CONFIG_FILE}: {where}.{key} is {v}; give {need}")


def _section(cls: type, raw: Any, name: str) -> Any:
    if raw is None:
        return cls()
    if isinstance(raw, str):
        raw = {"type": raw}
    if not isinstance(raw, dict):
        raise ConfigError(f"{CONFIG_FILE}: '{name}' must be a mapping")
    allowed = {f.name: f for f in fields(cls)}
    unknown = set(raw) - set(allowed)
    if unknown:
        raise ConfigError(
            f"{CONFIG_FILE}: unknown key(s) {sorted(unknown)} in '{name}'; known: {sorted(allowed)}"
        )
    try:
        out = cls(**raw)
    except TypeError as exc:
        raise ConfigError(f"{CONFIG_FILE}: bad '{name}': {exc}") from None
    check_types(out, name, numbers_too=_SIZES_AND_DURATIONS)
    return out


# str fields that may also be a bare number (bytes or seconds), read by their own parsers
_SIZES_AND_DURATIONS = frozenset(
    {"map_size", "memory_limit", "key_ttl_grace", "max_future", "max_past"}
)


_TYPE_NOUNS: dict[str, tuple[tuple[type, ...], str]] = {
    "int": ((int,), "a whole number"),
    "float": ((int, float), "a number"),
    "str": ((str,), "a string"),
    "bool": ((bool,), "true or false"),
    "None": ((type(None),), "null"),
}


def check_types(obj: Any, where: str, *, numbers_too: Collection[str] = ()) -> None:
    """A ConfigError naming the first field of the config dataclass ``obj`` whose value is not
    of its declared type (``where``: the section's name, e.g. "serving"). Fields declared as a
    Literal (or an optional one) must hold one of its values; fields declared as int, float,
    str, bool or an optional one of them are checked by type; the str fields named in
    ``numbers_too`` may also hold a number (sizes such as map_size are read from bytes)."""
    literals = _literal_fields(type(obj))
    for f in fields(obj):
        value = getattr(obj, f.name)
        if f.name in literals:
            allowed = literals[f.name]
            if not any(type(value) is type(a) and value == a for a in allowed):
                raise ConfigError(
                    f"{CONFIG_FILE}: {where}.{f.name} is {value!r}; expected {_one_of(allowed)}"
                )
            continue
        parts = [p.strip() for p in str(f.type).split("|")]
        if not all(p in _TYPE_NOUNS for p in parts):
            continue
        if f.name in numbers_too and "str" in parts:
            parts = [*parts, "float"]
        ok = any(
            isinstance(value, _TYPE_NOUNS[p][0]) and (p == "bool" or not isinstance(value, bool))
            for p in parts
        )
        if not ok:
            want = " or ".join(_TYPE_NOUNS[p][1] for p in parts)
            raise ConfigError(f"{CONFIG_FILE}: {where}.{f.name} is {value!r}; expected {want}")


@functools.cache
def _literal_fields(cls: type) -> dict[str, tuple[Any, ...]]:
    """The allowed values of each field of ``cls`` declared as a Literal (or an optional one);
    annotations that do not resolve at run time (names imported for type checking) are skipped."""
    names = vars(sys.modules[cls.__module__])
    out: dict[str, tuple[Any, ...]] = {}
    for f in fields(cls):
        try:  # an annotation is a string here (postponed evaluation), resolved in its module
            hint = eval(f.type, names) if isinstance(f.type, str) else f.type
        except NameError:
            continue
        args = typing.get_args(hint) if _is_union(hint) else (hint,)
        lits = [a for a in args if typing.get_origin(a) is Literal]
        if not lits:
            continue
        allowed = tuple(v for lit in lits for v in typing.get_args(lit))
        out[f.name] = allowed + ((None,) if type(None) in args else ())
    return out


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def _one_of(allowed: tuple[Any, ...]) -> str:
    """'a', 'a or b', 'a, b or c': values as a YAML file spells them."""
    words = ["null" if v is None else str(v) for v in allowed]
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"


def _parse_yaml(text: str) -> Any:
    """The YAML document of ``text`` with ``${VAR}`` expanded in its scalars (keys and values),
    never in comments. A plain (unquoted) scalar is typed after expansion, as if the value had
    been written there (``port: ${PORT:-8000}`` is a number); a quoted one stays a string."""
    import yaml

    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expand_nodes(node, loader, set())
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _expand_nodes(node: Any, loader: Any, seen: set[int]) -> None:
    """Expand ``${VAR}`` in every scalar under ``node`` (an alias's node once)."""
    import yaml

    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, yaml.ScalarNode):
        if "${" in node.value:
            node.value = _expand(node.value)
            if node.style is None:  # plain: typed by what it now says
                node.tag = loader.resolve(yaml.ScalarNode, node.value, (True, False))
        return
    if isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _expand_nodes(item, loader, seen)
    elif isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            _expand_nodes(key, loader, seen)
            _expand_nodes(value, loader, seen)


def _expand(text: str) -> str:
    """``${VAR}`` and ``${VAR:-default}`` from the environment; an unset VAR without a default
    is an error naming it (an empty value would surface later as a puzzle)."""

    def value(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        got = os.environ.get(name)
        if got is not None:
            return got
        if default is None:
            raise ConfigError(
                f"{CONFIG_FILE}: ${{{name}}} is not set and has no default; set it, or write "
                f"${{{name}:-default}}"
            )
        return default

    return _ENV.sub(value, text)
