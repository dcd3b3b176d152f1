"""Trimming a source's stream of the entries no consumer group needs any more.

Ingest acknowledges an entry only once its event is online and in its Parquet file, so what a
group has acknowledged is safe to drop. Every group on the stream counts, ingest's and other
applications' alike: an entry stays while any group has not had it delivered (it lies after the
group's last-delivered id) or holds it pending (at or after the group's oldest pending entry).
The bound is computed and applied in one server-side script, so no group can be created, moved
back or read between the look and the trim. Exact trimming (``XTRIM MINID``, Redis 6.2 or
later): every entry before the bound goes, and the bound itself stays.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from featurestore.errors import FeatureStoreError

# KEYS: the stream. ARGV: ingest's consumer group. Returns {bound or false, entries trimmed,
# entries left}. Nothing is trimmed when the key is not a stream, or when ingest's group is
# missing (it is created again at the first entry, and would want the stream whole); XTRIM
# still runs then (MINID 0-0 removes nothing), so a server that refuses it says so at start.
# Ids are compared as numbers written in decimal (a Lua number loses digits past 2^53).
_TRIM = """
if redis.call('TYPE', KEYS[1]).ok ~= 'stream' then return {false, 0, 0} end
local function split(id)
  local dash = string.find(id, '-', 1, true)
  return string.sub(id, 1, dash - 1), string.sub(id, dash + 1)
end
local function below(a, b)
  if #a ~= #b then return #a < #b end
  return a < b
end
local function older(a, b)
  local ams, aseq = split(a)
  local bms, bseq = split(b)
  if ams ~= bms then return below(ams, bms) end
  return below(aseq, bseq)
end
local ours, bound = false, nil
for _, flat in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local g = {}
  for i = 1, #flat, 2 do g[flat[i]] = flat[i + 1] end
  if g['name'] == ARGV[1] then ours = true end
  local keep = g['last-delivered-id']
  local pending = redis.call('XPENDING', KEYS[1], g['name'])
  if pending[1] > 0 and older(pending[2], keep) then keep = pending[2] end
  if bound == nil or older(keep, bound) then bound = keep end
end
if not ours or bound == nil then bound = '0-0' end
local trimmed = redis.call('XTRIM', KEYS[1], 'MINID', bound)
if bound == '0-0' then bound = false end
return {bound, trimmed, redis.call('XLEN', KEYS[1])}
"""


@dataclass(frozen=True)
class Trimmed:
    """One trim of a stream: the id it kept from (None: nothing was trimmed), entries removed,
    entries left."""

    bound: str | None
    removed: int
    left: int


class StreamTrimmer:
    """Trims streams on one client (a plain or cluster client: the script names one key)."""

    def __init__(self, client: Any, group: str) -> None:
        self.client = client
        self.group = group
        self._script: Any = None

    def trim(self, source: str, stream: str) -> Trimmed:
        """Drop the entries of ``stream`` that every consumer group is done with.

        A server that refuses (older than Redis 6.2, a user not allowed XTRIM) is a one-line error
        naming the stream and the fix; connection errors pass through (ingest retries them).
        """
        import redis

        if self._script is None:  # made on first use: a cluster client connects then
            self._script = self.client.register_script(_TRIM)
        try:
            bound, removed, left = self._script(keys=[stream], args=[self.group])
        except redis.ResponseError as exc:
            if isinstance(exc, redis.exceptions.ClusterError):  # a failover: retried
                raise
            raise FeatureStoreError(
                f"stream source '{source}': trimming stream '{stream}' failed "
                f"({str(exc).splitlines()[0]}); stream.trim needs Redis 6.2 or later (XTRIM "
                "MINID) and the XTRIM, XINFO and XPENDING commands: upgrade, or set stream.trim: "
                "false"
            ) from None
        text = bound.decode() if isinstance(bound, bytes) else bound
        return Trimmed(text or None, int(removed), int(left))
