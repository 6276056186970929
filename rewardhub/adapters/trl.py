"""A TRL ``reward_funcs`` entry that scores completions through rewardhub.

TRL calls ``reward_func(prompts=..., completions=..., **dataset_columns)`` and treats ``None``
as "no reward for this sample": it is left out of the group baseline instead of counting as 0.
Items whose status is not ``ok`` therefore come back as ``None``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rewardhub.client import RewardClient, make_items


def _text(value: Any) -> str:
    # Conversational datasets give lists of messages; the completion is the assistant's text.
    if isinstance(value, list):
        return "".join(str(m.get("content", "")) for m in value if isinstance(m, Mapping))
    return str(value)


class TRLRewardFunction:
    """Callable for ``GRPOTrainer(reward_funcs=[...])``."""

    def __init__(self, spec: Mapping[str, Any] | str, *, client: RewardClient | None = None,
                 base_url: str | None = None, api_key: str | None = None, project_id: str | None = None,
                 ground_truth_column: str = "ground_truth", deadline_s: float | None = None,
                 name: str | None = None) -> None:
        self.spec = spec
        self.client = client or RewardClient(base_url, api_key)
        self.project_id = project_id
        self.ground_truth_column = ground_truth_column
        self.deadline_s = deadline_s
        kind = spec if isinstance(spec, str) else str(spec.get("type", "inline"))
        # TRL logs each reward function under its __name__.
        self.__name__ = name or f"rewardhub_{kind}".replace("@", "_v")
        self.last_statuses: list[str] = []

    def __call__(self, prompts: list[Any] | None = None, completions: list[Any] | None = None,
                 **kwargs: Any) -> list[float | None]:
        completions = completions or []
        truths = kwargs.get(self.ground_truth_column)
        if truths is None and "reward_model" in kwargs:  # veRL-schema datasets
            truths = [rm.get("ground_truth") if isinstance(rm, Mapping) else None for rm in kwargs["reward_model"]]
        items = make_items([_text(c) for c in completions], ground_truths=truths,
                           prompts=[_text(p) for p in prompts] if prompts is not None else None)
        batch = self.client.score(items, self.spec, project_id=self.project_id, deadline_s=self.deadline_s)
        self.last_statuses = [r.status for r in batch.results]
        return batch.scores
