"""RLAVR in the run loop: each step's groups go to the annotation service, which answers with
pseudo-labels, the labels bought (CARE or a baseline policy, within budget) and advantage weights.

Per step (``RlavrSession.score``), for every group of G rollouts:

1. Answers are extracted here, in the trainer (it never imports ``services``): ``boxed`` takes the
   inside of the last ``\\boxed{…}`` (the math verifier's convention), ``text`` the whole completion
   stripped; nothing found = unparseable (``null``, excluded from the vote).
2. One extra no-grad forward of the policy (``output_hidden_states``, micro-batched) gives the CARE
   features — the last layer's hidden state at the last prompt token (per prompt) and at each
   rollout's last response token — and each rollout's **arithmetic** mean token probability
   (1/T) Σ_t π(y_t | ·) at the sampling temperature (the spec's "mean token probability"; not
   exp(mean log-prob)), all as float32 lists.
3. ``POST /v1/annotation/projects/{id}/steps`` with ``Idempotency-Key: rlavr-<run>-step-<step>``:
   a retried request (a lost response, a resumed run) is answered from the first one and buys nothing twice.
4. Rewards: r_j = 1[norm(answer_j) = norm(label)] where the label is known (``label_status:
   labelled``), else 1[norm(answer_j) = norm(pseudo_label)]; norm drops outer ``$`` and all whitespace,
   so equivalence here is exact string match after normalisation (the service's vote also merges
   math-equivalent answers, e.g. ``0.5`` and ``\\frac12``; those rollouts get reward 0 here).
5. The trainer computes advantages as usual and multiplies each prompt's by its weight: A_j × w_i.
   Pending rule (``rlavr.pending_rule``): a label bought but not answered yet (a human queue) trains at
   weight 0 this step under both rules. ``weight_zero`` (the default) does nothing more: the prompt
   trains with its label only if the sampler happens to draw it again; ``requeue`` brings it back (6).
6. Requeue (``pending_rule: requeue``): at the start of each step the session reads the project's label
   feed (``GET …/labels?cursor=``, through the same client, URL and key as the steps) from its stored
   cursor. A prompt this run is waiting on whose label has arrived goes into this step's prompts ahead
   of the sampler's fresh ones (at most ``prompts_per_step``; the rest wait for the next step; fresh
   prompts it displaces are carried to the next step, ahead of that step's draw). Posted again, the
   service answers it ``labelled`` with its label and weight 1, so its rollouts are rewarded against
   the human label at weight 1, as a purchase labelled at once would be. The cursor and the queues are
   saved in checkpoints; each step's poll is journalled in ``<output_dir>/rlavr_labels.jsonl`` (the run's
   log of label arrivals), and a resumed run replays its journal instead of polling again, so a retaken
   step posts the same prompts under the same Idempotency-Key. Logged per step (requeue only):
   ``rlavr/labels_arrived`` (this run's waiting prompts whose label the poll delivered),
   ``rlavr/requeued`` (of the ready ones, those put into this step) and ``rlavr/waiting`` (bought
   prompts still without a label after the step). One training process only (world size 1).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx
import torch

from rewardhub.boxed import last_boxed
from trainer.data import PromptRow
from trainer.logprobs import CompletionBatch, chunked_token_logprobs
from trainer.rewards import local_api_key
from trainer.rollout import Rollout

EMBEDDED_PREFIX = "/services/annotation"  # where the embedded default mounts the annotation service
DEFAULT_PLATFORM_URL = "http://127.0.0.1:8000"
MAX_TEXT = 20_000  # the service's limit on a stored answer / completion text
RETRIED_STATUSES = frozenset({502, 503, 504})
PENDING_RULES = ("weight_zero", "requeue")
LABELS_LOG = "rlavr_labels.jsonl"  # the requeue journal: one line per step's poll of the label feed
FEED_PAGE = 500  # the label feed's largest page
MAX_FEED_PAGES = 1000  # one poll reads at most this many pages (500,000 entries); the rest next step
_DOLLARS = re.compile(r"^\$+|\$+$")


class RlavrError(RuntimeError):
    """The annotation service refused a step or stayed unreachable after retries."""


# ---------------------------------------------------------------- pure functions


def extract_boxed(text: str) -> str | None:
    """The inside of the last ``\\boxed{…}`` or ``\\fbox{…}`` whose braces balance (the math verifier's
    convention, :func:`rewardhub.boxed.last_boxed`), stripped; None when there is none or it is empty."""
    return last_boxed(text) or None


def extract_answer(text: str, extractor: str) -> str | None:
    """The final answer of a completion by ``extractor`` (``boxed`` | ``text``), at most 20,000 characters."""
    if extractor == "boxed":
        answer = extract_boxed(text)
    elif extractor == "text":
        answer = text.strip() or None
    else:
        raise ValueError(f"rlavr.extractor: unknown extractor {extractor!r}")
    if answer is None:
        return None
    # A NUL (an undertrained policy can sample one) is text the annotation service refuses: dropped.
    return answer.replace("\x00", "")[:MAX_TEXT] or None


def normalise(answer: str) -> str:
    """The compared form: outer ``$`` and every whitespace character removed (as the service's exact match)."""
    return "".join(_DOLLARS.sub("", answer.strip()).split())


def match_rewards(answers: Sequence[str | None], target: str | None) -> list[float]:
    """r_j = 1[norm(answer_j) = norm(target)]; 0 for an unparseable answer or when there is no target."""
    if target is None:
        return [0.0] * len(answers)
    goal = normalise(target)
    return [1.0 if answer is not None and normalise(answer) == goal else 0.0 for answer in answers]


@dataclass(frozen=True)
class GroupDecision:
    """What the service answered for one prompt (the fields of its ``GroupOut`` the trainer uses)."""

    prompt_id: str
    pseudo_label: str | None
    label_status: str  # none | pending | labelled
    label: str | None
    advantage_weight: float
    bought: bool = False


def training_target(decision: GroupDecision) -> str | None:
    """The answer rewards are measured against: the known label, else the pseudo-label."""
    return decision.label if decision.label_status == "labelled" else decision.pseudo_label


def effective_weight(decision: GroupDecision, pending_rule: str = "weight_zero") -> float:
    """w_i: the service's advantage weight, except 0 while a bought label is pending (both rules:
    ``requeue`` differs only in bringing the prompt back once its label arrives)."""
    if pending_rule not in PENDING_RULES:
        raise ValueError(f"rlavr.pending_rule: unknown rule {pending_rule!r}")
    return 0.0 if decision.label_status == "pending" else float(decision.advantage_weight)


def apply_feed(entries: Sequence[Mapping[str, Any]], waiting: Mapping[str, int],
               ready: Mapping[str, int]) -> tuple[dict[str, int], dict[str, int], list[str]]:
    """The requeue state after a page of the label feed (``{prompt_id, event}`` entries in feed order).

    ``waiting`` and ``ready`` map prompt id → row index, in the order the prompts joined them. Entry by
    entry: ``labelled`` for a waiting prompt moves it to the end of ``ready`` (an arrival); ``retracted``
    for a ready prompt (arrived, not trained yet) moves it back to ``waiting``. Any other entry changes
    nothing (another run's prompt, a prompt trained with its label already, a label edited while ready).
    Returns (waiting, ready, the arrived prompt ids in feed order).
    """
    waiting, ready = dict(waiting), dict(ready)
    arrived: list[str] = []
    for entry in entries:
        prompt_id, event = str(entry["prompt_id"]), entry.get("event", "labelled")
        if event == "labelled" and prompt_id in waiting:
            ready[prompt_id] = waiting.pop(prompt_id)
            arrived.append(prompt_id)
        elif event == "retracted" and prompt_id in ready:
            waiting[prompt_id] = ready.pop(prompt_id)
    return waiting, ready, arrived


def order_step_prompts(ready: Sequence[int], deferred: Sequence[int], fresh: Sequence[int],
                       size: int) -> tuple[list[int], list[int], list[int]]:
    """A step's prompts (row indices) under ``requeue``: (chosen, ready left, deferred left).

    candidates = ready ++ deferred ++ fresh with every later repeat of an index dropped;
    chosen = the first ``size`` candidates; ready left = ready − chosen (they go first next step);
    deferred left = (deferred ++ fresh) − chosen − ready left, in order (displaced fresh prompts, tried
    next step before its own draw). With no ready or deferred prompt, chosen = fresh.
    """
    candidates = list(dict.fromkeys([*ready, *deferred, *fresh]))
    chosen = candidates[:size]
    taken = set(chosen)
    ready_left = [i for i in dict.fromkeys(ready) if i not in taken]
    queued = taken | set(ready_left)
    deferred_left = [i for i in dict.fromkeys([*deferred, *fresh]) if i not in queued]
    return chosen, ready_left, deferred_left


def track_pending(decisions: Sequence[GroupDecision], rows: Sequence[int],
                  waiting: Mapping[str, int]) -> dict[str, int]:
    """The prompts waiting for a label after a step: a ``pending`` decision joins (or stays in) ``waiting``
    with its row index; a ``labelled`` one leaves it (trained with its label); ``none`` changes nothing."""
    out = dict(waiting)
    for decision, row in zip(decisions, rows, strict=True):
        if decision.label_status == "pending":
            out.setdefault(decision.prompt_id, row)
        elif decision.label_status == "labelled":
            out.pop(decision.prompt_id, None)
    return out


def group_rewards(answers: Sequence[Sequence[str | None]], decisions: Sequence[GroupDecision]) -> list[float]:
    """Every rollout's reward, group after group: 1[answer ≡ label] where known, else 1[answer ≡ pseudo-label]."""
    out: list[float] = []
    for group, decision in zip(answers, decisions, strict=True):
        out.extend(match_rewards(group, training_target(decision)))
    return out


def weight_advantages(advantages: torch.Tensor, weights: Sequence[float], group_size: int) -> torch.Tensor:
    """A_j × w_i for rollout j of prompt i (rollouts grouped contiguously, ``group_size`` per prompt)."""
    if len(advantages) != len(weights) * group_size:
        raise ValueError(f"{len(advantages)} advantages for {len(weights)} groups of {group_size}")
    per_rollout = torch.tensor(weights, dtype=advantages.dtype, device=advantages.device).repeat_interleave(group_size)
    return advantages * per_rollout


def mean_token_probability(logp: torch.Tensor, mask: torch.Tensor) -> list[float]:
    """Per row (1/T) Σ_t exp(log π_t) over the masked tokens (arithmetic mean of probabilities); 0 for an empty row."""
    probs = torch.exp(logp.float()) * mask
    counts = mask.sum(-1)
    means = torch.where(counts > 0, probs.sum(-1) / counts.clamp(min=1), torch.zeros_like(counts))
    return [min(1.0, max(0.0, float(v))) for v in means]


def step_metrics(decisions: Sequence[GroupDecision], weights: Sequence[float], *, purchased: int,
                 budget: dict[str, Any], budget_exhausted: bool) -> dict[str, float]:
    """The step's RLAVR metrics (``rlavr/…``).

    gt_share = #{i: label known and w_i > 0} / N; pseudo_label_accuracy = mean over prompts with a known
    label of 1[norm(pseudo) = norm(label)] (absent when none is known); mean_advantage_weight = mean w_i.
    """
    n = len(decisions)
    known = [d for d in decisions if d.label_status == "labelled" and d.label is not None]
    trained_gt = sum(1 for d, w in zip(decisions, weights, strict=True) if d.label_status == "labelled" and w > 0)
    metrics = {
        "rlavr/gt_share": trained_gt / n if n else 0.0,
        "rlavr/trained_share": sum(1 for w in weights if w > 0) / n if n else 0.0,
        "rlavr/mean_advantage_weight": sum(weights) / n if n else 0.0,
        "rlavr/purchased": float(purchased),
        "rlavr/pending": float(sum(1 for d in decisions if d.label_status == "pending")),
        "rlavr/labels_known": float(len(known)),
        "rlavr/budget_spent": float(budget["spent"]),
        "rlavr/budget_left": float(budget["left"]),
        "rlavr/budget_exhausted": 1.0 if budget_exhausted else 0.0,
    }
    if known:
        right = sum(1 for d in known if d.pseudo_label is not None and d.label is not None
                    and normalise(d.pseudo_label) == normalise(d.label))
        metrics["rlavr/pseudo_label_accuracy"] = right / len(known)
    return metrics


# ---------------------------------------------------------------- features from the policy


@dataclass
class PolicyFeatures:
    prompt: list[list[float]]  # per rollout (rows of a group share their prompt's): hidden state at the last prompt token
    response: list[list[float]]  # per rollout: hidden state at its last response token
    mean_token_probs: list[float]


def policy_features(model: Any, batch: CompletionBatch, completion_mask: torch.Tensor, temperature: float, *,
                    device: torch.device | str, micro_batch_size: int) -> PolicyFeatures:
    """One no-grad forward with ``output_hidden_states``, ``micro_batch_size`` rollouts at a time.

    ``batch`` is left-padded prompts then right-padded completions (``trainer.grpo.collate``): the last
    prompt token sits at column P − 1 for every row, a rollout's last response token at P + len − 1
    (P − 1 again for an empty completion). hidden_states[-1] is the last layer's output.
    """
    total, t_max = batch.completion_ids.shape
    prompt_col = batch.input_ids.shape[1] - t_max - 1
    lengths = completion_mask.sum(-1).long()
    prompt_rows: list[list[float]] = []
    response_rows: list[list[float]] = []
    probs: list[float] = []
    with torch.no_grad():
        for start in range(0, total, max(1, micro_batch_size)):
            rows = slice(start, min(total, start + micro_batch_size))
            out = model(input_ids=batch.input_ids[rows].to(device), attention_mask=batch.attention_mask[rows].to(device),
                        position_ids=batch.position_ids[rows].to(device), output_hidden_states=True,
                        logits_to_keep=t_max + 1)
            hidden = out.hidden_states[-1].float()
            last = (prompt_col + lengths[rows]).to(hidden.device)  # P - 1 + len
            index = torch.arange(hidden.shape[0], device=hidden.device)
            prompt_rows.extend(hidden[:, prompt_col].cpu().tolist())
            response_rows.extend(hidden[index, last].cpu().tolist())
            logp = chunked_token_logprobs(out.logits, batch.completion_ids[rows].to(device), temperature)
            probs.extend(mean_token_probability(logp.cpu(), completion_mask[rows].float()))
            del out, hidden
    return PolicyFeatures(prompt_rows, response_rows, probs)


# ---------------------------------------------------------------- the service


class TrainerView(Protocol):
    """What the session reads of ``trainer.grpo.GRPOTrainer`` (no import: grpo imports this module)."""

    step: int
    rows: list[PromptRow]
    prompt_cache: dict[int, list[int]]
    device: str
    policy: Any


def annotation_url(rlavr: Any, reward: Any) -> str:
    """``rlavr.url``, else the reward URL's platform (reward.url, REWARDHUB_URL, the default) + the embedded prefix."""
    if rlavr.url:
        return str(rlavr.url).rstrip("/")
    platform = (getattr(reward, "url", None) if reward is not None else None) or os.environ.get("REWARDHUB_URL")
    return (platform or DEFAULT_PLATFORM_URL).rstrip("/") + EMBEDDED_PREFIX


def prompt_id_of(row: PromptRow) -> str:
    """The id the annotation service (and its answer key) knows the prompt by: extra_info.prompt_id, else the row index."""
    given = row.extra_info.get("prompt_id") if isinstance(row.extra_info, dict) else None
    return str(given) if given not in (None, "") else str(row.index)


def prompt_text_of(row: PromptRow) -> str:
    """What annotators read: the prompt text, or a chat prompt's message contents one after another."""
    if isinstance(row.prompt, str):
        return row.prompt[:200_000]
    return "\n\n".join(str(m.get("content", "")) for m in row.prompt)[:200_000]


@dataclass
class RlavrStep:
    rewards: torch.Tensor  # per rollout
    weights: list[float]  # per prompt, after the pending rule
    decisions: list[GroupDecision]
    answers: list[list[str | None]]
    metrics: dict[str, float]

    def weighted(self, advantages: torch.Tensor, group_size: int) -> torch.Tensor:
        return weight_advantages(advantages, self.weights, group_size)


class RlavrSession:
    """Posts each step to the annotation project named by ``config.rlavr``; see the module docstring."""

    def __init__(self, config: Any, output_dir: Path, *, rank: int = 0, world_size: int = 1,
                 api_key: str | None = None, transport: httpx.BaseTransport | None = None) -> None:
        self.run_config = config
        self.settings = config.rlavr
        self.base_url = annotation_url(self.settings, config.reward)
        self.api_key = api_key if api_key is not None else local_api_key(config.reward)
        run = self.settings.run_id or hashlib.sha256(str(Path(output_dir).resolve()).encode()).hexdigest()[:16]
        self.key_prefix = f"rlavr-{run}" + (f"-rank-{rank}" if world_size > 1 else "")
        self.transport = transport
        self.last: RlavrStep | None = None
        # pending_rule: requeue (see the module docstring, 6): the feed cursor, prompt id → row index of the
        # prompts waiting for a label and of those whose label arrived, and displaced fresh rows.
        self.requeue = self.settings.pending_rule == "requeue"
        if self.requeue and world_size > 1:
            raise RlavrError("rlavr.pending_rule: requeue needs a single training process yet (world size "
                             f"{world_size}); use weight_zero")
        self.cursor = "0"
        self.waiting: dict[str, int] = {}
        self.ready: dict[str, int] = {}
        self.deferred: list[int] = []
        self.queue_metrics: dict[str, float] = {}
        self.journal_path = Path(output_dir) / LABELS_LOG
        self.journal: dict[int, dict[str, Any]] = {}
        if self.requeue and self.journal_path.exists():  # a resumed run replays the polls of the steps it retakes
            for text in self.journal_path.read_text().splitlines():
                if text.strip():
                    line = json.loads(text)
                    self.journal[int(line["step"])] = line

    def idempotency_key(self, step: int) -> str:
        return f"{self.key_prefix}-step-{step}"

    def score(self, trainer: TrainerView, rollouts: Sequence[Rollout], batch: CompletionBatch,
              completion_mask: torch.Tensor) -> RlavrStep:
        """Post this step's groups; the rollouts' rewards, per-prompt weights and the metrics."""
        config, group = self.run_config, self.run_config.group_size
        if len(rollouts) % group:
            raise RlavrError(f"{len(rollouts)} rollouts are not whole groups of {group}")
        lookup = {tuple(ids): index for index, ids in trainer.prompt_cache.items()}
        chunk = config.logprob_micro_batch_size or config.micro_batch_size
        features = policy_features(trainer.policy.forward_model, batch, completion_mask, config.temperature,
                                   device=trainer.device, micro_batch_size=chunk)
        answers: list[list[str | None]] = []
        groups: list[dict[str, Any]] = []
        indices: list[int] = []
        for start in range(0, len(rollouts), group):
            members = list(rollouts[start: start + group])
            # The row the trainer sampled; by prompt tokens only for rollouts made without it (two rows
            # with the same prompt text would be confused, and posted under one prompt id).
            row_index = members[0].row_index
            indices.append(row_index if row_index is not None else lookup[tuple(members[0].prompt_ids)])
            row = trainer.rows[indices[-1]]
            extracted = [extract_answer(r.text, self.settings.extractor) for r in members]
            answers.append(extracted)
            groups.append({
                "prompt_id": prompt_id_of(row), "prompt_text": prompt_text_of(row), "answers": extracted,
                "completions": [r.text.replace("\x00", "")[:MAX_TEXT] for r in members],  # NUL: refused
                "response_lengths": [len(r.completion_ids) for r in members],
                "mean_token_probs": features.mean_token_probs[start: start + group],
                "prompt_features": features.prompt[start],
                "rollout_features": features.response[start: start + group],
            })
        answer = self.post_step(trainer.step, groups)
        decisions = [GroupDecision(prompt_id=g["prompt_id"], pseudo_label=g.get("pseudo_label"),
                                   label_status=g["label_status"], label=g.get("label"),
                                   advantage_weight=float(g["advantage_weight"]), bought=bool(g.get("bought")))
                     for g in answer["groups"]]
        if [d.prompt_id for d in decisions] != [g["prompt_id"] for g in groups]:
            raise RlavrError("the annotation service answered for other prompts than the step posted")
        weights = [effective_weight(d, self.settings.pending_rule) for d in decisions]
        rewards = torch.tensor(group_rewards(answers, decisions), dtype=torch.float32)
        metrics = step_metrics(decisions, weights, purchased=int(answer["purchased"]), budget=answer["budget"],
                               budget_exhausted=bool(answer.get("budget_exhausted")))
        metrics["rlavr/reward_mean"] = float(rewards.mean()) if len(rewards) else math.nan
        if self.requeue:  # this step's arrivals and requeued prompts (step_prompts), and who waits now
            self.waiting = track_pending(decisions, indices, self.waiting)
            metrics.update({"rlavr/labels_arrived": 0.0, "rlavr/requeued": 0.0, **self.queue_metrics,
                            "rlavr/waiting": float(len(self.waiting))})
            self.queue_metrics = {}
        self.last = RlavrStep(rewards, weights, decisions, answers, metrics)
        return self.last

    def post_step(self, step: int, groups: list[dict[str, Any]]) -> dict[str, Any]:
        """POST the step, retrying connection errors and 502/503/504 with the same Idempotency-Key."""
        path = f"/v1/annotation/projects/{self.settings.annotation_project_id}/steps"
        return self._request("POST", path, what=f"annotation step {step}", body={"step": step, "groups": groups},
                             headers={"Idempotency-Key": self.idempotency_key(step)})

    def poll_labels(self, cursor: str) -> tuple[list[dict[str, Any]], str]:
        """The label feed after ``cursor`` (``GET …/labels``, page after page until a short one, at most
        ``MAX_FEED_PAGES``): its entries in feed order and the cursor the next poll starts from."""
        path = f"/v1/annotation/projects/{self.settings.annotation_project_id}/labels"
        entries: list[dict[str, Any]] = []
        for _ in range(MAX_FEED_PAGES):
            page = self._request("GET", path, what=f"label feed after cursor {cursor}",
                                 params={"cursor": cursor, "limit": FEED_PAGE})
            data = list(page.get("data") or [])
            entries.extend(data)
            cursor = str(page.get("next_cursor") or cursor)
            if len(data) < FEED_PAGE:
                break
        return entries, cursor

    def _request(self, method: str, path: str, *, what: str, body: Any = None, params: dict[str, Any] | None = None,
                 headers: dict[str, str] | None = None) -> dict[str, Any]:
        """One call to the annotation service with the run's key, retrying connection errors and 502/503/504
        (a POST carries its Idempotency-Key, so a retry is safe); a 4xx/5xx answer is an :class:`RlavrError`."""
        url = f"{self.base_url}{path}"
        headers = dict(headers or {})
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        attempts = self.settings.max_retries + 1
        cause = ""
        with httpx.Client(timeout=self.settings.timeout_s, transport=self.transport) as client:
            for attempt in range(attempts):
                try:
                    response = client.request(method, url, json=body, params=params, headers=headers)
                except httpx.TransportError as exc:  # the request may have been processed: the key makes a retry safe
                    cause = f"{type(exc).__name__}: {exc}"
                else:
                    if response.status_code not in RETRIED_STATUSES:
                        if response.status_code != 200:
                            raise RlavrError(f"{what}: HTTP {response.status_code}: {response.text[:500]}")
                        result: dict[str, Any] = response.json()
                        return result
                    cause = f"HTTP {response.status_code}"
                if attempt + 1 < attempts:
                    time.sleep(min(8.0, 0.5 * 2 ** attempt))  # back off before the retry
        raise RlavrError(f"annotation service unreachable at {url} after {attempts} attempts: {cause}")

    # ---------------------------------------------------------------- requeue (pending_rule: requeue)

    def step_prompts(self, step: int, fresh: Sequence[int]) -> list[int]:
        """This step's prompts (row indices). ``weight_zero``: ``fresh``, the sampler's draw, unchanged.
        ``requeue``: the label feed is read from the stored cursor (or this step's journal line replayed,
        after a resume), arrivals move to the ready queue (:func:`apply_feed`), and the step takes ready,
        then deferred, then fresh prompts, ``len(fresh)`` in all (:func:`order_step_prompts`)."""
        if not self.requeue:
            return list(fresh)
        record = self.journal.get(step)
        replayed = record is not None and record.get("cursor") == self.cursor
        if record is not None and replayed:
            entries, next_cursor = list(record["entries"]), str(record["next_cursor"])
        else:
            polled, next_cursor = self.poll_labels(self.cursor)
            known = self.waiting.keys() | self.ready.keys()  # only these prompts' entries can change the state
            entries = [{"seq": e.get("seq"), "prompt_id": str(e["prompt_id"]), "event": e.get("event", "labelled"),
                        "label": e.get("label"), "bought_step": e.get("step")}
                       for e in polled if str(e.get("prompt_id")) in known]
        self.waiting, ready, arrived = apply_feed(entries, self.waiting, self.ready)
        chosen, ready_left, self.deferred = order_step_prompts(list(ready.values()), self.deferred, fresh, len(fresh))
        left = set(ready_left)
        requeued = [prompt_id for prompt_id, row in ready.items() if row not in left]
        self.ready = {prompt_id: row for prompt_id, row in ready.items() if row in left}
        if not replayed:
            line = {"step": step, "cursor": self.cursor, "next_cursor": next_cursor, "entries": entries,
                    "arrived": arrived, "requeued": requeued}
            self.journal[step] = line
            with self.journal_path.open("a") as log:
                log.write(json.dumps(line) + "\n")
        self.cursor = next_cursor
        self.queue_metrics = {"rlavr/labels_arrived": float(len(arrived)), "rlavr/requeued": float(len(requeued))}
        return chosen

    def state_dict(self) -> dict[str, Any]:
        """The requeue state a checkpoint keeps: the feed cursor and the waiting, ready and deferred queues."""
        return {"pending_rule": self.settings.pending_rule, "cursor": self.cursor,
                "waiting": [[k, v] for k, v in self.waiting.items()], "ready": [[k, v] for k, v in self.ready.items()],
                "deferred": list(self.deferred)}

    def load_state_dict(self, state: Mapping[str, Any] | None) -> None:
        """Restore :meth:`state_dict` (None, e.g. a checkpoint of a weight_zero run: the feed from its start)."""
        state = state or {}
        self.cursor = str(state.get("cursor", "0"))
        self.waiting = {str(k): int(v) for k, v in state.get("waiting", [])}
        self.ready = {str(k): int(v) for k, v in state.get("ready", [])}
        self.deferred = [int(i) for i in state.get("deferred", [])]
