"""The Redis rate limiter: never more than the budget in any window, across threads; 429s block everyone."""

from __future__ import annotations

import threading
import time

import pytest

from app.core.ratelimit import Limit, RateLimiter, RateLimitTimeout


def test_never_exceeds_the_budget_across_concurrent_workers(redis_conn):
    limiter = RateLimiter(redis_conn, "test:portal", Limit(requests=10, seconds=1.0))
    stamps: list[float] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(6):
            limiter.acquire(timeout=10)
            with lock:
                stamps.append(time.monotonic())

    threads = [threading.Thread(target=worker) for _ in range(5)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    assert len(stamps) == 30
    stamps.sort()
    for i, t in enumerate(stamps):  # any one-second window holds at most 10 acquisitions
        assert sum(1 for u in stamps[i:] if u - t < 1.0) <= 10
    # 30 requests at 10 per (1 + 0.25 margin) s need two full windows; a perfect limiter takes ~2.5 s
    assert 2.3 < elapsed < 4.0


def test_try_acquire_reports_the_wait(redis_conn):
    limiter = RateLimiter(redis_conn, "test:search", Limit(requests=2, seconds=1.0))
    assert limiter.try_acquire() == 0 and limiter.try_acquire() == 0
    wait = limiter.try_acquire()
    assert 0 < wait <= 1.25


def test_block_for_stops_every_caller(redis_conn):
    limiter = RateLimiter(redis_conn, "test:blocked", Limit(requests=100, seconds=10.0))
    other = RateLimiter(redis_conn, "test:blocked", Limit(requests=100, seconds=10.0))
    limiter.block_for(0.5)
    assert 0.3 < other.try_acquire() <= 0.5
    with pytest.raises(RateLimitTimeout):
        other.acquire(timeout=0.1)
    assert other.acquire(timeout=2) >= 0.2


def test_a_learned_lower_budget_wins(redis_conn):
    limiter = RateLimiter(redis_conn, "test:learned", Limit(requests=100, seconds=10.0))
    limiter.learn(2)
    assert limiter.try_acquire() == 0 and limiter.try_acquire() == 0
    assert limiter.try_acquire() > 0
    limiter.learn(500)  # never raises the configured budget
    assert redis_conn.get(limiter.learned_key) == b"2"
