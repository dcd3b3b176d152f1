"""Dead letters of stream ingestion: list them, send them back to their stream, or drop them.

``featurestore ingest`` writes each bad event to ``<stream><stream.dead_letter_suffix>`` with
fields ``id`` (the original entry id), ``source``, ``reason`` and ``data``: the original entry's
fields as one JSON object (name -> string). A replay XADDs exactly those fields back to the
stream (a ``data`` entry as a ``data`` field with the same JSON, a flat entry with the same flat
fields), so the next ingest judges the event again under the definitions of then.

Each move back is one Lua script (XADD to the stream, then XDEL from the dead-letter stream):
Redis runs it atomically, and an XADD that fails stops it before the XDEL, so a letter is never
lost nor sent twice. (MULTI/EXEC would not do: Redis runs the rest of a transaction after a
command in it fails.) On a Redis Cluster both keys must share a hash slot (a stream named with a
hash tag, ``{tx_events}``); replay refuses otherwise, while list and drop work anywhere.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from featurestore.errors import FeatureStoreError
from featurestore.online.stream.events import as_text
from featurestore.online.stream.streams import dead_letter_name, stream_sources, using_client

if TYPE_CHECKING:
    from featurestore.store import FeatureStore

_PAGE = 1000  # dead letters read per XRANGE
_BATCH = 500  # moves or deletions sent per round trip

# KEYS: stream, dead-letter stream. ARGV: the consumer group, the original entry's id, n (field
# pairs), the n pairs, the letter's id, then the ids of its duplicates. Returns the new entry
# id; false if the letter is already gone (another replay moved it); 0 if the original entry
# is still pending in the group (ingest reads it again itself, see Ingester._handle).
_MOVE = """
local n = tonumber(ARGV[3])
local letter = ARGV[2 * n + 4]
if #redis.call('XRANGE', KEYS[2], letter, letter) == 0 then return false end
if ARGV[2] ~= '' then
  local p = redis.pcall('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
  if type(p) == 'table' and p.err == nil and #p > 0 then return 0 end
end
local id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 4, 2 * n + 3))
redis.call('XDEL', KEYS[2], unpack(ARGV, 2 * n + 4))
return id
"""


@dataclass(frozen=True)
class DeadLetter:
    """One dead letter: its own entry id, the original entry's id, source, reason and fields.

    ``fields``: the original entry's fields as it had them (name -> value, as text; bytes that
    were not UTF-8 read as U+FFFD), what a replay sends back; None when the letter's ``data``
    cannot be read (it cannot be replayed).
    """

    letter_id: str
    original_id: str
    source: str
    reason: str
    fields: dict[str, str] | None

    @property
    def event(self) -> str:
        """What identifies the event: the original entry id (the letter's own id without one)."""
        return self.original_id or self.letter_id

    def to_dict(self) -> dict[str, Any]:
        """As plain JSON-ready values (what ``featurestore dead-letters list --json`` prints)."""
        return {
            "letter_id": self.letter_id,
            "original_id": self.original_id,
            "source": self.source,
            "reason": self.reason,
            "fields": self.fields,
        }


def dead_letter_stream(store: FeatureStore, source: str) -> tuple[str, str]:
    """The Redis stream of a StreamSource and its dead-letter stream; an unknown source is an
    error naming the known ones."""
    found = stream_sources(store)
    if source not in found:
        if not found:
            raise FeatureStoreError(
                f"unknown stream source '{source}': no applied feature view reads a StreamSource"
            )
        raise FeatureStoreError(f"unknown stream source '{source}'; known: {sorted(found)}")
    stream = found[source][0].stream
    return stream, dead_letter_name(store, stream)


def list_dead_letters(
    store: FeatureStore,
    source: str,
    *,
    limit: int | None = 100,
    reason_contains: str | None = None,
    client: Any = None,
) -> list[DeadLetter]:
    """The oldest ``limit`` dead letters of ``source`` (None: all) whose reason holds
    ``reason_contains`` (case-insensitive), oldest first."""
    _, dead = dead_letter_stream(store, source)
    with using_client(store, client, timeout=30.0) as c:
        out = []
        for letter in _scan(c, dead):
            if limit is not None and len(out) >= limit:
                break
            if _matches(letter, reason_contains):
                out.append(letter)
        return out


def replay_dead_letters(
    store: FeatureStore,
    source: str,
    *,
    limit: int | None = None,
    reason_contains: str | None = None,
    client: Any = None,
) -> int:
    """Send matching dead letters back to ``source``'s stream with their original fields (each
    moved atomically) for ingest to read again; returns how many events were sent back.

    ``limit`` caps the events sent (oldest first). A letter written twice (an ingest crash) is
    sent once and both copies are deleted. Letters whose fields cannot be read stay, and so do
    letters whose entry the ingest group has not acknowledged yet (a crash came between): ingest
    reads that entry again itself, and drops the letter if the event is good by then. A
    replayed event gets a new entry id: ``stream.max_future``/``max_past`` judge it by when it
    is replayed.
    """
    stream, dead = dead_letter_stream(store, source)
    with using_client(store, client, timeout=30.0) as c:
        _check_one_slot(c, source, stream, dead)
        chosen: dict[str, DeadLetter] = {}  # event -> the letter to send back
        for letter in _scan(c, dead):
            if limit is not None and len(chosen) >= limit:
                break
            if letter.fields and letter.event not in chosen and _matches(letter, reason_contains):
                chosen[letter.event] = letter
        copies: dict[str, list[str]] = {e: [] for e in chosen}
        for letter in _scan(c, dead):  # the other copies of each chosen event, wherever they are
            if letter.event in copies and letter.letter_id != chosen[letter.event].letter_id:
                copies[letter.event].append(letter.letter_id)
        group = store.config.stream.group
        return _send_back(c, source, stream, dead, group, list(chosen.values()), copies)


def _send_back(
    c: Any,
    source: str,
    stream: str,
    dead: str,
    group: str,
    todo: list[DeadLetter],
    copies: dict[str, list[str]],
) -> int:
    """Move each letter (and its copies) with the script, a batch per round trip; the number
    moved, or an error naming the stream at the first that failed (those before stay moved)."""
    import redis

    move = c.register_script(_MOVE)
    sent = 0
    for i in range(0, len(todo), _BATCH):
        calls = []
        for letter in todo[i : i + _BATCH]:
            pairs = [x for kv in (letter.fields or {}).items() for x in kv]
            calls.append(
                [group, letter.original_id, len(pairs) // 2, *pairs, letter.letter_id,
                 *copies[letter.event]]
            )  # fmt: skip
        results: list[Any] = []
        if isinstance(c, redis.Redis):
            pipe = c.pipeline(transaction=False)
            for args in calls:
                move(keys=[stream, dead], args=args, client=pipe)
            results = pipe.execute(raise_on_error=False)
        else:  # a cluster client: a call each, to the node of the keys' slot
            for args in calls:
                try:
                    results.append(move(keys=[stream, dead], args=args))
                except redis.ResponseError as exc:
                    results.append(exc)
                    break
        sent += sum(1 for r in results if r and not isinstance(r, (Exception, int)))
        failed = next((r for r in results if isinstance(r, Exception)), None)
        if failed is not None:
            raise FeatureStoreError(
                f"stream source '{source}': sending dead letters back to stream '{stream}' "
                f"failed after {sent:,} ({str(failed).splitlines()[0]})"
            )
    return sent


def drop_dead_letters(
    store: FeatureStore,
    source: str,
    *,
    reason_contains: str | None = None,
    everything: bool = False,
    client: Any = None,
) -> int:
    """Delete ``source``'s dead letters whose reason holds ``reason_contains`` (or, with
    ``everything``, all of them); returns how many were deleted."""
    _, dead = dead_letter_stream(store, source)
    if not reason_contains and not everything:
        raise FeatureStoreError(
            f"stream source '{source}': dropping dead letters needs a reason filter, or "
            "everything=True (--all) to drop them all"
        )
    with using_client(store, client, timeout=30.0) as c:
        doomed = [x.letter_id for x in _scan(c, dead) if _matches(x, reason_contains)]
        deleted = 0
        for i in range(0, len(doomed), _BATCH):
            deleted += int(c.xdel(dead, *doomed[i : i + _BATCH]))
        return deleted


def count_dead_letters(store: FeatureStore, source: str, *, client: Any = None) -> int:
    """How many dead letters ``source`` has (XLEN of its dead-letter stream)."""
    _, dead = dead_letter_stream(store, source)
    with using_client(store, client, timeout=30.0) as c:
        return int(c.xlen(dead))


def check_replayable(store: FeatureStore, source: str, *, client: Any = None) -> None:
    """Raise (one line) if ``source``'s dead letters cannot be moved back atomically: on a
    Redis Cluster, its stream and dead-letter stream must share a hash slot."""
    stream, dead = dead_letter_stream(store, source)
    with using_client(store, client, timeout=30.0) as c:
        _check_one_slot(c, source, stream, dead)


def _check_one_slot(c: Any, source: str, stream: str, dead: str) -> None:
    """On a Redis Cluster, a letter moves atomically only between keys of one slot."""
    import redis
    from redis.crc import key_slot

    if isinstance(c, redis.Redis) or key_slot(stream.encode()) == key_slot(dead.encode()):
        return
    raise FeatureStoreError(
        f"stream source '{source}': on a Redis Cluster, replay needs stream '{stream}' and its "
        f"dead letters '{dead}' in one hash slot (each letter moves atomically); name the "
        f"stream with a hash tag, e.g. '{{{stream}}}' (list and drop work as they are)"
    )


def _matches(letter: DeadLetter, reason_contains: str | None) -> bool:
    return not reason_contains or reason_contains.lower() in letter.reason.lower()


def _scan(client: Any, dead: str) -> Iterator[DeadLetter]:
    """Every letter of the dead-letter stream, oldest first, a page per XRANGE."""
    start = "-"
    while True:
        page = client.xrange(dead, start, "+", count=_PAGE)
        for rid, fields in page:
            yield _letter(as_text(rid), fields)
        if len(page) < _PAGE:
            return
        start = "(" + as_text(page[-1][0])


def _letter(letter_id: str, fields: dict[Any, Any]) -> DeadLetter:
    """A dead-letter entry as a DeadLetter; its ``data`` back as the original fields."""
    f = {as_text(k): as_text(v) for k, v in fields.items()}
    try:
        data = orjson.loads(f.get("data", ""))
    except orjson.JSONDecodeError:
        data = None
    ok = isinstance(data, dict) and data and all(isinstance(v, str) for v in data.values())
    return DeadLetter(
        letter_id=letter_id,
        original_id=f.get("id", ""),
        source=f.get("source", ""),
        reason=f.get("reason", ""),
        fields=data if ok else None,
    )
