"""Apply-time checks of the repo's StreamSources: what ingest could not read or write right.

- two sources naming one Redis stream: ingest takes one lock and one consumer group per
  stream, so it could read them neither together (its own lock) nor one after the other (the
  first source's ingest consumes the entries the second never sees);
- a declared ``schema`` whose join-key type disagrees with the batch folder's files: ingest
  types events by the schema, so its files would hold the other type and the folder would
  stop reading as one table.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable

    import pyarrow as pa

    from featurestore.feature_view import FeatureView
    from featurestore.offline.store import OfflineStore
    from featurestore.sources import StreamSource


def stream_source_problems(offline: OfflineStore, views: Iterable[FeatureView]) -> list[str]:
    """One line per problem of the stream sources read by ``views``."""
    from featurestore.sources import StreamSource

    sources: dict[str, tuple[StreamSource, list[FeatureView]]] = {}
    for view in views:
        if isinstance(view.source, StreamSource):
            sources.setdefault(view.source.name, (view.source, []))[1].append(view)
    problems: list[str] = []
    by_stream: dict[str, str] = {}
    for name, (src, _) in sorted(sources.items()):
        first = by_stream.setdefault(src.stream, name)
        if first != name:
            problems.append(
                f"stream sources '{first}' and '{name}' both read Redis stream '{src.stream}'; "
                "ingest reads a stream for one source, so give each its own stream or let "
                "their views share one source"
            )
    for src, fed in sources.values():
        problems += _key_type_problems(offline, src, fed)
    return problems


def _key_type_problems(
    offline: OfflineStore, src: StreamSource, views: list[FeatureView]
) -> list[str]:
    """Join keys whose type in ``src.schema`` is not the type of the batch folder's files."""
    if src.schema is None or offline.is_empty_folder(src):
        return []  # typed by the files alone, or by the schema alone: nothing to disagree
    try:
        files = {f.name: f.type for f in offline.source_schema(src)}
    except Exception:  # an unreadable folder: the views' own checks report it
        return []
    declared = {f.name: f.dtype for f in src.schema}
    problems: list[str] = []
    keys = dict.fromkeys(k for v in views for k in v.join_keys)
    for key in keys:
        if key not in declared or key not in files:
            continue
        said, found = _kind(declared[key].to_arrow()), _kind(files[key])
        if said != found:
            problems.append(
                f"stream source '{src.name}': join key '{key}' is declared "
                f"{declared[key].name} in its schema but is {files[key]} in the files of its "
                f"batch folder; ingest would write {declared[key].name} keys beside them, so "
                "give the schema the files' type"
            )
    return problems


def _kind(t: pa.DataType) -> str:
    """Integers, strings or something else: how a join key of Arrow type ``t`` is written."""
    import pyarrow as pa

    if pa.types.is_integer(t):
        return "int"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "str"
    return str(t)
