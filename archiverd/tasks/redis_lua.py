"""The Lua scripts behind :class:`~archiverd.tasks.redis_store.RedisFleet`.

Each script is one round trip and one atomic step. The pieces that more than
one script needs (Redis' clock, dropping expired slots and queue entries,
the fenced write of a task record) are written once here and put together
below, so the slot limit, the queue and the record mean the same whichever
script touches them.

Keys and arguments are listed above each script. Times that daemons compare
come from Redis' own clock (``TIME``), never from a host's.
"""

from __future__ import annotations

# -- pieces ------------------------------------------------------------------------

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""


def _free_expired_slots(slots: str) -> str:
    """Drop the slots whose holder stopped renewing them."""
    return f"redis.call('ZREMRANGEBYSCORE', {slots}, '-inf', now)\n"


def _drop_expired_queue(queue: str, expiry: str) -> str:
    """Drop the queue entries whose holder stopped renewing them."""
    return f"""
local expired = redis.call('ZRANGEBYSCORE', {expiry}, '-inf', now)
for i = 1, #expired, 500 do
    local batch = {{unpack(expired, i, math.min(i + 499, #expired))}}
    redis.call('ZREM', {queue}, unpack(batch))
    redis.call('ZREM', {expiry}, unpack(batch))
end
"""


# The task record's one writer: replace the whole record with ARGV[first..last]
# (name, value pairs) for ttl ms, unless it already holds this token's write
# seq or a later one (writes may reach Redis out of order over the pool's
# connections). A record of another token (the holder before a take-over) is
# replaced whatever its seq. Callers check the lock first.
_WRITE_RECORD = """
local function write_record(record, token, seq, ttl, first, last)
    if last < first then return end
    if redis.call('HGET', record, 'token') == token
        and tonumber(redis.call('HGET', record, 'seq')) >= tonumber(seq) then
        return
    end
    redis.call('DEL', record)
    redis.call('HSET', record, 'token', token, 'seq', seq,
               unpack(ARGV, first, last))
    redis.call('PEXPIRE', record, ttl)
end
"""

# -- locks -------------------------------------------------------------------------

# Taken, or already ours (so that a retried SET cannot refuse its own lock).
# KEYS: lock. ARGV: token, ttl ms.
ACQUIRE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
if redis.call('GET', KEYS[1]) == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return 1
end
return 0
"""

# KEYS: lock. ARGV: token.
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""

# -- slots and the queue -------------------------------------------------------------

# KEYS: slots zset (token -> expiry ms). ARGV: token, limit, ttl ms.
TAKE_SLOT = (
    _NOW
    + _free_expired_slots("KEYS[1]")
    + """
local expiry = string.format('%d', now + tonumber(ARGV[3]))
if redis.call('ZSCORE', KEYS[1], ARGV[1])
    or redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
    redis.call('ZADD', KEYS[1], expiry, ARGV[1])
    return 1
end
return 0
"""
)

# Renew a slot unless it expired (its holder was given up on).
_RENEW_SLOT = """
local function renew_slot(slots, token, ttl)
    local score = redis.call('ZSCORE', slots, token)
    if score and tonumber(score) > now then
        redis.call('ZADD', slots, string.format('%d', now + tonumber(ttl)), token)
        return 1
    end
    return 0
end
"""

# -- a task's steps, each one round trip ---------------------------------------------

# The holder's heartbeat, fenced: renew the lock (and, while it works, its
# slot) and rewrite the task record, only while the lock is still this
# token's. 1, or 0 (nothing done) when the lock is not.
# KEYS: lock, record, slots. ARGV: token, lock ttl ms, record ttl ms, seq,
# slot ttl ms (0: no slot to renew), fields...
KEEP = (
    _NOW
    + _RENEW_SLOT
    + _WRITE_RECORD
    + """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
if tonumber(ARGV[5]) > 0 then renew_slot(KEYS[3], ARGV[1], ARGV[5]) end
write_record(KEYS[2], ARGV[1], ARGV[4], ARGV[3], 6, #ARGV)
return 1
"""
)

# A task's turn at the fleet's slots, fenced by its lock: renew the lock;
# then, if nobody waits ahead of it in the fleet's queue and a slot is free,
# take the slot, leave the queue and write the record as started (-1);
# otherwise join the queue or keep its place there, write the record as
# queued, and answer how many wait ahead of it (0 or more). -2 (nothing done)
# when the lock is no longer this token's.
# KEYS: lock, record, queue, queue expiry, place counter, slots.
# ARGV: token, lock ttl ms, record ttl ms, seq, limit, slot ttl ms, queue
# ttl ms, n, then n items of the started record, then the queued record
# (either may be empty: not written).
TURN = (
    _NOW
    + _WRITE_RECORD
    + """
local token = ARGV[1]
if redis.call('GET', KEYS[1]) ~= token then return -2 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
"""
    + _drop_expired_queue("KEYS[3]", "KEYS[4]")
    + _free_expired_slots("KEYS[6]")
    + """
local rank = redis.call('ZRANK', KEYS[3], token)
local ahead = rank or redis.call('ZCARD', KEYS[3])
local n = tonumber(ARGV[8])
if ahead == 0 and (redis.call('ZSCORE', KEYS[6], token)
        or redis.call('ZCARD', KEYS[6]) < tonumber(ARGV[5])) then
    redis.call('ZADD', KEYS[6], string.format('%d', now + tonumber(ARGV[6])), token)
    redis.call('ZREM', KEYS[3], token)
    redis.call('ZREM', KEYS[4], token)
    write_record(KEYS[2], token, ARGV[4], ARGV[3], 9, 8 + n)
    return -1
end
if not rank then
    redis.call('ZADD', KEYS[3], redis.call('INCR', KEYS[5]), token)
end
redis.call('ZADD', KEYS[4], string.format('%d', now + tonumber(ARGV[7])), token)
write_record(KEYS[2], token, ARGV[4], ARGV[3], 9 + n, #ARGV)
return ahead
"""
)

# A task's end: leave the queue, give back the slot; then, if the lock is
# still this token's and a record is given, write the record and release the
# lock (1). 0 when only the first part was done.
# KEYS: lock, record, queue, queue expiry, slots. ARGV: token, record ttl ms,
# seq, fields... (none: the lock was lost, leave the record alone).
FINISH = (
    _WRITE_RECORD
    + """
local token = ARGV[1]
redis.call('ZREM', KEYS[3], token)
redis.call('ZREM', KEYS[4], token)
redis.call('ZREM', KEYS[5], token)
if #ARGV < 4 or redis.call('GET', KEYS[1]) ~= token then return 0 end
write_record(KEYS[2], token, ARGV[3], ARGV[2], 4, #ARGV)
redis.call('DEL', KEYS[1])
return 1
"""
)
