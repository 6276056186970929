"""π-Play's examiner steps: the examiner trained by policy gradient on its difficulty reward.

The spec's schedule is rounds of (examiner steps, build a student set, student steps), one base model
playing every role. With ``pi_play.examiner_steps_per_round: E`` (> 0, ``tasks: examiner`` only), the first
step of every round first runs E examiner steps, then builds the round's student set with the examiner
just trained (``SelfDistillation.begin_step``). One examiner step:

1. ``prompts_per_step`` seeds, drawn from the dataset rows as the round's task seeds are (evidence from
   ``extra_info.evidence``, the prompt as the topic, hop counts from ``hops`` in turn);
2. ``group_size`` examiner completions per seed, sampled by the run's engine from the examiner prompt
   (:func:`trainer.self_distillation.teacher.examiner_prompt`) at the run's sampling settings, at most
   ``examiner_max_new_tokens`` tokens each;
3. each completion parsed with the service's format checks (:func:`parse_examiner_task`); for every
   well-formed task (q, c, o*) the student (the same policy, seeing q only) samples ``group_size``
   answers, the run's reward source grades them against o*, and k counts those reaching ``pass_threshold``;
4. r_d and the hop-grouped advantages (:func:`formulas.examiner_step_advantages`; a malformed completion
   gets r_d = r_format = −``examiner_format_penalty``);
5. one update on the examiner completions' tokens through the trainer's own ``GRPOTrainer._update``
   (its loss, optimizer and clipping; the distillation term is off for it: the examiner has no teacher).

The examiner steps use the learning rate of the student step they precede and leave the LR schedule
where it was (the schedule counts student steps); they share the policy's optimizer state. A step whose
advantages are all 0 (and no β or entropy term) updates nothing, as a student step would not.

Logged at the round's first step: ``sd/examiner/reward_mean`` (mean r_d over the examiner completions),
``sd/examiner/valid_share`` (the share that parsed into a well-formed task) and ``sd/examiner/loss``
(the update's loss), each a mean over the round's examiner steps, and ``sd/examiner/steps``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from trainer.checkpoint import derive_seed
from trainer.config import ConfigError
from trainer.data import PromptRow
from trainer.rollout import Rollout, SamplingSettings
from trainer.self_distillation import formulas
from trainer.self_distillation.teacher import ExaminerSeed, examiner_prompt, parse_examiner_task

# (seed, the examiner completion's text) -> the reply that is parsed into a task. Unset: the text itself.
# A seam for tests, where a tiny random model cannot write JSON: a test double stands in for its prose.
ExaminerReader = Callable[[ExaminerSeed, str], str]

EXAMINER_STREAM = 0xE7A3  # keeps the examiner steps' sampling seeds apart from the rounds' task seeds


def check_examiner_steps(config: Any, world_size: int = 1) -> None:
    """Refuse, naming the field, what the examiner steps cannot run with: an update that recomputes the
    advantages from the step's student rewards (``kl_in_reward``, a token-weighted ``scale_rewards``) would
    drop the examiner's, and the steps run in one process."""
    from trainer.algorithms import TOKEN_WEIGHTED_ESTIMATORS

    settings = getattr(config, "self_distillation", None)
    if settings is None or settings.method != "pi_play" or settings.pi.examiner_steps_per_round == 0:
        return
    field = "self_distillation.pi_play.examiner_steps_per_round"
    if config.kl_in_reward:
        raise ConfigError(f"{field}: examiner steps are not supported with kl_in_reward (the update would "
                          f"recompute the advantages from the student's rewards, not the examiner's r_d)")
    if config.scale_rewards in TOKEN_WEIGHTED_ESTIMATORS:
        raise ConfigError(f"{field}: examiner steps are not supported with scale_rewards: {config.scale_rewards} "
                          f"(the update would recompute the advantages from the student's rewards)")
    if world_size > 1:
        raise ConfigError(f"{field}: examiner steps run in one process (world size {world_size})")


def make_seed(row: PromptRow, seed_id: str, hops: int, seed: int) -> ExaminerSeed:
    """An examiner seed from a dataset row: its ``extra_info.evidence`` (at most 32 documents) and its
    prompt as the topic (at most 2000 characters)."""
    from trainer.self_distillation.loop import text_of

    extra = row.extra_info if isinstance(row.extra_info, dict) else {}
    evidence = extra.get("evidence")
    docs = tuple(str(d) for d in evidence[:32]) if isinstance(evidence, list) else ()
    return ExaminerSeed(id=seed_id, hops=hops, evidence=docs, topic=text_of(row.prompt)[:2000] or None, seed=seed)


def encode_text(trainer: Any, text: str) -> list[int]:
    """A plain prompt's ids, keeping the end of an over-long one (as the trainer's prompts)."""
    ids = list(trainer.tokenizer(text, add_special_tokens=False)["input_ids"])
    return ids[-trainer.config.max_prompt_length:]


@contextmanager
def schedule_held(trainer: Any) -> Iterator[None]:
    """Run an update at the current learning rate and put the LR schedule back where it was after it."""
    scheduler = trainer.scheduler
    state = copy.deepcopy(scheduler.state_dict())
    lrs = [group["lr"] for group in scheduler.optimizer.param_groups]
    try:
        yield
    finally:
        scheduler.load_state_dict(state)
        for group, lr in zip(scheduler.optimizer.param_groups, lrs, strict=True):
            group["lr"] = lr


@contextmanager
def distillation_off(sd: Any) -> Iterator[None]:
    """The update without π-Play's distillation term (λ = 0 turns ``kl_term`` off): the examiner has no teacher."""
    saved = sd.lam
    sd.lam = 0.0
    try:
        yield
    finally:
        sd.lam = saved


def _sampling(config: Any, max_new_tokens: int) -> SamplingSettings:
    return SamplingSettings(group_size=config.group_size, max_new_tokens=max_new_tokens,
                            temperature=config.temperature, top_p=config.top_p, top_k=config.top_k,
                            min_p=config.min_p, repetition_penalty=config.repetition_penalty)


def student_pass_counts(trainer: Any, tasks: list[Any], seed: int, pass_threshold: float) -> list[tuple[int, int]]:
    """(k, n) per well-formed task: ``group_size`` student answers to q, graded against o* by the run's
    reward source; n counts the scored answers, k those reaching ``pass_threshold``."""
    config = trainer.config
    rows = [PromptRow(index=i, prompt=t.question, ground_truth=t.answer, data_source="examiner",
                      extra_info={"qcp": t.qcp, "hops": t.hops}) for i, t in enumerate(tasks)]
    answers = trainer.engine.generate([encode_text(trainer, t.question) for t in tasks],
                                      _sampling(config, config.max_completion_length), seed=seed)
    outcomes = trainer.rewards.submit(rows, answers).result()
    counts = []
    group = config.group_size
    for i in range(len(tasks)):
        scores = [o.score for o in outcomes[i * group:(i + 1) * group]
                  if o.score is not None and not math.isnan(o.score)]
        counts.append((sum(s >= pass_threshold for s in scores), len(scores)))
    return counts


def examiner_step(sd: Any, trainer: Any, round_index: int, step_index: int,
                  reader: ExaminerReader | None = None) -> dict[str, float]:
    """One examiner step (the module's steps 1–5); returns its reward mean, valid share and loss."""
    from trainer.grpo import collate

    config, pi = sd.config, sd.settings.pi
    per_step = config.prompts_per_step
    seeds = []
    for j in range(per_step):
        offset = (round_index * pi.examiner_steps_per_round + step_index) * per_step + j
        row = sd.dataset_rows[offset % len(sd.dataset_rows)]
        seeds.append(make_seed(row, f"e{round_index}-{step_index}-{j}", pi.hops[j % len(pi.hops)],
                               derive_seed(config.seed, EXAMINER_STREAM, round_index, step_index, j) % (2**31)))
    step_seed = derive_seed(config.seed, EXAMINER_STREAM, round_index, step_index)
    rollouts: list[Rollout] = trainer.engine.generate([encode_text(trainer, examiner_prompt(s)) for s in seeds],
                                                      _sampling(config, pi.examiner_max_new_tokens), seed=step_seed)
    hops = [seeds[r.prompt_index].hops for r in rollouts]
    tasks = []
    for rollout in rollouts:
        seed = seeds[rollout.prompt_index]
        reply = reader(seed, rollout.text) if reader is not None else rollout.text
        tasks.append(parse_examiner_task(reply, seed.hops)[0])
    valid = [j for j, task in enumerate(tasks) if task is not None]
    passed: list[int | None] = [None] * len(rollouts)
    samples = [0] * len(rollouts)
    if valid:
        counts = student_pass_counts(trainer, [tasks[j] for j in valid], derive_seed(step_seed, 1), pi.pass_threshold)
        for j, (k, n) in zip(valid, counts, strict=True):
            passed[j], samples[j] = k, n
    rewards, advantages = formulas.examiner_step_advantages(passed, samples, hops, pi.examiner_format_penalty)
    metrics = {"sd/examiner/reward_mean": sum(rewards) / len(rewards) if rewards else 0.0,
               "sd/examiner/valid_share": len(valid) / len(rollouts) if rollouts else 0.0, "sd/examiner/loss": 0.0}
    adv = torch.tensor(advantages, dtype=torch.float32)
    if rollouts and (bool((adv != 0).any()) or config.beta > 0 or config.entropy_coef != 0):
        batch = collate(rollouts, trainer.tokenizer.pad_token_id)
        with schedule_held(trainer), distillation_off(sd):
            out = trainer._update(batch, adv, derive_seed(step_seed, 2))
        trainer._sync_engine()
        metrics["sd/examiner/loss"] = float(out["loss"])
    return metrics


def train_examiner(sd: Any, trainer: Any, round_index: int, reader: ExaminerReader | None = None) -> dict[str, float]:
    """The round's ``examiner_steps_per_round`` examiner steps; their metrics averaged over the steps."""
    steps = sd.settings.pi.examiner_steps_per_round
    sd.start(trainer)  # the teacher starts from θ₀, before the examiner moves it
    totals: dict[str, float] = {}
    for step_index in range(steps):
        for name, value in examiner_step(sd, trainer, round_index, step_index, reader).items():
            totals[name] = totals.get(name, 0.0) + value
    out = {name: value / steps for name, value in totals.items()}
    out["sd/examiner/steps"] = float(steps)
    return out
