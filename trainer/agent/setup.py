"""A run config's ``multi_turn`` section turned into the agent engine, and the IH-GRPO forward."""

from __future__ import annotations

import importlib
import os
from typing import Any

import torch

from trainer.agent.code_env import CodeToolEnvironment
from trainer.agent.engine import AgentRolloutEngine, AgentSettings
from trainer.agent.environment import EnvironmentFactory
from trainer.agent.tools import LocalPythonTool, SandboxSessionTool, ToolBackend
from trainer.config import REGISTERED_ENVIRONMENTS, ConfigError
from trainer.data import PromptRow
from trainer.logprobs import chunked_entropy, chunked_token_logprobs
from trainer.rollout import RolloutEngine


def tool_backend(multi_turn: Any, project: str | None = None) -> ToolBackend:
    """The config's tool backend; the sandbox's ``X-Rewardhub-Project`` is ``tools.project``, else
    ``project`` (the run's reward project, :func:`agent_engine` passes ``reward.project_id``)."""
    tools = multi_turn.tools
    if tools.backend == "local":
        return LocalPythonTool(timeout_s=tools.timeout_s, max_output_bytes=tools.max_output_bytes)
    # url / api_key_env exist in local configs only: a service run's worker passes its own backend
    # (services/trainer/worker.py), with the service's sandbox URL and token.
    token_env = getattr(tools, "api_key_env", None)
    return SandboxSessionTool(getattr(tools, "url", None), os.environ.get(token_env, "") if token_env else "",
                              ttl_s=tools.ttl_s,
                              timeout_s=tools.timeout_s, max_output_bytes=tools.max_output_bytes,
                              project=getattr(tools, "project", None) or project)


def environment_factory(multi_turn: Any, tools: ToolBackend | None = None,
                        project: str | None = None) -> EnvironmentFactory:
    """``code``: a :class:`CodeToolEnvironment` per episode; ``module:factory``: that callable."""
    target = REGISTERED_ENVIRONMENTS.get(multi_turn.environment, multi_turn.environment)
    if target != "code":
        module, _, name = target.partition(":")
        try:
            factory: EnvironmentFactory = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"multi_turn.environment: cannot load {multi_turn.environment!r}: {exc}") from None
        return factory
    backend = tools if tools is not None else tool_backend(multi_turn, project)

    def make(row: PromptRow) -> CodeToolEnvironment:
        return CodeToolEnvironment(backend, multi_turn.execution,
                                   max_observation_chars=multi_turn.max_observation_chars)
    return make


def agent_engine(config: Any, engine: RolloutEngine, tokenizer: Any,
                 tools: ToolBackend | None = None) -> AgentRolloutEngine:
    """The engine of a config with a ``multi_turn`` section; the token budget is ``max_completion_length``;
    ``multi_turn.ziprl`` makes the context a compression memory (docs/ziprl.md)."""
    multi = config.multi_turn
    project = getattr(getattr(config, "reward", None), "project_id", None)
    settings = AgentSettings(stop_markers=multi.markers, max_turns=multi.max_turns,
                             max_episode_tokens=config.max_completion_length,
                             max_turn_tokens=multi.max_turn_tokens,
                             max_observation_tokens=multi.max_observation_tokens)
    return AgentRolloutEngine(engine, tokenizer, environment_factory(multi, tools, project), settings,
                              ziprl=multi.ziprl_config)


def marker_token_id(tokenizer: Any, marker: str) -> int:
    """The one token id of ``marker`` (the c term needs p_t = π(marker) as one token's probability)."""
    ids = tokenizer(marker, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ConfigError(f"multi_turn.ih_grpo: the marker {marker!r} is {len(ids)} tokens in this tokenizer; the "
                         f"c term needs it to be one token (add it: tokenizer.add_tokens([{marker!r}]) and resize "
                         f"the embeddings; Qwen tokenizers have it) or set ih_grpo.coefficient: 0")
    return int(ids[0])


def logprobs_with_tool_terms(model: Any, batch: Any, temperature: float, tool_id: int, *, device: Any,
                             with_entropy: bool = False, entropy_grad: bool = False
                             ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """One forward (with gradient): log π(y_t), optionally the entropies, and at every completion
    position z_tool = l_tool / τ and log p_tool = log softmax(l / τ)[tool], the inputs of the c term.
    The log-probs use the same chunked kernels as :func:`trainer.logprobs.completion_logprobs`."""
    t_max = batch.completion_ids.shape[1]
    logits = model(input_ids=batch.input_ids.to(device), attention_mask=batch.attention_mask.to(device),
                   position_ids=batch.position_ids.to(device), logits_to_keep=t_max + 1).logits
    ids = batch.completion_ids.to(device)
    logp = chunked_token_logprobs(logits, ids, temperature)
    tool_logp = chunked_token_logprobs(logits, torch.full_like(ids, tool_id), temperature)
    tool_logit = logits[:, :t_max, tool_id].float() / temperature
    entropy = (chunked_entropy(logits if entropy_grad else logits.detach(), t_max, temperature)
               if with_entropy else None)
    return logp, entropy, tool_logit, tool_logp
