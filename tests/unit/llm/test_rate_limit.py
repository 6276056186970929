"""Token bucket arithmetic with a fake clock (no real time passes)."""

from __future__ import annotations

import asyncio

from services.common.llm.rate_limit import TokenBucket, refill, wait_for_token


def test_refill_and_wait_formulas() -> None:
    assert refill(0.0, 2.0, 4.0, 0.25) == 1.0          # 0 + 4·0.25
    assert refill(1.5, 2.0, 4.0, 10.0) == 2.0          # capped at capacity
    assert wait_for_token(0.25, 2.0) == 0.375          # (1 - 0.25) / 2
    assert wait_for_token(1.0, 2.0) == 0.0


def test_bucket_spaces_requests_at_the_rate() -> None:
    now = [100.0]
    sleeps: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)
        now[0] += seconds

    bucket = TokenBucket(2.0, capacity=2, clock=lambda: now[0], sleep=fake_sleep)

    async def take(n: int) -> None:
        for _ in range(n):
            await bucket.acquire()

    asyncio.run(take(5))
    # Two tokens of burst, then one token every 1/2 s.
    assert sleeps == [0.5, 0.5, 0.5]
    assert now[0] == 101.5


def test_disabled_bucket_never_waits() -> None:
    sleeps: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    bucket = TokenBucket(0.0, sleep=fake_sleep)
    asyncio.run(bucket.acquire())
    assert not bucket.enabled and sleeps == []
