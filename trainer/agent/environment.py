"""The environment protocol of multi-turn episodes: ``reset`` a prompt row, then ``step`` each turn.

An environment is any object with these two methods (and, optionally, ``close()``, called once the
episode ends). A guessing game in a few lines::

    class Guess:
        def reset(self, row: PromptRow) -> str:
            self.target = str(row.ground_truth)
            return ""                                  # nothing to add after the prompt
        def step(self, action: str) -> StepResult:
            if self.target in action:
                return StepResult("", done=True, info={"solved": 1.0})
            return StepResult("\\nno, try again\\n", done=False)

The engine (:class:`trainer.agent.engine.AgentRolloutEngine`) calls ``step`` with the text the
policy wrote in the turn (up to and including its stop marker); the observation is tokenised and
appended to the trajectory with loss mask 0; ``done`` ends the episode; numeric ``info`` values are
summed over the episode into ``Rollout.episode_stats``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from trainer.data import PromptRow


@dataclass
class StepResult:
    observation: str
    done: bool
    info: dict[str, float] = field(default_factory=dict)


class Environment(Protocol):
    def reset(self, row: PromptRow) -> str:
        """Start an episode for ``row``; the returned text is appended to the prompt (may be empty)."""
        ...

    def step(self, action: str) -> StepResult:
        """React to one turn of the policy's text."""
        ...


EnvironmentFactory = Callable[[PromptRow], Environment]
"""Builds a fresh environment for each episode (each of a group's G rollouts gets its own)."""


def close_environment(env: Environment) -> None:
    """Call the environment's optional ``close()``."""
    close = getattr(env, "close", None)
    if callable(close):
        close()
