"""The π-Play examiner: task generation with the question-construction path, and its difficulty reward.

Generation: the examiner (an LLM backend) is asked to build a task backwards — pick an answer o*,
chain ``hops`` pieces of evidence from it, and only then write the question q — and to return JSON
``{"answer", "path": [{"hop", "evidence", "step"}], "question"}``. The path c is the privileged
context the teacher sees. A generation is *well-formed* (``format_ok``, what r_format rewards) when
that JSON parses, the path has exactly ``hops`` steps numbered 1…hops, the question ends with "?"
and does not give the answer away (the hint leak filter). A malformed generation is still status
``ok`` (the examiner did answer): ``format_ok`` false, ``format_problem`` says why, ``text`` keeps it.

Search: π-Play's examiner searches while it builds. Here the search results are the caller's
``evidence`` (the trainer's multi-turn engine runs the retrieval tool); the service builds from them.

Reward: r_d = 1(0<k<n)·(n−k)/(n−1) + r_format per task, then advantages normalised within groups of
tasks with the same hop count (:mod:`services.teacher.formulas`).
"""

from __future__ import annotations

import asyncio

from pydantic import BaseModel, Field

from services.common.llm.structured import parse_structured
from services.common.llm.types import ChatBackend, LLMBackendError
from services.teacher import formulas
from services.teacher.leak_filter import check_hint
from services.teacher.schemas import (
    ExaminerRewardResult,
    ExaminerRewardsRequest,
    ExaminerRewardsResponse,
    ExaminerSeed,
    ExaminerTask,
    ExaminerTaskResult,
    ExaminerTasksRequest,
    ExaminerTasksResponse,
    PathStep,
)

EXAMINER_SYSTEM = (
    "You are the examiner of a self-play game. Build one question backwards: first choose the answer, then "
    "chain the evidence that leads to it one hop at a time, and only then write the question that needs every "
    "hop to be answered. Never put the answer in the question. Reply with JSON only: "
    '{"answer": "...", "path": [{"hop": 1, "evidence": "...", "step": "..."}], "question": "...?"}')


class _PathStepOut(BaseModel):
    hop: int
    evidence: str
    step: str


class _TaskOut(BaseModel):
    answer: str = Field(min_length=1)
    path: list[_PathStepOut]
    question: str = Field(min_length=1)


def examiner_prompt(seed: ExaminerSeed) -> str:
    lines = [f"Hops: {seed.hops}"]
    if seed.topic:
        lines.append(f"Topic: {seed.topic}")
    if seed.evidence:
        lines.append("Evidence you may build from:")
        lines.extend(f"[{i + 1}] {doc}" for i, doc in enumerate(seed.evidence))
    lines.append(f"Write a {seed.hops}-hop question: the path must have exactly {seed.hops} steps.")
    return "\n".join(lines)


def privileged_context(task: _TaskOut) -> str:
    """c as the teacher reads it: the path from evidence to question, then the answer it leads to."""
    steps = "\n".join(f"Hop {s.hop}: {s.step} (evidence: {s.evidence})" for s in task.path)
    return f"Question construction path:\n{steps}\nIt leads to the answer: {task.answer}"


def check_task(task: _TaskOut, hops: int) -> str | None:
    """Why a parsed generation is malformed, or None when it is well-formed."""
    if len(task.path) != hops:
        return f"path has {len(task.path)} steps; {hops} were asked for"
    if [s.hop for s in task.path] != list(range(1, hops + 1)):
        return "path hops must be numbered 1, 2, … in order"
    if any(not s.step.strip() or not s.evidence.strip() for s in task.path):
        return "every path step needs its evidence and step text"
    if not task.question.strip().endswith("?"):
        return "the question must end with '?'"
    verdict = check_hint(task.question, [task.answer], max_chars=10_000)
    if not verdict.ok:
        return f"the question gives the answer away ({verdict.reason})"
    return None


async def generate_one(backend: ChatBackend, seed: ExaminerSeed, request: ExaminerTasksRequest) -> ExaminerTaskResult:
    messages = [{"role": "system", "content": EXAMINER_SYSTEM}, {"role": "user", "content": examiner_prompt(seed)}]
    opts: dict[str, object] = {"temperature": request.temperature, "max_tokens": request.max_tokens}
    if seed.seed is not None:
        opts["seed"] = seed.seed
    try:
        reply = await asyncio.wait_for(backend.chat(messages, **opts), request.timeout_s)
    except TimeoutError:
        return ExaminerTaskResult(id=seed.id, status="timeout", error=f"no answer within {request.timeout_s:g}s")
    except LLMBackendError as exc:
        status = "timeout" if exc.kind == "timeout" else "error"
        return ExaminerTaskResult(id=seed.id, status=status, error=str(exc))
    parsed = parse_structured(reply.text, _TaskOut, schema_name="ExaminerTask")
    if parsed.value is None:
        return ExaminerTaskResult(id=seed.id, status="ok", format_ok=False, format_problem=parsed.error,
                                  text=reply.text)
    problem = check_task(parsed.value, seed.hops)
    task = parsed.value
    out = ExaminerTask(question=task.question.strip(), answer=task.answer.strip(), hops=len(task.path),
                       path=[PathStep(hop=s.hop, evidence=s.evidence, step=s.step) for s in task.path],
                       privileged_context=privileged_context(task))
    return ExaminerTaskResult(id=seed.id, status="ok", task=out, format_ok=problem is None, format_problem=problem,
                              text=reply.text)


async def generate_tasks(backend: ChatBackend, request: ExaminerTasksRequest) -> ExaminerTasksResponse:
    results = list(await asyncio.gather(*(generate_one(backend, seed, request) for seed in request.items)))
    answered = [r for r in results if r.status == "ok"]
    rate = sum(r.format_ok for r in answered) / len(answered) if answered else 0.0
    return ExaminerTasksResponse(results=results, format_ok_rate=rate)


def rewards(request: ExaminerRewardsRequest) -> ExaminerRewardsResponse:
    """Difficulty rewards per task and hop-grouped advantages over the valid ones."""
    results: list[ExaminerRewardResult] = []
    valid: list[tuple[int, float, int]] = []  # (result index, reward, hops)
    histogram: dict[str, int] = {}
    for item in request.items:
        try:
            reward = formulas.difficulty_reward(item.passed, item.samples, item.format_reward)
        except ValueError as exc:
            results.append(ExaminerRewardResult(id=item.id, status="invalid_input", error=str(exc)))
            continue
        if reward != reward or abs(reward) == float("inf"):
            results.append(ExaminerRewardResult(id=item.id, status="invalid_input",
                                                error="format_reward: must be a finite number"))
            continue
        bucket = formulas.difficulty_bucket(item.passed, item.samples)
        histogram[bucket] = histogram.get(bucket, 0) + 1
        valid.append((len(results), reward, item.hops))
        results.append(ExaminerRewardResult(id=item.id, status="ok", reward=reward))
    advantages = formulas.hop_grouped_normalise([r for _, r, _ in valid], [h for _, _, h in valid], request.eps)
    for (index, _, _), advantage in zip(valid, advantages, strict=True):
        results[index].advantage = advantage
    return ExaminerRewardsResponse(results=results, difficulty_histogram=histogram)




