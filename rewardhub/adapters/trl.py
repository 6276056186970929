"""TRL ``reward_funcs`` entries that score completions through rewardhub.

TRL calls ``reward_func(prompts=..., completions=..., **dataset_columns)``. Two classes:

* :class:`TRLRewardFunction` — synchronous; TRL calls it in turn with its other reward functions.
* :class:`AsyncTRLRewardFunction` — ``async def __call__``; TRL's ``GRPOTrainer`` sees the coroutine
  ``__call__`` and awaits it on its own daemon event loop, side by side with its other async reward
  functions (``asyncio.gather``). One ``httpx.AsyncClient`` is kept per instance and event loop.

What is graded: for a standard (text) dataset the completion string; for a conversational one,
by default the *final assistant message* (``turns="final"``), or every assistant message joined
with newlines (``turns="assistant"``). Tool and user messages are never graded: a tool that
returned the right number must not earn the reward for the model. Content blocks
(``[{"type": "text", "text": ...}, {"type": "image", ...}]``) contribute their text parts.

Items whose status is not ``ok`` come back as ``None`` (TRL turns it into NaN). How TRL treats a
NaN depends on the other reward functions: a row that is NaN for *every* reward function is left
out of the group baseline and gets advantage 0; beside other reward functions TRL's ``nansum``
counts it as 0 for this function. Pass ``non_ok_reward=0.0`` to send an explicit number instead.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from rewardhub.client import AsyncRewardClient, RewardBatch, RewardClient, make_items

Turns = Literal["final", "assistant"]


def content_text(content: Any) -> str:
    """The text of a message's ``content``: a string, or the text parts of a list of content blocks."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Mapping):  # a single block
        content = [content]
    if isinstance(content, Sequence) and not isinstance(content, bytes | bytearray):
        parts = []
        for block in content:
            if isinstance(block, str):
                parts.append(block)
            elif isinstance(block, Mapping) and block.get("type", "text") == "text" and isinstance(
                    block.get("text"), str):
                parts.append(block["text"])
        return "".join(parts)
    return str(content)


def completion_text(completion: Any, turns: Turns = "final") -> str:
    """What to grade in one TRL completion: the string itself, or the assistant's text (see module doc)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Mapping):
        completion = [completion]
    if not isinstance(completion, Sequence):
        return str(completion)
    assistant = [m for m in completion if isinstance(m, Mapping) and m.get("role") == "assistant"]
    if not assistant:
        return ""
    if turns == "final":
        return content_text(assistant[-1].get("content"))
    return "\n".join(text for text in (content_text(m.get("content")) for m in assistant) if text)


def prompt_payload(prompt: Any) -> str | list[dict[str, Any]]:
    """A prompt as the reward API takes it: text, or chat messages with plain-text content."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, Sequence):
        return [{"role": str(m.get("role", "user")), "content": content_text(m.get("content"))}
                for m in prompt if isinstance(m, Mapping)]
    return str(prompt)


class _TRLRewardBase:
    def __init__(self, spec: Mapping[str, Any] | str, *, project_id: str | None = None,
                 ground_truth_column: str = "ground_truth", deadline_s: float | None = None,
                 name: str | None = None, turns: Turns = "final", non_ok_reward: float | None = None) -> None:
        if turns not in ("final", "assistant"):
            raise ValueError(f"turns must be 'final' or 'assistant', not {turns!r}")
        self.spec = spec
        self.project_id = project_id
        self.ground_truth_column = ground_truth_column
        self.deadline_s = deadline_s
        self.turns: Turns = turns
        self.non_ok_reward = non_ok_reward
        kind = spec if isinstance(spec, str) else str(spec.get("type", "inline"))
        # TRL logs each reward function under its __name__.
        self.__name__ = name or f"rewardhub_{kind}".replace("@", "_v")
        self.last_statuses: list[str] = []
        self.last_texts: list[str] = []

    def _items(self, prompts: list[Any] | None, completions: list[Any] | None,
               kwargs: Mapping[str, Any]) -> list[dict[str, Any]]:
        truths = kwargs.get(self.ground_truth_column)
        if truths is None and "reward_model" in kwargs:  # veRL-schema datasets
            truths = [rm.get("ground_truth") if isinstance(rm, Mapping) else None for rm in kwargs["reward_model"]]
        texts = [completion_text(c, self.turns) for c in completions or []]
        self.last_texts = texts
        return make_items(texts, ground_truths=truths,
                          prompts=[prompt_payload(p) for p in prompts] if prompts is not None else None)

    def _rewards(self, batch: RewardBatch, kwargs: Mapping[str, Any]) -> list[float | None]:
        self.last_statuses = [r.status for r in batch.results]
        log_metric: Callable[[str, float], None] | None = kwargs.get("log_metric")
        if callable(log_metric) and batch.results:  # TRL >= 1.x: averaged per logging step beside kl etc.
            ok = sum(r.ok for r in batch.results)
            log_metric(f"{self.__name__}/ok_rate", ok / len(batch.results))
        if self.non_ok_reward is None:
            return batch.scores
        return [r.score if r.ok and r.score is not None else self.non_ok_reward for r in batch.results]


class TRLRewardFunction(_TRLRewardBase):
    """Synchronous callable for ``GRPOTrainer(reward_funcs=[...])``."""

    def __init__(self, spec: Mapping[str, Any] | str, *, client: RewardClient | None = None,
                 base_url: str | None = None, api_key: str | None = None, project_id: str | None = None,
                 ground_truth_column: str = "ground_truth", deadline_s: float | None = None,
                 name: str | None = None, turns: Turns = "final", non_ok_reward: float | None = None) -> None:
        super().__init__(spec, project_id=project_id, ground_truth_column=ground_truth_column,
                         deadline_s=deadline_s, name=name, turns=turns, non_ok_reward=non_ok_reward)
        self.client = client or RewardClient(base_url, api_key)

    def __call__(self, prompts: list[Any] | None = None, completions: list[Any] | None = None,
                 **kwargs: Any) -> list[float | None]:
        items = self._items(prompts, completions, kwargs)
        batch = self.client.score(items, self.spec, project_id=self.project_id, deadline_s=self.deadline_s)
        return self._rewards(batch, kwargs)


class AsyncTRLRewardFunction(_TRLRewardBase):
    """Async callable for ``GRPOTrainer(reward_funcs=[...])``: TRL awaits it on its event loop.

    An ``httpx.AsyncClient`` belongs to the event loop it first ran on (its pooled connections do),
    so one client is kept per loop, created on first use in that loop and reused for every later
    call there; TRL runs all async reward functions on one long-lived loop, so in training that is
    one client and one connection pool per instance.
    """

    def __init__(self, spec: Mapping[str, Any] | str, *, base_url: str | None = None,
                 api_key: str | None = None, project_id: str | None = None,
                 ground_truth_column: str = "ground_truth", deadline_s: float | None = None,
                 name: str | None = None, turns: Turns = "final", non_ok_reward: float | None = None,
                 client_factory: Callable[[], AsyncRewardClient] | None = None) -> None:
        super().__init__(spec, project_id=project_id, ground_truth_column=ground_truth_column,
                         deadline_s=deadline_s, name=name, turns=turns, non_ok_reward=non_ok_reward)
        self._factory = client_factory or (lambda: AsyncRewardClient(base_url, api_key))
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncRewardClient] = \
            weakref.WeakKeyDictionary()
        self.clients_created = 0

    def client(self) -> AsyncRewardClient:
        """The client for the running event loop (created on first use there)."""
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            client = self._clients[loop] = self._factory()
            self.clients_created += 1
        return client

    async def __call__(self, prompts: list[Any] | None = None, completions: list[Any] | None = None,
                       **kwargs: Any) -> list[float | None]:
        items = self._items(prompts, completions, kwargs)
        batch = await self.client().score(items, self.spec, project_id=self.project_id, deadline_s=self.deadline_s)
        return self._rewards(batch, kwargs)

    async def aclose(self) -> None:
        """Close the running loop's client (clients of other, finished loops are dropped with them)."""
        client = self._clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()
