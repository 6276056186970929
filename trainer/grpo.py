"""The GRPO-family training loop: sample prompts, roll out G completions each, score them through
the reward source, compute group advantages, and take clipped-surrogate optimizer steps.

One step = one rollout batch (``prompts_per_step`` x G rollouts) split into ``mini_batches``
optimizer steps of ``gradient_accumulation`` micro-batches each. Everything random is seeded
from (seed, step), and checkpoints hold model, optimizer, scheduler, RNG states and the data
position, so a resumed run takes exactly the steps the uninterrupted one would have.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
import warnings
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from trainer import checkpoint, export, tracking
from trainer.algorithms import (
    LOSS_AGGREGATIONS,
    TOKEN_WEIGHTED_ESTIMATORS,
    group_advantages,
    grpo_policy_loss,
    informative_groups,
    kl_divergence,
    kl_penalised_rewards,
    mask_truncated,
    masked_mean,
    overlong_penalty,
    rollout_correction_weights,
    truncated_completions,
)
from trainer.algorithms.ih_grpo import c_loss
from trainer.config import RunConfig
from trainer.data import PromptRow, PromptSampler, load_config_rows, load_rows
from trainer.distributed import (
    Collective,
    check_world_size,
    deepspeed_config,
    device_for_rank,
    init_collective,
)
from trainer.logprobs import completion_logprobs as completion_logprobs  # re-exported: its old home
from trainer.mtp import (
    JointOutput,
    MtpHead,
    build_mtp_head,
    has_mtp_head,
    joint_logprobs,
    load_mtp_head,
    mtp_valid_mask,
    save_mtp_head,
    sequences,
    warmup_mtp_head,
)
from trainer.occ import MtpSettings, mtp_loss
from trainer.policy import DeepSpeedPolicy, LocalPolicy, Policy, frozen_copy, lr_lambda, sharded_reference
from trainer.rewards import HttpRewards, RewardOutcome, RewardSource, status_counts
from trainer.rlavr import RlavrSession
from trainer.rollout import Rollout, RolloutEngine, SamplingSettings, TransformersEngine, eos_token_ids
from trainer.self_distillation.loop import SelfDistillation

logger = logging.getLogger(__name__)
METRICS_FILE = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
MTP_WARMUP_SALT = 0x4D5450  # "MTP": mixed into the run seed for the warm-up's prompts and sampling

StepCallback = Callable[[int, dict[str, Any]], None]


@dataclass
class RunOutcome:
    status: str  # "succeeded" or "cancelled"
    steps: int
    checkpoint: Path | None
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Batch:
    """A rollout batch as tensors: left-padded prompts followed by right-padded completions.

    Every completion starts at the same column, so the model computes logits only for the last
    T + 1 positions (``logits_to_keep``) instead of over every prompt token as well.
    """

    input_ids: torch.Tensor  # (B, P + T)
    attention_mask: torch.Tensor  # (B, P + T)
    position_ids: torch.Tensor  # (B, P + T): 0 at each row's first real token, as in generation
    completion_mask: torch.Tensor  # (B, T)
    completion_ids: torch.Tensor  # (B, T)
    # The sampling engine's log-probs of the completion tokens (vLLM), NaN where there is none; None
    # when no rollout of the batch carries them (the transformers engine samples with the trainer's own).
    rollout_logprobs: torch.Tensor | None = None  # (B, T)
    # The tokens the loss counts: completion_mask with multi-turn observation tokens zeroed (equal to
    # completion_mask for single-turn rollouts). None: completion_mask.
    loss_mask: torch.Tensor | None = None  # (B, T)
    # Multi-turn batches: each episode's own truncation flag (ended by the token budget); single-turn
    # batches read truncation off the last token instead (None).
    truncated: torch.Tensor | None = None  # (B,) bool
    # ZipRL batches (multi_turn.ziprl): one row per turn, each under the prompt it was sampled with;
    # the episode (index into the rollouts) and turn of each row, -1 on rows that only pad the batch.
    row_rollout: torch.Tensor | None = None  # (B,) long
    row_turn: torch.Tensor | None = None  # (B,) long
    # ZipRL: each row's token-level advantages (HRR-reshaped per turn; trainer.agent.credit), the
    # advantages the update uses.
    token_advantages: torch.Tensor | None = None  # (B, T)

    @property
    def counted(self) -> torch.Tensor:
        """The loss's token mask: ``loss_mask`` where set, else ``completion_mask``."""
        return self.completion_mask if self.loss_mask is None else self.loss_mask


def episode_metrics(rollouts: list[Rollout]) -> dict[str, float]:
    """Multi-turn metrics over this step's episodes: means per episode of turns, tool calls, tool
    errors, delayed calls, sampled and observation tokens; ``delay_call_rate`` = tool calls that
    carried at least one delayed block / tool calls (0 without calls)."""
    stats = [r.episode_stats or {} for r in rollouts]
    n = max(1, len(stats))

    def total(name: str) -> float:
        return sum(s.get(name, 0.0) for s in stats)

    calls = total("tool_calls")
    return {"turns_mean": total("turns") / n, "tool_calls_per_episode": calls / n,
            "tool_errors_per_episode": total("tool_errors") / n, "delayed_calls_per_episode": total("delayed_calls") / n,
            "delay_call_rate": total("delayed_call_turns") / calls if calls else 0.0,
            "tokens_per_episode": sum(len(r.completion_ids) for r in rollouts) / n,
            "observation_tokens_per_episode": total("observation_tokens") / n,
            "turn_limit_share": total("turn_limit") / n, **_ziprl_metrics(stats, n)}


def _ziprl_metrics(stats: list[dict[str, float]], n: int) -> dict[str, float]:
    """ZipRL episodes: per episode, the context tokens the policy read over its turns and the peak
    context; per compression (one a turn), the memory's tokens, the raw history's, the tokens saved and
    the saved share; policy-pass fallbacks per episode. Empty for other runs."""
    if not any("compressions" in s or "context_tokens" in s for s in stats):
        return {}

    def total(name: str) -> float:
        return sum(s.get(name, 0.0) for s in stats)

    compressions = max(1.0, total("compressions"))
    return {"context_tokens_per_episode": total("context_tokens") / n,
            "peak_context_tokens_mean": total("peak_context_tokens") / n,
            "memory_tokens_per_turn": total("memory_tokens") / compressions,
            "raw_history_tokens_per_turn": total("raw_history_tokens") / compressions,
            "saved_tokens_per_turn": total("saved_tokens") / compressions,
            "saved_fraction_per_turn": total("saved_fraction") / compressions,
            "compression_fallbacks_per_episode": total("compression_fallbacks") / n}


def model_source(config: RunConfig, work_dir: Path, collective: Collective) -> Path:
    """The model directory: ``model.path``, or a tiny random model that the main rank writes once."""
    if config.model.tiny is None:
        path = Path(config.model.path or "")
        if not path.is_dir():
            raise FileNotFoundError(f"model.path: {path} is not a local model directory")
        return path
    from trainer.tiny_models import build_tiny_causal_lm

    tiny = config.model.tiny
    path = work_dir / "base-model"
    if collective.is_main:  # one writer; the other ranks load what it wrote
        build_tiny_causal_lm(path, seed=tiny.seed, hidden_size=tiny.hidden_size, num_layers=tiny.num_layers,
                             num_heads=tiny.num_heads, num_kv_heads=tiny.num_kv_heads)
    collective.barrier()
    return path


def load_model(config: RunConfig, path: Path, *, device: str, sharded: bool = False) -> tuple[Any, Any]:
    """The model and its tokenizer; ``sharded``: loaded straight into ZeRO-3 shards (HfDeepSpeedConfig alive)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {"dtype": getattr(torch, config.model.dtype), "local_files_only": True}
    attention = config.model.attn_implementation or _default_attention(config)
    if attention:
        kwargs["attn_implementation"] = attention
    model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    if not sharded:  # ZeRO-3 shards already sit on the rank's device
        model = model.to(device)  # type: ignore[arg-type]  # transformers types .to() for a dtype only
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if config.model.gradient_checkpointing:
        # transformers 5 renamed it (the old name warns); older releases only have the old one.
        enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        enable()
    return model, tokenizer


def _default_attention(config: RunConfig) -> str | None:
    """flash_attention_2 where it can run (GPU, 16-bit weights, flash-attn installed), else transformers' choice."""
    if not config.device.startswith("cuda") or config.model.dtype == "float32":
        return None
    import importlib.util

    return "flash_attention_2" if importlib.util.find_spec("flash_attn") is not None else None


def _zero3(config: RunConfig) -> bool:
    return config.deepspeed is not None and config.deepspeed.zero_stage == 3


def collate(rollouts: list[Rollout], pad_id: int, *, row_multiple: int = 1) -> Batch:
    """The rollouts as one batch; ZipRL episodes (``turn_prompts`` set) become one row per turn (the
    turn's prompt, then its sampled tokens), padded with empty rows to a multiple of ``row_multiple``
    (the update's mini-batches x micro-batches, so its even split drops no turn)."""
    if any(r.turn_prompts is not None for r in rollouts):
        return _collate_turns(rollouts, pad_id, row_multiple)
    p_max = max(len(r.prompt_ids) for r in rollouts)
    t_max = max(1, max(len(r.completion_ids) for r in rollouts))
    input_ids = torch.full((len(rollouts), p_max + t_max), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rollouts), p_max + t_max), dtype=torch.long)
    for row, rollout in enumerate(rollouts):
        n_prompt, n_completion = len(rollout.prompt_ids), len(rollout.completion_ids)
        input_ids[row, p_max - n_prompt: p_max] = torch.tensor(rollout.prompt_ids)
        input_ids[row, p_max: p_max + n_completion] = torch.tensor(rollout.completion_ids, dtype=torch.long)
        attention[row, p_max - n_prompt: p_max + n_completion] = 1
    position_ids = (attention.cumsum(-1) - 1).clamp(min=0)
    completion_mask = attention[:, p_max:].to(torch.float32)
    loss_mask, truncated = None, None
    if any(r.loss_mask is not None for r in rollouts):  # multi-turn: observation tokens leave the loss
        loss_mask = completion_mask.clone()
        for row, rollout in enumerate(rollouts):
            if rollout.loss_mask is not None:
                if len(rollout.loss_mask) != len(rollout.completion_ids):
                    raise ValueError(f"rollout {row}: {len(rollout.loss_mask)} loss-mask values for "
                                     f"{len(rollout.completion_ids)} tokens")
                loss_mask[row, :len(rollout.loss_mask)] = torch.tensor(rollout.loss_mask, dtype=torch.float32)
        truncated = torch.tensor([r.truncated for r in rollouts], dtype=torch.bool)
    return Batch(input_ids, attention, position_ids, completion_mask, input_ids[:, p_max:].clone(),
                 _rollout_logprobs(rollouts, t_max), loss_mask, truncated)


def _collate_turns(rollouts: list[Rollout], pad_id: int, row_multiple: int) -> Batch:
    """ZipRL: row (i, t) = turn t of episode i, ``turn_prompts[t]`` + its tokens (loss mask 1)."""
    rows: list[Rollout] = []
    owners: list[tuple[int, int]] = []
    with_logprobs = all(r.rollout_logprobs is not None for r in rollouts)
    for index, rollout in enumerate(rollouts):
        bounds, prompts = rollout.turn_bounds or [], rollout.turn_prompts
        if prompts is None or len(prompts) != len(bounds):
            raise ValueError(f"rollout {index}: ZipRL rows need one turn prompt per turn "
                             f"({0 if prompts is None else len(prompts)} for {len(bounds)} turns)")
        for turn, ((start, end), prompt) in enumerate(zip(bounds, prompts, strict=True)):
            tokens = rollout.completion_ids[start:end]
            logprobs = rollout.rollout_logprobs[start:end] if with_logprobs and rollout.rollout_logprobs else None
            rows.append(Rollout(prompt_index=rollout.prompt_index, prompt_ids=list(prompt) or [pad_id],
                                completion_ids=list(tokens), text="", truncated=rollout.truncated,
                                rollout_logprobs=logprobs if with_logprobs else None, loss_mask=[1] * len(tokens)))
            owners.append((index, turn))
    while len(rows) % max(1, row_multiple):
        rows.append(Rollout(prompt_index=-1, prompt_ids=[pad_id], completion_ids=[], text="", truncated=False,
                            rollout_logprobs=[] if with_logprobs else None, loss_mask=[]))
        owners.append((-1, -1))
    batch = collate(rows, pad_id)
    batch.row_rollout = torch.tensor([i for i, _ in owners], dtype=torch.long)
    batch.row_turn = torch.tensor([t for _, t in owners], dtype=torch.long)
    return batch


def _rollout_logprobs(rollouts: list[Rollout], t_max: int) -> torch.Tensor | None:
    """(B, T) of the engine's per-token log-probs, NaN-padded; None unless every rollout has them."""
    if not rollouts or any(r.rollout_logprobs is None for r in rollouts):
        return None
    out = torch.full((len(rollouts), t_max), math.nan, dtype=torch.float32)
    for row, rollout in enumerate(rollouts):
        values = rollout.rollout_logprobs or []
        if len(values) != len(rollout.completion_ids):
            raise ValueError(f"rollout {row}: {len(values)} engine log-probs for {len(rollout.completion_ids)} tokens")
        out[row, :len(values)] = torch.tensor(values, dtype=torch.float32)
    return out


def _slice(batch: Batch, rows: torch.Tensor) -> Batch:
    def pick(tensor: torch.Tensor | None) -> torch.Tensor | None:
        return tensor[rows] if tensor is not None else None

    return Batch(batch.input_ids[rows], batch.attention_mask[rows], batch.position_ids[rows],
                 batch.completion_mask[rows], batch.completion_ids[rows], pick(batch.rollout_logprobs),
                 pick(batch.loss_mask), pick(batch.truncated), pick(batch.row_rollout), pick(batch.row_turn),
                 pick(batch.token_advantages))


class GRPOTrainer:
    """Trains ``config``'s model against ``rewards`` (default: the rewardhub API the config names)."""

    def __init__(self, config: RunConfig, *, rewards: RewardSource | None = None,
                 output_dir: Path | None = None, engine: RolloutEngine | None = None,
                 collective: Collective | None = None) -> None:
        self.config = config
        self.collective = collective or init_collective(config)
        check_world_size(config, self.collective.world_size)
        self.output_dir = Path(output_dir or config.output_dir or "runs/latest")
        self.output_dir.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(config.seed)
        self.rows: list[PromptRow] = load_config_rows(config)
        evaluation = getattr(config, "eval", None)  # periodic evaluation (local configs): its rows checked up front
        self.eval_rows: list[PromptRow] = load_rows(evaluation.data) if evaluation is not None else []
        self.device = device_for_rank(config)
        source = model_source(config, self.output_dir, self.collective)
        self.base_model = source  # recorded in checkpoints, so `rewardhub export-hf` finds the architecture
        zero3 = _zero3(config)
        sampler_copy = None
        if zero3 and engine is None and config.engine == "transformers":
            # ZeRO-3 shards every weight: generating on the sharded module would gather them layer by
            # layer at every token, in lockstep with ranks that generate other lengths. Each rank
            # samples with a full local copy instead, refreshed from the shards after every step.
            sampler_copy, _ = load_model(config, source, device=self.device)
            sampler_copy.requires_grad_(False)
        ds_config = deepspeed_config(config, self.collective.world_size) if config.deepspeed is not None else None
        if zero3:
            # While this object lives, from_pretrained loads the weights straight into ZeRO-3 shards.
            from transformers.integrations.deepspeed import HfDeepSpeedConfig

            self._hf_deepspeed = HfDeepSpeedConfig(ds_config)  # type: ignore[no-untyped-call]
        model, self.tokenizer = load_model(config, source, device=self.device, sharded=zero3)
        model.train()
        self.reference: Any = frozen_copy(model) if config.beta > 0 and not zero3 else None
        self.policy: Policy = (DeepSpeedPolicy(model, config, self.collective, ds_config) if ds_config is not None
                               else LocalPolicy(model, config))
        if config.beta > 0 and isinstance(self.policy, DeepSpeedPolicy) and zero3:
            fresh, _ = load_model(config, source, device=self.device, sharded=True)
            self.reference = sharded_reference(fresh, self.policy)
        self.model = self.policy.module
        # OCC (issue 18): an MTP head trained with the policy, its parameters in the optimizer.
        self.mtp: MtpSettings | None = config.mtp
        self.mtp_head: MtpHead | None = self._mtp_head(self.mtp) if self.mtp is not None else None
        self.mtp_warmed_up = False  # the warm-up runs before the first RL step (recorded in checkpoints)
        self.scheduler = self.policy.scheduler
        self.engine = engine or self._engine(sampler_copy)
        if sampler_copy is not None:
            self._sync_engine()
        # Multi-turn runs (issue 15): episodes driven turn by turn through self.engine's sampling.
        self.multi_turn = getattr(config, "multi_turn", None)
        self.agent: Any = None
        self.tool_token_id: int | None = None
        if self.multi_turn is not None:
            from trainer.agent.setup import agent_engine, marker_token_id

            self.agent = agent_engine(config, self.engine, self.tokenizer)
            if self.multi_turn.c_term_enabled:
                self.tool_token_id = marker_token_id(self.tokenizer, "<tool_call>")
        self.rewards = rewards if rewards is not None else HttpRewards(config.reward)
        self.sampler = PromptSampler(len(self.rows), config.seed)
        self.step = 0
        self.prompt_cache: dict[int, list[int]] = {}
        rlavr = getattr(config, "rlavr", None)  # RLAVR (issue 14): labels bought through the annotation service
        self.rlavr = (RlavrSession(config, self.output_dir, rank=self.collective.rank,
                                   world_size=self.collective.world_size) if rlavr is not None else None)
        # Self-distillation (issue 17): AMR-SD token advantages or pi-Play's distillation term, from a teacher.
        self.self_distill: SelfDistillation | None = (
            SelfDistillation.build(self) if getattr(config, "self_distillation", None) is not None else None)

    # ---------------------------------------------------------------- setup

    def _mtp_head(self, settings: MtpSettings) -> MtpHead:
        """The MTP head: loaded from ``mtp.init_from`` (local configs), else new from ``mtp.seed`` (a
        resumed run then loads its checkpoint's head into it). Its parameters join the optimizer as a
        group of their own (lr ``mtp.learning_rate``, else the run's; weight decay the run's), and the
        schedule is rebuilt over both groups, as if the optimizer had been made with them."""
        init_from = getattr(settings, "init_from", None)
        head = load_mtp_head(Path(init_from), self.model) if init_from else build_mtp_head(self.model, seed=settings.seed)
        head.train()
        if not isinstance(self.policy, LocalPolicy):  # the config refuses mtp with deepspeed
            raise ValueError("mtp: not supported with deepspeed yet")
        optimizer = self.policy.optimizer
        optimizer.add_param_group({"params": [p for p in head.parameters() if p.requires_grad],
                                   "lr": settings.learning_rate or self.config.learning_rate})
        # Each group keeps its initial_lr; LambdaLR(λ) applies the one schedule to every group.
        self.policy.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(self.config))
        return head

    def _mtp_warmup(self) -> dict[str, float]:
        """MTP warm-up, once, before the first RL step: the policy's own rollouts (group_size each, the
        run's sampling, no rewards) of ``mtp.warmup_prompts`` training prompts drawn in a seeded order
        apart from the prompt sampler, then ``mtp.warmup_steps`` cross-entropy steps on t+2 over those
        whole sequences (prompt + completion), head only, micro_batch_size sequences a step
        (trainer.mtp.warmup_mtp_head). Every RNG is restored after it, so the RL steps draw as they would
        without it. Once per run: a no-op after that (and after a resume)."""
        settings, head, config = self.mtp, self.mtp_head, self.config
        if self.mtp_warmed_up or settings is None or head is None or settings.warmup_steps == 0 or self.step > 0:
            self.mtp_warmed_up = True
            return {}
        self.mtp_warmed_up = True
        sampling = SamplingSettings(group_size=config.group_size, max_new_tokens=config.max_completion_length,
                                    temperature=config.temperature, top_p=config.top_p, top_k=config.top_k,
                                    min_p=config.min_p, repetition_penalty=config.repetition_penalty)
        salt = checkpoint.derive_seed(config.seed, MTP_WARMUP_SALT)
        count = min(settings.warmup_prompts, len(self.rows))
        chosen = torch.randperm(len(self.rows), generator=torch.Generator().manual_seed(salt))[:count].tolist()
        tokens: list[list[int]] = []
        with torch.random.fork_rng(devices=[]):
            for offset in range(0, count, config.prompts_per_step):
                prompts = [self.encode_prompt(i) for i in chosen[offset: offset + config.prompts_per_step]]
                for rollout in self.engine.generate(prompts, sampling, seed=checkpoint.derive_seed(salt, offset)):
                    tokens.append(list(rollout.prompt_ids) + list(rollout.completion_ids))
            batches = sequences(tokens, self.tokenizer.pad_token_id, config.micro_batch_size)
            history = warmup_mtp_head(self.model, head, batches, steps=settings.warmup_steps,
                                      learning_rate=settings.warmup_learning_rate, max_grad_norm=config.max_grad_norm)
        logger.info("MTP warm-up: %d steps on %d sequences, CE %.3f -> %.3f, acceptance %.3f", len(history),
                    len(tokens), history[0]["mtp_loss"], history[-1]["mtp_loss"], history[-1]["mtp_acceptance"])
        return {"mtp_warmup_sequences": float(len(tokens)), "mtp_warmup_ce_first": history[0]["mtp_loss"],
                "mtp_warmup_ce": history[-1]["mtp_loss"], "mtp_warmup_acceptance": history[-1]["mtp_acceptance"]}

    def _engine(self, sampler_copy: Any = None) -> RolloutEngine:
        if self.config.engine == "vllm":
            from trainer.rollout import VLLMEngine

            return VLLMEngine(str(self.output_dir / "base-model") if self.config.model.tiny else
                              str(self.config.model.path), self.tokenizer,
                              gpu_memory_utilization=self.config.vllm_gpu_memory_utilization,
                              dtype=self.config.model.dtype, rank=self.collective.rank,
                              distributed=self.collective.distributed,
                              capture_logprobs=self.config.rollout_is_cap is not None)
        if sampler_copy is not None:
            return TransformersEngine(sampler_copy, self.tokenizer, device=self.device, copy_weights=True)
        return TransformersEngine(self.model, self.tokenizer, device=self.device)

    def _sync_engine(self) -> None:
        if isinstance(self.engine, TransformersEngine) and not self.engine.copy_weights:
            self.engine.sync_weights(self.model)  # it samples with the policy module itself
        else:
            with self.policy.gathered():  # full tensors under ZeRO-3
                self.engine.sync_weights(self.model)

    def encode_prompt(self, index: int) -> list[int]:
        if index not in self.prompt_cache:
            prompt = self.rows[index].prompt
            if isinstance(prompt, list):
                ids = self.tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True)
                ids = list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)
            else:
                ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
            # Keep the end of an over-long prompt: the question usually comes last.
            self.prompt_cache[index] = list(ids)[-self.config.max_prompt_length:]
        return self.prompt_cache[index]

    # ---------------------------------------------------------------- checkpoints

    def save_checkpoint(self, *, final: bool = False) -> Path:
        """A resumable checkpoint; with ``export_hf`` (every checkpoint, or the run's ``final`` one) also
        ``<checkpoint>/hf/`` in Hugging Face format."""
        state = checkpoint.TrainingState(step=self.step, sampler=self.sampler.state_dict(),
                                         extra={"base_model": str(Path(self.base_model).resolve())})
        if self.rlavr is not None and self.rlavr.requeue:  # the label feed's cursor and the requeue queues
            state.extra["rlavr"] = self.rlavr.state_dict()
        head = self.mtp_head
        if head is not None and isinstance(self.policy, LocalPolicy):
            # The head's files go into the checkpoint folder before it is published (trainer.mtp).
            state.extra["mtp_warmed_up"] = self.mtp_warmed_up
            path = self.policy.save(self.output_dir / CHECKPOINTS, state,
                                    write_extra=lambda folder: save_mtp_head(head, folder))
        else:
            path = self.policy.save(self.output_dir / CHECKPOINTS, state)
        if self.config.export_hf == "checkpoints" or (self.config.export_hf == "final" and final):
            export.export_checkpoint(path, policy=self.policy, tokenizer=self.tokenizer, collective=self.collective)
        return path

    def resume(self, path: Path | None = None) -> bool:
        """Load ``path`` (default: the latest checkpoint in the output dir); False if there is none."""
        path = path or checkpoint.latest(self.output_dir / CHECKPOINTS)
        if path is None:
            return False
        if self.mtp_head is not None:  # into the head the optimizer holds, before the optimizer's state
            load_mtp_head(path, self.model, into=self.mtp_head)
        elif has_mtp_head(path):
            raise ValueError(f"{path} holds an MTP head (a run with an mtp section); resume it with that section")
        state = self.policy.load(path)
        self.mtp_warmed_up = bool(state.extra.get("mtp_warmed_up", True))
        self.step = state.step
        self.sampler.load_state_dict(state.sampler)
        if self.rlavr is not None:
            self.rlavr.load_state_dict(state.extra.get("rlavr"))
        if self.collective.is_main:
            self._truncate_metrics(state.step)
        self._sync_engine()
        logger.info("resumed from %s at step %d", path, self.step)
        return True

    def _truncate_metrics(self, step: int) -> None:
        """Drop logged steps after ``step`` (a run that died past its checkpoint will take them again)."""
        path = self.output_dir / METRICS_FILE
        if path.exists():
            lines = [line for line in path.read_text().splitlines() if line.strip()]
            path.write_text("".join(line + "\n" for line in lines if json.loads(line).get("step", 0) <= step))

    # ---------------------------------------------------------------- one step

    def _rollouts(self, indices: list[int], seed: int) -> tuple[list[Rollout], list[RewardOutcome], float, int]:
        """Generate the groups chunk by chunk, sending each finished chunk to be scored."""
        config = self.config
        sampling = SamplingSettings(group_size=config.group_size, max_new_tokens=config.max_completion_length,
                                    temperature=config.temperature, top_p=config.top_p, top_k=config.top_k,
                                    min_p=config.min_p, repetition_penalty=config.repetition_penalty)
        rows = [self.rows[i] for i in indices]
        # More than one chunk lets slow graders (code, LLM judges) score while the next chunk generates.
        chunk = max(1, math.ceil(len(indices) / config.generation_chunks))
        rollouts: list[Rollout] = []
        pending: list[Future[list[RewardOutcome]]] = []
        started = time.perf_counter()
        for offset in range(0, len(indices), chunk):
            part = [self.encode_prompt(i) for i in indices[offset: offset + chunk]]
            if self.agent is not None:
                generated = self.agent.generate(part, sampling, seed=checkpoint.derive_seed(seed, offset),
                                                rows=[self.rows[i] for i in indices[offset: offset + chunk]])
            else:
                generated = self.engine.generate(part, sampling, seed=checkpoint.derive_seed(seed, offset))
            for rollout in generated:
                rollout.prompt_index += offset
                rollout.row_index = indices[rollout.prompt_index]
            pending.append(self.rewards.submit(rows, generated))
            rollouts.extend(generated)
        generation_s = time.perf_counter() - started
        outcomes = [outcome for future in pending for outcome in future.result()]
        tokens = sum(len(r.completion_ids) for r in rollouts)
        return rollouts, outcomes, generation_s, tokens

    def _reward_tensor(self, rollouts: list[Rollout], outcomes: list[RewardOutcome]) -> torch.Tensor:
        rewards = torch.tensor([o.score if o.score is not None else math.nan for o in outcomes], dtype=torch.float32)
        if self.config.overlong.enabled:
            lengths = torch.tensor([len(r.completion_ids) for r in rollouts])
            penalty = overlong_penalty(lengths, max_length=self.config.max_completion_length,
                                       cache_length=self.config.overlong.cache_length,
                                       factor=self.config.overlong.factor)
            rewards = rewards + penalty  # NaN stays NaN: an unscored rollout gets no penalty either
        return rewards

    def _collect(self, seed: int) -> tuple[list[Rollout], torch.Tensor, dict[str, float]]:
        """This rank's share of one rollout batch, with its rewards; with dynamic sampling, groups
        without signal are replaced by fresh prompts. Ranks draw in lockstep from one shared sampler.

        The signal is ``dynamic_sampling_signal``: by default the raw scores (DAPO keeps a group
        whose accuracy varies), so a group that only the overlong penalty spreads is still dropped."""
        config, world = self.config, self.collective
        group = config.group_size
        per_rank = config.prompts_per_step // world.world_size
        kept_rollouts: list[Rollout] = []
        kept_rewards: list[torch.Tensor] = []
        generation_s, tokens, drawn = 0.0, 0, 0
        scores: list[float | None] = []
        kept_scores: list[float | None] = []
        statuses: list[str] = []
        rounds = 0
        while True:
            needed = per_rank - len(kept_rollouts) // group
            needs = world.all_gather(needed)  # every rank takes the same draw and its own slice of it
            start = sum(needs[: world.rank])
            mine = self.sampler.take(sum(needs))[start: start + needed]
            if self.rlavr is not None and rounds == 0:  # RLAVR requeue: prompts whose bought label arrived go first
                mine = self.rlavr.step_prompts(self.step, mine)
            drawn += len(mine)
            if mine:
                round_seed = checkpoint.derive_seed(seed, rounds, world.rank)
                rollouts, outcomes, seconds, n_tokens = self._rollouts(mine, round_seed)
            else:  # this rank's batch is full; it still keeps step with the others' draws
                rollouts, outcomes, seconds, n_tokens = [], [], 0.0, 0
            generation_s += seconds
            tokens += n_tokens
            scores.extend(o.score for o in outcomes)
            statuses.extend(o.status for o in outcomes)
            rewards = self._reward_tensor(rollouts, outcomes)
            if config.dynamic_sampling and rounds < config.max_resample_rounds:
                raw = torch.tensor([math.nan if o.score is None else o.score for o in outcomes], dtype=torch.float32)
                signal = raw if config.dynamic_sampling_signal == "accuracy" else rewards
                keep = informative_groups(signal, group).repeat_interleave(group)
            else:
                keep = torch.ones(len(rollouts), dtype=torch.bool)
            kept = torch.nonzero(keep).flatten().tolist()
            kept_rollouts.extend(rollouts[i] for i in kept)
            kept_scores.extend(outcomes[i].score for i in kept)
            kept_rewards.append(rewards[keep])
            rounds += 1
            done = (len(kept_rollouts) >= per_rank * group or not config.dynamic_sampling
                    or rounds > config.max_resample_rounds)
            if not world.any(not done):
                break
        # Re-index prompts so each kept group is contiguous with its own index.
        for n, rollout in enumerate(kept_rollouts):
            rollout.prompt_index = n // group
        return kept_rollouts, torch.cat(kept_rewards), self._rollout_stats(scores, drawn, tokens, generation_s,
                                                                                   statuses, kept_scores)

    def _rollout_stats(self, scores: list[float | None], drawn: int, tokens: int,
                       generation_s: float, statuses: list[str] | None = None,
                       kept_scores: list[float | None] | None = None) -> dict[str, float]:
        """Reward and throughput numbers over every rank's rollouts (and the count of each reward status).

        ``reward_mean``/``reward_std`` are the raw scores of the rollouts trained on (``kept_scores``;
        default all); ``*_drawn`` include the groups dynamic sampling dropped."""
        kept = scores if kept_scores is None else kept_scores
        parts = self.collective.all_gather((scores, drawn, tokens, generation_s, statuses or [], kept))
        every = [score for part in parts for score in part[0]]
        scored = [score for score in every if score is not None]
        trained = [score for part in parts for score in part[5] if score is not None]
        tokens_all = sum(part[2] for part in parts)
        slowest = max(part[3] for part in parts)  # ranks generate side by side
        return {
            "reward_mean": sum(trained) / len(trained) if trained else math.nan,
            "reward_std": float(torch.tensor(trained).std()) if len(trained) > 1 else 0.0,
            "reward_mean_drawn": sum(scored) / len(scored) if scored else math.nan,
            "reward_std_drawn": float(torch.tensor(scored).std()) if len(scored) > 1 else 0.0,
            "non_ok_share": 1.0 - len(scored) / max(1, len(every)),
            "non_ok_count": float(len(every) - len(scored)),
            **status_counts(status for part in parts for status in part[4]),
            "prompts_drawn": float(sum(part[1] for part in parts)),
            "tokens_per_s": tokens_all / slowest if slowest > 0 else 0.0,
            "generation_s": slowest,
            "completion_length_mean": tokens_all / max(1, len(every)),
        }

    def _advantages(self, rewards: torch.Tensor, *,
                    token_counts: torch.Tensor | None = None) -> tuple[torch.Tensor, float]:
        """This rank's advantages, computed over every rank's rewards (batch scaling needs them all),
        and the share of informative groups. ``token_counts``: each rollout's counted tokens, for the
        token-weighted estimators (REINFORCE++); the rewards are kept for ``_update``, which computes
        the advantages again once the batch's token counts and KL (``kl_in_reward``) are known."""
        self._step_rewards = rewards
        counts = token_counts.tolist() if token_counts is not None else None
        parts = self.collective.all_gather((rewards.tolist(), counts))
        everything = torch.tensor([value for part in parts for value in part[0]], dtype=torch.float32)
        all_counts = (torch.tensor([n for part in parts for n in part[1] or []], dtype=torch.float32)
                      if counts is not None else None)
        advantages = group_advantages(everything, self.config.group_size, scale_rewards=self.config.scale_rewards,
                                      eps=self.config.advantage_epsilon, token_counts=all_counts)
        start = sum(len(part[0]) for part in parts[: self.collective.rank])
        share = float(informative_groups(everything, self.config.group_size).float().mean())
        return advantages[start: start + len(rewards)], share

    def _update(self, batch: Batch, advantages: torch.Tensor, seed: int) -> dict[str, float]:
        """``mini_batches`` optimizer steps over the rollout batch, ``gradient_accumulation`` micro-batches each."""
        config = self.config
        # vLLM's own per-token log-probs (NaN past each completion), for the rollout IS correction.
        rollout_logp = batch.rollout_logprobs
        cap = config.rollout_is_cap if rollout_logp is not None else None
        # With one optimizer step per rollout batch the policy that sampled is the one being updated:
        # π_old = π_θ (detached), so the extra no-grad forward is skipped, as TRL does — unless later
        # passes (μ > 1), the KL in the reward or the IS weights need π_old from before any update.
        on_policy = (config.optimizer_steps_per_rollout_batch == 1 and not config.kl_in_reward and cap is None)
        forward = self.policy.forward_model
        # No-grad passes, logprob_micro_batch_size rollouts at a time: memory flat in the batch size.
        chunk = config.logprob_micro_batch_size or config.micro_batch_size
        old_logp: torch.Tensor | None
        with torch.no_grad():
            if self.mtp_head is not None and not on_policy:  # over the update's own micro-batches (see _mtp_old_logp)
                old_logp = self._mtp_old_logp(batch, seed)
            else:
                old_logp = (None if on_policy else completion_logprobs(
                    forward, batch, config.temperature, device=self.device, micro_batch_size=chunk)[0])
            ref_logp = (completion_logprobs(self.reference, batch, config.temperature, device=self.device,
                                            micro_batch_size=chunk)[0] if self.reference is not None else None)
        device = torch.device(self.device)
        mask = batch.counted.to(device)  # observation tokens of multi-turn episodes have 0
        if config.mask_truncated_completions:
            if batch.truncated is not None:  # multi-turn: the engine knows which episodes ran out of budget
                truncated = batch.truncated.to(device)
            else:
                # A finished completion ends with one of the EOS ids the engines stop on (tokenizer's, generation config's).
                stops = eos_token_ids(self.tokenizer, getattr(getattr(self.model, "generation_config", None),
                                                              "eos_token_id", None))
                truncated = truncated_completions(batch.completion_ids.to(device), batch.completion_mask.to(device),
                                                  stops)
            mask = mask_truncated(mask, truncated)
        is_weights = (rollout_correction_weights(old_logp, rollout_logp.to(device), mask, mode=config.rollout_is_mode,
                                                 cap=cap, min_weight=config.rollout_is_min,
                                                 log_ratio_clamp=config.log_ratio_clamp)
                      if cap is not None and rollout_logp is not None and old_logp is not None else None)
        reward_kl: float | None = None
        if config.kl_in_reward or config.scale_rewards in TOKEN_WEIGHTED_ESTIMATORS:
            rewards = self._step_rewards
            if config.kl_in_reward and old_logp is not None and ref_logp is not None:
                kl = kl_divergence(old_logp, ref_logp, config.kl_estimator, log_ratio_clamp=config.log_ratio_clamp,
                                   kl_clamp=config.kl_clamp)
                reward_kl = float(masked_mean(kl, mask))
                rewards = kl_penalised_rewards(rewards, kl.cpu(), mask.cpu(), config.beta)
            advantages, _ = self._advantages(rewards, token_counts=mask.sum(-1).cpu())
        advantages = advantages.to(device)
        order = torch.randperm(len(advantages), generator=torch.Generator().manual_seed(seed))
        per_optimizer_step = len(order) // config.mini_batches
        per_micro = per_optimizer_step // config.gradient_accumulation
        sums: dict[str, float] = {}
        loss_total, grad_norm_total, n_micro = 0.0, 0.0, 0
        global_token_mean = LOSS_AGGREGATIONS.get(config.loss_type).global_token_mean
        beta = 0.0 if config.kl_in_reward else config.beta  # the KL is either in the reward or in the loss
        mtp_valid = mtp_valid_mask(batch).to(device) if self.mtp_head is not None else None
        mtp_grad_total = 0.0
        # μ passes, each over the same mini-batch split (as TRL's num_iterations and veRL's ppo_epochs).
        for _ in range(config.num_iterations):
            for mini in range(config.mini_batches):
                rows = order[mini * per_optimizer_step:(mini + 1) * per_optimizer_step]
                tokens_in_mini = self._tokens_per_rank(mask[rows].sum()) if global_token_mean else None
                # The MTP term's dapo normaliser: the mini-batch's counted tokens that have an MTP prediction.
                mtp_tokens = (self._tokens_per_rank((mask[rows] * mtp_valid[rows]).sum())
                              if global_token_mean and mtp_valid is not None else None)
                for micro in range(config.gradient_accumulation):
                    part = rows[micro * per_micro:(micro + 1) * per_micro]
                    micro_batch = _slice(batch, part)
                    tool_terms = None
                    joint: JointOutput | None = None
                    sd_kl: torch.Tensor | None = None
                    if self.mtp_head is not None:  # OCC: one trunk forward, the main head and the MTP head
                        assert self.mtp is not None
                        joint = joint_logprobs(self.model, self.mtp_head, micro_batch, config.temperature,
                                               detach_trunk=self.mtp.detach_trunk, device=self.device,
                                               with_entropy=True, entropy_grad=config.entropy_coef != 0.0)
                        logp, entropy = joint.logp, joint.entropy
                    elif self.tool_token_id is not None:  # IH-GRPO: the same forward also gives z_tool, log p_tool
                        from trainer.agent.setup import logprobs_with_tool_terms

                        logp, entropy, *tool_terms = logprobs_with_tool_terms(
                            forward, micro_batch, config.temperature, self.tool_token_id, device=self.device,
                            with_entropy=True, entropy_grad=config.entropy_coef != 0.0)
                    elif self.self_distill is not None and self.self_distill.kl_term:  # pi-Play: KL from the same logits
                        logp, entropy, sd_kl = self.self_distill.forward(
                            forward, micro_batch, part, config.temperature, device=self.device, with_entropy=True,
                            entropy_grad=config.entropy_coef != 0.0)
                    else:
                        logp, entropy = completion_logprobs(forward, micro_batch, config.temperature,
                                                            with_entropy=True, device=self.device,
                                                            entropy_grad=config.entropy_coef != 0.0)
                    old = logp.detach() if old_logp is None else old_logp[part]
                    out = grpo_policy_loss(
                        logp, old, advantages[part], mask[part], loss_type=config.loss_type,
                        eps_low=config.epsilon_low, eps_high=config.epsilon_high, dual_clip_c=config.dual_clip_c,
                        beta=beta, ref_logp=ref_logp[part] if ref_logp is not None else None,
                        kl_times_ratio=config.kl_times_ratio, max_completion_length=config.max_completion_length,
                        num_items_in_batch=tokens_in_mini, importance_sampling_level=config.importance_sampling_level,
                        kl_estimator=config.kl_estimator, log_ratio_clamp=config.log_ratio_clamp,
                        kl_clamp=config.kl_clamp, entropy=entropy, entropy_coef=config.entropy_coef,
                        is_weights=is_weights[part] if is_weights is not None else None,
                        cispo_eps_low=config.cispo_epsilon_low, cispo_eps_high=config.cispo_epsilon_high)
                    # A global-token-mean loss (dapo, cispo) already divides by the mini-batch's token count;
                    # the others are per-micro means.
                    loss = out.loss if global_token_mean else out.loss / config.gradient_accumulation
                    if tool_terms is not None:
                        loss = loss + self._c_term(tool_terms, micro_batch, out.per_token_loss, mask[part], sums)
                    if sd_kl is not None and self.self_distill is not None:
                        loss = loss + self.self_distill.loss_term(sd_kl, part, mask[part], sums)
                    if joint is not None:
                        loss = loss + self._mtp_term(joint, micro_batch, old, advantages[part], mask[part],
                                                     mtp_tokens, sums)
                    self.policy.backward(loss)
                    loss_total += float(loss.detach())
                    for name, value in out.metrics.items():
                        sums[name] = sums.get(name, 0.0) + value
                    if entropy is not None:
                        sums["entropy"] = sums.get("entropy", 0.0) + float(masked_mean(entropy.detach(), mask[part]))
                    n_micro += 1
                    if self.mtp_head is not None and micro == config.gradient_accumulation - 1:
                        mtp_grad_total += self._clip_mtp_head()
                    grad_norm = self.policy.micro_step(boundary=micro == config.gradient_accumulation - 1)
                    grad_norm_total += grad_norm or 0.0
        metrics = {name: value / n_micro for name, value in sums.items()}
        if reward_kl is not None:
            metrics["reward_kl"] = reward_kl  # token mean of the KL the rewards were penalised with
        steps = config.optimizer_steps_per_rollout_batch
        metrics["loss"] = loss_total / steps
        metrics["grad_norm"] = grad_norm_total / steps
        if self.mtp_head is not None:
            metrics["mtp_grad_norm"] = mtp_grad_total / steps
        return self.collective.mean_metrics(metrics)

    def _mtp_old_logp(self, batch: Batch, seed: int) -> torch.Tensor:
        """π_old with an MTP head: the main head's log-probs from :func:`trainer.mtp.joint_logprobs`, without
        gradient, over the very micro-batches the update then takes (same rows, same shapes), so that on
        the first mini-batch (θ = θ_old) δ_RL is exactly 0 and OCC's λ_t too, not float noise."""
        assert self.mtp_head is not None
        config = self.config
        size = batch.completion_ids.shape[0]
        order = torch.randperm(size, generator=torch.Generator().manual_seed(seed))  # as _update's
        per_micro = size // (config.mini_batches * config.gradient_accumulation)
        pieces = [(rows, joint_logprobs(self.model, self.mtp_head, _slice(batch, rows), config.temperature,
                                        device=self.device).logp) for rows in torch.split(order, per_micro)]
        old = pieces[0][1].new_empty(tuple(batch.completion_ids.shape))
        for rows, logp in pieces:
            old[rows.to(old.device)] = logp
        return old

    def _mtp_term(self, joint: JointOutput, micro_batch: Batch, old: torch.Tensor, advantages: torch.Tensor,
                  mask: torch.Tensor, mtp_tokens: torch.Tensor | None, sums: dict[str, float]) -> torch.Tensor:
        """The MTP term of ``mtp.regime`` for one micro-batch (trainer.occ.mtp_loss), over its counted tokens
        that have an MTP prediction, reduced as the RL loss (loss_type; a per-micro mean is divided by the
        accumulation steps); its metrics (mtp_lambda, mtp_inner, mtp_norm_sq, mtp_acceptance…) into ``sums``."""
        assert self.mtp is not None
        config = self.config
        out = mtp_loss(self.mtp, logp=joint.logp, old_logp=old, mtp_logp=joint.mtp_logp, advantages=advantages,
                       mask=mask * joint.mtp_mask, mtp_top1=joint.mtp_top1,
                       targets=micro_batch.completion_ids.to(mask.device), loss_type=config.loss_type,
                       eps_low=config.epsilon_low, eps_high=config.epsilon_high, dual_clip_c=config.dual_clip_c,
                       max_completion_length=config.max_completion_length, num_items_in_batch=mtp_tokens,
                       log_ratio_clamp=config.log_ratio_clamp)
        for name, value in out.metrics.items():
            sums[name] = sums.get(name, 0.0) + value
        if LOSS_AGGREGATIONS.get(config.loss_type).global_token_mean:
            return out.loss
        scaled: torch.Tensor = out.loss / config.gradient_accumulation
        return scaled

    def _clip_mtp_head(self) -> float:
        """Clip the head's gradients on their own (max_grad_norm), before the optimizer step; the policy
        clips the trunk's. So the head's gradient never rescales the trunk's update (``detach``: the trunk
        takes exactly the RL update). Returns the head's gradient norm."""
        assert self.mtp_head is not None
        parameters = [p for p in self.mtp_head.parameters() if p.requires_grad]
        if self.config.max_grad_norm is None:
            grads = [p.grad.detach().norm() for p in parameters if p.grad is not None]
            return float(torch.stack(grads).norm()) if grads else 0.0
        return float(torch.nn.utils.clip_grad_norm_(parameters, self.config.max_grad_norm))

    def _c_term(self, tool_terms: list[torch.Tensor], micro_batch: Batch, per_token_loss: torch.Tensor,
                mask: torch.Tensor, sums: dict[str, float]) -> torch.Tensor:
        """IH-GRPO: coefficient · mean(c_t) over the micro-batch's counted tokens, divided by the
        accumulation steps like a per-micro-batch mean (trainer.algorithms.ih_grpo.c_loss)."""
        assert self.multi_turn is not None
        settings = self.multi_turn.ih_grpo
        tool_logit, tool_logp = tool_terms
        non_tool = torch.ne(micro_batch.completion_ids.to(mask.device), int(self.tool_token_id or 0)).to(mask.dtype)
        value = c_loss(tool_logit, tool_logp, non_tool, per_token_loss, mask, logp_max=settings.logp_max,
                       p_min=settings.p_min, p_max=1.0 - settings.p_min)
        sums["c_loss"] = sums.get("c_loss", 0.0) + float(value.detach())
        scaled: torch.Tensor = settings.coefficient * value / self.config.gradient_accumulation
        return scaled

    def _tokens_per_rank(self, local_tokens: torch.Tensor) -> torch.Tensor:
        """dapo's normaliser: the mini-batch's tokens over all ranks, divided by the ranks, because
        data parallelism averages the ranks' gradients (the sum over every token / every token)."""
        if not self.collective.distributed:
            return local_tokens
        total = sum(self.collective.all_gather(float(local_tokens)))
        return torch.tensor(total / self.collective.world_size, device=local_tokens.device)

    def train_step(self) -> dict[str, Any]:
        started = time.perf_counter()
        seed = checkpoint.derive_seed(self.config.seed, self.step)
        warmup = self._mtp_warmup() if self.mtp_head is not None else {}
        if self.self_distill is not None:  # pi-Play examiner rounds: the round's student set, before sampling
            warmup = {**warmup, **self.self_distill.begin_step(self)}
        rollouts, rewards, metrics = self._collect(seed)
        metrics.update(warmup)
        if self.agent is not None:
            metrics.update(episode_metrics(rollouts))
        rlavr_step = None
        if self.rlavr is not None:  # RLAVR (issue 14): rewards vs bought labels / pseudo-labels, weights per prompt
            batch = collate(rollouts, self.tokenizer.pad_token_id)
            rlavr_step = self.rlavr.score(self, rollouts, batch, batch.completion_mask)
            rewards = rlavr_step.rewards
            metrics.update(rlavr_step.metrics)
        advantages, metrics["informative_group_share"] = self._advantages(rewards)
        if rlavr_step is not None:
            advantages = rlavr_step.weighted(advantages, self.config.group_size)  # A_j × w_i
        if self.self_distill is not None:  # AMR-SD: Â_{i,t} = A_i · w_t; pi-Play: the teacher's top-k for the term
            advantages, sd_metrics = self.self_distill.shape(self, rollouts, rewards, advantages)
            metrics.update(sd_metrics)
        turn_batch: Batch | None = None
        if any(r.turn_prompts is not None for r in rollouts):  # ZipRL: rows per turn, HRR per turn
            from trainer.agent.credit import episode_turn_advantages, hrr_metrics, token_advantages

            turn_batch = collate(rollouts, self.tokenizer.pad_token_id,
                                 row_multiple=self.config.mini_batches * self.config.gradient_accumulation)
            ziprl = self.multi_turn.ziprl_config if self.multi_turn is not None else None
            hrr = ziprl.hrr if ziprl is not None and ziprl.hrr_enabled else None
            outcome = advantages.tolist()
            shaped = episode_turn_advantages(outcome, rollouts, self.config.group_size, hrr)
            metrics.update(hrr_metrics(outcome, shaped, rollouts))
            advantages = turn_batch.token_advantages = token_advantages(turn_batch, shaped)
        # With beta > 0 the KL term still pulls towards the reference even when every advantage is 0.
        # The decision is the same on every rank: each computed advantages over all of them.
        # So does an entropy bonus: its gradient does not depend on the advantages.
        if (self.collective.any(bool((advantages != 0).any())) or self.config.beta > 0
                or self.config.entropy_coef != 0 or (self.self_distill is not None and self.self_distill.kl_term)):
            batch = turn_batch if turn_batch is not None else collate(rollouts, self.tokenizer.pad_token_id)
            metrics.update(self._update(batch, advantages, seed))
        else:
            # Every group's rewards are equal: no gradient to take; the step still counts, and the
            # schedule advances as many optimizer steps as an update would have taken.
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
                for _ in range(self.config.optimizer_steps_per_rollout_batch):
                    self.scheduler.step()
            metrics.update({"loss": 0.0, "skipped_update": 1.0})
        self._sync_engine()
        if self.self_distill is not None:  # the teacher follows the policy (EMA step or replaced)
            self.self_distill.after_step(self)
        self.step += 1
        metrics["step"] = self.step
        metrics["lr"] = float(self.scheduler.get_last_lr()[0])
        metrics["step_time_s"] = time.perf_counter() - started
        return metrics

    def periodic_eval(self) -> dict[str, float]:
        """At every ``eval.every_n_steps`` steps and the last one: the evaluation's ``eval/<source>/…``
        metrics (trainer.evaluate), its report and samples in ``output_dir/eval/step-N/``. The main rank
        evaluates (it writes the metrics); the others meet it at the next step's collectives."""
        evaluation = getattr(self.config, "eval", None)
        if (evaluation is None or not self.collective.is_main
                or (self.step % evaluation.every_n_steps and self.step != self.config.max_steps)):
            return {}
        from trainer.evaluate import EvalSettings, evaluate, write_outputs

        settings = EvalSettings(k=evaluation.k, max_new_tokens=self.config.max_completion_length,
                                temperature=evaluation.temperature, max_prompts=evaluation.max_prompts,
                                seed=self.config.seed,  # the same draws at every step: only the weights differ
                                max_prompt_length=self.config.max_prompt_length)
        result = evaluate(self.engine, self.tokenizer, self.eval_rows, self.rewards, settings,
                          describe={"step": self.step, "data": evaluation.data})
        write_outputs(self.output_dir / "eval" / f"step-{self.step:06d}", result)
        return result.metrics()

    # ---------------------------------------------------------------- the run

    def train(self, *, on_step: StepCallback | None = None,
              should_stop: Callable[[], bool] | None = None) -> RunOutcome:
        """Train to ``max_steps`` (from where a resumed run left off); checkpoint on cadence, cancel and end."""
        history: list[dict[str, Any]] = []
        last_checkpoint: Path | None = checkpoint.latest(self.output_dir / CHECKPOINTS)
        main = self.collective.is_main
        trackers = tracking.Tracking([])
        try:
            # The main rank reports, as it writes metrics.jsonl (see trainer/tracking.py).
            trackers = tracking.start_tracking(
                self.config.report_to if main else [], output_dir=self.output_dir,
                hparams=tracking.run_hparams(self.config), project=self.config.tracking_project,
                run_name=self.config.run_name or self.output_dir.name)
            with (self.output_dir / METRICS_FILE).open("a") if main else contextlib.nullcontext() as log:
                while self.step < self.config.max_steps:
                    # The main rank decides; every rank stops at the same step.
                    if self.collective.any(main and should_stop is not None and should_stop()):
                        last_checkpoint = self.save_checkpoint(final=True)
                        return RunOutcome("cancelled", self.step, last_checkpoint, history)
                    metrics = self.train_step()
                    metrics.update(self.periodic_eval())
                    history.append(metrics)
                    if log is not None:
                        log.write(json.dumps(metrics) + "\n")
                        log.flush()
                    trackers.log(metrics)
                    if on_step is not None and main:
                        on_step(self.step, metrics)
                    every = self.config.checkpoint_every
                    if every and self.step % every == 0 and self.step < self.config.max_steps:
                        last_checkpoint = self.save_checkpoint()
            last_checkpoint = self.save_checkpoint(final=True)
            return RunOutcome("succeeded", self.step, last_checkpoint, history)
        finally:
            trackers.close()
            self.rewards.close()
            if self.self_distill is not None:
                self.self_distill.close()
