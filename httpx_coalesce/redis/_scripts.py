"""The Lua scripts: each runs atomically in Redis, so no leader acts on a round or a
lease that changed between two commands.

A round has three keys (see ``_names``): the key's *lease*, which only elects (it names
the round a newcomer follows); the round's own heartbeat, *round*, which says its leader
is alive; and its *stream* of records. A leader whose lease another process took during
a blip keeps its round (and its followers) to the end: two rounds of one key can run at
once, each on its own stream, but a newcomer only ever joins the lease holder's.

The scripts count commands: every ``redis.call`` is one in ``INFO commandstats``, and a
fleet runs these for every flight.
"""

from __future__ import annotations

__all__ = ["ACQUIRE", "APPEND", "RENEW"]

#: KEYS: lease, round. ARGV: token, lease_ms.
#: Returns {1, token} if this caller now leads (its round's heartbeat starts), else
#: {0, the current leader's token}: one round trip both elects and tells a follower
#: which stream to read. A key that is its own round (a follower's watch key) is one
#: lease and nothing more.
ACQUIRE = """
local holder = redis.call('SET', KEYS[1], ARGV[1], 'NX', 'GET', 'PX', ARGV[2])
if holder then
  return {0, holder}
end
if KEYS[2] ~= KEYS[1] then
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
end
return {1, ARGV[1]}
"""

#: KEYS: lease, stream, round. ARGV: token, lease_ms, stream_ttl_ms, final ('1' or '0'),
#: mode, then type and data of each record to append. Modes:
#:   '0' the stream may be new (its expiry is set);
#:   '1' the leader wrote to the stream before: 0 and nothing written if it is gone
#:       (evicted, or lost by a restart), and the leader writes its round again;
#:   '2' the round written again from its head: its heartbeat is taken again if Redis
#:       lost it, and the lease too if nobody holds it.
#: Appends only while the round is still this token's and returns 1; else 0, and
#: nothing is written. Not final: the keeper's renewals keep the round alive, so an
#: append with records touches nothing else (without records it is a heartbeat).
#: Final: the round ends in the same step as its last record (and the lease, if still
#: its own, is released), so whoever sees the round gone also sees that record.
APPEND = """
local round = redis.call('GET', KEYS[3])
if ARGV[5] == '2' then
  if round and round ~= ARGV[1] then
    return 0
  end
  redis.call('SET', KEYS[3], ARGV[1], 'PX', ARGV[2])
  redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2])
elseif round ~= ARGV[1] then
  return 0
end
if #ARGV > 5 then
  local first = 6
  if ARGV[5] == '1' then
    if not redis.call('XADD', KEYS[2], 'NOMKSTREAM', '*', 't', ARGV[6], 'd', ARGV[7]) then
      return 0
    end
    first = 8
  end
  for i = first, #ARGV, 2 do
    redis.call('XADD', KEYS[2], '*', 't', ARGV[i], 'd', ARGV[i + 1])
  end
  if ARGV[4] == '1' or ARGV[5] ~= '1' then
    redis.call('PEXPIRE', KEYS[2], ARGV[3])
  end
end
if ARGV[4] == '1' then
  redis.call('DEL', KEYS[3])
  if KEYS[1] ~= KEYS[3] and redis.call('GET', KEYS[1]) == ARGV[1] then
    redis.call('DEL', KEYS[1])
  end
elseif #ARGV == 5 and ARGV[5] ~= '2' then
  redis.call('PEXPIRE', KEYS[3], ARGV[2])
  if KEYS[1] ~= KEYS[3] and redis.call('GET', KEYS[1]) == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
  end
end
return 1
"""

#: KEYS: lease, stream and round of each round to renew. ARGV: lease_ms,
#: stream_ttl_ms, then each round's token. Returns 1 or 0 for each: whether the round
#: is still its leader's (0: Redis lost it, or the leader stalled past its lease). The
#: lease is extended while it is the round's, and taken back if Redis lost it and
#: nobody took it since; a lease another process holds is left to it. The heartbeat
#: of many rounds in one call: on Redis Cluster the keys of one call share a slot (the
#: flights of one bucket).
RENEW = """
local held = {}
for i = 1, #KEYS, 3 do
  local token = ARGV[2 + (i + 2) / 3]
  if redis.call('GET', KEYS[i + 2]) == token then
    redis.call('PEXPIRE', KEYS[i + 2], ARGV[1])
    redis.call('PEXPIRE', KEYS[i + 1], ARGV[2])
    if redis.call('SET', KEYS[i], token, 'NX', 'GET', 'PX', ARGV[1]) == token then
      redis.call('PEXPIRE', KEYS[i], ARGV[1])
    end
    held[#held + 1] = 1
  else
    held[#held + 1] = 0
  end
end
return held
"""
