"""Reward-model evaluation harness: RewardBench, RM-Bench and RMB metrics, and a runner for any judge.

A judge is an async callable ``judge(prompt, response_a, response_b) -> "A" | "B" | "tie" | None``
that looks at ONE presentation order (``None`` = its output could not be parsed). For every
comparison the runner draws where the chosen answer goes first (always A, or — with ``swap=True``
— a coin seeded by ``seed`` and the comparison's key), calls the judge in that order, then once more
with the two answers exchanged. One :class:`PairOutcome` keeps both calls, so every figure is
reported under two protocols from the same judge calls:

- ``both_orders`` (ours): the verdict is the common answer of the two orders and a tie when they
  disagree, so a judge that always names the first position never wins a comparison.
- ``single_order`` (the CDRRM authors' protocol, ldcan/CDRRM ``eval/evaluate.py``: one call per pair,
  the chosen answer as A unless ``--shuffle_pairs`` draws a seeded coin): only the first call counts.
  An always-"A" judge scores 1.000 here without a swap and 0.000 under both orders; a judge right
  on 80% of calls, independently, scores 0.80 single-order and 0.8² = 0.64 under both orders.

The metrics are pure functions of the outcomes (a protocol is a view of the outcomes, see
:func:`protocol_view`):

- ``acc_all`` = correct / all (unparseable counts as wrong), ``acc_parseable`` = correct / parseable,
  ``parse_rate`` = parseable / all. A tie is parseable but not correct (a reward model that cannot
  separate the pair has not ranked it), matching RM-Bench's strict ``chosen > rejected``.
- RewardBench: accuracy per subset (names matched case-insensitively to the official spelling);
  each section (chat, chat_hard, safety, reasoning) is, officially, the mean of its subsets weighted
  by RewardBench's own example counts (its ``rewardbench/constants.py`` ``EXAMPLE_COUNTS``, in which
  math-prm is up-weighted to 984 to equal the code subsets); ``sections_plain`` is the plain
  accuracy of all items of the section (what the CDRRM paper reports). Either score is the
  unweighted mean of the sections present. Items labelled directly with a section name get the
  plain accuracy in both; unknown subset names are reported under ``unmapped`` and enter no score.
- RM-Bench: per item a 3×3 matrix (rows: chosen style, columns: rejected style, both ordered
  concise, detailed plain, detailed markdown); the matrix is averaged over items; hard = mean of
  the upper triangle (chosen less styled than rejected), normal = mean of the diagonal, easy = mean
  of the lower triangle, avg = mean of the three (the definition in the RM-Bench README).
- RMB: pairwise accuracy per category, overall = category-size-weighted mean (and the macro mean);
  best-of-N: an item is right only when its best answer beats every loser (a tie or an unparsed
  comparison fails it), the same per-category / weighted / macro figures over items. Native RMB
  files (``pair_uid``/``conversation_input``/``chosen``/``reject`` and
  ``bon_uid``/``bon_best``/``loser_list``, with ``category_path``) are read as they are.
- Verbosity: accuracy split by whether the chosen answer is the longer one (characters).
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from services.common.llm.types import ChatBackend
from services.rubric_rm.schemas import EvalMetrics, Rubric, Side, Verdict

JudgeDecision = Verdict | None
PairJudge = Callable[[str, str, str], Awaitable[JudgeDecision]]
EvalFormat = Literal["rewardbench", "rmbench", "rmb"]
EvalProtocol = Literal["both_orders", "single_order"]
PROTOCOLS: tuple[EvalProtocol, ...] = ("both_orders", "single_order")

# Facts from allenai/reward-bench, rewardbench/constants.py (EXAMPLE_COUNTS, SUBSET_MAPPING); our table.
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
# Lower-cased subset name → (official spelling, section); exports often lower-case "llmbar-adver-GPTInst".
_SUBSETS: dict[str, tuple[str, str]] = {subset.lower(): (subset, section)
                                        for section, subsets in REWARDBENCH_SECTIONS.items() for subset in subsets}
RMBENCH_STYLES = ("concise", "detailed_plain", "detailed_markdown")


# ---------------------------------------------------------------------------------------------
# Items and outcomes
# ---------------------------------------------------------------------------------------------
def _field(row: Mapping[str, Any], names: Sequence[str], where: str) -> Any:
    for name in names:
        if name in row and row[name] is not None:
            return row[name]
    raise ValueError(f"{where}: missing field {names[0]!r}")


def _answer(row: Mapping[str, Any], name: str, where: str) -> str:
    """RMB keeps an answer as ``{"llm_name": ..., "answer": ...}``."""
    value = _field(row, (name,), where)
    if not isinstance(value, Mapping) or not isinstance(value.get("answer"), str):
        raise ValueError(f"{where}.{name}: expected an object with a string 'answer'")
    return str(value["answer"])


def render_conversation(turns: Any, where: str) -> str:
    """RMB ``conversation_input`` as one prompt: a lone user turn is its content; a longer dialogue
    is rendered ``Role: content`` per turn, blank-line separated (the answers reply to the last turn)."""
    if not isinstance(turns, list) or not turns:
        raise ValueError(f"{where}.conversation_input: expected a non-empty list of turns")
    for number, turn in enumerate(turns):
        if not isinstance(turn, Mapping) or not isinstance(turn.get("content"), str):
            raise ValueError(f"{where}.conversation_input[{number}]: expected an object with a string 'content'")
    if len(turns) == 1:
        return str(turns[0]["content"])
    return "\n\n".join(f"{str(t.get('role') or 'user').capitalize()}: {t['content']}" for t in turns)


def rmb_category(row: Mapping[str, Any], default: str = "all") -> str:
    """``category_path`` without its set prefix: "Pairwise_set/Harmlessness/S10" → "Harmlessness/S10"."""
    path = str(row.get("category_path") or row.get("category") or default)
    head, _, rest = path.partition("/")
    return rest if head in ("Pairwise_set", "BoN_set") and rest else path


def is_bon_row(row: Mapping[str, Any]) -> bool:
    return "bon_best" in row or "loser_list" in row


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
        if "conversation_input" in row:  # a native RMB pairwise record
            return cls(id=str(row.get("pair_uid", index)),
                       prompt=render_conversation(row["conversation_input"], where),
                       chosen=_answer(row, "chosen", where), rejected=_answer(row, "reject", where),
                       category=rmb_category(row))
        return cls(id=str(row.get("id", index)), prompt=str(_field(row, ("prompt", "instruction"), where)),
                   chosen=str(_field(row, ("chosen",), where)), rejected=str(_field(row, ("rejected",), where)),
                   category=str(row.get("category") or row.get("subset") or row.get("domain") or "all"))


@dataclass(frozen=True)
class BoNItem:
    """One RMB best-of-N record: the best answer and the answers it must beat."""

    id: str
    prompt: str
    best: str
    losers: tuple[str, ...]
    category: str = "all"

    @classmethod
    def from_row(cls, row: Mapping[str, Any], index: int = 0) -> BoNItem:
        where = f"item {index}"
        losers = _field(row, ("loser_list",), where)
        if not isinstance(losers, list) or not losers:
            raise ValueError(f"{where}.loser_list: expected a non-empty list of answers")
        return cls(id=str(row.get("bon_uid", index)), prompt=render_conversation(
            _field(row, ("conversation_input",), where), where), best=_answer(row, "bon_best", where),
            losers=tuple(_answer({"loser": loser}, "loser", f"{where}.loser_list[{k}]")
                         for k, loser in enumerate(losers)), category=rmb_category(row))


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
    """One comparison judged in both orders. ``chosen_position`` is where the chosen answer stood in
    the first call; ``decision`` is the both-orders verdict and ``single_decision`` the first call's
    alone, both in the first call's labels."""

    id: str
    category: str
    decision: JudgeDecision
    chosen_position: Side
    chosen_chars: int
    rejected_chars: int
    error: str | None = None
    single_decision: JudgeDecision = None

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


@dataclass(frozen=True)
class BoNOutcome:
    """An RMB best-of-N item: one comparison of the best answer against each loser."""

    id: str
    category: str
    comparisons: tuple[PairOutcome, ...]


# ---------------------------------------------------------------------------------------------
# Protocols (pure)
# ---------------------------------------------------------------------------------------------
def flip(decision: JudgeDecision) -> JudgeDecision:
    """A verdict given with the answers exchanged, in the original labels: A↔B, tie and None stay."""
    if decision == "A":
        return "B"
    return "A" if decision == "B" else decision


def both_orders_decision(first: JudgeDecision, second: JudgeDecision) -> JudgeDecision:
    """first, second in the same labels: None if either is None; the common verdict if they agree; else tie."""
    if first is None or second is None:
        return None
    return first if first == second else "tie"


def protocol_view(outcomes: Iterable[PairOutcome], protocol: EvalProtocol) -> list[PairOutcome]:
    """The outcomes as one protocol scores them: both_orders as they are; single_order with
    ``decision`` replaced by the first call's."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol: expected 'both_orders' or 'single_order', got {protocol!r}")
    if protocol == "both_orders":
        return list(outcomes)
    return [replace(o, decision=o.single_decision) for o in outcomes]


def _rmbench_view(results: Sequence[RMBenchOutcome], protocol: EvalProtocol) -> list[RMBenchOutcome]:
    return [replace(r, cells=tuple(tuple(protocol_view(row, protocol)) for row in r.cells)) for r in results]


def _bon_view(results: Sequence[BoNOutcome], protocol: EvalProtocol) -> list[BoNOutcome]:
    return [replace(r, comparisons=tuple(protocol_view(r.comparisons, protocol))) for r in results]


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


def rewardbench_place(category: str) -> tuple[str, str | None]:
    """(name, section) of a RewardBench label: an official subset (any case) → its official spelling and
    section; a section name ("Chat Hard", "chat_hard"...) → itself; anything else → (name, None)."""
    known = _SUBSETS.get(category.strip().lower())
    if known is not None:
        return known
    section = category.strip().lower().replace("-", "_").replace(" ", "_")
    return (section, section) if section in REWARDBENCH_SECTIONS else (category, None)


def rewardbench_scores(outcomes: Sequence[PairOutcome]) -> dict[str, Any]:
    """Per-subset acc_all; sections with the official weighting and plain; scores = mean of sections."""
    groups: dict[str, list[PairOutcome]] = defaultdict(list)
    unmapped: dict[str, list[PairOutcome]] = defaultdict(list)
    section_of: dict[str, str] = {}
    for outcome in outcomes:
        name, section = rewardbench_place(outcome.category)
        (groups if section is not None else unmapped)[name].append(outcome)
        if section is not None:
            section_of[name] = section
    sections: dict[str, list[str]] = defaultdict(list)
    for name in sorted(groups):
        sections[section_of[name]].append(name)
    weighted: dict[str, float] = {}
    plain: dict[str, float] = {}
    weighting: dict[str, str] = {}
    for section, names in sorted(sections.items()):
        plain[section] = accuracy_metrics(o for n in names for o in groups[n]).acc_all or 0.0
        if all(n in REWARDBENCH_EXAMPLE_COUNTS for n in names):
            total = sum(REWARDBENCH_EXAMPLE_COUNTS[n] for n in names)
            weighted[section] = sum((accuracy_metrics(groups[n]).acc_all or 0.0) * REWARDBENCH_EXAMPLE_COUNTS[n]
                                    for n in names) / total
            weighting[section] = "rewardbench_example_counts"
        else:
            weighted[section], weighting[section] = plain[section], "plain"
    return {"subsets": {n: accuracy_metrics(g).acc_all for n, g in sorted(groups.items())},
            "sections": weighted, "section_weighting": weighting, "score": _mean(weighted),
            "sections_plain": plain, "score_plain": _mean(plain),
            "unmapped": {n: accuracy_metrics(g).acc_all for n, g in sorted(unmapped.items())}}


def _mean(values: Mapping[str, float]) -> float | None:
    return float(np.mean(list(values.values()))) if values else None


def rmb_scores(outcomes: Sequence[PairOutcome]) -> dict[str, Any]:
    """RMB pairwise: per-category acc_all; overall weighted by category size, the macro mean, and the
    accuracy per goal (the category's first path part, e.g. Helpfulness / Harmlessness)."""
    by_category = per_category(outcomes)
    total = sum(m.n for m in by_category.values())
    weighted = sum((m.acc_all or 0.0) * m.n for m in by_category.values()) / total if total else None
    macro = float(np.mean([m.acc_all or 0.0 for m in by_category.values()])) if by_category else None
    goals = per_category(replace(o, category=o.category.split("/", 1)[0]) for o in outcomes)
    return {"categories": {c: m.acc_all for c, m in by_category.items()}, "weighted": weighted, "macro": macro,
            "goals": {g: m.acc_all for g, m in goals.items()}}


def bon_item_outcome(result: BoNOutcome) -> PairOutcome:
    """The item as one outcome: correct iff every comparison is correct; unparseable iff none is wrong
    but some comparison is unparseable; otherwise wrong."""
    comps = result.comparisons
    if all(c.correct for c in comps):
        decision: JudgeDecision = "A"
    elif any(not c.parseable for c in comps) and all(c.correct or not c.parseable for c in comps):
        decision = None
    else:
        decision = "B"
    return PairOutcome(id=result.id, category=result.category, decision=decision, chosen_position="A",
                       chosen_chars=0, rejected_chars=0, single_decision=decision)


def rmb_bon_scores(results: Sequence[BoNOutcome]) -> dict[str, Any]:
    """RMB best-of-N: item accuracy (best beats every loser) per category, weighted, macro, per goal."""
    items = [bon_item_outcome(r) for r in results]
    return {**rmb_scores(items), "overall": accuracy_metrics(items).model_dump()}


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
    """Where the chosen answer is shown first: always A without swap; a seeded coin per key with swap."""
    if not swap:
        return "A"
    return "B" if random.Random(f"{seed}:{key}").random() < 0.5 else "A"


async def _call(judge: PairJudge, prompt: str, a: str, b: str) -> tuple[JudgeDecision, str | None]:
    try:
        decision = await judge(prompt, a, b)
    except Exception as exc:  # a failing judge is an unparseable call, recorded, not a crash
        return None, f"{type(exc).__name__}: {exc}"
    if decision not in ("A", "B", "tie", None):
        return None, f"judge returned {decision!r}, expected 'A', 'B', 'tie' or None"
    return decision, None


async def _judge_comparison(judge: PairJudge, limit: asyncio.Semaphore, item_id: str, category: str, prompt: str,
                            chosen: str, rejected: str, position: Side) -> PairOutcome:
    a, b = (chosen, rejected) if position == "A" else (rejected, chosen)
    # Both orders under one slot, first order first: a judge may reuse work (the rubric) between them,
    # and a scripted test double sees its calls in a fixed order.
    async with limit:
        first, error_first = await _call(judge, prompt, a, b)
        second, error_second = await _call(judge, prompt, b, a)
    errors = [f"order {n}: {e}" for n, e in (("1", error_first), ("2", error_second)) if e]
    return PairOutcome(id=item_id, category=category, decision=both_orders_decision(first, flip(second)),
                       chosen_position=position, chosen_chars=len(chosen), rejected_chars=len(rejected),
                       error="; ".join(errors) or None, single_decision=first)


async def run_pairwise_eval(items: Sequence[PairItem], judge: PairJudge, *, swap: bool = False, seed: int = 0,
                            max_concurrency: int = 8) -> list[PairOutcome]:
    """Judge every item in both orders; outcomes in item order."""
    limit = asyncio.Semaphore(max_concurrency)
    return list(await asyncio.gather(*(
        _judge_comparison(judge, limit, it.id, it.category, it.prompt, it.chosen, it.rejected,
                          chosen_position_for(it.id, swap=swap, seed=seed)) for it in items)))


async def run_bon_eval(items: Sequence[BoNItem], judge: PairJudge, *, swap: bool = False, seed: int = 0,
                       max_concurrency: int = 8) -> list[BoNOutcome]:
    """Judge the best answer of every RMB best-of-N item against each of its losers."""
    limit = asyncio.Semaphore(max_concurrency)

    async def one(item: BoNItem) -> BoNOutcome:
        comps = await asyncio.gather(*(
            _judge_comparison(judge, limit, f"{item.id}:{k}", item.category, item.prompt, item.best, loser,
                              chosen_position_for(f"{item.id}:{k}", swap=swap, seed=seed))
            for k, loser in enumerate(item.losers)))
        return BoNOutcome(id=item.id, category=item.category, comparisons=tuple(comps))

    return list(await asyncio.gather(*(one(item) for item in items)))


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


def _load_file(path: Path) -> list[Any]:
    text = path.read_text(encoding="utf-8")
    if not text.lstrip().startswith("["):
        return load_jsonl(path)
    try:  # a JSON array, as RMB ships its sets
        rows = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}:{exc.lineno}: not valid JSON: {exc.msg}") from exc
    return list(rows)


def load_rows(path: Path) -> list[Any]:
    """Rows of a JSONL file, a JSON-array file, or every *.json / *.jsonl file under a directory
    (sorted by path, e.g. RMB's ``RMB_dataset/Pairwise_set``)."""
    if not path.is_dir():
        return _load_file(path)
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in (".json", ".jsonl"))
    if not files:
        raise ValueError(f"{path}: no .json or .jsonl files under this directory")
    return [row for file in files for row in _load_file(file)]


def _pairwise_report(fmt: EvalFormat, outcomes: Sequence[PairOutcome], bon: Sequence[BoNOutcome]) -> dict[str, Any]:
    comparisons = [*outcomes, *(c for r in bon for c in r.comparisons)]
    report: dict[str, Any] = {
        "overall": accuracy_metrics(comparisons).model_dump(),
        "categories": {c: m.model_dump() for c, m in per_category(outcomes).items()},
        "length": length_bias_split(comparisons)}
    if fmt == "rewardbench":
        report[fmt] = rewardbench_scores(outcomes)
    else:
        report[fmt] = {**rmb_scores(outcomes), "bon": rmb_bon_scores(bon) if bon else None}
    return report


def _rmbench_report(results: Sequence[RMBenchOutcome]) -> dict[str, Any]:
    cells = [cell for r in results for row in r.cells for cell in row]
    return {"overall": accuracy_metrics(cells).model_dump(), "rmbench": rmbench_scores(results),
            "length": length_bias_split(cells)}


async def evaluate(fmt: EvalFormat, rows: Sequence[Mapping[str, Any]], judge: PairJudge, *, swap: bool = False,
                   seed: int = 0, max_concurrency: int = 8) -> dict[str, Any]:
    """Run ``judge`` over benchmark ``rows`` of format ``fmt`` and return the full report: the
    both-orders figures at the top level and the same figures single-order under ``single_order``."""
    head: dict[str, Any] = {"format": fmt, "swap": swap, "seed": seed, "protocol": "both_orders"}
    if fmt == "rmbench":
        rm_items = [RMBenchItem.from_row(row, i) for i, row in enumerate(rows)]
        results = await run_rmbench_eval(rm_items, judge, swap=swap, seed=seed, max_concurrency=max_concurrency)
        return {**head, **_rmbench_report(results),
                "single_order": _rmbench_report(_rmbench_view(results, "single_order"))}
    if fmt not in ("rewardbench", "rmb"):
        raise ValueError(f"format: expected 'rewardbench', 'rmbench' or 'rmb', got {fmt!r}")
    bon_rows = [(i, row) for i, row in enumerate(rows) if fmt == "rmb" and is_bon_row(row)]
    bon_index = {i for i, _ in bon_rows}
    items = [PairItem.from_row(row, i) for i, row in enumerate(rows) if i not in bon_index]
    bon_items = [BoNItem.from_row(row, i) for i, row in bon_rows]
    outcomes = await run_pairwise_eval(items, judge, swap=swap, seed=seed, max_concurrency=max_concurrency)
    bon = await run_bon_eval(bon_items, judge, swap=swap, seed=seed, max_concurrency=max_concurrency)
    return {**head, **_pairwise_report(fmt, outcomes, bon),
            "single_order": _pairwise_report(fmt, protocol_view(outcomes, "single_order"),
                                             _bon_view(bon, "single_order"))}


def make_cdrrm_judge(judge_backend: ChatBackend, *, generator: ChatBackend | None = None,
                     diagnoser: ChatBackend | None = None, seed: int = 0) -> PairJudge:
    """A one-order :data:`PairJudge` running the CDRRM path: a rubric for the pair, then the judge.

    The rubric is made once per pair (prompt + the two answers, in either order) and reused for the
    other order, so the two orders are judged against the same rubric; a cached rubric is dropped
    after its second use (the harness asks for each order once).
    """
    from services.rubric_rm.judging import judge_one_order
    from services.rubric_rm.pipeline import generate_rubric

    rubrics: dict[tuple[str, frozenset[str]], Rubric | None] = {}

    async def rubric_for(prompt: str, response_a: str, response_b: str) -> Rubric | None:
        key = (prompt, frozenset((response_a, response_b)))
        if key in rubrics:
            return rubrics.pop(key)
        result = await generate_rubric(prompt, response_a, response_b, generator=generator,
                                       diagnoser=diagnoser or (judge_backend if generator is None else None),
                                       seed=seed)
        rubrics[key] = result.rubric
        return result.rubric

    async def judge(prompt: str, response_a: str, response_b: str) -> JudgeDecision:
        rubric = await rubric_for(prompt, response_a, response_b)
        if rubric is None:
            return None
        verdict = await judge_one_order(judge_backend, prompt, response_a, response_b, rubric, "AB")
        return verdict.winner if verdict.status == "ok" else None

    return judge
