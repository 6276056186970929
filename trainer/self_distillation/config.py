"""The run config's ``self_distillation`` section: AMR-SD or π-Play, and the teacher that serves them.

``method`` picks the algorithm; only that method's sub-section may be given (the other is refused
naming it). The teacher is the teacher service over HTTP (``backend: http``, the default) or an
in-process one on this machine (``backend: in_process``: tests, benchmarks, a single CPU box).

Two kinds, like the run config's reward section: :class:`ServiceSelfDistillationConfig` (with
:class:`ServiceTeacherConfig`) is what a ``POST /v1/runs`` body may carry — no environment variable to
read a key from (a service run sends its own minted key), and its ``teacher.url`` is checked against the
platform's teacher service and the operator's allowlist by services/trainer/confine.py; the
:class:`SelfDistillationConfig` of a local config (the machine's owner) may also name ``teacher.api_key_env``.
Neither names a model path: an ``http`` teacher is a model registered in the teacher service (which
confines its path to REWARDHUB_TEACHER_MODELS_DIR), an ``in_process`` one is a copy of the run's own policy.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

EMBEDDED_PREFIX = "/services/teacher"  # where the embedded default mounts the teacher service


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServiceTeacherConfig(_Strict):
    """Who scores the student's tokens under the privileged context, writes hints and builds tasks.

    The kind an API run body carries: the key sent to the teacher service is the run's minted one, never
    one read from an environment variable the body names (see :class:`TeacherConfig`, local configs)."""

    backend: Literal["http", "in_process"] = Field(default="http", description="http: the teacher service "
                                                   "(/v1/score, /v1/reflect, /v1/modulate, /v1/examiner/*); "
                                                   "in_process: the same computations on this machine.")
    url: str | None = Field(default=None, description="Teacher service base URL. Unset: the reward URL's platform "
                            "(reward.url, else REWARDHUB_URL or http://127.0.0.1:8000) + /services/teacher; in a "
                            "run started through the service, the platform's teacher service (REWARDHUB_TEACHER_URL, "
                            "else the gateway's /services/teacher, else in the worker's process). A service run's "
                            "URL must be the platform's or on the operator's allowlist.")
    project_id: str | None = Field(default=None, min_length=1, description="The teacher service project; "
                                   "unset: the key's only one.")
    model: str | None = Field(default=None, min_length=1, max_length=64, description="http: a teacher model "
                              "registered as kind ema in the project; the trainer pushes the policy's weights "
                              "into it (replaced at the start, then each step as `weights` says).")
    weights: Literal["policy", "ema"] = Field(default="ema", description="policy: the teacher is the policy's "
                                              "current weights; ema: ψ ← (1 − τ)ψ + τθ after every step.")
    tau: float = Field(default=0.05, gt=0, le=1, description="τ of the EMA teacher (weights: ema).")
    reflect_model: str | None = Field(default=None, min_length=1, max_length=64, description="http: the registered "
                                      "model that writes hints and tasks; unset: the service's LLM backend. "
                                      "in_process: the policy writes them.")
    timeout_s: float = Field(default=120.0, gt=0, le=3600)
    max_retries: int = Field(default=3, ge=0, le=20, description="Retries of connection errors and 502/503/504.")
    batch_size: int = Field(default=64, ge=1, le=10_000, description="Items per teacher request.")


class TeacherConfig(ServiceTeacherConfig):
    """The teacher of a config the machine's owner writes: may also name the environment variable that
    holds the Bearer key sent to the teacher service."""

    api_key_env: str = Field(default="REWARDHUB_API_KEY", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                             description="Environment variable holding the Bearer key sent to the teacher service "
                             "(local configs only).")


class AmrSdConfig(_Strict):
    """AMR-SD: hints through a reflection bottleneck, CIG, asymmetric ReLU gates, Â = A · w, annealed α."""

    reflections_per_group: int = Field(default=1, ge=1, le=64, description="Hints written per group, each about "
                                       "one of its rollouts (those with A ≠ 0, failures first); the group's other "
                                       "rollouts are scored under its first hint.")
    signal: Literal["auto", "verifier", "peer", "reference"] = Field(default="auto", description="The diagnostic "
                                                                     "signal a hint is written from; auto: a "
                                                                     "successful peer if the group has one, else the "
                                                                     "reference, else the verifier outcome.")
    context: Literal["hint", "reference"] = Field(default="hint", description="hint: the reflection bottleneck; "
                                                  "reference: the raw reference as the privileged context (the "
                                                  "direct-exposure baseline AMR-SD is compared with).")
    alpha0: float = Field(default=1.0, ge=0, le=1e6, allow_inf_nan=False, description="α before annealing.")
    tau_plus: float = Field(default=0.0, allow_inf_nan=False, description="τ₊: CIG threshold for A > 0.")
    tau_minus: float = Field(default=0.0, allow_inf_nan=False, description="τ₋: −CIG threshold for A < 0.")
    schedule: Literal["constant", "linear", "cosine"] = Field(default="linear", description="α's annealing.")
    anneal_steps: int | None = Field(default=None, ge=1, description="Steps over which α reaches 0; unset: max_steps.")
    max_weight: float | None = Field(default=None, ge=1, allow_inf_nan=False, description="Cap of w (optional).")
    max_hint_chars: int = Field(default=400, ge=16, le=20_000, description="Length cap of a hint (leak filter).")
    max_hint_tokens: int = Field(default=48, ge=4, le=2048, description="Tokens generated per hint.")
    max_attempts: int = Field(default=2, ge=1, le=5, description="Hints asked for per rollout until one passes.")
    pass_threshold: float = Field(default=1.0, allow_inf_nan=False, description="A rollout whose reward reaches this is a successful peer.")


class PiPlayConfig(_Strict):
    """π-Play's student side: GRPO plus λ · (1/|y|) Σ_t KL(π_S ‖ stopgrad π_T), the teacher seeing the task's
    question-construction path (QCP), λ decaying across rounds of ``steps_per_round`` steps."""

    privileged: Literal["qcp", "answer"] = Field(default="qcp", description="The teacher's privileged context: "
                                                 "the row's QCP (extra_info.qcp), or the bare answer (the ablation).")
    steps_per_round: int = Field(default=10, ge=1, description="Student steps per round.")
    lambda0: float = Field(default=1.0, ge=0, le=1e3, allow_inf_nan=False, description="λ in round 0.")
    lambda_schedule: Literal["constant", "linear", "cosine", "exponential"] = "linear"
    lambda_gamma: float = Field(default=0.5, gt=0, le=1, description="γ of the exponential schedule.")
    top_k: int = Field(default=20, ge=1, le=1024, description="Teacher top-k ids per position of the lumped KL "
                       "(a lower bound of the full KL).")
    pass_threshold: float = Field(default=1.0, allow_inf_nan=False, description="A rollout whose reward reaches this passed (the "
                                  "examiner's k of n).")
    examiner_rewards: bool = Field(default=True, description="Each step's groups graded as examiner tasks: "
                                   "difficulty reward r_d, hop-grouped advantages and the difficulty distribution "
                                   "(logged; hops from extra_info.hops, else 1).")
    tasks: Literal["dataset", "examiner"] = Field(default="dataset", description="dataset: the rows (their "
                                                  "extra_info.qcp); examiner: at the start of every round the "
                                                  "examiner builds the round's student set (q, c, o*) from seeds drawn "
                                                  "from the rows (extra_info.evidence, the prompt as the topic).")
    tasks_per_round: int = Field(default=16, ge=1, le=10_000, description="examiner: tasks asked for per round.")
    hops: list[int] = Field(default_factory=lambda: [1, 2], min_length=1, description="examiner: the hop counts "
                            "asked for, in turn.")
    examiner_steps_per_round: int = Field(default=0, ge=0, le=1000, description="examiner: policy-gradient steps "
                                          "that train the examiner at the start of every round, before its student "
                                          "set is built (each: prompts_per_step seeds, group_size examiner "
                                          "completions each, r_d from group_size student answers per well-formed "
                                          "task, hop-grouped advantages, one update through the trainer's loss). "
                                          "0: the examiner is not trained.")
    examiner_format_penalty: float = Field(default=1.0, ge=0, le=1e3, allow_inf_nan=False, description="examiner "
                                           "steps: r_format = −penalty for a malformed examiner completion (its "
                                           "r_d = r_format: no student answers it), 0 for a well-formed one.")
    examiner_max_new_tokens: int = Field(default=256, ge=1, le=32_768, description="examiner steps: tokens "
                                         "sampled per examiner completion.")

    @field_validator("hops")
    @classmethod
    def _hop_range(cls, hops: list[int]) -> list[int]:
        bad = [h for h in hops if not 1 <= h <= 8]
        if bad:
            raise ValueError(f"each hop count must be between 1 and 8, got {bad[0]}")
        return hops

    @model_validator(mode="after")
    def _examiner_steps_need_the_examiner(self) -> PiPlayConfig:
        if self.examiner_steps_per_round > 0 and self.tasks != "examiner":
            raise ValueError(f"examiner_steps_per_round: {self.examiner_steps_per_round} examiner steps need "
                             f"tasks: examiner (tasks is {self.tasks}: no examiner builds the student set)")
        return self


class ServiceSelfDistillationConfig(_Strict):
    """The ``self_distillation`` section of an API run body (its teacher a :class:`ServiceTeacherConfig`)."""

    method: Literal["amr_sd", "pi_play"]
    teacher: ServiceTeacherConfig = Field(default_factory=ServiceTeacherConfig)
    amr_sd: AmrSdConfig | None = Field(default=None, description="method amr_sd only; unset: its defaults.")
    pi_play: PiPlayConfig | None = Field(default=None, description="method pi_play only; unset: its defaults.")

    @model_validator(mode="after")
    def _one_method(self) -> ServiceSelfDistillationConfig:
        if self.method == "amr_sd" and self.pi_play is not None:
            raise ValueError("pi_play: given with method amr_sd (set method: pi_play or drop the pi_play section)")
        if self.method == "pi_play" and self.amr_sd is not None:
            raise ValueError("amr_sd: given with method pi_play (set method: amr_sd or drop the amr_sd section)")
        if self.teacher.backend == "http" and self.teacher.model is None:
            raise ValueError("teacher.model: the http teacher needs a registered teacher model (kind ema) to push "
                             "the policy's weights into")
        if (self.method == "pi_play" and self.pi.examiner_steps_per_round > 0 and self.teacher.backend == "http"
                and self.teacher.reflect_model is None):
            raise ValueError("pi_play.examiner_steps_per_round: the examiner steps train the policy as the examiner, "
                             "but the http teacher without teacher.reflect_model builds the student set with the "
                             "service's own LLM; set teacher.reflect_model to the EMA teacher model (or use "
                             "backend: in_process)")
        if self.teacher.backend == "in_process" and self.teacher.reflect_model is not None:
            raise ValueError("teacher.reflect_model: names a service model; the in_process teacher writes hints "
                             "with the policy")
        return self

    @property
    def amr(self) -> AmrSdConfig:
        return self.amr_sd or AmrSdConfig()

    @property
    def pi(self) -> PiPlayConfig:
        return self.pi_play or PiPlayConfig()


class SelfDistillationConfig(ServiceSelfDistillationConfig):
    """The ``self_distillation`` section of a config the machine's owner writes (its teacher may name
    ``api_key_env``)."""

    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
