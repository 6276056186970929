"""Reward sources the run loop scores rollouts with: the rewardhub API (async batches) or an in-process callable.

Both give one :class:`RewardOutcome` per rollout with the grader's status. An outcome whose status
is not ``ok`` has no score (``None``); the loop leaves it out of its group's baseline and counts it.
A service that cannot be reached after the client's retries raises
:class:`RewardServiceUnavailable` — an outage never turns into zero rewards.

``submit`` returns a future so the loop can generate the next chunk of rollouts while the
previous one is being scored.
"""

from __future__ import annotations

import asyncio
import math
import os
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from rewardhub.client import AsyncRewardClient, RewardHubError
from trainer.config import DEFAULT_API_KEY_ENV
from trainer.data import PromptRow
from trainer.rollout import Rollout

STATUSES = ("ok", "invalid_input", "timeout", "error")


def status_counts(statuses: Iterable[str]) -> dict[str, float]:
    """``reward_<status>_count`` for each status (``reward_invalid_input_count``: rollouts the reward
    service could not grade, e.g. a completion with a NUL character); an unknown status counts as error."""
    counts = dict.fromkeys(STATUSES, 0.0)
    for status in statuses:
        counts[status if status in counts else "error"] += 1.0
    return {f"reward_{status}_count": n for status, n in counts.items()}


@dataclass(frozen=True)
class RewardItem:
    """One rollout to score: its prompt row's prompt and ground truth, and the completion text."""

    id: str
    prompt: str | list[dict[str, Any]]
    completion: str
    ground_truth: Any
    data_source: str = ""


@dataclass(frozen=True)
class RewardOutcome:
    """A rollout's reward; ``score`` is None unless ``status`` is ``ok`` with a finite score."""

    score: float | None
    status: str

    @classmethod
    def of(cls, score: float | None, status: str) -> RewardOutcome:
        usable = status == "ok" and score is not None and math.isfinite(float(score))
        if status == "ok" and not usable:
            status = "error"  # an "ok" without a finite score is a grader fault, not a reward
        return cls(float(score) if usable and score is not None else None, status)

    @property
    def ok(self) -> bool:
        return self.score is not None


class RewardServiceError(RuntimeError):
    """The reward service answered with an error the run cannot continue past (bad spec, bad key)."""


class RewardServiceUnavailable(RewardServiceError):
    """The reward service could not be reached, or kept failing, after the client's retries."""


class RewardSource(Protocol):
    def submit(self, rows: Sequence[PromptRow], rollouts: Sequence[Rollout]) -> Future[list[RewardOutcome]]:
        """Start scoring ``rollouts`` (``rollout.prompt_index`` indexes ``rows``); one outcome each, in order."""
        ...

    def close(self) -> None:
        ...


def reward_items(rows: Sequence[PromptRow], rollouts: Sequence[Rollout]) -> list[RewardItem]:
    items = []
    for n, rollout in enumerate(rollouts):
        row = rows[rollout.prompt_index]
        items.append(RewardItem(id=str(n), prompt=row.prompt, completion=rollout.text,
                                ground_truth=row.ground_truth, data_source=row.data_source))
    return items


# An in-process scorer: (completion, ground_truth, item) -> score, None (undecided) or (score, status).
ScoreFn = Callable[[str, Any, RewardItem], "float | tuple[float | None, str] | None"]


class CallableRewards:
    """Scores in-process with a Python function (tests, benchmarks); an exception is that item's ``error``."""

    def __init__(self, fn: ScoreFn) -> None:
        self.fn = fn

    def score(self, items: Sequence[RewardItem]) -> list[RewardOutcome]:
        return [self._one(item) for item in items]

    def submit(self, rows: Sequence[PromptRow], rollouts: Sequence[Rollout]) -> Future[list[RewardOutcome]]:
        future: Future[list[RewardOutcome]] = Future()
        future.set_result(self.score(reward_items(rows, rollouts)))
        return future

    def _one(self, item: RewardItem) -> RewardOutcome:
        try:
            value = self.fn(item.completion, item.ground_truth, item)
        except Exception:  # a scorer bug is that item's error, visible in the non-ok share
            return RewardOutcome(None, "error")
        if isinstance(value, tuple):
            return RewardOutcome.of(value[0], value[1])
        if value is None:
            return RewardOutcome(None, "invalid_input")
        return RewardOutcome.of(float(value), "ok")

    def close(self) -> None:
        return None


def local_api_key(config: Any) -> str:
    """The API key from this process's environment, for a run its owner started (CLI, Python)."""
    return os.environ.get(getattr(config, "api_key_env", None) or DEFAULT_API_KEY_ENV, "")


class HttpRewards:
    """Scores through ``POST /v1/rewards``: batches of ``batch_size`` items, ``concurrency`` requests at once.

    ``config`` is the run config's ``reward`` section. Transient failures (connection errors,
    502/503/504) are retried by the client with the same idempotency key; what still fails raises
    :class:`RewardServiceUnavailable` from the future.

    ``api_key`` is the key to send (the trainer service passes the one it minted for the run).
    Without it the key comes from this process's environment: the variable a local config names
    (:class:`~trainer.config.LocalRewardConfig`), else ``REWARDHUB_API_KEY``. ``base_url``
    overrides ``config.url`` (the service resolves the platform's gateway for a run).
    """

    def __init__(self, config: Any, *, api_key: str | None = None, base_url: str | None = None,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        if config is None:
            raise ValueError("reward: the run config names no reward spec and no in-process reward source was given")
        self.config = config
        self.transport = transport
        self.base_url = base_url or config.url
        self.api_key = api_key if api_key is not None else local_api_key(config)
        self.batch_size = int(getattr(config, "batch_size", 256))
        # One thread runs the event loop of each submitted chunk, so scoring overlaps generation.
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rewardhub-rewards")

    def submit(self, rows: Sequence[PromptRow], rollouts: Sequence[Rollout]) -> Future[list[RewardOutcome]]:
        return self._pool.submit(self.score, reward_items(rows, rollouts))

    def score(self, items: Sequence[RewardItem]) -> list[RewardOutcome]:
        if not items:
            return []
        return asyncio.run(self._score(list(items)))

    async def _score(self, items: list[RewardItem]) -> list[RewardOutcome]:
        batches = [items[i:i + self.batch_size] for i in range(0, len(items), self.batch_size)]
        gate = asyncio.Semaphore(self.config.concurrency)
        async with AsyncRewardClient(self.base_url, self.api_key or None, timeout_s=self.config.timeout_s,
                                     max_retries=self.config.max_retries, transport=self.transport) as client:
            async def one(batch: list[RewardItem]) -> list[RewardOutcome]:
                async with gate:
                    return await self._request(client, batch)

            answers = await asyncio.gather(*(one(batch) for batch in batches))
        return [outcome for answer in answers for outcome in answer]

    async def _request(self, client: AsyncRewardClient, batch: list[RewardItem]) -> list[RewardOutcome]:
        body = [{"id": item.id, "prompt": item.prompt, "completion": item.completion,
                 "ground_truth": item.ground_truth, "metadata": {"data_source": item.data_source}}
                for item in batch]
        where = client.config.base_url
        try:
            answer = await client.score(body, self.config.spec, project_id=self.config.project_id,
                                        deadline_s=self.config.deadline_s, idempotency_key=uuid.uuid4().hex)
        except httpx.TransportError as exc:
            raise RewardServiceUnavailable(
                f"reward service at {where} unreachable after {self.config.max_retries} retries: "
                f"{type(exc).__name__}: {exc}") from exc
        except RewardHubError as exc:
            if exc.status_code >= 500:
                raise RewardServiceUnavailable(f"reward service at {where} kept failing after "
                                               f"{self.config.max_retries} retries: {exc}") from exc
            raise RewardServiceError(f"reward service at {where} rejected the request: {exc}") from exc
        by_id = {result.id: result for result in answer.results}
        missing = [item.id for item in batch if item.id not in by_id]
        if missing:
            raise RewardServiceError(f"reward service at {where} left {len(missing)} items unscored "
                                     f"(first id: {missing[0]})")
        return [RewardOutcome.of(by_id[item.id].score, by_id[item.id].status) for item in batch]

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
