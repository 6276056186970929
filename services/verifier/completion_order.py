"""Results in the order they finish, with the rest cancelled when the consumer stops early."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Iterable
from typing import TypeVar

T = TypeVar("T")


async def as_finished(awaitables: Iterable[Awaitable[T]]) -> AsyncIterator[T]:
    """Each result as soon as it is ready; a consumer that stops (a client gone, a deadline) cancels
    whatever has not finished, so no grading outlives its request."""
    tasks = [asyncio.ensure_future(awaitable) for awaitable in awaitables]
    try:
        for finished in asyncio.as_completed(tasks):
            yield await finished
    finally:
        for task in tasks:
            task.cancel()
