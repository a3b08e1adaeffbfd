"""A rate limiter shared by every worker through Redis: a sliding window per CRM account and API family.

HubSpot counts requests per account over a rolling ten-second window (and search per second); all our
workers together must stay under it, so the window lives in Redis, checked and updated atomically by a
Lua script that reads Redis's own clock (one clock for every machine). A 429 that slips through anyway
(someone else using the same account) blocks the whole account for its Retry-After, and a budget the API
reports in its headers that is lower than the configured one replaces it.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import NamedTuple

from redis import Redis

# Returns 0 when a slot was taken, else the milliseconds to wait before trying again.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local learned = tonumber(redis.call('GET', KEYS[3]) or '0')
if learned > 0 and learned < limit then limit = learned end
local blocked = tonumber(redis.call('GET', KEYS[2]) or '0')
if blocked > now then return blocked - now end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) < limit then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], window)
  return 0
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return math.max(1, tonumber(oldest[2]) + window - now)
"""

_BLOCK = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local until_ms = now + tonumber(ARGV[1])
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if until_ms > current then redis.call('SET', KEYS[1], until_ms, 'PX', tonumber(ARGV[1])) end
return until_ms
"""


# Read-only: {requests counted in the window, the budget in force (learned or configured), ms blocked}.
_USAGE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit = tonumber(ARGV[2])
local learned = tonumber(redis.call('GET', KEYS[3]) or '0')
if learned > 0 and learned < limit then limit = learned end
local blocked = tonumber(redis.call('GET', KEYS[2]) or '0')
local used = redis.call('ZCOUNT', KEYS[1], now - tonumber(ARGV[1]), '+inf')
return {used, limit, math.max(0, blocked - now)}
"""


class RateLimitTimeout(Exception):
    """No slot came free within the time the caller was willing to wait."""

    def __init__(self, waited: float) -> None:
        super().__init__(f"rate limit: no slot within {waited:.1f}s")
        self.waited = waited


class Budget(NamedTuple):
    """Where a CRM's API budget stands, without spending any of it."""

    used: int  # requests counted in the current window
    limit: int  # the budget in force for the window (learned from the API, or configured)
    blocked: float  # seconds the budget stays blocked by a 429 (0.0 when it is not)
    # Every request spends an allocation for good (Salesforce's 24-hour one, shared with the org's other
    # integrations), so the sync batches every burst fully, however little of it is spent yet.
    scarce: bool = False


@dataclass(frozen=True)
class Limit:
    """At most `requests` per `seconds`."""

    requests: int
    seconds: float


class RateLimiter:
    """A sliding-window limiter for one budget (e.g. one HubSpot portal's ten-second limit)."""

    # Requests reach the CRM a little after we count them; a small margin on the window keeps two
    # requests counted 10.0 s apart from landing 9.99 s apart in the CRM's own window.
    MARGIN_SECONDS = 0.25

    def __init__(self, redis: Redis, name: str, limit: Limit) -> None:
        self.redis = redis
        self.window_key = f"switchboard:ratelimit:{name}"
        self.block_key = f"switchboard:ratelimit:{name}:blocked"
        self.learned_key = f"switchboard:ratelimit:{name}:learned"
        self.limit = limit
        self._acquire = redis.register_script(_ACQUIRE)
        self._block = redis.register_script(_BLOCK)
        self._usage = redis.register_script(_USAGE)

    def try_acquire(self) -> float:
        """Take a slot if one is free: 0.0, else the seconds to wait before trying again."""
        window_ms = int((self.limit.seconds + self.MARGIN_SECONDS) * 1000)
        wait_ms = self._acquire(
            keys=[self.window_key, self.block_key, self.learned_key],
            args=[window_ms, self.limit.requests, uuid.uuid4().hex],
        )
        return int(wait_ms) / 1000.0

    def acquire(self, timeout: float = 60.0) -> float:
        """Block until a slot is free (at most `timeout` seconds); returns how long it waited."""
        started = time.monotonic()
        while True:
            wait = self.try_acquire()
            if wait == 0:
                return time.monotonic() - started
            waited = time.monotonic() - started
            if waited + wait > timeout:
                raise RateLimitTimeout(waited)
            time.sleep(wait)

    def usage(self) -> tuple[int, int, float]:
        """Without taking a slot: (requests counted in the current window, the budget in force, seconds
        the budget stays blocked by a 429). For callers that pace themselves, e.g. a drain deciding
        whether to wait for fuller batches."""
        window_ms = int((self.limit.seconds + self.MARGIN_SECONDS) * 1000)
        used, limit, blocked_ms = self._usage(
            keys=[self.window_key, self.block_key, self.learned_key], args=[window_ms, self.limit.requests]
        )
        return int(used), int(limit), int(blocked_ms) / 1000.0

    def budget(self) -> Budget:
        """usage() as a Budget (what Connector.budget() returns)."""
        return Budget(*self.usage())

    def learn(self, requests: int) -> None:
        """The API told us its real budget (e.g. X-HubSpot-RateLimit-Max): never exceed it, for an hour."""
        if 0 < requests < self.limit.requests:
            self.redis.set(self.learned_key, requests, ex=3600)

    def block_for(self, seconds: float) -> None:
        """After a 429: nobody sends on this budget for `seconds` (the response's Retry-After)."""
        self._block(keys=[self.block_key], args=[max(1, int(seconds * 1000))])
