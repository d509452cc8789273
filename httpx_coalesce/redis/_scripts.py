"""The Lua scripts: each runs atomically in Redis, so no leader acts on a lease that
has passed to another between two commands."""

from __future__ import annotations

__all__ = ["ACQUIRE", "APPEND", "RENEW"]

#: KEYS: lease. ARGV: token, lease_ms.
#: Returns {1, token} if this caller now leads, else {0, the current leader's token}:
#: one round trip both elects and tells a follower which stream to read.
ACQUIRE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {1, ARGV[1]}
end
return {0, redis.call('GET', KEYS[1])}
"""

#: KEYS: lease, stream. ARGV: token, lease_ms, stream_ttl_ms, final ('1' or '0'),
#: expect_stream ('1' or '0'), then type and data of each record to append.
#: Appends only while the lease is still this token's, and returns 1; else 0, and
#: nothing is written. With expect_stream (the leader wrote to it before), 0 too if
#: the stream is gone (evicted, or lost by a restart that kept the lease): the leader
#: then writes its round again from the start. Not final: the lease is extended (appending is a heartbeat
#: too; with no records it is the heartbeat). Final: the lease is released in the
#: same step as the last record, so whoever sees the lease gone also sees that record.
APPEND = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
if ARGV[5] == '1' and redis.call('EXISTS', KEYS[2]) == 0 then
  return 0
end
for i = 6, #ARGV, 2 do
  redis.call('XADD', KEYS[2], '*', 't', ARGV[i], 'd', ARGV[i + 1])
end
redis.call('PEXPIRE', KEYS[2], ARGV[3])
if ARGV[4] == '1' then
  redis.call('DEL', KEYS[1])
else
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 1
"""

#: KEYS: lease and stream of each lease to renew. ARGV: lease_ms, stream_ttl_ms, then
#: each lease's token. Returns 1 or 0 for each (as APPEND with no records): the
#: heartbeat of many leases in one call. On Redis Cluster the keys of one call share a
#: slot (the flights of one bucket).
RENEW = """
local held = {}
for i = 1, #KEYS, 2 do
  local token = ARGV[2 + (i + 1) / 2]
  if redis.call('GET', KEYS[i]) == token then
    redis.call('PEXPIRE', KEYS[i + 1], ARGV[2])
    redis.call('PEXPIRE', KEYS[i], ARGV[1])
    held[#held + 1] = 1
  else
    held[#held + 1] = 0
  end
end
return held
"""
