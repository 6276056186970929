"""Self-distillation in the run loop (``self_distillation:`` in a run config): AMR-SD and π-Play.

The trainer (``trainer.grpo.GRPOTrainer``) calls four hooks:

- ``begin_step(trainer)`` at the start of every step: with ``pi_play.tasks: examiner``, the first step of
  each round asks the examiner (``/v1/examiner/tasks``, or in process) for ``tasks_per_round`` tasks
  from seeds drawn from the dataset rows (hop counts from ``hops`` in turn) and makes the well-formed
  ones the round's student set (q as the prompt, o* as the ground truth, c as the QCP), with a prompt
  sampler of its own; a round whose examiner produced none keeps the previous round's set;
- ``start(trainer)`` before its first step: the teacher's weights start as the policy's (an HTTP
  teacher gets θ pushed, replacing ψ, on a fresh run; an in-process EMA teacher copies θ);
- ``shape(trainer, rollouts, rewards, advantages)`` where advantages are formed:
  - **AMR-SD** (per step): for each group, ``reflections_per_group`` hints are written about its
    rollouts with A ≠ 0 (failures first) from one diagnostic signal (a successful peer of the group,
    the reference, or the verifier's outcome), through the leak filter; each such rollout is scored
    by the teacher under (hint, x) — its own hint, else its group's first — next to the student's
    log π(y_t | x, y_<t); then CIG_t, the asymmetric gates at the annealed α and Â_{i,t} = A_i · w_t
    (``/v1/modulate`` or the same formulas in process) give the (B, T) token advantages. A rollout
    with no usable hint or teacher score keeps w = 1, so Â = A: the outcome sign is never flipped.
  - **π-Play**: every rollout is scored by the teacher under (c, q) with c the row's QCP
    (``extra_info.qcp``) or its bare answer, keeping the teacher's top-k per position for the
    distillation term; the groups are graded as examiner tasks (r_d, hop-grouped advantages, the
    difficulty histogram). The advantages are the GRPO ones, unchanged.
- ``forward``/``loss_term`` in the update (π-Play): one forward gives log π(y_t), the entropies and,
  from the same logits, the lumped top-k KL(π_S ‖ stopgrad π_T) per position; the loss adds
  λ_r · mean_i (1/|y_i|) Σ_t KL_{i,t} (divided by the accumulation steps, a per-micro-batch mean),
  with λ_r decaying across rounds of ``steps_per_round`` steps;
- ``after_step(trainer)``: the teacher follows the policy (EMA step ψ ← (1 − τ)ψ + τθ, or replaced).

Every metric is logged under ``sd/``: alpha or lambda, hints and their mean length in characters,
leak-filter rejections (in all and by reason), the share of modulated tokens (w ≠ 1, over the step's
completion tokens), mean |CIG| (over the scored tokens), the distillation KL (token mean), the examiner
difficulty distribution (share of groups per bucket) and mean difficulty reward.

Known limits: one process (no DeepSpeed); the in-process EMA copy is not saved in checkpoints (a
resumed run restarts it from the resumed weights; the service's EMA model persists its own); an
examiner round's student set is not saved either (a run resumed mid-round asks for the round's tasks
again). The examiner is trained only with ``pi_play.examiner_steps_per_round`` > 0
(:mod:`trainer.self_distillation.examiner`, run from ``begin_step`` before the round's set is built);
otherwise the student groups' r_d and advantages are computed and logged, not used for an update.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from trainer.checkpoint import derive_seed
from trainer.data import DatasetError, PromptRow, PromptSampler
from trainer.logprobs import chunked_entropy, chunked_token_logprobs, completion_logprobs
from trainer.rollout import Rollout
from trainer.self_distillation import formulas
from trainer.self_distillation.config import SelfDistillationConfig
from trainer.self_distillation.examiner import ExaminerReader, check_examiner_steps, train_examiner
from trainer.self_distillation.scoring import ScoreInput
from trainer.self_distillation.teacher import (
    ExaminerItem,
    ExaminerSeed,
    HintRequest,
    HintWriter,
    HttpTeacher,
    InProcessTeacher,
    ModulateItem,
    TaskWriter,
    Teacher,
    teacher_url,
)

logger = logging.getLogger(__name__)

PRIVILEGED_HEADER = "Context you may use (the student does not see it):\n{context}\n\n"
QCP_KEYS = ("qcp", "privileged_context")


def text_of(prompt: str | list[dict[str, Any]]) -> str:
    """A prompt as plain text (chat messages joined by their contents)."""
    return prompt if isinstance(prompt, str) else "\n".join(str(m.get("content", "")) for m in prompt)


def reference_of(row: PromptRow) -> str | None:
    """The row's reference solution: extra_info.reference (or .solution), else the ground truth as text."""
    extra = row.extra_info if isinstance(row.extra_info, dict) else {}
    for key in ("reference", "solution"):
        if isinstance(extra.get(key), str) and extra[key].strip():
            return str(extra[key])
    truth = row.ground_truth
    if truth is None or (isinstance(truth, str) and not truth.strip()):
        return None
    return truth if isinstance(truth, str) else str(truth)


def answer_of(row: PromptRow) -> str | None:
    truth = row.ground_truth
    if truth is None:
        return None
    return truth if isinstance(truth, str) else str(truth)


def qcp_of(row: PromptRow) -> str | None:
    extra = row.extra_info if isinstance(row.extra_info, dict) else {}
    for key in QCP_KEYS:
        if isinstance(extra.get(key), str) and extra[key].strip():
            return str(extra[key])
    return None


def hint_targets(advantages: list[float], count: int) -> list[int]:
    """The rollouts of one group a hint is written about: those with A ≠ 0, failures (A < 0) first, then
    by position; at most ``count``."""
    ranked = sorted((i for i, a in enumerate(advantages) if a != 0), key=lambda i: (advantages[i] >= 0, i))
    return ranked[:count]


def choose_signal(kind: str, target: int, rewards: list[float], texts: list[str], reference: str | None,
                  pass_threshold: float) -> tuple[str, str]:
    """(signal kind, text) for a hint about rollout ``target`` of a group: ``auto`` takes a successful peer
    (reward ≥ pass_threshold, not the target) if there is one, else the reference, else the verifier."""
    peers = [i for i, r in enumerate(rewards) if i != target and not math.isnan(r) and r >= pass_threshold]
    verifier = (f"The verifier scored this attempt {rewards[target]:g}"
                + (" (correct)." if rewards[target] >= pass_threshold else " (not correct)."))
    if kind == "peer" or (kind == "auto" and peers):
        if peers:
            return "peer", texts[peers[0]] or "(empty)"
        return "verifier", verifier
    if kind == "reference" or (kind == "auto" and reference):
        if reference:
            return "reference", reference
        return "verifier", verifier
    return "verifier", verifier


class SelfDistillation:
    """The run's self-distillation: the settings, the teacher and the per-step state of the update."""

    def __init__(self, config: Any, settings: SelfDistillationConfig, teacher: Teacher, tokenizer: Any,
                 rows: list[PromptRow]) -> None:
        self.config = config
        self.settings = settings
        self.teacher = teacher
        self.tokenizer = tokenizer
        self.started = False
        self.context_cache: dict[tuple[int, str], list[int]] = {}
        # π-Play: the teacher's top-k for the current rollout batch, indexed like its rows.
        self.top_ids: torch.Tensor | None = None
        self.top_logprobs: torch.Tensor | None = None
        self.tail_logprobs: torch.Tensor | None = None
        self.kl_mask: torch.Tensor | None = None
        self.lam = 0.0
        self.dataset_rows = list(rows)  # the examiner's seeds come from these
        self.round_built: int | None = None  # the examiner round whose student set the trainer holds
        # pi_play.examiner_steps_per_round > 0: what turns an examiner completion into the parsed reply (tests).
        self.examiner_reader: ExaminerReader | None = None
        check_examiner_steps(config)
        if settings.method == "pi_play" and settings.pi.privileged == "qcp" and settings.pi.tasks == "dataset":
            missing = next((row for row in rows if qcp_of(row) is None), None)
            if missing is not None:
                raise DatasetError(f"row {missing.index}: extra_info.qcp is missing; self_distillation.pi_play."
                                   f"privileged: qcp needs each row's question-construction path")

    @classmethod
    def build(cls, trainer: Any, *, teacher: Teacher | None = None, hint_writer: HintWriter | None = None,
              task_writer: TaskWriter | None = None) -> SelfDistillation:
        """For ``trainer``'s config: the given teacher, else the configured one (HTTP or in process)."""
        config = trainer.config
        settings: SelfDistillationConfig = config.self_distillation
        if teacher is None:
            if settings.teacher.backend == "in_process":
                teacher = InProcessTeacher(trainer.model, trainer.tokenizer, settings.teacher, hint_writer=hint_writer,
                                           task_writer=task_writer, device=trainer.device)
            else:
                run = hashlib.sha256(str(Path(trainer.output_dir).resolve()).encode()).hexdigest()[:16]
                teacher = HttpTeacher(settings.teacher, base_url=teacher_url(settings.teacher, config.reward),
                                      run_id=run)
        check_examiner_steps(config, trainer.collective.world_size)
        return cls(config, settings, teacher, trainer.tokenizer, trainer.rows)

    # ------------------------------------------------------------------ hooks

    @property
    def kl_term(self) -> bool:
        """π-Play: the update adds the distillation term (so it runs even when every advantage is 0)."""
        return self.settings.method == "pi_play" and self.lam > 0

    def begin_step(self, trainer: Any) -> dict[str, float]:
        """π-Play with ``tasks: examiner``: at a round's first step, the round's student set from the examiner."""
        pi = self.settings.pi
        if self.settings.method != "pi_play" or pi.tasks != "examiner":
            return {}
        round_index = trainer.step // pi.steps_per_round
        if self.round_built == round_index:
            return {}
        self.round_built = round_index
        # The round's examiner steps come first; a run resumed mid-round took them before its checkpoint.
        trained = (train_examiner(self, trainer, round_index, self.examiner_reader)
                   if pi.examiner_steps_per_round > 0 and trainer.step % pi.steps_per_round == 0 else {})
        seeds = []
        for j in range(pi.tasks_per_round):
            row = self.dataset_rows[(round_index * pi.tasks_per_round + j) % len(self.dataset_rows)]
            extra = row.extra_info if isinstance(row.extra_info, dict) else {}
            evidence = extra.get("evidence")
            docs = tuple(str(d) for d in evidence[:32]) if isinstance(evidence, list) else ()
            seeds.append(ExaminerSeed(id=f"r{round_index}-{j}", hops=pi.hops[j % len(pi.hops)], evidence=docs,
                                      topic=text_of(row.prompt)[:2000] or None,
                                      seed=derive_seed(self.config.seed, round_index, j) % (2**31)))
        tasks = [t for t in self.teacher.examiner_tasks(seeds) if t is not None]
        metrics = {"sd/examiner_tasks": float(len(tasks)), "sd/examiner_format_ok_rate": len(tasks) / len(seeds),
                   **trained}
        if not tasks:
            if trainer.step == 0 or trainer.rows is self.dataset_rows:
                raise RuntimeError(f"self_distillation: the examiner built no well-formed task for round {round_index} "
                                   f"({len(seeds)} asked for) and there is no earlier set to keep")
            logger.warning("examiner round %d: no well-formed task; the previous round's set is kept", round_index)
            return metrics
        trainer.rows = [PromptRow(index=i, prompt=t.question, ground_truth=t.answer, data_source="examiner",
                                  extra_info={"qcp": t.qcp, "hops": t.hops}) for i, t in enumerate(tasks)]
        trainer.prompt_cache.clear()
        self.context_cache.clear()
        trainer.sampler = PromptSampler(len(trainer.rows), derive_seed(self.config.seed, round_index))
        return metrics

    def start(self, trainer: Any) -> None:
        if not self.started:
            self.teacher.sync(trainer.model, trainer.step, initial=True)
            self.started = True

    def after_step(self, trainer: Any) -> None:
        self.teacher.sync(trainer.model, trainer.step)

    def shape(self, trainer: Any, rollouts: list[Rollout], rewards: torch.Tensor,
              advantages: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        self.start(trainer)
        if self.settings.method == "amr_sd":
            return self._amr_sd(trainer, rollouts, rewards, advantages)
        return advantages, self._pi_play(trainer, rollouts, rewards)

    # ------------------------------------------------------------------ shared

    def teacher_context(self, trainer: Any, prompt_index: int, context: str) -> list[int]:
        """The teacher's context ids: the privileged context c, then the student's prompt x — before a
        plain prompt's text, or at the start of a chat prompt's last user message."""
        row = trainer.rows[prompt_index]
        key = (prompt_index, context)
        if key not in self.context_cache:
            header = PRIVILEGED_HEADER.format(context=context)
            if isinstance(row.prompt, list):
                messages = [dict(m) for m in row.prompt]
                last = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=len(messages) - 1)
                messages[last]["content"] = header + str(messages[last].get("content", ""))
                ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
                ids = list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)
            else:
                ids = list(self.tokenizer(header + row.prompt, add_special_tokens=False)["input_ids"])
            self.context_cache[key] = ids
        return self.context_cache[key]

    def _row_indices(self, trainer: Any, rollouts: list[Rollout]) -> list[int]:
        """The dataset row of each rollout, found by its prompt ids in the trainer's prompt cache (as RLAVR
        does: the loop re-indexes ``prompt_index`` per kept group; rows whose prompts tokenise alike share one)."""
        lookup = {tuple(ids): index for index, ids in trainer.prompt_cache.items()}
        return [lookup[tuple(r.prompt_ids)] for r in rollouts]

    # ------------------------------------------------------------------ AMR-SD

    def _amr_sd(self, trainer: Any, rollouts: list[Rollout], rewards: torch.Tensor,
                advantages: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        amr, config = self.settings.amr, self.config
        alpha = formulas.annealed_alpha(amr.alpha0, trainer.step, amr.anneal_steps or config.max_steps, amr.schedule)
        t_max = max(1, max((len(r.completion_ids) for r in rollouts), default=1))
        weights = torch.ones((len(rollouts), t_max), dtype=torch.float32)
        metrics: dict[str, float] = {"sd/alpha": alpha}
        counted = sum(len(r.completion_ids) for r in rollouts)
        if alpha == 0.0 or not bool((advantages != 0).any()):  # nothing to modulate: spare the teacher
            metrics.update({"sd/modulated_share": 0.0, "sd/hints": 0.0, "sd/leak_rejections": 0.0})
            return formulas.token_advantages(advantages.float(), weights), metrics
        rows = self._row_indices(trainer, rollouts)
        group = config.group_size
        reward_list = [float(r) for r in rewards.tolist()]
        adv_list = [float(a) for a in advantages.tolist()]
        contexts: dict[int, str] = {}  # rollout -> privileged context
        requests: list[HintRequest] = []
        owners: dict[str, tuple[int, int]] = {}  # hint id -> (group, rollout)
        for g in range(len(rollouts) // group):
            members = list(range(g * group, (g + 1) * group))
            row = trainer.rows[rows[members[0]]]
            if amr.context == "reference":
                reference = reference_of(row)
                if reference is not None:
                    contexts.update(dict.fromkeys(members, reference))
                continue
            texts = [rollouts[i].text for i in members]
            for local in hint_targets([adv_list[i] for i in members], amr.reflections_per_group):
                kind, signal = choose_signal(amr.signal, local, [reward_list[i] for i in members], texts,
                                             reference_of(row), amr.pass_threshold)
                hint_id = f"{g}-{local}"
                owners[hint_id] = (g, members[local])
                requests.append(HintRequest(id=hint_id, question=text_of(row.prompt), response=texts[local],
                                            signal_kind=kind, signal_text=signal, answer=answer_of(row),
                                            reference=reference_of(row)))
        if requests:
            results = self.teacher.reflect(requests, amr)
            rejections: Counter[str] = Counter(reason for result in results for reason in result.rejections)
            ok = [r for r in results if r.status == "ok" and r.hint]
            metrics.update({"sd/hints": float(len(ok)), "sd/hint_failures": float(len(results) - len(ok)),
                            "sd/leak_rejections": float(sum(rejections.values())),
                            "sd/hint_chars_mean": sum(len(r.hint or "") for r in ok) / len(ok) if ok else 0.0})
            metrics.update({f"sd/leak_rejections/{reason}": float(n) for reason, n in rejections.items()})
            first: dict[int, str] = {}
            for result in ok:
                g, rollout = owners[result.id]
                contexts[rollout] = result.hint or ""
                first.setdefault(g, result.hint or "")
            for rollout in range(len(rollouts)):
                if rollout not in contexts and rollout // group in first:
                    contexts[rollout] = first[rollout // group]
        scored = [i for i in range(len(rollouts)) if adv_list[i] != 0 and i in contexts and rollouts[i].completion_ids]
        mean_abs_cig = 0.0
        if scored:
            teacher_out = self.teacher.score([ScoreInput(self.teacher_context(trainer, rows[i], contexts[i]),
                                                         list(rollouts[i].completion_ids)) for i in scored],
                                             top_k=0, temperature=config.temperature)
            student = self._student_logprobs(trainer, rollouts)
            items, kept = [], []
            for i, out in zip(scored, teacher_out, strict=True):
                n = len(rollouts[i].completion_ids)
                if out is None or len(out.logprobs) != n:
                    continue
                items.append(ModulateItem(adv_list[i], list(out.logprobs), student[i, :n].tolist()))
                kept.append(i)
            results_mod = self.teacher.modulate(items, amr, alpha) if items else []
            cig_all: list[float] = []
            for i, modulated_row in zip(kept, results_mod, strict=True):
                if modulated_row.status != "ok":
                    continue
                weights[i, :len(modulated_row.weights)] = torch.tensor(modulated_row.weights, dtype=torch.float32)
                cig_all.extend(modulated_row.cig)
            mean_abs_cig = formulas.mean_abs(cig_all)
            metrics["sd/scored_rollouts"] = float(len(kept))
            metrics["sd/teacher_failures"] = float(len(scored) - len(kept))
        modulated = int((weights != 1.0).sum())
        metrics.update({"sd/modulated_share": modulated / counted if counted else 0.0,
                        "sd/mean_abs_cig": mean_abs_cig})
        return formulas.token_advantages(advantages.float(), weights), metrics

    def _student_logprobs(self, trainer: Any, rollouts: list[Rollout]) -> torch.Tensor:
        """log π_S(y_t | x, y_<t) of the rollouts with the current policy, without gradient (CPU, (B, T))."""
        from trainer.grpo import collate

        batch = collate(rollouts, trainer.tokenizer.pad_token_id)
        chunk = self.config.logprob_micro_batch_size or self.config.micro_batch_size
        with torch.no_grad():
            logp, _ = completion_logprobs(trainer.policy.forward_model, batch, self.config.temperature,
                                          device=trainer.device, micro_batch_size=chunk)
        return logp.float().cpu()

    # ------------------------------------------------------------------ π-Play

    def _pi_play(self, trainer: Any, rollouts: list[Rollout], rewards: torch.Tensor) -> dict[str, float]:
        pi, config = self.settings.pi, self.config
        rounds = max(1, math.ceil(config.max_steps / pi.steps_per_round))
        round_index = trainer.step // pi.steps_per_round
        self.lam = formulas.round_lambda(pi.lambda0, round_index, rounds, pi.lambda_schedule, pi.lambda_gamma)
        metrics: dict[str, float] = {"sd/lambda": self.lam, "sd/round": float(round_index)}
        rows = self._row_indices(trainer, rollouts)
        if pi.examiner_rewards:
            metrics.update(self._examiner(trainer, rows, rewards))
        t_max = max(1, max((len(r.completion_ids) for r in rollouts), default=1))
        k = pi.top_k
        self.top_ids = torch.zeros((len(rollouts), t_max, k), dtype=torch.long)
        self.top_logprobs = torch.full((len(rollouts), t_max, k), -1e4, dtype=torch.float32)
        self.tail_logprobs = torch.zeros((len(rollouts), t_max), dtype=torch.float32)
        self.kl_mask = torch.zeros((len(rollouts), t_max), dtype=torch.float32)
        if self.lam == 0.0:
            return metrics
        wanted = [i for i, r in enumerate(rollouts) if r.completion_ids]
        inputs = []
        for i in wanted:
            row = trainer.rows[rows[i]]
            context = qcp_of(row) if pi.privileged == "qcp" else f"The answer is {answer_of(row)}."
            inputs.append(ScoreInput(self.teacher_context(trainer, rows[i], context or ""),
                                     list(rollouts[i].completion_ids)))
        outputs = self.teacher.score(inputs, top_k=k, temperature=config.temperature)
        failures = 0
        for i, out in zip(wanted, outputs, strict=True):
            n = len(rollouts[i].completion_ids)
            if out is None or len(out.top_ids) != n or any(len(ids) != len(out.top_ids[0]) for ids in out.top_ids):
                failures += 1
                continue
            width = len(out.top_ids[0])
            self.top_ids[i, :n, :width] = torch.tensor(out.top_ids, dtype=torch.long)
            self.top_logprobs[i, :n, :width] = torch.tensor(out.top_logprobs, dtype=torch.float32)
            self.tail_logprobs[i, :n] = torch.tensor(out.tail_logprobs, dtype=torch.float32)
            self.kl_mask[i, :n] = 1.0
        metrics["sd/teacher_failures"] = float(failures)
        return metrics

    def _examiner(self, trainer: Any, rows: list[int], rewards: torch.Tensor) -> dict[str, float]:
        """Each group as an examiner task: k of n rollouts passed (reward ≥ pass_threshold; unscored ones
        are left out of n), r_d and the difficulty distribution."""
        pi, group = self.settings.pi, self.config.group_size
        items = []
        values = rewards.tolist()
        for g in range(len(values) // group):
            scores = [v for v in values[g * group:(g + 1) * group] if not math.isnan(v)]
            if not scores:
                continue
            row = trainer.rows[rows[g * group]]
            extra = row.extra_info if isinstance(row.extra_info, dict) else {}
            hops = extra.get("hops", 1)
            items.append(ExaminerItem(id=str(g), hops=int(hops) if isinstance(hops, int) and 0 <= hops <= 64 else 1,
                                      passed=sum(s >= pi.pass_threshold for s in scores), samples=len(scores)))
        if not items:
            return {}
        grades = self.teacher.examiner_rewards(items)
        valid = [r for r in grades.rewards if r is not None]
        out = {f"sd/difficulty/{bucket}": n / len(items) for bucket, n in sorted(grades.histogram.items())}
        out["sd/examiner_reward_mean"] = sum(valid) / len(valid) if valid else 0.0
        return out

    def forward(self, model: Any, micro_batch: Any, part: torch.Tensor, temperature: float, *, device: Any,
                with_entropy: bool, entropy_grad: bool) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """One forward (with gradient): log π(y_t), optionally the entropies, and KL_t(π_S ‖ stopgrad π_T)
        lumped over the teacher's top-k (0 where the teacher has no score). The log-probs use the same
        chunked kernels as :func:`trainer.logprobs.completion_logprobs`; the KL takes one float copy of
        the micro-batch's completion logits for the log-partition."""
        assert self.top_ids is not None and self.top_logprobs is not None
        assert self.tail_logprobs is not None and self.kl_mask is not None
        t_max = micro_batch.completion_ids.shape[1]
        logits = model(input_ids=micro_batch.input_ids.to(device), attention_mask=micro_batch.attention_mask.to(device),
                       position_ids=micro_batch.position_ids.to(device), logits_to_keep=t_max + 1).logits
        logp = chunked_token_logprobs(logits, micro_batch.completion_ids.to(device), temperature)
        entropy = (chunked_entropy(logits if entropy_grad else logits.detach(), t_max, temperature)
                   if with_entropy else None)
        rows = part.cpu()
        scaled = logits[:, :t_max].to(torch.promote_types(logits.dtype, torch.float32)) / temperature
        log_z = torch.logsumexp(scaled, dim=-1, keepdim=True)
        ids = self.top_ids[rows].to(device)
        student_top = scaled.gather(-1, ids) - log_z
        kl = formulas.lumped_topk_kl_tensor(student_top, self.top_logprobs[rows].to(device),
                                            self.tail_logprobs[rows].to(device))
        return logp, entropy, kl * self.kl_mask[rows].to(device)

    def loss_term(self, kl: torch.Tensor, part: torch.Tensor, mask: torch.Tensor, sums: dict[str, float]) -> torch.Tensor:
        """λ · mean_i (1/|y_i|) Σ_t KL_{i,t} over the micro-batch's counted, teacher-scored tokens, divided by
        the accumulation steps like a per-micro-batch mean; the token-mean KL goes to ``sums``."""
        assert self.kl_mask is not None
        counted = mask * self.kl_mask[part.cpu()].to(mask.device)
        term = formulas.distillation_loss(kl, counted, self.lam)
        sums["sd/distill_kl"] = sums.get("sd/distill_kl", 0.0) + float((kl.detach() * counted).sum()
                                                                       / counted.sum().clamp(min=1.0))
        scaled: torch.Tensor = term / self.config.gradient_accumulation
        return scaled

    def close(self) -> None:
        self.teacher.close()
