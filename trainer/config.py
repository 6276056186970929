"""A training run's configuration: one pydantic model, read from a YAML file or a dict (an API body).

Every setting is checked before anything runs: unknown keys, out-of-range values and settings
that contradict each other fail with a :class:`ConfigError` whose message names the field.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from rewardhub.reward_specs import RewardSpec, parse_spec_ref
from trainer.algorithms import (
    ADVANTAGE_ESTIMATORS,
    KL_CLAMP,
    KL_ESTIMATORS,
    LOG_RATIO_CLAMP,
    LOSS_AGGREGATIONS,
    ImportanceSamplingLevel,
    LossType,
    RewardScaling,
    RolloutISMode,
)
from trainer.occ import LocalMtpConfig, MtpConfig
from trainer.self_distillation.config import SelfDistillationConfig, ServiceSelfDistillationConfig

_SPEC_ADAPTER: TypeAdapter[Any] = TypeAdapter(RewardSpec)


class ConfigError(ValueError):
    """A configuration that cannot run; the message names each bad field (``field: problem``)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TinyModelConfig(_Strict):
    """A random-weights Qwen2-architecture model built locally (tests, demos, benchmarks)."""

    hidden_size: int = Field(default=64, ge=8, le=4096)
    num_layers: int = Field(default=2, ge=1, le=64)
    num_heads: int = Field(default=4, ge=1)
    num_kv_heads: int = Field(default=2, ge=1)
    seed: int = Field(default=0, description="Seed of the random initial weights.")

    @model_validator(mode="after")
    def _heads_divide(self) -> TinyModelConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be a multiple of num_heads ({self.num_heads})")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})")
        return self


class ModelConfig(_Strict):
    path: str | None = Field(default=None, description="A local transformers model directory (never downloaded).")
    tiny: TinyModelConfig | None = Field(default=None, description="Build a tiny random model instead.")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    gradient_checkpointing: bool = False
    attn_implementation: Literal["eager", "sdpa", "flash_attention_2"] | None = Field(
        default=None, description="Unset: flash_attention_2 on a GPU with flash-attn installed and a 16-bit "
                                  "dtype, otherwise transformers' default.")

    @model_validator(mode="after")
    def _one_source(self) -> ModelConfig:
        if (self.path is None) == (self.tiny is None):
            raise ValueError("give exactly one of model.path (a local model directory) or model.tiny")
        return self


class RewardConfig(_Strict):
    """Where rewards come from: the rewardhub API with an inline spec or a stored ``name@version``."""

    spec: dict[str, Any] | str = Field(description="An inline reward spec, or a stored one as name@version.")
    url: str | None = Field(default=None, description="rewardhub URL. Unset: a run started by the trainer service "
                            "uses the platform's own gateway; the CLI uses REWARDHUB_URL or http://127.0.0.1:8000.")
    project_id: str | None = None
    deadline_s: float | None = Field(default=None, gt=0, le=3600)
    timeout_s: float = Field(default=120.0, gt=0)
    max_retries: int = Field(default=3, ge=0, le=20, description="Client retries of transient failures.")
    batch_size: int = Field(default=256, ge=1, le=10_000, description="Items per /v1/rewards request.")
    concurrency: int = Field(default=4, ge=1, le=64, description="Reward requests in flight at once.")

    @field_validator("spec")
    @classmethod
    def _valid_spec(cls, spec: dict[str, Any] | str) -> dict[str, Any] | str:
        if isinstance(spec, str):
            parse_spec_ref(spec)  # raises ValueError naming the bad reference
            return spec.strip()
        try:
            return dict(_SPEC_ADAPTER.dump_python(_SPEC_ADAPTER.validate_python(spec), mode="json"))
        except ValidationError as exc:
            raise ValueError(f"not a valid reward spec: {_describe(exc)}") from None


DEFAULT_API_KEY_ENV = "REWARDHUB_API_KEY"


class LocalRewardConfig(RewardConfig):
    """The reward section of a config the machine's owner writes (``rewardhub train run.yaml``, Python).

    Only such a config may say which environment variable holds the API key: it names the owner's
    own environment. A config that arrives over the trainer service's API is a :class:`RewardConfig`,
    which has no such field, so an API caller can never have one of the server's variables
    (``REWARDHUB_SECRET_KEY``, ``DATABASE_URL``…) sent out as a Bearer token; its run gets a key
    minted for it instead.
    """

    api_key_env: str = Field(default=DEFAULT_API_KEY_ENV, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                             description="Environment variable holding the API key (local configs only).")


class OverlongConfig(_Strict):
    """DAPO soft overlong punishment over the last ``cache_length`` tokens before the limit."""

    enabled: bool = False
    cache_length: int = Field(default=4, ge=1)
    factor: float = Field(default=1.0, ge=0)


_DERIVED_DEEPSPEED_KEYS = {
    "train_micro_batch_size_per_gpu": "prompts_per_step, group_size, mini_batches and gradient_accumulation",
    "train_batch_size": "prompts_per_step, group_size, mini_batches and gradient_accumulation",
    "gradient_accumulation_steps": "gradient_accumulation",
    "gradient_clipping": "max_grad_norm",
    "bf16": "model.dtype", "fp16": "model.dtype",
    "optimizer": "learning_rate, weight_decay and deepspeed.offload_optimizer",
    "scheduler": "lr_schedule and warmup_steps",
}
_DERIVED_ZERO_KEYS = {
    "stage": "deepspeed.zero_stage",
    "offload_optimizer": "deepspeed.offload_optimizer",
    "offload_param": "deepspeed.offload_params",
    "stage3_gather_16bit_weights_on_model_save": "the checkpoint's consolidated model.pt",
}


class DeepSpeedConfig(_Strict):
    """Data-parallel training with DeepSpeed ZeRO, launched by ``rewardhub train --num-gpus N``.

    ``prompts_per_step`` stays the global batch: each of the N ranks rolls out and trains on
    ``prompts_per_step / N`` prompts, so a config means the same run on 1 or 8 GPUs. Under ZeRO-3
    each rank samples with a full local copy of the weights, refreshed from the shards after every
    step (generating on the shards would gather them layer by layer at every token, in lockstep
    with ranks that generate other lengths).
    """

    zero_stage: Literal[2, 3] = Field(default=2, description="2: optimizer state and gradients sharded; "
                                                             "3: parameters sharded as well.")
    offload_optimizer: bool = Field(default=False, description="Keep optimizer state in CPU memory (ZeRO-Offload).")
    offload_params: bool = Field(default=False, description="Keep sharded parameters in CPU memory (ZeRO-3 only).")
    overrides: dict[str, Any] = Field(default_factory=dict, description="Raw DeepSpeed config keys merged "
                                      "over the generated config (e.g. bucket sizes).")

    @model_validator(mode="after")
    def _offload_needs_stage3(self) -> DeepSpeedConfig:
        if self.offload_params and self.zero_stage != 3:
            raise ValueError("offload_params: parameter offload needs zero_stage 3")
        return self

    @field_validator("overrides")
    @classmethod
    def _no_derived_keys(cls, overrides: dict[str, Any]) -> dict[str, Any]:
        # These follow from the run config; overriding them would desynchronise the loop and DeepSpeed.
        derived = {key: source for key, source in _DERIVED_DEEPSPEED_KEYS.items() if key in overrides}
        zero = overrides.get("zero_optimization")
        if isinstance(zero, dict):
            derived.update({f"zero_optimization.{key}": source for key, source in _DERIVED_ZERO_KEYS.items()
                            if key in zero})
        if derived:
            raise ValueError("; ".join(f"{key} follows from {source}; set that instead"
                                       for key, source in derived.items()))
        return overrides


class RunConfig(_Strict):
    model: ModelConfig
    dataset: str = Field(description="JSONL or Parquet in the veRL schema.")
    reward: RewardConfig | None = Field(default=None, description="Unset only when the caller passes a reward "
                                                                  "function in-process (tests, benchmarks).")
    engine: Literal["transformers", "vllm"] = "transformers"
    device: str = "cpu"
    deepspeed: DeepSpeedConfig | None = Field(default=None, description="Multi-GPU data parallelism with "
                                              "DeepSpeed ZeRO-2/3 (see README: Training on several GPUs).")
    vllm_gpu_memory_utilization: float = Field(default=0.3, gt=0, lt=1, description="Share of GPU memory the "
                                               "colocated vLLM engine may take (engine: vllm).")

    group_size: int = Field(default=8, ge=2, le=256, description="G, completions per prompt.")
    prompts_per_step: int = Field(default=4, ge=1)
    max_steps: int = Field(default=100, ge=1)
    learning_rate: float = Field(default=1e-5, gt=0, le=1)
    lr_schedule: Literal["constant", "linear", "cosine"] = "constant"
    warmup_steps: int = Field(default=0, ge=0)
    weight_decay: float = Field(default=0.0, ge=0)
    max_grad_norm: float | None = Field(default=1.0, gt=0)
    epsilon_low: float = Field(default=0.2, ge=0, lt=1)
    epsilon_high: float = Field(default=0.28, ge=0)
    dual_clip_c: float | None = Field(default=None, gt=1)
    beta: float = Field(default=0.0, ge=0, description="KL coefficient (k3 to the initial model).")
    kl_times_ratio: bool = True
    loss_type: LossType = "dapo"
    scale_rewards: RewardScaling = "group"
    dynamic_sampling: bool = False
    max_resample_rounds: int = Field(default=3, ge=0, description="Extra generation rounds to fill the batch "
                                                                 "with informative groups (dynamic sampling).")
    overlong: OverlongConfig = Field(default_factory=OverlongConfig)
    max_prompt_length: int = Field(default=256, ge=1)
    max_completion_length: int = Field(default=64, ge=1)
    temperature: float = Field(default=1.0, gt=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    generation_chunks: int = Field(default=1, ge=1, description="Generate the step's prompts in this many chunks, "
                                   "scoring each finished chunk while the next generates (slow graders).")
    mini_batches: int = Field(default=1, ge=1, description="Optimizer steps per rollout batch.")
    gradient_accumulation: int = Field(default=1, ge=1, description="Micro-batches per optimizer step.")
    seed: int = Field(default=0, ge=0, lt=2**63, description="Seeds every random choice; each step's seeds are "
                      "mixed from it (trainer.checkpoint.derive_seed), so any value in [0, 2^63) is valid.")
    checkpoint_every: int = Field(default=0, ge=0, description="Steps between checkpoints; 0: only at the end.")
    output_dir: str | None = Field(default=None, description="Checkpoints and metrics.jsonl; required to train.")

    # loss and advantage options
    num_iterations: int = Field(default=1, ge=1, le=64, description="μ: passes over each rollout batch (TRL's "
                                "num_iterations); each pass takes the same mini_batches optimizer steps, so a rollout "
                                "batch takes num_iterations x mini_batches steps.")
    # OCC (issue 18): an MTP head trained with the policy; declared after mini_batches and num_iterations,
    # which its check reads (occ needs several optimizer steps per rollout batch). See docs/occ.md.
    mtp: MtpConfig = Field(default=None, description="A multi-token-prediction head trained jointly with RL "
                           "(regime detach | ce | policy | occ, trainer.occ.MtpSettings); unset: none.")
    mask_truncated_completions: bool = Field(default=False, description="Leave completions that end without an EOS "
                                             "(cut at max_completion_length) out of the loss (TRL's option).")
    importance_sampling_level: ImportanceSamplingLevel = Field(default="token", description="token: one ratio per "
                                                               "token; sequence: GSPO's length-normalised sequence "
                                                               "ratio, shared by the sequence's tokens.")
    advantage_epsilon: float = Field(default=1e-4, ge=0, le=1, description="ε in A = (r - baseline) / (std + ε) "
                                     "(TRL: 1e-4).")
    kl_estimator: str = Field(default="k3", description="Per-token KL estimator: k1 (log-ratio), k2 (½ log-ratio²) "
                              "or k3 (Schulman's low-variance one; veRL's low_var_kl).")
    kl_in_reward: bool = Field(default=False, description="Subtract beta x the completion's summed KL to the "
                               "reference from its reward before the advantages (veRL's use_kl_in_reward) instead "
                               "of adding beta x KL to the loss.")
    log_ratio_clamp: float | None = Field(default=LOG_RATIO_CLAMP, gt=0, description="Clamp log-ratios to [-c, c] "
                                          "before exp (veRL: 20); null: no clamp.")
    kl_clamp: float | None = Field(default=KL_CLAMP, gt=0, description="Clamp per-token KL estimates to [-c, c] "
                                   "(veRL: 10); null: no clamp.")
    entropy_coef: float = Field(default=0.0, ge=0, description="Entropy bonus: loss -= c x entropy, reduced as "
                                "loss_type reduces the policy loss.")
    cispo_epsilon_low: float | None = Field(default=None, ge=0, le=1, description="CISPO (loss_type: cispo): "
                                            "weights clipped below at 1 - this; null: no lower bound (MiniMax-M1).")
    cispo_epsilon_high: float = Field(default=4.0, gt=0, description="CISPO: weights clipped above at 1 + this "
                                      "(4: TRL's / ScaleRL's cap of 5).")
    rollout_is_cap: float | None = Field(default=None, gt=0, description="Truncated importance sampling for vLLM "
                                         "rollouts: each token's policy loss weighted by min(π_old / π_vllm, cap) "
                                         "(TRL: 3, veRL: 2); null: off.")
    rollout_is_mode: RolloutISMode = Field(default="token_truncate", description="How the rollout IS weights are "
                                           "formed (TRL's vllm_importance_sampling_mode): token_truncate (default): "
                                           "each token's ratio clamped to [rollout_is_min, rollout_is_cap]; "
                                           "token_mask: set to 0 outside that range; sequence_truncate / "
                                           "sequence_mask: the same on one ratio per completion, exp of its summed "
                                           "log-ratio. Needs rollout_is_cap.")
    rollout_is_min: float | None = Field(default=None, ge=0, description="Lower bound of the rollout IS weights "
                                         "(TRL's vllm_importance_sampling_clip_min): truncate modes raise smaller "
                                         "ratios to it, mask modes set them to 0; below rollout_is_cap; null: "
                                         "unbounded.")

    @field_validator("kl_estimator")
    @classmethod
    def _registered_kl(cls, name: str) -> str:
        return KL_ESTIMATORS.check(name)

    @model_validator(mode="after")
    def _loss_options_consistent(self) -> RunConfig:
        if self.kl_in_reward and self.beta == 0:
            raise ValueError("kl_in_reward: needs beta > 0, the KL coefficient it subtracts with")
        if self.rollout_is_cap is not None and self.engine != "vllm":
            raise ValueError("rollout_is_cap: corrects for vLLM's sampling, so it needs engine: vllm (the "
                             "transformers engine samples from the trained policy itself)")
        for name, is_set in (("rollout_is_mode", self.rollout_is_mode != "token_truncate"),
                             ("rollout_is_min", self.rollout_is_min is not None)):
            if is_set and self.rollout_is_cap is None:
                raise ValueError(f"{name}: shapes the rollout IS correction, which rollout_is_cap turns on "
                                 "(engine: vllm); set rollout_is_cap too")
        if (self.rollout_is_min is not None and self.rollout_is_cap is not None
                and self.rollout_is_min >= self.rollout_is_cap):
            raise ValueError(f"rollout_is_min: must be below rollout_is_cap, got {self.rollout_is_min} >= "
                             f"{self.rollout_is_cap}")
        if self.loss_type == "cispo" and self.dual_clip_c is not None:
            raise ValueError("dual_clip_c: applies to the clipped surrogate, not to loss_type cispo")
        return self

    @model_validator(mode="after")
    def _mtp_supported(self) -> RunConfig:
        if self.mtp is not None and self.deepspeed is not None:
            raise ValueError("mtp: not supported with deepspeed yet (the MTP head is not part of the DeepSpeed "
                             "engine); train it in one process")
        if self.mtp is not None and getattr(self, "multi_turn", None) is not None:
            raise ValueError("mtp: not supported with multi_turn yet (single-turn rollouts only)")
        return self

    @property
    def optimizer_steps_per_rollout_batch(self) -> int:
        """num_iterations x mini_batches: what the LR schedule and a skipped update must count per step."""
        return self.num_iterations * self.mini_batches

    # ---- sampling exactly from the policy, log-prob memory, checkpoint pruning, dynamic sampling (issue 13)
    top_k: int = Field(default=0, ge=0, description="0 (off) only: rollouts are sampled from the full softmax "
                       "the loss scores; a truncated distribution is refused (see _sampling_is_the_policy).")
    min_p: float = Field(default=0.0, ge=0, le=1, description="0 (off) only, like top_k.")
    repetition_penalty: float = Field(default=1.0, gt=0, description="1 (off) only, like top_k.")
    logprob_micro_batch_size: int | None = Field(
        default=None, ge=1, description="Rollouts per forward when computing the old and reference policies' "
        "log-probs (no gradient); peak memory is O(this x T x V), independent of the rollout batch. Unset: "
        "micro_batch_size (the rollouts of one training micro-batch).")
    save_total_limit: int | None = Field(default=None, ge=1, description="Keep only the newest N checkpoints "
                                         "(the one `latest` names is never deleted); unset: keep all.")
    dynamic_sampling_signal: Literal["accuracy", "reward"] = Field(
        default="accuracy", description="What dynamic sampling filters on: accuracy = the reward service's "
        "raw score (as DAPO does); reward = the shaped reward, overlong penalty included.")

    @model_validator(mode="after")
    def _sampling_is_the_policy(self) -> RunConfig:
        """Refuse truncated or penalised sampling: the loss's log-probs (and so its ratio, KL and
        gradient) are those of the full softmax at ``temperature``, so samples from any other
        distribution would make every step silently off-policy."""
        off_policy = {"top_p": (self.top_p, 1.0), "top_k": (self.top_k, 0), "min_p": (self.min_p, 0.0),
                      "repetition_penalty": (self.repetition_penalty, 1.0)}
        for name, (value, full) in off_policy.items():
            if value != full:
                raise ValueError(f"{name}: {value} would sample from a truncated or penalised distribution while "
                                 f"the loss scores the full softmax (off-policy); only {full} is supported")
        return self

    # tracking and artefacts
    report_to: list[Literal["tensorboard", "wandb", "trackio"]] = Field(
        default_factory=list, description="Experiment trackers that get each step's metrics and the run config "
        "(tensorboard, wandb offline, trackio); none by default.")
    run_name: str | None = Field(default=None, min_length=1, description="The run's name in the trackers; "
                                 "unset: the output_dir's folder name.")
    tracking_project: str = Field(default="rewardhub", min_length=1, description="wandb / trackio project.")
    export_hf: Literal["checkpoints", "final", "none"] = Field(
        default="checkpoints", description="Write <checkpoint>/hf/ (save_pretrained + tokenizer + generation "
        "config) at every checkpoint, only at the run's last one, or never.")
    dataset_format: Literal["auto", "jsonl", "parquet", "hf_disk", "hf_parquet", "hf_json"] = Field(
        default="auto", description="auto: by the path (.jsonl/.json, .parquet, a save_to_disk folder); "
        "hf_parquet / hf_json: read with datasets' own loaders (a file, a folder or a glob).")
    dataset_split: str | None = Field(default=None, min_length=1, description="The split of a DatasetDict "
                                      "(save_to_disk folder) or of datasets' loaders; unset: train.")

    # Periodic evaluation (issue 20), RLAVR (issue 14) and multi-turn runs (issues 15, 16). In an API run
    # eval.data is confined like dataset, rlavr.url like reward.url, and multi_turn names only registered
    # environments and the sandbox backend (services/trainer/confine.py); local configs get more freedom.
    eval: EvalConfig | None = Field(default=None, description="Periodic evaluation during training; unset: none.")
    rlavr: RlavrConfig | None = Field(default=None, description="Train with CARE-bought labels and pseudo-labels.")
    multi_turn: MultiTurnConfig | None = Field(default=None, description="Multi-turn episodes with tools "
                                               "(see docs/multi_turn.md); unset: single-turn rollouts.")
    # Self-distillation (issue 17): in an API run the teacher is the platform's teacher service (or an
    # allowlisted URL) with the run's minted key, or in_process (a copy of the policy: it loads no path).
    self_distillation: ServiceSelfDistillationConfig | None = Field(
        default=None, description="AMR-SD or pi-Play against a teacher (trainer.self_distillation); unset: none.")

    @model_validator(mode="after")
    def _self_distillation_supported(self) -> RunConfig:
        """Self-distillation forms token-level advantages (AMR-SD) or adds a loss term (pi-Play) in one
        process, on single-turn rollouts: settings that recompute the advantages later or change the
        update's forward are refused, naming the field."""
        sd = self.self_distillation
        if sd is None:
            return self
        for name in ("rlavr", "multi_turn", "mtp", "deepspeed"):
            if getattr(self, name, None) is not None:
                raise ValueError(f"self_distillation: not supported with {name} yet")
        if sd.method == "amr_sd":
            from trainer.algorithms import TOKEN_WEIGHTED_ESTIMATORS

            if self.kl_in_reward:
                raise ValueError("self_distillation: amr_sd is not supported with kl_in_reward (the update would "
                                 "recompute the advantages without the token weights)")
            if self.scale_rewards in TOKEN_WEIGHTED_ESTIMATORS:
                raise ValueError(f"self_distillation: amr_sd is not supported with scale_rewards: "
                                 f"{self.scale_rewards} (the update would recompute the advantages without the "
                                 f"token weights)")
        from trainer.self_distillation.examiner import check_examiner_steps

        check_examiner_steps(self)  # here too, so that a POST /v1/runs body gets its 422 at once
        return self

    @model_validator(mode="after")
    def _rlavr_consistent(self) -> RunConfig:
        """RLAVR rewards exist only once the whole batch is posted, and its weights scale the advantages
        computed once: settings that filter groups by reward or recompute advantages later contradict it."""
        if self.multi_turn is not None and self.rlavr is not None:
            raise ValueError("multi_turn: not supported with rlavr yet (its labels are per single-turn completion)")
        if self.multi_turn is not None and self.multi_turn.ziprl is not None:
            from trainer.algorithms import TOKEN_WEIGHTED_ESTIMATORS

            # ZipRL's batch rows are turns (each under its own context): the advantages are computed once
            # per episode and spread over its turns, so nothing may recompute them per row later.
            if self.kl_in_reward:
                raise ValueError("multi_turn.ziprl: not supported with kl_in_reward (advantages are per episode, "
                                 "the batch's rows per turn)")
            if self.scale_rewards in TOKEN_WEIGHTED_ESTIMATORS:
                raise ValueError(f"multi_turn.ziprl: not supported with scale_rewards: {self.scale_rewards} "
                                 f"(its token counts are per episode, the batch's rows per turn)")
        if self.multi_turn is not None and self.eval is not None:
            raise ValueError("eval: periodic evaluation samples single-turn completions; not supported with "
                             "multi_turn yet")
        if self.rlavr is None:
            return self
        if self.dynamic_sampling:
            raise ValueError("dynamic_sampling: not supported with rlavr (rewards are known only after the step is posted)")
        if self.overlong.enabled:
            raise ValueError("overlong.enabled: not supported with rlavr (its rewards replace the shaped ones)")
        if self.kl_in_reward:
            raise ValueError("kl_in_reward: not supported with rlavr (advantages are recomputed without the weights)")
        from trainer.algorithms import TOKEN_WEIGHTED_ESTIMATORS

        if self.scale_rewards in TOKEN_WEIGHTED_ESTIMATORS:
            raise ValueError(f"scale_rewards: {self.scale_rewards} is not supported with rlavr (advantages are "
                             f"recomputed without the weights)")
        return self

    @field_validator("report_to")
    @classmethod
    def _trackers_installed(cls, names: list[str]) -> list[str]:
        from trainer.tracking import check_trackers

        return check_trackers(names)  # a listed tracker whose package is missing fails here, before any output

    @field_validator("loss_type")
    @classmethod
    def _registered_loss(cls, name: str) -> str:
        return LOSS_AGGREGATIONS.check(name)

    @field_validator("scale_rewards")
    @classmethod
    def _registered_estimator(cls, name: str) -> str:
        return ADVANTAGE_ESTIMATORS.check(name)

    @model_validator(mode="after")
    def _consistent(self) -> RunConfig:
        if self.epsilon_high < self.epsilon_low:
            raise ValueError(f"epsilon_high: {self.epsilon_high} must be >= epsilon_low ({self.epsilon_low})")
        rollouts = self.rollouts_per_step
        micro = self.mini_batches * self.gradient_accumulation
        if rollouts % micro:
            raise ValueError(f"mini_batches: prompts_per_step x group_size ({rollouts}) must divide evenly into "
                             f"mini_batches x gradient_accumulation ({micro}) micro-batches")
        if self.overlong.enabled and self.overlong.cache_length >= self.max_completion_length:
            raise ValueError(f"overlong.cache_length: {self.overlong.cache_length} must be smaller than "
                             f"max_completion_length ({self.max_completion_length})")
        if self.warmup_steps and self.warmup_steps >= self.max_steps:
            raise ValueError(f"warmup_steps: {self.warmup_steps} must be smaller than max_steps ({self.max_steps})")
        if self.deepspeed is not None and self.device not in ("cpu", "cuda"):
            raise ValueError(f"device: {self.device!r} with deepspeed must be 'cuda' (each rank takes the GPU of "
                             f"its local rank) or 'cpu'")
        if self.engine == "vllm" and self.device == "cpu":
            raise ValueError("engine: vllm needs a GPU device (device: cuda)")
        if self.model.attn_implementation == "flash_attention_2":
            if self.device == "cpu":
                raise ValueError("model.attn_implementation: flash_attention_2 needs a GPU device (device: cuda)")
            if self.model.dtype == "float32":
                raise ValueError("model.attn_implementation: flash_attention_2 needs model.dtype bfloat16 or float16")
        if self.device == "cpu" and self.model.dtype == "float16":
            raise ValueError("model.dtype: float16 is not supported on CPU; use float32 or bfloat16")
        return self

    @property
    def rollouts_per_step(self) -> int:
        return self.prompts_per_step * self.group_size

    @property
    def micro_batch_size(self) -> int:
        return self.rollouts_per_step // (self.mini_batches * self.gradient_accumulation)


# periodic evaluation
class EvalConfig(_Strict):
    """Evaluation every ``every_n_steps`` steps during training (``trainer.evaluate``): ``k`` samples per
    prompt of ``data`` graded with the run's reward source; avg@k and pass@k per data source go into
    that step's metrics as ``eval/<source>/avg@k`` and the samples to ``output_dir/eval/step-N/``."""

    data: str = Field(description="JSONL or Parquet in the veRL schema (a held-out set).")
    every_n_steps: int = Field(default=100, ge=1, description="Steps between evaluations (and after the last).")
    k: int = Field(default=4, ge=1, le=1024, description="Samples per prompt.")
    temperature: float = Field(default=1.0, gt=0, description="Sampling temperature of the evaluation.")
    max_prompts: int | None = Field(default=None, ge=1, description="Evaluate the first N rows only; unset: all.")


# RLAVR (issue 14): train on labels bought through the annotation service (CARE) and pseudo-labels elsewhere.
class RlavrConfig(_Strict):
    """Each step's groups go to ``POST /v1/annotation/projects/{id}/steps`` (trainer.rlavr); rewards are
    1[answer ≡ label] where a bought label is known, 1[answer ≡ pseudo-label] elsewhere, and each prompt's
    advantages are multiplied by the service's ``advantage_weight``."""

    annotation_project_id: str = Field(min_length=1, description="The annotation project (its n = group_size).")
    url: str | None = Field(default=None, description="Annotation service base URL. Unset: the reward URL's "
                            "platform (reward.url, else REWARDHUB_URL or http://127.0.0.1:8000) + /services/annotation.")
    extractor: Literal["boxed", "text"] = Field(default="boxed", description="boxed: the last \\boxed{…} of a "
                                                "completion, none = unparseable (math); text: the whole completion "
                                                "stripped, empty = unparseable (trainer.rlavr.extract_answer).")
    pending_rule: Literal["weight_zero", "requeue"] = Field(
        default="weight_zero", description="A prompt whose label is bought but not answered yet trains at weight 0 "
        "this step. weight_zero: nothing more; requeue: the label feed is read at each step and the prompt comes "
        "back, ahead of fresh ones, once its label arrives (trained on it at weight 1; one process only).")
    run_id: str | None = Field(default=None, min_length=1, max_length=120, description="Prefix of each step's "
                               "Idempotency-Key (rlavr-<run_id>-step-<step>); unset: a hash of output_dir.")
    timeout_s: float = Field(default=60.0, gt=0)
    max_retries: int = Field(default=3, ge=0, le=20, description="Retries of connection errors and 502/503/504.")


# Multi-turn agent runs (issue 15): episodes with tools, IH-GRPO's delayed execution and its c term.
class ToolsConfig(_Strict):
    """Where code runs, in a config that came over the trainer service's API: the platform's sandbox
    service (its stateful sessions over HTTP). Its URL and token are the service's own settings
    (REWARDHUB_SANDBOX_URL, REWARDHUB_SANDBOX_TOKEN), never the body's: see :class:`LocalToolsConfig`."""

    backend: str = Field(default="sandbox", description="sandbox: /v1/sessions of the sandbox service (the only "
                         "backend of an API run; local configs may also use local, a subprocess test double).")
    timeout_s: float = Field(default=5.0, gt=0, le=300, description="Time limit of one execution.")
    max_output_bytes: int = Field(default=4096, ge=64, le=1 << 20, description="Output kept per stream.")
    ttl_s: float = Field(default=600.0, gt=0, le=86_400, description="Session time to live (sandbox).")
    project: str | None = Field(default=None, min_length=1, max_length=128, description="Sent to the sandbox as "
                                "X-Rewardhub-Project (its per-project session caps). Unset: reward.project_id "
                                "(an API run: always its own project).")

    @field_validator("backend")
    @classmethod
    def _allowed_backend(cls, backend: str) -> str:
        if backend != "sandbox":
            raise ValueError(f"{backend!r} is not accepted in a run started through the service: only sandbox "
                             "(local runs code in the trainer's own process; local configs only)")
        return backend


class LocalToolsConfig(ToolsConfig):
    """The tools of a config the machine's owner writes: also ``local`` (a plain Python subprocess on
    this machine — a test double for CPU toys that must never run untrusted code), a sandbox URL of
    its choice and the environment variable holding the sandbox token."""

    backend: Literal["sandbox", "local"] = Field(default="sandbox", description="sandbox: /v1/sessions of the "
                                                 "sandbox service; local: a subprocess test double (toys only).")
    url: str | None = Field(default=None, description="Sandbox service base URL. Unset: REWARDHUB_URL (or "
                            "http://127.0.0.1:8000) + /services/sandbox, its mount in the embedded platform.")
    api_key_env: str = Field(default="REWARDHUB_SANDBOX_TOKEN", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                             description="Environment variable holding the Bearer token sent to the sandbox "
                             "(its REWARDHUB_SANDBOX_TOKEN; empty in the embedded default, which needs none).")

    @field_validator("backend")
    @classmethod
    def _allowed_backend(cls, backend: str) -> str:
        return backend


class IhGrpoConfig(_Strict):
    """IH-GRPO's surrogate term: loss += coefficient · mean(c_t) (trainer.algorithms.ih_grpo), with
    p_t = π(marker | context) clamped as the authors do."""

    coefficient: float = Field(default=0.001, ge=0, le=1, description="Weight of the c term (0: off).")
    logp_max: float = Field(default=-1e-7, lt=0, description="log p_t is clamped to at most this.")
    p_min: float = Field(default=1e-7, gt=0, lt=0.5, description="p_t is clamped to [p_min, 1 - p_min].")


# Environments a multi-turn run may name by name (the only ones an API run may use): name -> "code" or
# the module:factory of an environment shipped with rewardhub.
REGISTERED_ENVIRONMENTS: dict[str, str] = {"code": "code", "multihop": "trainer.ziprl.env:synthetic_env"}
_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


class MultiTurnConfig(_Strict):
    """Episodes of several turns (trainer.agent): a turn ends at a stop marker or an EOS, the
    environment's observation is appended with loss mask 0, and the episode ends on a final answer,
    ``max_turns`` or the token budget, which is ``max_completion_length`` (sampled and observation
    tokens together)."""

    environment: str = Field(default="code", description="A registered environment (REGISTERED_ENVIRONMENTS: "
                             "code, Python blocks run in a tool session; multihop, ZipRL's synthetic multi-hop "
                             "search task); local configs may also name module:factory, a callable "
                             "(prompt row) -> Environment of their own.")
    execution: str = Field(default="delayed", description="delayed (IH-GRPO: blocks run at <tool_call>), "
                           "immediate (each block runs as written) or none (no tools).")
    stop_markers: list[str] | None = Field(default=None, description="Strings that end a turn besides the EOS "
                                           "ids. Unset: <tool_call> (delayed), a closing fence and newline "
                                           "(immediate), none (none).")
    max_turns: int = Field(default=5, ge=1, le=64)
    max_turn_tokens: int | None = Field(default=None, ge=1, description="Sampled tokens per turn; unset: the "
                                        "rest of the budget.")
    max_observation_tokens: int = Field(default=128, ge=1, description="An observation is cut to this many tokens.")
    max_observation_chars: int = Field(default=512, ge=16, description="Tool output shown per call (characters).")
    tools: ToolsConfig = Field(default_factory=ToolsConfig)
    ih_grpo: IhGrpoConfig = Field(default_factory=IhGrpoConfig, description="The c term; applies to "
                                  "execution: delayed only.")
    # ZipRL (issue 16): the context is a compression memory instead of the raw history; see docs/ziprl.md.
    ziprl: dict[str, Any] | None = Field(default=None, description="ZipRL compression memory and Hindsight "
                                         "Response Replay (trainer.ziprl.config.ZipRLConfig); unset: raw history.")

    @field_validator("environment")
    @classmethod
    def _known_environment(cls, name: str) -> str:
        if name not in REGISTERED_ENVIRONMENTS:
            raise ValueError(f"{name!r} is not a registered environment ({', '.join(REGISTERED_ENVIRONMENTS)}); a run "
                             "started through the service cannot name module:factory (that would import code in "
                             "the trainer's worker; local configs only)")
        return name

    @property
    def environment_target(self) -> str:
        """``code``, or the ``module:factory`` the environment's name stands for."""
        return REGISTERED_ENVIRONMENTS.get(self.environment, self.environment)

    @field_validator("ziprl")
    @classmethod
    def _valid_ziprl(cls, section: dict[str, Any] | None) -> dict[str, Any] | None:
        if section is not None:
            from trainer.ziprl.config import ZipRLConfig

            ZipRLConfig.from_dict(section)  # a ValueError naming ziprl.<key>
        return section

    @property
    def ziprl_config(self) -> Any:
        """The parsed ``ziprl`` section (a ``ZipRLConfig``), or None."""
        if self.ziprl is None:
            return None
        from trainer.ziprl.config import ZipRLConfig

        return ZipRLConfig.from_dict(self.ziprl)

    @field_validator("execution")
    @classmethod
    def _registered_execution(cls, name: str) -> str:
        from trainer.algorithms.ih_grpo import EXECUTION_MODES

        return EXECUTION_MODES.check(name)

    @field_validator("stop_markers")
    @classmethod
    def _non_empty_markers(cls, markers: list[str] | None) -> list[str] | None:
        if markers is not None and any(not marker for marker in markers):
            raise ValueError("an empty string would end every turn at once")
        return markers

    @model_validator(mode="after")
    def _c_term_needs_delayed(self) -> MultiTurnConfig:
        if self.execution != "delayed" and "ih_grpo" in self.model_fields_set and self.ih_grpo.coefficient > 0:
            raise ValueError("ih_grpo: the c term is about the <tool_call> decision of delayed execution; "
                             f"execution is {self.execution!r} (set ih_grpo.coefficient: 0 or execution: delayed)")
        return self

    @property
    def markers(self) -> tuple[str, ...]:
        from trainer.agent.code_env import DEFAULT_STOP_MARKERS

        if self.stop_markers is not None:
            return tuple(self.stop_markers)
        return DEFAULT_STOP_MARKERS.get(self.execution, ()) if self.environment == "code" else ()

    @property
    def c_term_enabled(self) -> bool:
        return self.execution == "delayed" and self.ih_grpo.coefficient > 0 and self.environment == "code"


class LocalMultiTurnConfig(MultiTurnConfig):
    """The multi_turn section of a config the machine's owner writes: its environment may also be a
    ``module:factory`` of its own, and its tools a :class:`LocalToolsConfig`."""

    tools: LocalToolsConfig = Field(default_factory=LocalToolsConfig)

    @field_validator("environment")
    @classmethod
    def _known_environment(cls, name: str) -> str:
        if name not in REGISTERED_ENVIRONMENTS and not _FACTORY.match(name):
            raise ValueError(f"{name!r} is neither a registered environment ({', '.join(REGISTERED_ENVIRONMENTS)}) "
                             "nor module:factory")
        return name


class LocalRunConfig(RunConfig):
    """A run config written by the machine's owner: like :class:`RunConfig`, and its reward section
    may name the environment variable holding the API key (see :class:`LocalRewardConfig`)."""

    reward: LocalRewardConfig | None = Field(default=None, description="Unset only when the caller passes a "
                                             "reward function in-process (tests, benchmarks).")
    # Multi-turn agent runs (issue 15): a local config's environment may be a module:factory, its tools
    # local or a sandbox URL and token variable of its own (LocalMultiTurnConfig).
    multi_turn: LocalMultiTurnConfig | None = Field(default=None, description="Multi-turn episodes with tools "
                                                    "(see docs/multi_turn.md); unset: single-turn rollouts.")
    # OCC (issue 18): a local config's mtp section may also name a folder to load the head from (init_from).
    mtp: LocalMtpConfig = Field(default=None, description="A multi-token-prediction head trained jointly with RL "
                                "(trainer.occ.LocalMtpSettings); unset: none.")
    # Self-distillation (issue 17): a local config's teacher may also name the environment variable holding
    # its key (teacher.api_key_env) and any teacher URL. See trainer/self_distillation/.
    self_distillation: SelfDistillationConfig | None = Field(default=None, description="AMR-SD or pi-Play "
                                                              "against a teacher (trainer.self_distillation); "
                                                              "unset: none.")


RunConfig.model_rebuild()  # its eval / rlavr / multi_turn sections are declared after it


def _describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"])
        message = str(item["msg"]).removeprefix("Value error, ")
        # Cross-field checks already start their message with the field they blame.
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)


def parse_config(data: dict[str, Any] | RunConfig, *, local: bool = False) -> RunConfig:
    """Validate a dict (or pass a RunConfig through); raise :class:`ConfigError` naming each bad field.

    ``local=True`` reads a config the machine's owner wrote (a :class:`LocalRunConfig`, whose reward
    section may name an environment variable); the default is the service-safe :class:`RunConfig`.
    """
    model: type[RunConfig] = LocalRunConfig if local else RunConfig
    if isinstance(data, RunConfig):
        if local or not isinstance(data, LocalRunConfig):
            return data  # every RunConfig is a valid local config
        data = data.model_dump(mode="json", exclude_unset=True)  # a local one must pass the strict check
    if not isinstance(data, dict):
        raise ConfigError(f"config: expected a mapping of settings, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None


def load_config(path: str | Path) -> RunConfig:
    """Read a YAML (or JSON) run config written by the machine's owner (a :class:`LocalRunConfig`).

    Relative dataset/model/output paths are taken from the file's folder.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config: file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"config: {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config: {path} must hold a mapping of settings at the top level")
    base = path.parent
    for key in ("dataset", "output_dir"):
        if isinstance(data.get(key), str) and not Path(data[key]).is_absolute():
            data[key] = str(base / data[key])
    evaluation = data.get("eval")
    if isinstance(evaluation, dict) and isinstance(evaluation.get("data"), str) and not Path(evaluation["data"]).is_absolute():
        evaluation["data"] = str(base / evaluation["data"])
    mtp = data.get("mtp")
    if isinstance(mtp, dict) and isinstance(mtp.get("init_from"), str) and not Path(mtp["init_from"]).is_absolute():
        mtp["init_from"] = str(base / mtp["init_from"])
    model = data.get("model")
    if isinstance(model, dict) and isinstance(model.get("path"), str) and not Path(model["path"]).is_absolute():
        model["path"] = str(base / model["path"])
    return parse_config(data, local=True)
