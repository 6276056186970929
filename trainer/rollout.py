"""Rollout engines behind one interface: transformers ``generate`` (CPU/GPU) and vLLM (GPU extra).

Both sample from exactly the distribution the loss scores: every sampling parameter is passed
explicitly (top-k, min-p and the repetition penalty off unless :class:`SamplingSettings` sets
them), nothing is taken from the model's ``generation_config.json`` (real checkpoints set top_k,
top_p, repetition_penalty there, and transformers applies ``top_k=50`` to anything left unset),
and a completion stops at any of the end-of-sequence ids: the tokenizer's and every id of the
model's generation config (Qwen's lists two).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch


@dataclass
class Rollout:
    prompt_index: int
    prompt_ids: list[int]
    completion_ids: list[int]
    text: str
    truncated: bool
    # The sampling engine's log-prob of each completion token (vLLM), for the rollout IS correction.
    rollout_logprobs: list[float] | None = None
    # Multi-turn episodes (trainer.agent): 1 on tokens the policy sampled, 0 on environment
    # observations appended between turns; None = every completion token counts (single turn).
    loss_mask: list[int] | None = None
    # Multi-turn episodes: [start, end) of each turn's sampled tokens in completion_ids.
    turn_bounds: list[tuple[int, int]] | None = None
    # Multi-turn episodes: per-episode counters (tool calls, delayed calls, tool errors, turns…).
    episode_stats: dict[str, float] | None = None
    # ZipRL episodes (multi_turn.ziprl): the context each turn was sampled with (question + memory +
    # latest observation), one per turn_bounds entry; the loss scores turn t's tokens under
    # turn_prompts[t]. None: every turn continues one sequence (prompt_ids + completion_ids).
    turn_prompts: list[list[int]] | None = None
    # ZipRL episodes: Hindsight Response Replay's h_t of each turn (trainer.ziprl.hrr).
    turn_h: list[float] | None = None
    # The dataset row the prompt came from (set by the trainer): two rows may share a prompt's tokens.
    row_index: int | None = None


@dataclass(frozen=True)
class SamplingSettings:
    """How to sample; the defaults are the policy's own softmax at ``temperature``, untruncated.

    ``top_k`` 0 and ``min_p`` 0 are off, ``top_p`` 1 and ``repetition_penalty`` 1 change nothing.
    The run config refuses any other value (the loss's log-probs are the full softmax's), but the
    engines honour them, so a caller that wants truncated sampling says so here explicitly.
    """

    group_size: int
    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    # Strings that end a completion as an EOS does (kept in it): the agent engine's turn markers
    # (``<tool_call>``…). Empty for single-turn runs. Stopping early never changes the distribution
    # of the kept tokens: what a longer generation would have sampled after the marker is dropped.
    stop_strings: tuple[str, ...] = ()

    @property
    def is_full_softmax(self) -> bool:
        return self.top_p >= 1.0 and self.top_k == 0 and self.min_p == 0.0 and self.repetition_penalty == 1.0


def eos_token_ids(tokenizer: Any, generation_eos: int | Iterable[int] | None) -> list[int]:
    """Every id that ends a completion: the tokenizer's EOS, then each of the generation config's
    (an int or a list), without repeats, in that order."""
    ids: list[int] = []
    first = getattr(tokenizer, "eos_token_id", None) if tokenizer is not None else None
    extra = [generation_eos] if isinstance(generation_eos, int) else list(generation_eos or [])
    for token in ([first] if first is not None else []) + extra:
        if int(token) not in ids:
            ids.append(int(token))
    return ids


def generation_config_eos(model_path: str | Path) -> list[int]:
    """The ``eos_token_id`` of a model folder's ``generation_config.json`` as a list (empty if none)."""
    path = Path(model_path) / "generation_config.json"
    if not path.is_file():
        return []
    value = json.loads(path.read_text()).get("eos_token_id")
    return [] if value is None else [int(value)] if isinstance(value, int) else [int(v) for v in value]


class RolloutEngine(Protocol):
    def generate(self, prompts: list[list[int]], sampling: SamplingSettings, seed: int) -> list[Rollout]:
        """``group_size`` completions per prompt, grouped: prompt 0's G rollouts first."""
        ...

    def sync_weights(self, model: torch.nn.Module) -> None:
        """Make the engine sample from the policy's current weights."""
        ...


class TransformersEngine:
    """Samples with ``model.generate``: with the policy module itself (no copy, works on CPU), or,
    with ``copy_weights``, with its own full copy whose weights are refreshed from the policy's."""

    def __init__(self, model: Any, tokenizer: Any, device: torch.device | str | None = None,
                 copy_weights: bool = False) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.copy_weights = copy_weights

    @torch.no_grad()
    def sync_weights(self, model: torch.nn.Module) -> None:
        if not self.copy_weights:
            self.model = model
            return
        # Called with ZeRO-3's shards gathered: each parameter's data is the full tensor.
        own = dict(self.model.named_parameters())
        for name, parameter in model.named_parameters():
            own[name].data.copy_(parameter.data)

    def eos_ids(self) -> list[int]:
        generation = getattr(self.model, "generation_config", None)
        return eos_token_ids(self.tokenizer, getattr(generation, "eos_token_id", None))

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], sampling: SamplingSettings, seed: int) -> list[Rollout]:
        pad = self.tokenizer.pad_token_id
        eos = self.eos_ids()
        width = max(len(p) for p in prompts)
        # Left padding keeps every prompt's last token next to its first generated token.
        input_ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        attention = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, ids in enumerate(prompts):
            input_ids[i, width - len(ids):] = torch.tensor(ids)
            attention[i, width - len(ids):] = 1
        device = self.device or next(self.model.parameters()).device
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        was_training = self.model.training
        model_defaults = self.model.generation_config
        # transformers fills every field the call leaves unset from the model's generation config
        # (then top_k=50): a bare one in its place means only what is written below applies.
        self.model.generation_config = _bare_generation_config(eos, pad, model_defaults)
        self.model.eval()
        try:
            output = self.model.generate(
                input_ids=input_ids.to(device), attention_mask=attention.to(device),
                generation_config=sampling_generation_config(sampling, eos, pad),
                # transformers' StopStringCriteria needs the tokenizer to match stop strings.
                **({"tokenizer": self.tokenizer} if sampling.stop_strings else {}),
                # Each rank samples its own prompts on its own: no lockstep with the other ranks.
                synced_gpus=False)
        finally:
            self.model.generation_config = model_defaults
            torch.random.set_rng_state(generator_state)
            self.model.train(was_training)
        rollouts = []
        for row in range(output.shape[0]):
            prompt_index = row // sampling.group_size
            generated = output[row, width:].tolist()
            completion, finished = _until_eos(generated, eos)
            rollouts.append(Rollout(prompt_index=prompt_index, prompt_ids=list(prompts[prompt_index]),
                                    completion_ids=completion,
                                    text=self.tokenizer.decode(completion, skip_special_tokens=True),
                                    truncated=not finished))
        return rollouts


def _bare_generation_config(eos: list[int], pad: int | None, model_defaults: Any) -> Any:
    from transformers import GenerationConfig

    return GenerationConfig(eos_token_id=eos, pad_token_id=pad,  # type: ignore[no-untyped-call]
                            bos_token_id=getattr(model_defaults, "bos_token_id", None))


def sampling_generation_config(sampling: SamplingSettings, eos: list[int], pad: int | None) -> Any:
    """A transformers ``GenerationConfig`` with every field that shapes the sampled distribution set:
    plain multinomial sampling from softmax(logits / τ), truncated only as ``sampling`` asks."""
    from transformers import GenerationConfig

    return GenerationConfig(  # type: ignore[no-untyped-call]
        do_sample=True, num_beams=1, temperature=sampling.temperature, top_p=sampling.top_p,
        top_k=sampling.top_k, min_p=sampling.min_p or None, repetition_penalty=sampling.repetition_penalty,
        typical_p=1.0, epsilon_cutoff=0.0, eta_cutoff=0.0, no_repeat_ngram_size=0, min_new_tokens=0,
        max_new_tokens=sampling.max_new_tokens, num_return_sequences=sampling.group_size,
        eos_token_id=eos, pad_token_id=pad, use_cache=True,
        **({"stop_strings": list(sampling.stop_strings)} if sampling.stop_strings else {}))


def _until_eos(tokens: list[int], eos: int | list[int] | None) -> tuple[list[int], bool]:
    """The completion up to and including its first end-of-sequence token, and whether it had one."""
    stops = set([eos] if isinstance(eos, int) else eos or [])
    for cut, token in enumerate(tokens):
        if token in stops:
            return tokens[: cut + 1], True
    return tokens, False


def vllm_sampling_kwargs(sampling: SamplingSettings, eos: list[int], seed: int) -> dict[str, Any]:
    """vLLM ``SamplingParams`` fields, each explicit: vLLM's ``top_k=-1`` is off; ``stop_token_ids``
    holds every EOS id (vLLM stops on the tokenizer's own EOS regardless)."""
    return {"n": sampling.group_size, "temperature": sampling.temperature, "top_p": sampling.top_p,
            "top_k": sampling.top_k if sampling.top_k > 0 else -1, "min_p": sampling.min_p,
            "repetition_penalty": sampling.repetition_penalty, "presence_penalty": 0.0, "frequency_penalty": 0.0,
            "max_tokens": sampling.max_new_tokens, "seed": seed, "stop_token_ids": list(eos),
            **({"stop": list(sampling.stop_strings), "include_stop_str_in_output": True}
               if sampling.stop_strings else {})}


class VLLMEngine:
    """vLLM sampling on GPU, colocated with training; the policy's weights are pushed into vLLM's
    model after every optimizer step.

    The engine runs in this process (no engine-core subprocess) so that its model object can be
    reached to load weights; in a DeepSpeed run each rank holds its own engine on its own GPU
    (vLLM's ``external_launcher`` backend joins the ranks' process group instead of starting one).
    """

    def __init__(self, model_path: str, tokenizer: Any, gpu_memory_utilization: float = 0.3,
                 dtype: str = "bfloat16", rank: int = 0, distributed: bool = False,
                 eos_ids: list[int] | None = None, capture_logprobs: bool = False) -> None:
        """``capture_logprobs``: keep vLLM's log-prob of each sampled token (``Rollout.rollout_logprobs``)
        for the rollout importance-sampling correction; taken after temperature
        (``logprobs_mode="processed_logprobs"``), i.e. from the distribution the tokens were drawn from."""
        import os

        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        try:
            from vllm import LLM
        except ImportError as exc:  # the gpu extra is optional
            raise RuntimeError("the vLLM rollout engine needs the gpu extra: pip install 'rewardhub[gpu]'") from exc
        self.tokenizer = tokenizer
        self.eos_ids = eos_ids if eos_ids is not None else eos_token_ids(tokenizer, generation_config_eos(model_path))
        extra: dict[str, Any] = {"distributed_executor_backend": "external_launcher"} if distributed else {}
        self.capture_logprobs = capture_logprobs
        if capture_logprobs:
            extra["logprobs_mode"] = "processed_logprobs"
        # generation_config="vllm": vLLM's own neutral defaults, not the model folder's sampling settings.
        self.llm = LLM(model=model_path, dtype="float16" if dtype == "float16" else "bfloat16",
                       gpu_memory_utilization=gpu_memory_utilization, enable_prefix_caching=True,
                       tensor_parallel_size=1, seed=rank, generation_config="vllm", **extra)

    def _model(self) -> Any:
        executor = self.llm.llm_engine.model_executor
        return executor.driver_worker.model_runner.model

    def sync_weights(self, model: torch.nn.Module) -> None:
        weights = ((name, tensor.detach()) for name, tensor in model.state_dict().items())
        self._model().load_weights(weights)
        # Cached prefixes hold keys and values computed with the old weights.
        self.llm.reset_prefix_cache()

    def generate(self, prompts: list[list[int]], sampling: SamplingSettings, seed: int) -> list[Rollout]:
        from vllm import SamplingParams

        kwargs = vllm_sampling_kwargs(sampling, self.eos_ids, seed)
        if self.capture_logprobs:
            kwargs["logprobs"] = 0  # 0 extra candidates: only the sampled token's log-prob
        params = SamplingParams(**kwargs)
        outputs = self.llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        rollouts = []
        for prompt_index, output in enumerate(outputs):
            for sample in output.outputs:
                ids = list(sample.token_ids)
                rollouts.append(Rollout(prompt_index=prompt_index, prompt_ids=list(prompts[prompt_index]),
                                        completion_ids=ids, text=sample.text,
                                        truncated=sample.finish_reason == "length",
                                        rollout_logprobs=sampled_logprobs(ids, sample.logprobs)
                                        if self.capture_logprobs else None))
        return rollouts


def sampled_logprobs(token_ids: list[int], per_position: Any) -> list[float]:
    """The log-prob vLLM reported for each sampled token: ``per_position[t]`` maps token ids to
    ``Logprob`` objects (or floats) and always holds the sampled one."""
    if per_position is None or len(per_position) != len(token_ids):
        raise RuntimeError("vLLM returned no log-probs for the sampled tokens (SamplingParams.logprobs unset?)")
    values = []
    for token, candidates in zip(token_ids, per_position, strict=True):
        entry = candidates[token]
        values.append(float(getattr(entry, "logprob", entry)))
    return values

