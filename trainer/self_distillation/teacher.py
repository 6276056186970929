"""The teacher a self-distillation run consumes: the teacher service over HTTP, or an in-process one.

Both offer the same five operations, with a status per item where the service has one:

- ``score``: log π_T(y_t | context, y_<t) per continuation token, and the top-k with the lumped tail;
- ``reflect``: a hint per request from one diagnostic signal, through the leak filter;
- ``modulate``: AMR-SD's CIG, gate weights and Â = A · w per rollout;
- ``examiner_tasks``: π-Play's examiner builds (question q, question-construction path c, answer o*);
- ``examiner_rewards``: π-Play's difficulty reward and hop-grouped advantages, with the histogram;
- ``sync``: the teacher's weights follow the policy (replaced, or the EMA step ψ ← (1 − τ)ψ + τθ).

:class:`HttpTeacher` calls ``/v1/score``, ``/v1/reflect``, ``/v1/modulate``, ``/v1/examiner/tasks``, ``/v1/examiner/rewards`` and
``PUT /v1/teacher-models/{model}/weights`` (safetensors of the policy's parameters, with an
``Idempotency-Key`` per step so a retried EMA step is applied once). :class:`InProcessTeacher` computes
the same with :mod:`trainer.self_distillation.formulas` and :mod:`~trainer.self_distillation.leak_filter`
(the functions the service uses), scoring with a frozen copy of the policy (``weights: ema``) or the
policy itself (``weights: policy``), and writing hints and examiner tasks with the policy (greedy)
unless given a ``hint_writer`` / ``task_writer`` (tests, benchmarks).
"""

from __future__ import annotations

import copy
import json
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx
import torch

from trainer.self_distillation import formulas
from trainer.self_distillation.config import EMBEDDED_PREFIX, AmrSdConfig, ServiceTeacherConfig
from trainer.self_distillation.leak_filter import boxed_contents, check_hint, guarded_answers
from trainer.self_distillation.scoring import ScoreInput, ScoreOutput, score_tokens

DEFAULT_PLATFORM_URL = "http://127.0.0.1:8000"
RETRIED_STATUSES = frozenset({502, 503, 504})

# (prompt to write a hint from) -> hint text: who writes hints in process when not the policy.
HintWriter = Callable[[str], str]

EXAMINER_INSTRUCTIONS = (
    "You are the examiner of a self-play game. Build one question backwards: first choose the answer, then "
    "chain the evidence that leads to it one hop at a time, and only then write the question that needs every "
    "hop to be answered. Never put the answer in the question. Reply with JSON only: "
    '{"answer": "...", "path": [{"hop": 1, "evidence": "...", "step": "..."}], "question": "...?"}')


class TeacherError(RuntimeError):
    """The teacher service refused a request or stayed unreachable after retries."""


@dataclass(frozen=True)
class HintRequest:
    id: str
    question: str
    response: str
    signal_kind: str  # verifier | peer | reference
    signal_text: str
    answer: str | None = None
    reference: str | None = None


@dataclass
class HintResult:
    id: str
    status: str  # ok | rejected | error | timeout | invalid_input
    hint: str | None = None
    rejections: list[str] = field(default_factory=list)  # the leak filter's reasons, one per rejected hint


@dataclass(frozen=True)
class ModulateItem:
    advantage: float
    teacher_logprobs: list[float]
    student_logprobs: list[float]


@dataclass
class ModulateResult:
    status: str
    advantages: list[float] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    cig: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class ExaminerItem:
    id: str
    hops: int
    passed: int
    samples: int


@dataclass(frozen=True)
class ExaminerSeed:
    """What the examiner builds one task from: hop count, evidence documents, a topic, a sampling seed."""

    id: str
    hops: int
    evidence: tuple[str, ...] = ()
    topic: str | None = None
    seed: int = 0


@dataclass(frozen=True)
class ExaminerTask:
    """A well-formed examiner task: q, o*, its hop count and the QCP c as the teacher reads it."""

    question: str
    answer: str
    qcp: str
    hops: int


# (seed) -> the examiner's raw reply (JSON as EXAMINER_INSTRUCTIONS asks): who writes tasks in process.
TaskWriter = Callable[[ExaminerSeed], str]


@dataclass
class ExaminerGrades:
    rewards: list[float | None]
    advantages: list[float | None]
    histogram: dict[str, int]


class Teacher(Protocol):
    def score(self, inputs: Sequence[ScoreInput], *, top_k: int, temperature: float) -> list[ScoreOutput | None]:
        ...

    def reflect(self, requests: Sequence[HintRequest], settings: AmrSdConfig) -> list[HintResult]:
        ...

    def modulate(self, items: Sequence[ModulateItem], settings: AmrSdConfig, alpha: float) -> list[ModulateResult]:
        ...

    def examiner_rewards(self, items: Sequence[ExaminerItem]) -> ExaminerGrades:
        ...

    def examiner_tasks(self, seeds: Sequence[ExaminerSeed]) -> list[ExaminerTask | None]:
        ...

    def sync(self, policy: Any, step: int, *, initial: bool = False) -> None:
        ...

    def close(self) -> None:
        ...


def reflect_prompt(request: HintRequest, max_chars: int) -> str:
    """What the hint writer reads (the service's reflection prompt, as plain text for a base model)."""
    titles = {"verifier": "Verifier feedback", "peer": "A successful attempt by another student",
              "reference": "Reference solution"}
    return (f"You are a Socratic tutor. Write ONE short hint (at most {max_chars} characters) that helps the "
            f"student find their mistake, without stating the final answer.\n\nQuestion:\n{request.question}\n\n"
            f"Student's attempt:\n{request.response}\n\n{titles.get(request.signal_kind, 'Signal')}:\n"
            f"{request.signal_text}\n\nHint:")


def guarded(request: HintRequest) -> list[str]:
    """The answers a hint must not give away: the answer, the reference's \\boxed{} contents and, for a peer
    or reference signal, the signal's own \\boxed{} contents (as the service's reflection guards)."""
    answers = guarded_answers(request.answer, request.reference)
    if request.signal_kind in ("peer", "reference"):
        answers += [a.strip() for a in boxed_contents(request.signal_text) if a.strip() and a.strip() not in answers]
    return answers


def examiner_prompt(seed: ExaminerSeed) -> str:
    """The examiner's request for one task (the service's examiner prompt, as plain text)."""
    lines = [EXAMINER_INSTRUCTIONS, f"Hops: {seed.hops}"]
    if seed.topic:
        lines.append(f"Topic: {seed.topic}")
    if seed.evidence:
        lines.append("Evidence you may build from:")
        lines.extend(f"[{i + 1}] {doc}" for i, doc in enumerate(seed.evidence))
    lines.append(f"Write a {seed.hops}-hop question: the path must have exactly {seed.hops} steps.\nJSON:")
    return "\n".join(lines)


def qcp_text(path: Sequence[dict[str, Any]], answer: str) -> str:
    """c as the teacher reads it: the path from evidence to question, then the answer it leads to (the
    service's ``privileged_context``)."""
    steps = "\n".join(f"Hop {s['hop']}: {s['step']} (evidence: {s['evidence']})" for s in path)
    return f"Question construction path:\n{steps}\nIt leads to the answer: {answer}"


def parse_examiner_task(text: str, hops: int) -> tuple[ExaminerTask | None, str | None]:
    """The examiner's reply as a task, or None and why it is malformed (the service's format checks):
    the first JSON object with ``answer``, ``question`` and a ``path`` of exactly ``hops`` steps numbered
    1…hops, each with evidence and step text; the question ends with "?" and does not give the answer away."""
    match = re.search(r"\{.*\}", text, re.S)
    if match is None:
        return None, "no JSON object in the reply"
    try:
        data = json.loads(match.group(0))
    except ValueError as exc:
        return None, f"not JSON: {exc}"
    if not isinstance(data, dict):
        return None, "not a JSON object"
    answer, question, path = data.get("answer"), data.get("question"), data.get("path")
    if not isinstance(answer, str) or not answer.strip() or not isinstance(question, str) or not question.strip():
        return None, "answer and question must be non-empty strings"
    if not isinstance(path, list) or not all(isinstance(s, dict) for s in path):
        return None, "path must be a list of steps"
    if len(path) != hops:
        return None, f"path has {len(path)} steps; {hops} were asked for"
    if [s.get("hop") for s in path] != list(range(1, hops + 1)):
        return None, "path hops must be numbered 1, 2, … in order"
    if any(not str(s.get("step", "")).strip() or not str(s.get("evidence", "")).strip() for s in path):
        return None, "every path step needs its evidence and step text"
    if not question.strip().endswith("?"):
        return None, "the question must end with '?'"
    if not check_hint(question, [answer], max_chars=10_000).ok:
        return None, "the question gives the answer away"
    return ExaminerTask(question.strip(), answer.strip(), qcp_text(path, answer.strip()), hops), None


def difficulty_grades(items: Sequence[ExaminerItem], eps: float = 1e-6) -> ExaminerGrades:
    """r_d per task (format reward 0: the tasks are given), advantages normalised within each hop count, and
    the difficulty histogram, as ``/v1/examiner/rewards`` computes them."""
    rewards = [formulas.difficulty_reward(item.passed, item.samples) for item in items]
    advantages = formulas.hop_grouped_normalise(rewards, [item.hops for item in items], eps)
    histogram: dict[str, int] = {}
    for item in items:
        bucket = formulas.difficulty_bucket(item.passed, item.samples)
        histogram[bucket] = histogram.get(bucket, 0) + 1
    return ExaminerGrades(list(rewards), list(advantages), histogram)


def modulate_locally(items: Sequence[ModulateItem], settings: AmrSdConfig, alpha: float) -> list[ModulateResult]:
    """CIG_t, w_t and Â_{i,t} = A_i · w_t per rollout (:mod:`trainer.self_distillation.formulas`)."""
    out = []
    for item in items:
        cig = formulas.causal_information_gain(item.teacher_logprobs, item.student_logprobs)
        weights = formulas.gate_weights(cig, item.advantage, alpha, settings.tau_plus, settings.tau_minus,
                                        settings.max_weight)
        out.append(ModulateResult("ok", formulas.modulated_advantages(item.advantage, weights), weights, cig))
    return out


def policy_parameters(policy: Any) -> dict[str, torch.Tensor]:
    """θ as a state dict of the policy's parameters (each tied tensor once), detached CPU copies."""
    return {name: p.detach().to("cpu").contiguous().clone() for name, p in policy.named_parameters()}


class InProcessTeacher:
    """The teacher on this machine: scores with the policy (``weights: policy``) or an EMA copy of it."""

    def __init__(self, policy: Any, tokenizer: Any, settings: ServiceTeacherConfig, *, hint_writer: HintWriter | None = None,
                 task_writer: TaskWriter | None = None, device: Any = None) -> None:
        self.policy = policy
        self.tokenizer = tokenizer
        self.settings = settings
        self.hint_writer = hint_writer
        self.task_writer = task_writer
        self.device = device
        # weights: ema — the copy ψ is made at the run's first step (sync(initial=True)), from the weights the
        # run starts with (a resumed run's too); weights: policy — the policy itself.
        self.model: Any = policy if settings.weights == "policy" else None

    def _pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        return int(pad if pad is not None else 0)

    def score(self, inputs: Sequence[ScoreInput], *, top_k: int, temperature: float) -> list[ScoreOutput | None]:
        if not inputs:
            return []
        if self.model is None:
            self.sync(self.policy, 0, initial=True)
        was_training = self.model.training
        self.model.eval()  # no dropout in the teacher's forward
        try:
            scored = score_tokens(self.model, list(inputs), self._pad_id(), top_k=top_k, temperature=temperature,
                                  device=self.device)
        finally:
            self.model.train(was_training)
        return list(scored)

    def _generate(self, prompt: str, max_new_tokens: int) -> str:
        """The policy's greedy continuation of ``prompt``."""
        ids = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
        device = self.device if self.device is not None else next(self.policy.parameters()).device
        with torch.no_grad():
            out = self.policy.generate(input_ids=ids.to(device), attention_mask=torch.ones_like(ids).to(device),
                                       max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=self._pad_id())
        return str(self.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True))

    def _write(self, prompt: str, settings: AmrSdConfig) -> str:
        if self.hint_writer is not None:
            return self.hint_writer(prompt)
        return self._generate(prompt, settings.max_hint_tokens)

    def examiner_tasks(self, seeds: Sequence[ExaminerSeed]) -> list[ExaminerTask | None]:
        out: list[ExaminerTask | None] = []
        for seed in seeds:
            try:
                text = self.task_writer(seed) if self.task_writer is not None else self._generate(examiner_prompt(seed), 256)
            except Exception:  # a writer failure is this task's, never the round's
                out.append(None)
                continue
            out.append(parse_examiner_task(text, seed.hops)[0])
        return out

    def reflect(self, requests: Sequence[HintRequest], settings: AmrSdConfig) -> list[HintResult]:
        results = []
        for request in requests:
            answers = guarded(request)
            prompt = reflect_prompt(request, settings.max_hint_chars)
            result = HintResult(id=request.id, status="rejected")
            for _ in range(settings.max_attempts):
                try:
                    hint = self._write(prompt, settings).strip()
                except Exception:  # a writer failure is this item's error, never the step's
                    result.status = "error"
                    break
                verdict = check_hint(hint, answers, max_chars=settings.max_hint_chars)
                if verdict.ok:
                    result.status, result.hint = "ok", hint
                    break
                result.rejections.append(verdict.reason or "rejected")
                prompt = f"{prompt} {hint}\n(That hint was rejected: {verdict.reason}. Write a new hint.)\nHint:"
            results.append(result)
        return results

    def modulate(self, items: Sequence[ModulateItem], settings: AmrSdConfig, alpha: float) -> list[ModulateResult]:
        return modulate_locally(items, settings, alpha)

    def examiner_rewards(self, items: Sequence[ExaminerItem]) -> ExaminerGrades:
        return difficulty_grades(items)

    def sync(self, policy: Any, step: int, *, initial: bool = False) -> None:
        """``weights: ema``: ψ ← θ at the start, then ψ ← (1 − τ)ψ + τθ after every step; ``policy``: nothing
        to do (the teacher is the policy)."""
        if self.settings.weights != "ema":
            return
        if initial or self.model is None:
            self.model = copy.deepcopy(policy)
            self.model.eval()
            self.model.requires_grad_(False)
        else:
            formulas.ema_update_module(self.model, policy, self.settings.tau)

    def close(self) -> None:
        return None


def teacher_url(settings: ServiceTeacherConfig, reward: Any) -> str:
    """``teacher.url``, else the reward URL's platform (reward.url, REWARDHUB_URL, the default) + the embedded prefix."""
    if settings.url:
        return settings.url.rstrip("/")
    platform = (getattr(reward, "url", None) if reward is not None else None) or os.environ.get("REWARDHUB_URL")
    return (platform or DEFAULT_PLATFORM_URL).rstrip("/") + EMBEDDED_PREFIX


class HttpTeacher:
    """The teacher service over HTTP (``teacher.url``); the key given, else from ``teacher.api_key_env``.

    A service run's teacher config has no ``api_key_env``: without a key given, none is sent (its worker
    gives the run's minted key; services/trainer/targets.py), so no environment variable is ever read for it.
    """

    def __init__(self, settings: ServiceTeacherConfig, *, base_url: str, api_key: str | None = None, run_id: str = "run",
                 transport: httpx.BaseTransport | None = None) -> None:
        self.settings = settings
        self.base_url = base_url.rstrip("/")
        env = getattr(settings, "api_key_env", None)  # local configs only
        self.api_key = api_key if api_key is not None else (os.environ.get(env, "") if env else "")
        self.run_id = run_id
        self.client = httpx.Client(timeout=settings.timeout_s, transport=transport)

    def _request(self, method: str, path: str, *, json: Any = None, content: bytes | None = None,
                 params: dict[str, Any] | None = None, headers: dict[str, str] | None = None) -> Any:
        url = f"{self.base_url}{path}"
        sent = dict(headers or {})
        if self.api_key:
            sent["Authorization"] = f"Bearer {self.api_key}"
        query = {k: v for k, v in (params or {}).items() if v is not None}
        if self.settings.project_id is not None and method == "PUT":
            query["project_id"] = self.settings.project_id
        attempts = self.settings.max_retries + 1
        cause = ""
        for attempt in range(attempts):
            try:
                response = self.client.request(method, url, json=json, content=content, params=query, headers=sent)
            except httpx.TransportError as exc:
                cause = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code not in RETRIED_STATUSES:
                    if response.status_code >= 400:
                        raise TeacherError(f"teacher service {method} {path}: HTTP {response.status_code}: "
                                           f"{response.text[:500]}")
                    return response.json()
                cause = f"HTTP {response.status_code}"
            if attempt + 1 < attempts:
                time.sleep(min(8.0, 0.5 * 2 ** attempt))  # back off before the retry
        raise TeacherError(f"teacher service unreachable at {url} after {attempts} attempts: {cause}")

    def _with_project(self, body: dict[str, Any]) -> dict[str, Any]:
        if self.settings.project_id is not None:
            body["project_id"] = self.settings.project_id
        return body

    def _chunks(self, n: int) -> list[range]:
        size = self.settings.batch_size
        return [range(i, min(n, i + size)) for i in range(0, n, size)]

    def score(self, inputs: Sequence[ScoreInput], *, top_k: int, temperature: float) -> list[ScoreOutput | None]:
        out: list[ScoreOutput | None] = []
        for chunk in self._chunks(len(inputs)):
            body = self._with_project({"model": self.settings.model, "top_k": top_k, "temperature": temperature,
                                       "items": [{"id": str(i), "context_ids": inputs[i].context_ids,
                                                  "continuation_ids": inputs[i].continuation_ids} for i in chunk]})
            answer = self._request("POST", "/v1/score", json=body)
            by_id = {r["id"]: r for r in answer["results"]}
            for i in chunk:
                result = by_id.get(str(i))
                if result is None or result["status"] != "ok":
                    out.append(None)
                    continue
                top = result.get("top_k") or {}
                out.append(ScoreOutput(logprobs=list(result["logprobs"]), top_ids=top.get("ids", []),
                                       top_logprobs=top.get("logprobs", []), tail_logprobs=top.get("tail_logprobs", [])))
        return out

    def reflect(self, requests: Sequence[HintRequest], settings: AmrSdConfig) -> list[HintResult]:
        out: list[HintResult] = []
        for chunk in self._chunks(len(requests)):
            items = []
            for i in chunk:
                r = requests[i]
                item: dict[str, Any] = {"id": r.id, "question": r.question, "response": r.response,
                                        "signal": {"kind": r.signal_kind, "text": r.signal_text}}
                if r.answer:
                    item["answer"] = r.answer
                if r.reference:
                    item["reference"] = r.reference
                items.append(item)
            body = self._with_project({"items": items, "max_hint_chars": settings.max_hint_chars,
                                       "max_attempts": settings.max_attempts, "max_tokens": settings.max_hint_tokens})
            if self.settings.reflect_model is not None:
                body["model"] = self.settings.reflect_model
            answer = self._request("POST", "/v1/reflect", json=body)
            for result in answer["results"]:
                out.append(HintResult(id=result["id"], status=result["status"], hint=result.get("hint"),
                                      rejections=[r["reason"] for r in result.get("rejections", [])]))
        return out

    def modulate(self, items: Sequence[ModulateItem], settings: AmrSdConfig, alpha: float) -> list[ModulateResult]:
        """``/v1/modulate`` with α already annealed here (``schedule: constant``, α₀ = α)."""
        out: list[ModulateResult] = []
        params = {"alpha0": alpha, "tau_plus": settings.tau_plus, "tau_minus": settings.tau_minus,
                  "schedule": "constant", "max_weight": settings.max_weight}
        for chunk in self._chunks(len(items)):
            body = {"params": params, "items": [
                {"id": str(i), "advantage": items[i].advantage, "teacher_logprobs": items[i].teacher_logprobs,
                 "student_logprobs": items[i].student_logprobs} for i in chunk]}
            answer = self._request("POST", "/v1/modulate", json=body)
            for result in answer["results"]:
                if result["status"] != "ok":
                    out.append(ModulateResult(result["status"]))
                else:
                    out.append(ModulateResult("ok", result["advantages"], result["weights"], result["cig"]))
        return out

    def examiner_tasks(self, seeds: Sequence[ExaminerSeed]) -> list[ExaminerTask | None]:
        out: list[ExaminerTask | None] = []
        for chunk in self._chunks(len(seeds)):
            items = [{"id": seeds[i].id, "hops": seeds[i].hops, "evidence": list(seeds[i].evidence),
                      "seed": seeds[i].seed, **({"topic": seeds[i].topic} if seeds[i].topic else {})} for i in chunk]
            body = self._with_project({"items": items})
            if self.settings.reflect_model is not None:
                body["model"] = self.settings.reflect_model
            answer = self._request("POST", "/v1/examiner/tasks", json=body)
            for result in answer["results"]:
                task = result.get("task")
                if result["status"] != "ok" or not result.get("format_ok") or not task:
                    out.append(None)
                    continue
                out.append(ExaminerTask(task["question"], task["answer"], task["privileged_context"], int(task["hops"])))
        return out

    def examiner_rewards(self, items: Sequence[ExaminerItem]) -> ExaminerGrades:
        grades = ExaminerGrades([], [], {})
        for chunk in self._chunks(len(items)):
            body = {"items": [{"id": items[i].id, "hops": items[i].hops, "passed": items[i].passed,
                               "samples": items[i].samples} for i in chunk]}
            answer = self._request("POST", "/v1/examiner/rewards", json=body)
            for result in answer["results"]:
                grades.rewards.append(result.get("reward"))
                grades.advantages.append(result.get("advantage"))
            for bucket, n in answer["difficulty_histogram"].items():
                grades.histogram[bucket] = grades.histogram.get(bucket, 0) + int(n)
        return grades

    def sync(self, policy: Any, step: int, *, initial: bool = False) -> None:
        """Push θ: replaced at the start and, for ``weights: policy``, after every step; mixed with τ
        (``weights: ema``) after every step. The key ``sd-<run>-step-<n>`` makes a retry apply once."""
        from safetensors.torch import save

        tau = None if initial or self.settings.weights == "policy" else self.settings.tau
        key = f"sd-{self.run_id}-{'init' if initial else f'step-{step}'}"
        self._request("PUT", f"/v1/teacher-models/{self.settings.model}/weights", content=save(policy_parameters(policy)),
                      params={"tau": tau}, headers={"Idempotency-Key": key, "content-type": "application/octet-stream"})

    def close(self) -> None:
        self.client.close()
