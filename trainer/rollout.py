"""Rollout engines behind one interface: transformers ``generate`` (CPU/GPU) and vLLM (GPU extra)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch


@dataclass
class Rollout:
    prompt_index: int
    prompt_ids: list[int]
    completion_ids: list[int]
    text: str
    truncated: bool


@dataclass(frozen=True)
class SamplingSettings:
    group_size: int
    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0


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

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], sampling: SamplingSettings, seed: int) -> list[Rollout]:
        pad = self.tokenizer.pad_token_id
        eos = self.tokenizer.eos_token_id
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
        self.model.eval()
        try:
            output = self.model.generate(
                input_ids=input_ids.to(device), attention_mask=attention.to(device), do_sample=True,
                temperature=sampling.temperature, top_p=sampling.top_p, max_new_tokens=sampling.max_new_tokens,
                num_return_sequences=sampling.group_size, pad_token_id=pad, eos_token_id=eos,
                # Each rank samples its own prompts on its own: no lockstep with the other ranks.
                synced_gpus=False)
        finally:
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


def _until_eos(tokens: list[int], eos: int | None) -> tuple[list[int], bool]:
    if eos is not None and eos in tokens:
        cut = tokens.index(eos)
        return tokens[: cut + 1], True
    return tokens, False


class VLLMEngine:
    """vLLM sampling on GPU, colocated with training; the policy's weights are pushed into vLLM's
    model after every optimizer step.

    The engine runs in this process (no engine-core subprocess) so that its model object can be
    reached to load weights; in a DeepSpeed run each rank holds its own engine on its own GPU
    (vLLM's ``external_launcher`` backend joins the ranks' process group instead of starting one).
    """

    def __init__(self, model_path: str, tokenizer: Any, gpu_memory_utilization: float = 0.3,
                 dtype: str = "bfloat16", rank: int = 0, distributed: bool = False) -> None:
        import os

        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        try:
            from vllm import LLM
        except ImportError as exc:  # the gpu extra is optional
            raise RuntimeError("the vLLM rollout engine needs the gpu extra: pip install 'rewardhub[gpu]'") from exc
        self.tokenizer = tokenizer
        extra: dict[str, Any] = {"distributed_executor_backend": "external_launcher"} if distributed else {}
        self.llm = LLM(model=model_path, dtype="float16" if dtype == "float16" else "bfloat16",
                       gpu_memory_utilization=gpu_memory_utilization, enable_prefix_caching=True,
                       tensor_parallel_size=1, seed=rank, **extra)

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

        params = SamplingParams(n=sampling.group_size, temperature=sampling.temperature, top_p=sampling.top_p,
                                max_tokens=sampling.max_new_tokens, seed=seed)
        outputs = self.llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        rollouts = []
        for prompt_index, output in enumerate(outputs):
            for sample in output.outputs:
                ids = list(sample.token_ids)
                rollouts.append(Rollout(prompt_index=prompt_index, prompt_ids=list(prompts[prompt_index]),
                                        completion_ids=ids, text=sample.text,
                                        truncated=sample.finish_reason == "length"))
        return rollouts

