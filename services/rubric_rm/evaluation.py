"""Reward-model evaluation harness: RewardBench, RM-Bench and RMB metrics, and a runner for any judge.

A judge is an async callable ``judge(prompt, response_a, response_b) -> "A" | "B" | "tie" | None``
(``None`` = the judge's output could not be parsed). The runner shows each pair with the chosen
answer as A, or — with ``swap=True`` — in a position drawn per item from a fixed seed, and records
one :class:`PairOutcome` per comparison. The metrics are pure functions of the outcomes:

- ``acc_all`` = correct / all (unparseable counts as wrong), ``acc_parseable`` = correct / parseable,
  ``parse_rate`` = parseable / all. A tie is parseable but not correct (a reward model that cannot
  separate the pair has not ranked it), matching RM-Bench's strict ``chosen > rejected``.
- RewardBench: accuracy per subset; each section (chat, chat_hard, safety, reasoning) is the
  example-count-weighted mean of its subsets, with the counts RewardBench itself uses (its
  ``rewardbench/constants.py``: ``EXAMPLE_COUNTS``, in which math-prm is up-weighted to 984 to equal
  the code subsets); the overall score is the unweighted mean of the sections present. Items
  labelled directly with a section name get the plain accuracy of that section.
- RM-Bench: per item a 3×3 matrix (rows: chosen style, columns: rejected style, both ordered
  concise, detailed plain, detailed markdown); the matrix is averaged over items; hard = mean of
  the upper triangle (chosen less styled than rejected), normal = mean of the diagonal, easy = mean
  of the lower triangle, avg = mean of the three (the definition in the RM-Bench README).
- RMB: per-category accuracy, overall = category-size-weighted mean (and the macro mean).
- Verbosity: accuracy split by whether the chosen answer is the longer one (characters).
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from services.common.llm.types import ChatBackend
from services.rubric_rm.schemas import EvalMetrics, Side, Verdict

JudgeDecision = Verdict | None
PairJudge = Callable[[str, str, str], Awaitable[JudgeDecision]]
EvalFormat = Literal["rewardbench", "rmbench", "rmb"]

# From allenai/reward-bench, rewardbench/constants.py (EXAMPLE_COUNTS and SUBSET_MAPPING).
REWARDBENCH_EXAMPLE_COUNTS: dict[str, int] = {
    "alpacaeval-easy": 100, "alpacaeval-length": 95, "alpacaeval-hard": 95, "mt-bench-easy": 28,
    "mt-bench-med": 40, "mt-bench-hard": 37, "math-prm": 984, "refusals-dangerous": 100,
    "refusals-offensive": 100, "llmbar-natural": 100, "llmbar-adver-neighbor": 134, "llmbar-adver-GPTInst": 92,
    "llmbar-adver-GPTOut": 47, "llmbar-adver-manual": 46, "xstest-should-refuse": 250,
    "xstest-should-respond": 154, "donotanswer": 136, "hep-cpp": 164, "hep-go": 164, "hep-java": 164,
    "hep-js": 164, "hep-python": 164, "hep-rust": 164,
}
REWARDBENCH_SECTIONS: dict[str, tuple[str, ...]] = {
    "chat": ("alpacaeval-easy", "alpacaeval-length", "alpacaeval-hard", "mt-bench-easy", "mt-bench-med"),
    "chat_hard": ("mt-bench-hard", "llmbar-natural", "llmbar-adver-neighbor", "llmbar-adver-GPTInst",
                  "llmbar-adver-GPTOut", "llmbar-adver-manual"),
    "safety": ("refusals-dangerous", "refusals-offensive", "xstest-should-refuse", "xstest-should-respond",
               "donotanswer"),
    "reasoning": ("math-prm", "hep-cpp", "hep-go", "hep-java", "hep-js", "hep-python", "hep-rust"),
}
_SUBSET_SECTION = {subset: section for section, subsets in REWARDBENCH_SECTIONS.items() for subset in subsets}
RMBENCH_STYLES = ("concise", "detailed_plain", "detailed_markdown")


# ---------------------------------------------------------------------------------------------
# Items and outcomes
# ---------------------------------------------------------------------------------------------
def _field(row: Mapping[str, Any], names: Sequence[str], where: str) -> Any:
    for name in names:
        if name in row and row[name] is not None:
            return row[name]
    raise ValueError(f"{where}: missing field {names[0]!r}")


@dataclass(frozen=True)
class PairItem:
    """One preference comparison of a benchmark (``category`` = RewardBench subset, RMB category...)."""

    id: str
    prompt: str
    chosen: str
    rejected: str
    category: str = "all"

    @classmethod
    def from_row(cls, row: Mapping[str, Any], index: int = 0) -> PairItem:
        where = f"item {index}"
        return cls(id=str(row.get("id", index)), prompt=str(_field(row, ("prompt", "instruction"), where)),
                   chosen=str(_field(row, ("chosen",), where)), rejected=str(_field(row, ("rejected",), where)),
                   category=str(row.get("category") or row.get("subset") or row.get("domain") or "all"))


@dataclass(frozen=True)
class RMBenchItem:
    """One RM-Bench prompt: three chosen and three rejected answers in RMBENCH_STYLES order."""

    id: str
    prompt: str
    chosen: tuple[str, str, str]
    rejected: tuple[str, str, str]
    domain: str = "all"

    @classmethod
    def from_row(cls, row: Mapping[str, Any], index: int = 0) -> RMBenchItem:
        where = f"item {index}"
        chosen, rejected = _field(row, ("chosen",), where), _field(row, ("rejected",), where)
        for name, value in (("chosen", chosen), ("rejected", rejected)):
            if not isinstance(value, list) or len(value) != 3:
                raise ValueError(f"{where}.{name}: expected a list of 3 style variants")
        domain = str(row.get("domain") or "all")
        # RM-Bench reports safety-refuse and safety-response together as safety.
        domain = "safety" if domain.startswith("safety") else domain
        return cls(id=str(row.get("id", index)), prompt=str(_field(row, ("prompt",), where)),
                   chosen=tuple(map(str, chosen)), rejected=tuple(map(str, rejected)),  # type: ignore[arg-type]
                   domain=domain)


@dataclass(frozen=True)
class PairOutcome:
    """The judge's decision on one comparison, with where the chosen answer was shown."""

    id: str
    category: str
    decision: JudgeDecision
    chosen_position: Side
    chosen_chars: int
    rejected_chars: int
    error: str | None = None

    @property
    def parseable(self) -> bool:
        return self.decision is not None

    @property
    def correct(self) -> bool:
        return self.decision == self.chosen_position

    @property
    def length_relation(self) -> Literal["chosen_longer", "chosen_shorter", "equal_length"]:
        if self.chosen_chars > self.rejected_chars:
            return "chosen_longer"
        return "chosen_shorter" if self.chosen_chars < self.rejected_chars else "equal_length"


@dataclass(frozen=True)
class RMBenchOutcome:
    """``cells[i][j]``: chosen style i against rejected style j."""

    id: str
    domain: str
    cells: tuple[tuple[PairOutcome, ...], ...]


# ---------------------------------------------------------------------------------------------
# Metrics (pure)
# ---------------------------------------------------------------------------------------------
def accuracy_metrics(outcomes: Iterable[PairOutcome]) -> EvalMetrics:
    """acc_all = correct/n, acc_parseable = correct/parseable, parse_rate = parseable/n (None when n = 0)."""
    items = list(outcomes)
    n = len(items)
    parseable = sum(o.parseable for o in items)
    correct = sum(o.correct for o in items)
    return EvalMetrics(n=n, n_parseable=parseable, n_correct=correct,
                       acc_all=correct / n if n else None,
                       acc_parseable=correct / parseable if parseable else None,
                       parse_rate=parseable / n if n else None)


def per_category(outcomes: Iterable[PairOutcome]) -> dict[str, EvalMetrics]:
    groups: dict[str, list[PairOutcome]] = defaultdict(list)
    for outcome in outcomes:
        groups[outcome.category].append(outcome)
    return {category: accuracy_metrics(group) for category, group in sorted(groups.items())}


def _section_name(category: str) -> str:
    return category.strip().lower().replace("-", "_").replace(" ", "_")


def rewardbench_scores(outcomes: Sequence[PairOutcome]) -> dict[str, Any]:
    """Per-subset acc_all, per-section weighted scores, overall = mean of sections (see module doc)."""
    by_category = per_category(outcomes)
    sections: dict[str, list[tuple[str, EvalMetrics]]] = defaultdict(list)
    for category, metrics in by_category.items():
        sections[_SUBSET_SECTION.get(category, _section_name(category))].append((category, metrics))
    section_scores: dict[str, float] = {}
    weighting: dict[str, str] = {}
    for section, members in sorted(sections.items()):
        if all(category in REWARDBENCH_EXAMPLE_COUNTS for category, _ in members):
            total = sum(REWARDBENCH_EXAMPLE_COUNTS[c] for c, _ in members)
            section_scores[section] = sum((m.acc_all or 0.0) * REWARDBENCH_EXAMPLE_COUNTS[c]
                                          for c, m in members) / total
            weighting[section] = "rewardbench_example_counts"
        else:
            section_scores[section] = accuracy_metrics(o for o in outcomes
                                                       if any(o.category == c for c, _ in members)).acc_all or 0.0
            weighting[section] = "plain"
    score = float(np.mean(list(section_scores.values()))) if section_scores else None
    return {"subsets": {c: m.acc_all for c, m in by_category.items()}, "sections": section_scores,
            "section_weighting": weighting, "score": score}


def rmb_scores(outcomes: Sequence[PairOutcome]) -> dict[str, Any]:
    """RMB pairwise: per-category acc_all; overall weighted by category size, and the macro mean."""
    by_category = per_category(outcomes)
    total = sum(m.n for m in by_category.values())
    weighted = sum((m.acc_all or 0.0) * m.n for m in by_category.values()) / total if total else None
    macro = float(np.mean([m.acc_all or 0.0 for m in by_category.values()])) if by_category else None
    return {"categories": {c: m.acc_all for c, m in by_category.items()}, "weighted": weighted, "macro": macro}


def length_bias_split(outcomes: Sequence[PairOutcome]) -> dict[str, Any]:
    """Accuracy when the chosen answer is longer / shorter / equal in length.

    ``verbosity_gap`` = acc(chosen longer) − acc(chosen shorter): a positive gap means the judge
    rewards length. ``length_balanced_acc`` = mean of the two accuracies.
    """
    groups: dict[str, list[PairOutcome]] = {"chosen_longer": [], "chosen_shorter": [], "equal_length": []}
    for outcome in outcomes:
        groups[outcome.length_relation].append(outcome)
    metrics = {name: accuracy_metrics(group) for name, group in groups.items()}
    longer, shorter = metrics["chosen_longer"].acc_all, metrics["chosen_shorter"].acc_all
    both = longer is not None and shorter is not None
    return {**{name: m.model_dump() for name, m in metrics.items()},
            "verbosity_gap": longer - shorter if both else None,  # type: ignore[operator]
            "length_balanced_acc": (longer + shorter) / 2 if both else None}  # type: ignore[operator]


def rmbench_summary(matrix: np.ndarray) -> dict[str, float]:
    """hard = mean(upper triangle), normal = mean(diagonal), easy = mean(lower triangle), avg = their mean."""
    if matrix.shape[0] != matrix.shape[1] or matrix.shape[0] < 2:
        raise ValueError(f"matrix must be square and at least 2×2, got {matrix.shape}")
    k = matrix.shape[0]
    hard = float(matrix[np.triu_indices(k, 1)].mean())
    normal = float(np.diag(matrix).mean())
    easy = float(matrix[np.tril_indices(k, -1)].mean())
    return {"hard": hard, "normal": normal, "easy": easy, "avg": (hard + normal + easy) / 3}


def rmbench_matrix(results: Sequence[RMBenchOutcome]) -> np.ndarray:
    """Mean over items of the correct(1)/wrong(0) matrix; unparseable cells count as wrong."""
    if not results:
        raise ValueError("no RM-Bench results")
    stack = np.array([[[1.0 if cell.correct else 0.0 for cell in row] for row in r.cells] for r in results])
    mean: np.ndarray = stack.mean(axis=0)
    return mean


def rmbench_scores(results: Sequence[RMBenchOutcome]) -> dict[str, Any]:
    """RM-Bench hard/normal/easy/avg overall and per domain, with the matrix and parse rate."""
    matrix = rmbench_matrix(results)
    cells = [cell for r in results for row in r.cells for cell in row]
    by_domain: dict[str, list[RMBenchOutcome]] = defaultdict(list)
    for result in results:
        by_domain[result.domain].append(result)
    return {**rmbench_summary(matrix), "matrix": matrix.tolist(),
            "parse_rate": accuracy_metrics(cells).parse_rate,
            "domains": {d: rmbench_summary(rmbench_matrix(rs)) for d, rs in sorted(by_domain.items())}}


# ---------------------------------------------------------------------------------------------
# Runner
# ---------------------------------------------------------------------------------------------
def chosen_position_for(key: str, *, swap: bool, seed: int) -> Side:
    """Where the chosen answer is shown: always A without swap; a seeded coin per key with swap."""
    if not swap:
        return "A"
    return "B" if random.Random(f"{seed}:{key}").random() < 0.5 else "A"


async def _judge_comparison(judge: PairJudge, limit: asyncio.Semaphore, item_id: str, category: str, prompt: str,
                            chosen: str, rejected: str, position: Side) -> PairOutcome:
    a, b = (chosen, rejected) if position == "A" else (rejected, chosen)
    decision: JudgeDecision = None
    error = None
    async with limit:
        try:
            decision = await judge(prompt, a, b)
        except Exception as exc:  # a failing judge is an unparseable comparison, recorded, not a crash
            error = f"{type(exc).__name__}: {exc}"
    if decision not in ("A", "B", "tie", None):
        error, decision = f"judge returned {decision!r}, expected 'A', 'B', 'tie' or None", None
    return PairOutcome(id=item_id, category=category, decision=decision, chosen_position=position,
                       chosen_chars=len(chosen), rejected_chars=len(rejected), error=error)


async def run_pairwise_eval(items: Sequence[PairItem], judge: PairJudge, *, swap: bool = False, seed: int = 0,
                            max_concurrency: int = 8) -> list[PairOutcome]:
    """Judge every item once; outcomes in item order."""
    limit = asyncio.Semaphore(max_concurrency)
    return list(await asyncio.gather(*(
        _judge_comparison(judge, limit, it.id, it.category, it.prompt, it.chosen, it.rejected,
                          chosen_position_for(it.id, swap=swap, seed=seed)) for it in items)))


async def run_rmbench_eval(items: Sequence[RMBenchItem], judge: PairJudge, *, swap: bool = False, seed: int = 0,
                           max_concurrency: int = 8) -> list[RMBenchOutcome]:
    """Judge the 9 (chosen style × rejected style) comparisons of every item."""
    limit = asyncio.Semaphore(max_concurrency)

    async def one(item: RMBenchItem) -> RMBenchOutcome:
        jobs = [_judge_comparison(judge, limit, item.id, item.domain, item.prompt, item.chosen[i], item.rejected[j],
                                  chosen_position_for(f"{item.id}:{i}:{j}", swap=swap, seed=seed))
                for i in range(3) for j in range(3)]
        flat = await asyncio.gather(*jobs)
        return RMBenchOutcome(id=item.id, domain=item.domain, cells=tuple(tuple(flat[3 * i: 3 * i + 3])
                                                                         for i in range(3)))

    return list(await asyncio.gather(*(one(item) for item in items)))


def load_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{number}: not valid JSON: {exc.msg}") from exc
    return rows


async def evaluate(fmt: EvalFormat, rows: Sequence[Mapping[str, Any]], judge: PairJudge, *, swap: bool = False,
                   seed: int = 0, max_concurrency: int = 8) -> dict[str, Any]:
    """Run ``judge`` over benchmark ``rows`` of format ``fmt`` and return the full report."""
    if fmt == "rmbench":
        rm_items = [RMBenchItem.from_row(row, i) for i, row in enumerate(rows)]
        results = await run_rmbench_eval(rm_items, judge, swap=swap, seed=seed, max_concurrency=max_concurrency)
        cells = [cell for r in results for row in r.cells for cell in row]
        return {"format": fmt, "swap": swap, "seed": seed, "overall": accuracy_metrics(cells).model_dump(),
                "rmbench": rmbench_scores(results), "length": length_bias_split(cells)}
    if fmt not in ("rewardbench", "rmb"):
        raise ValueError(f"format: expected 'rewardbench', 'rmbench' or 'rmb', got {fmt!r}")
    items = [PairItem.from_row(row, i) for i, row in enumerate(rows)]
    outcomes = await run_pairwise_eval(items, judge, swap=swap, seed=seed, max_concurrency=max_concurrency)
    report: dict[str, Any] = {
        "format": fmt, "swap": swap, "seed": seed, "overall": accuracy_metrics(outcomes).model_dump(),
        "categories": {c: m.model_dump() for c, m in per_category(outcomes).items()},
        "length": length_bias_split(outcomes)}
    report[fmt] = rewardbench_scores(outcomes) if fmt == "rewardbench" else rmb_scores(outcomes)
    return report


def make_cdrrm_judge(judge_backend: ChatBackend, *, generator: ChatBackend | None = None,
                     diagnoser: ChatBackend | None = None, seed: int = 0) -> PairJudge:
    """A :data:`PairJudge` running the whole CDRRM path: rubric for the pair, then both-order judgment."""
    from services.rubric_rm.judging import judge_pairwise
    from services.rubric_rm.pipeline import generate_rubric

    async def judge(prompt: str, response_a: str, response_b: str) -> JudgeDecision:
        rubric = await generate_rubric(prompt, response_a, response_b, generator=generator,
                                       diagnoser=diagnoser or (judge_backend if generator is None else None),
                                       seed=seed)
        if rubric.rubric is None:
            return None
        verdict = await judge_pairwise(judge_backend, prompt, response_a, response_b, rubric.rubric)
        return verdict.verdict if verdict.status == "ok" else None

    return judge
