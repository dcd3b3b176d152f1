"""The Redis wire details of the online stores: RESP packing, bulk reply reading, slot groups.

Kept apart from the store classes (as redis-py keeps its parsers apart from its commands): these
are the tricks that make a 10,000-row write cost a few C-level calls instead of redis-py's
per-command Python layers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

WRITE_CHUNK = 2000  # rows per send: bounds the client's buffer, not the server


SET = b"*3\r\n$3\r\nSET\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n"
SET_PXAT = b"*5\r\n$3\r\nSET\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n$4\r\nPXAT\r\n$%d\r\n%d\r\n"


def pack_sets(keys: list[bytes], values: list[bytes], expires: list[int | None] | None) -> bytes:
    """RESP for ``SET key value [PXAT ms]`` per row, in one ``%`` over a repeated template.

    redis-py's pipeline packs each command in Python (~10 us a row); interleaving the columns
    with slice assignments and one C-level format sends the same bytes for a fraction of that.
    """
    m = len(keys)
    if expires is None or all(e is None for e in expires):
        args: list[Any] = [None] * (4 * m)
        args[0::4] = map(len, keys)
        args[1::4] = keys
        args[2::4] = map(len, values)
        args[3::4] = values
        return (SET * m) % tuple(args)
    # every expiry a 13-digit ms time (2001..2286): one template fits all rows
    if None not in expires and 10**12 <= min(expires) and max(expires) < 10**13:  # type: ignore[type-var]
        args = [13] * (6 * m)
        args[0::6] = map(len, keys)
        args[1::6] = keys
        args[2::6] = map(len, values)
        args[3::6] = values
        args[5::6] = expires
        return (SET_PXAT * m) % tuple(args)
    parts = []
    for k, v, e in zip(keys, values, expires, strict=True):
        if e is None:
            parts.append(SET % (len(k), k, len(v), v))
        else:
            parts.append(SET_PXAT % (len(k), k, len(v), v, len(b"%d" % e), e))
    return b"".join(parts)


def read_replies(conn: Any, count: int) -> Exception | None:
    """Read ``count`` replies; returns the first error reply (all are read either way)."""
    for reply in replies(conn, count):
        if isinstance(reply, Exception):
            return reply
    return None


def replies(conn: Any, count: int) -> list[Any]:
    """Read ``count`` replies, error replies as exception objects (all are read either way).

    Uses the connection's hiredis reader directly when it has one (one C call per reply instead
    of redis-py's Python layers); otherwise falls back to ``read_response``.
    """
    import sys

    import redis

    parser = getattr(conn, "_parser", None)
    reader = getattr(parser, "_reader", None)
    # the reader's "incomplete" marker, set by redis-py's hiredis parser
    more = getattr(sys.modules.get(type(parser).__module__), "NOT_ENOUGH_DATA", None)
    out: list[Any] = []
    if reader is None or more is None or not hasattr(parser, "read_from_socket"):
        for _ in range(count):
            try:
                out.append(conn.read_response())
            except redis.ResponseError as exc:
                out.append(exc)
        return out
    gets = reader.gets
    while len(out) < count:
        reply = gets()
        if reply is more:
            parser.read_from_socket()
        else:
            out.append(reply)
    return out


def group_by_slot(client: Any, keys: Sequence[bytes]) -> dict[Any, dict[int, list[int]]]:
    """Row indexes per primary node and slot, from the client's slot map."""
    from redis.crc import key_slot

    by_slot: dict[int, list[int]] = {}
    for i, key in enumerate(keys):
        slot = key_slot(key)
        group = by_slot.get(slot)
        if group is None:
            by_slot[slot] = [i]
        else:
            group.append(i)
    nodes = client.nodes_manager
    # redis-py's slot table (slot -> [primary, replicas...]); get_node_from_slot is the
    # public way but costs ~10 us a call, too much for thousands of slots per batch
    table = getattr(nodes, "slots_cache", None)
    out: dict[Any, dict[int, list[int]]] = {}
    for slot, idx in by_slot.items():
        found = table.get(slot) if isinstance(table, dict) else None
        node = found[0] if found else nodes.get_node_from_slot(slot)
        out.setdefault(node, {})[slot] = idx
    return out


def group_by_node(client: Any, keys: list[bytes]) -> dict[Any, list[int]]:
    """Row indexes per primary node, from the client's slot map."""
    return {
        node: [i for idx in slots.values() for i in idx]
        for node, slots in group_by_slot(client, keys).items()
    }


def pack_mgets(keys: Sequence[bytes], groups: list[list[int]]) -> bytes:
    """RESP for one ``MGET`` per group of key indexes."""
    return b"".join([pack_mget([keys[i] for i in idx]) for idx in groups])


REDIRECT_ERRORS = ("MovedError", "AskError", "TryAgainError", "ClusterDownError")


def send_sets(
    conn: Any, keys: list[bytes], values: list[bytes], expires: list[int | None] | None
) -> None:
    """Send pipelined SETs in chunks without reading replies (the caller reads len(keys))."""
    # every chunk goes out before any reply is read: the server works on one chunk while the
    # next is packed; its replies (5 bytes each) wait in its output buffer
    for start in range(0, len(keys), WRITE_CHUNK):
        stop = start + WRITE_CHUNK
        exp = None if expires is None else expires[start:stop]
        packed = pack_sets(keys[start:stop], values[start:stop], exp)
        conn.send_packed_command([packed], check_health=start == 0)


_BULK_HEADS = [b"$%d" % n for n in range(4096)]  # "$<length>" of a bulk string, by length


def _pack(head: bytes, args: Sequence[bytes]) -> bytes:
    """RESP for a command of ``head`` (its array length and first words, without the last
    ``\r\n``) then ``args``: the length heads by table lookup and one ``\r\n`` join, all
    C-level passes (redis-py packs each argument in Python; a format per key is 3x slower)."""
    m = len(args)
    parts = [b""] * (2 * m + 1)
    parts[0] = head
    try:
        parts[1::2] = map(_BULK_HEADS.__getitem__, map(len, args))
    except IndexError:  # an argument of 4 KiB or more
        parts[1::2] = [b"$%d" % len(a) for a in args]
    parts[2::2] = args
    return b"\r\n".join(parts) + b"\r\n"


def pack_mget(keys: Sequence[bytes]) -> bytes:
    """RESP for ``MGET key...``."""
    return _pack(b"*%d\r\n$4\r\nMGET" % (len(keys) + 1), keys)


# Per key (KEYS[i]; ARGV[2i-1] its new row, ARGV[2i] its expiry in ms since the epoch, 0 for
# none): SET the row (PXAT the expiry, or without one, as write_batch does) unless the stored
# row has the same schema version and a later (event time, created time); equal rows keep the
# last written (codec.row_replaces is the same rule). Returns how many rows were written.
# A row starts with int64 event time, int64 created time, uint32 schema version (codec.ROW_HEAD):
# each int64 is read as (signed high, unsigned low) 32-bit halves, exact in Lua's doubles;
# strings are compared for equality only (Lua's < on strings follows the server's locale).
CAS_LUA = """
local written = 0
for i, key in ipairs(KEYS) do
  local new, at = ARGV[2 * i - 1], ARGV[2 * i]
  local old = redis.call('GET', key)
  local older = false
  if old and #old >= 20 and string.sub(old, 17, 20) == string.sub(new, 17, 20) then
    local oel, oeh, ocl, och = struct.unpack('<I4i4I4i4', old)
    local nel, neh, ncl, nch = struct.unpack('<I4i4I4i4', new)
    if neh ~= oeh then older = neh < oeh
    elseif nel ~= oel then older = nel < oel
    elseif nch ~= och then older = nch < och
    else older = ncl < ocl end
  end
  if not older then
    if at == '0' then
      redis.call('SET', key, new)
    else
      redis.call('SET', key, new, 'PXAT', at)
    end
    written = written + 1
  end
end
return written
"""
CAS_CHUNK = 500  # most keys per script call: a script blocks the server while it runs


def cas_args(values: Sequence[bytes], expires: Sequence[int | None] | None) -> list[bytes]:
    """``CAS_LUA``'s ARGV: each row, then its expiry (b"0" for none)."""
    args: list[bytes] = [b"0"] * (2 * len(values))
    args[0::2] = values
    if expires is not None:
        args[1::2] = [b"0" if e is None else b"%d" % e for e in expires]
    return args


def pack_cas(
    sha: bytes, keys: Sequence[bytes], values: Sequence[bytes], expires: Sequence[int | None] | None
) -> bytes:
    """RESP for one ``EVALSHA`` of ``CAS_LUA`` (by its ``sha``) over these rows."""
    n = len(keys)
    head = b"*%d\r\n$7\r\nEVALSHA\r\n$%d\r\n%b\r\n$%d\r\n%d" % (
        3 + 3 * n,
        len(sha),
        sha,
        len(b"%d" % n),
        n,
    )
    return _pack(head, [*keys, *cas_args(values, expires)])


def pack_cas_groups(
    sha: bytes,
    size: int,
    keys: Sequence[bytes],
    values: Sequence[bytes],
    expires: Sequence[int | None] | None,
) -> bytes:
    """RESP for one ``EVALSHA`` of ``CAS_LUA`` per ``size`` consecutive rows (a cluster's slot
    groups of one size: of one key, most of them in a spread batch), in one ``%`` over a
    repeated template like ``pack_sets``: the bytes ``pack_cas`` gives each group, for a
    fraction of the Python per call."""
    m = len(keys)
    if not m:
        return b""
    k = size
    head = b"*%d\r\n$7\r\nEVALSHA\r\n$%d\r\n%b\r\n$%d\r\n%d\r\n" % (
        3 + 3 * k,
        len(sha),
        sha,
        len(b"%d" % k),
        k,
    )
    bulk = b"$%d\r\n%b\r\n"
    template = head.replace(b"%", b"%%") + bulk * (3 * k)
    ats = cas_args(values, expires)[1::2]
    step = 6 * k  # per group: k keys, then k (value, expiry) pairs, each a length and bytes
    args: list[Any] = [None] * (6 * m)
    for j in range(k):
        args[2 * j :: step] = map(len, keys[j::k])
        args[2 * j + 1 :: step] = keys[j::k]
        at = 2 * k + 4 * j
        args[at::step] = map(len, values[j::k])
        args[at + 1 :: step] = values[j::k]
        args[at + 2 :: step] = map(len, ats[j::k])
        args[at + 3 :: step] = ats[j::k]
    return (template * (m // k)) % tuple(args)


def read_pooled(pool: Any, keys: Sequence[bytes]) -> list[bytes | None]:
    """One MGET on a pooled connection, past redis-py's per-command layers (command lookup,
    retry wrapper, response callbacks: ~70 us a call here, a third of a loopback read)."""
    conn = pool.get_connection()
    try:
        conn.send_packed_command([pack_mget(keys)])
        return conn.read_response()  # type: ignore[no-any-return]
    except BaseException:
        conn.disconnect()  # a reply may be left unread: never reuse this connection
        raise
    finally:
        pool.release(conn)


def cas_pooled(
    pool: Any,
    sha: bytes,
    keys: list[bytes],
    values: list[bytes],
    expires: list[int | None] | None,
) -> list[Any]:
    """``CAS_LUA`` (by ``sha``) over every ``CAS_CHUNK`` rows on one pooled connection, all
    sent before any reply is read; the replies (rows written, or an error) per chunk."""
    conn = pool.get_connection()
    try:
        for lo in range(0, len(keys), CAS_CHUNK):
            hi = lo + CAS_CHUNK
            part = None if expires is None else expires[lo:hi]
            packed = pack_cas(sha, keys[lo:hi], values[lo:hi], part)
            conn.send_packed_command([packed], check_health=lo == 0)
        return replies(conn, -(-len(keys) // CAS_CHUNK))
    except BaseException:
        conn.disconnect()  # replies may be left unread: never reuse this connection
        raise
    finally:
        pool.release(conn)


def write_pooled(
    pool: Any, keys: list[bytes], values: list[bytes], expires: list[int | None] | None
) -> None:
    """Pipelined SETs on one pooled connection; raises the first error reply."""
    conn = pool.get_connection()
    try:
        send_sets(conn, keys, values, expires)
        error = read_replies(conn, len(keys))
        if error is not None:
            raise error
    except BaseException:
        conn.disconnect()  # replies may be left unread: never reuse this connection
        raise
    finally:
        pool.release(conn)
