"""A token-bucket rate limiter for outbound LLM requests.

The bucket holds at most ``capacity`` tokens and refills at ``rate`` tokens per second; each
request takes one token and waits when none is left. Clock and sleep are injectable so the
arithmetic is tested without real time passing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


def refill(tokens: float, capacity: float, rate_per_s: float, elapsed_s: float) -> float:
    """Tokens after ``elapsed_s`` seconds: ``min(capacity, tokens + rate · elapsed)``."""
    return min(capacity, tokens + rate_per_s * max(0.0, elapsed_s))


def wait_for_token(tokens: float, rate_per_s: float) -> float:
    """Seconds until one whole token is available: ``max(0, (1 - tokens) / rate)``."""
    return max(0.0, (1.0 - tokens) / rate_per_s)


class TokenBucket:
    """Async token bucket: ``await bucket.acquire()`` before each request.

    ``rate_per_s <= 0`` disables limiting (acquire returns at once). ``capacity`` defaults to
    ``max(1, rate_per_s)``, i.e. at most one second's worth of burst.
    """

    def __init__(self, rate_per_s: float, capacity: float | None = None, *,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        if capacity is not None and capacity < 1:
            raise ValueError(f"capacity must be at least 1 token, got {capacity}")
        self.rate_per_s = float(rate_per_s)
        self.capacity = float(capacity if capacity is not None else max(1.0, self.rate_per_s))
        self._clock = clock
        self._sleep = sleep
        self._tokens = self.capacity
        self._last = clock()
        self._lock: asyncio.Lock | None = None

    @property
    def enabled(self) -> bool:
        return self.rate_per_s > 0

    async def acquire(self) -> None:
        if not self.enabled:
            return
        if self._lock is None:
            self._lock = asyncio.Lock()
        # One waiter at a time: the lock keeps the refill/consume pair atomic and makes waiting FIFO.
        async with self._lock:
            while True:
                now = self._clock()
                self._tokens = refill(self._tokens, self.capacity, self.rate_per_s, now - self._last)
                self._last = now
                if self._tokens >= 1.0:
                    self._tokens -= 1.0
                    return
                await self._sleep(wait_for_token(self._tokens, self.rate_per_s))
