"""RM evaluation harness on small fixtures; every expected number is computed by hand in comments."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import numpy as np
import pytest

from services.rubric_rm.evaluation import (
    JudgeDecision,
    PairItem,
    PairOutcome,
    accuracy_metrics,
    evaluate,
    load_jsonl,
    protocol_view,
    rewardbench_scores,
    rmbench_summary,
    run_pairwise_eval,
)

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "rm_eval"


async def marker_judge(prompt: str, a: str, b: str) -> JudgeDecision:
    """Judge double: prefers the response carrying '[ok]'; both or neither → tie; 'UNPARSEABLE' → None."""
    if "UNPARSEABLE" in prompt:
        return None
    a_ok, b_ok = "[ok]" in a, "[ok]" in b
    return "A" if a_ok and not b_ok else "B" if b_ok and not a_ok else "tie"


async def score_judge(prompt: str, a: str, b: str) -> JudgeDecision:
    """Judge double: compares the 'score=X' each response carries (ties stay ties)."""
    if "UNPARSEABLE" in prompt:
        return None
    sa, sb = (float(re.search(r"score=([\d.]+)", t).group(1)) for t in (a, b))  # type: ignore[union-attr]
    return "A" if sa > sb else "B" if sb > sa else "tie"


async def first_position_judge(prompt: str, a: str, b: str) -> JudgeDecision:
    return "A"


def test_rewardbench_fixture_numbers() -> None:
    report = asyncio.run(evaluate("rewardbench", load_jsonl(FIXTURES / "rewardbench_small.jsonl"), marker_judge))
    # 8 items: rb3 tie (wrong), rb5 wrong, rb6 unparseable → 5 correct, 7 parseable.
    assert report["overall"]["acc_all"] == pytest.approx(5 / 8)
    assert report["overall"]["acc_parseable"] == pytest.approx(5 / 7)
    assert report["overall"]["parse_rate"] == pytest.approx(7 / 8)
    rb = report["rewardbench"]
    assert rb["subsets"] == {"alpacaeval-easy": 1.0, "hep-python": 1.0, "llmbar-natural": 0.5, "math-prm": 1.0,
                             "mt-bench-easy": 0.0, "refusals-dangerous": 0.0}
    # chat = (1.0·100 + 0.0·28) / 128; chat_hard = 0.5; safety = 0; reasoning = (1·984 + 1·164) / 1148.
    assert rb["sections"]["chat"] == pytest.approx(100 / 128)
    assert rb["sections"]["chat_hard"] == pytest.approx(0.5)
    assert rb["sections"]["safety"] == 0.0
    assert rb["sections"]["reasoning"] == pytest.approx(1.0)
    assert set(rb["section_weighting"].values()) == {"rewardbench_example_counts"}
    assert rb["score"] == pytest.approx((0.78125 + 0.5 + 0.0 + 1.0) / 4)  # 0.5703125


def test_verbosity_split() -> None:
    report = asyncio.run(evaluate("rewardbench", load_jsonl(FIXTURES / "rewardbench_small.jsonl"), marker_judge))
    length = report["length"]
    # chosen longer: rb1 ✓, rb5 ✗, rb6 unparseable, rb7 ✓, rb8 ✓ → 3/5; chosen shorter: rb2 ✓, rb3 tie, rb4 ✓ → 2/3.
    assert length["chosen_longer"]["n"] == 5 and length["chosen_longer"]["acc_all"] == pytest.approx(0.6)
    assert length["chosen_shorter"]["n"] == 3 and length["chosen_shorter"]["acc_all"] == pytest.approx(2 / 3)
    assert length["equal_length"]["n"] == 0 and length["equal_length"]["acc_all"] is None
    assert length["verbosity_gap"] == pytest.approx(0.6 - 2 / 3)
    assert length["length_balanced_acc"] == pytest.approx((0.6 + 2 / 3) / 2)


def test_plain_sections_when_items_are_labelled_by_section() -> None:
    def outcome(i: int, category: str, decision: JudgeDecision) -> PairOutcome:
        return PairOutcome(id=str(i), category=category, decision=decision, chosen_position="A",
                           chosen_chars=1, rejected_chars=1)

    outcomes = [outcome(1, "chat", "A"), outcome(2, "chat", "B"), outcome(3, "Chat Hard", "A"),
                outcome(4, "safety", None), outcome(5, "reasoning", "A"), outcome(6, "reasoning", "A")]
    rb = rewardbench_scores(outcomes)
    assert rb["sections"] == {"chat": 0.5, "chat_hard": 1.0, "reasoning": 1.0, "safety": 0.0}
    assert set(rb["section_weighting"].values()) == {"plain"}
    assert rb["score"] == pytest.approx(2.5 / 4)


def test_rmb_fixture_numbers() -> None:
    report = asyncio.run(evaluate("rmb", load_jsonl(FIXTURES / "rmb_small.jsonl"), marker_judge))
    rmb = report["rmb"]
    # chat 2/3 (m3 wrong), S1 1/1, code 1/2 (m6 unparseable).
    assert rmb["categories"] == pytest.approx({"harmlessness/S1": 1.0, "helpfulness/chat": 2 / 3,
                                               "helpfulness/code": 0.5})
    assert rmb["weighted"] == pytest.approx((2 + 1 + 1) / 6)         # size-weighted = 4/6
    assert rmb["macro"] == pytest.approx((2 / 3 + 1 + 0.5) / 3)
    assert report["overall"]["parse_rate"] == pytest.approx(5 / 6)


def test_rmbench_summary_of_a_hand_matrix() -> None:
    matrix = np.array([[0.9, 0.6, 0.3],
                       [0.95, 0.8, 0.5],
                       [1.0, 0.9, 0.7]])
    out = rmbench_summary(matrix)
    assert out["hard"] == pytest.approx((0.6 + 0.3 + 0.5) / 3)       # upper triangle
    assert out["normal"] == pytest.approx((0.9 + 0.8 + 0.7) / 3)     # diagonal
    assert out["easy"] == pytest.approx((0.95 + 1.0 + 0.9) / 3)      # lower triangle
    assert out["avg"] == pytest.approx((1.4 / 3 + 0.8 + 2.85 / 3) / 3)


def test_rmbench_fixture_numbers() -> None:
    rows = load_jsonl(FIXTURES / "rmbench_small.jsonl")
    report = asyncio.run(evaluate("rmbench", rows, score_judge))
    rm = report["rmbench"]
    # r1: chosen [.5 .7 .9] vs rejected [.4 .6 .8] → [[1,0,0],[1,1,0],[1,1,1]]
    # r2: chosen [.6 .6 .6] vs rejected [.5 .55 .7] → [[1,1,0],[1,1,0],[1,1,0]]
    # r3: unparseable → zeros. Mean over 3 items = [[2,1,0],[2,2,0],[2,2,1]] / 3.
    assert np.allclose(rm["matrix"], np.array([[2, 1, 0], [2, 2, 0], [2, 2, 1]]) / 3)
    assert rm["hard"] == pytest.approx(1 / 9)
    assert rm["normal"] == pytest.approx(5 / 9)
    assert rm["easy"] == pytest.approx(6 / 9)
    assert rm["avg"] == pytest.approx(4 / 9)
    assert rm["parse_rate"] == pytest.approx(18 / 27)
    assert rm["domains"]["chat"] == pytest.approx({"hard": 0.0, "normal": 1.0, "easy": 1.0, "avg": 2 / 3})
    assert rm["domains"]["math"] == pytest.approx({"hard": 1 / 3, "normal": 2 / 3, "easy": 1.0, "avg": 2 / 3})
    assert rm["domains"]["safety"] == pytest.approx({"hard": 0.0, "normal": 0.0, "easy": 0.0, "avg": 0.0})
    # A symmetric judge gives the same numbers when A/B are swapped.
    swapped = asyncio.run(evaluate("rmbench", rows, score_judge, swap=True, seed=1))["rmbench"]
    assert swapped["matrix"] == rm["matrix"]


def test_swap_exposes_position_bias_and_is_seeded() -> None:
    items = [PairItem.from_row(r, i) for i, r in enumerate(load_jsonl(FIXTURES / "rewardbench_small.jsonl"))]
    unswapped = asyncio.run(run_pairwise_eval(items, first_position_judge))
    # Chosen always first: single-order, a position-biased judge looks perfect; both orders disagree → ties.
    assert accuracy_metrics(protocol_view(unswapped, "single_order")).acc_all == 1.0
    assert accuracy_metrics(unswapped).acc_all == 0.0
    swapped = asyncio.run(run_pairwise_eval(items, first_position_judge, swap=True, seed=0))
    positions = [o.chosen_position for o in swapped]
    assert set(positions) == {"A", "B"}
    assert accuracy_metrics(protocol_view(swapped, "single_order")).acc_all == pytest.approx(
        positions.count("A") / len(positions))
    assert accuracy_metrics(swapped).acc_all == 0.0
    again = asyncio.run(run_pairwise_eval(items, first_position_judge, swap=True, seed=0))
    assert [o.chosen_position for o in again] == positions
    other_seeds = {tuple(o.chosen_position for o in asyncio.run(
        run_pairwise_eval(items, first_position_judge, swap=True, seed=s))) for s in range(1, 4)}
    assert any(p != tuple(positions) for p in other_seeds)


def test_failing_or_invalid_judge_counts_as_unparseable() -> None:
    async def broken(prompt: str, a: str, b: str) -> JudgeDecision:
        if "boom" in prompt:
            raise RuntimeError("backend exploded")
        return "C"  # type: ignore[return-value]

    items = [PairItem(id="1", prompt="boom", chosen="x", rejected="y"), PairItem(id="2", prompt="q", chosen="x",
                                                                                 rejected="y")]
    outcomes = asyncio.run(run_pairwise_eval(items, broken))
    assert [o.decision for o in outcomes] == [None, None]
    assert "exploded" in (outcomes[0].error or "") and "expected" in (outcomes[1].error or "")
    assert accuracy_metrics(outcomes).parse_rate == 0.0


def test_bad_rows_name_the_field() -> None:
    with pytest.raises(ValueError, match="item 0: missing field 'chosen'"):
        asyncio.run(evaluate("rmb", [{"prompt": "q", "rejected": "r"}], marker_judge))
    with pytest.raises(ValueError, match=r"item 0\.chosen: expected a list of 3"):
        asyncio.run(evaluate("rmbench", [{"prompt": "q", "chosen": ["a"], "rejected": ["a", "b", "c"]}], marker_judge))
    with pytest.raises(ValueError, match="format"):
        asyncio.run(evaluate("helm", [], marker_judge))  # type: ignore[arg-type]


def test_cdrrm_judge_through_the_harness() -> None:
    """The whole CDRRM path (generator rubric → both-order judgment) as a harness judge, over HTTP
    to ScriptedLLMServer test doubles: a position-biased judge scores 0, never a lucky 100%."""
    import json as _json

    from services.rubric_rm.evaluation import make_cdrrm_judge
    from tests.unit.rubric_rm.helpers import example_rubric, judge_prompt_responses, scripted_client

    rubric_text = _json.dumps(example_rubric().model_dump(mode="json", exclude={"pair_consistency_check"}))
    generator, _ = scripted_client(lambda _req: rubric_text)
    biased, _ = scripted_client(lambda _req: "Winner: Response A")
    rows = load_jsonl(FIXTURES / "rmb_small.jsonl")
    report = asyncio.run(evaluate("rmb", rows, make_cdrrm_judge(biased, generator=generator)))
    assert report["overall"]["parse_rate"] == 1.0 and report["overall"]["acc_all"] == 0.0

    def content_judge(request: dict[str, object]) -> str:
        first, _second = judge_prompt_responses(request)
        return "Winner: Response A" if "[ok]" in first else "Winner: Response B"

    fair, _ = scripted_client(content_judge)
    report = asyncio.run(evaluate("rmb", rows, make_cdrrm_judge(fair, generator=generator)))
    # m6: neither response has [ok], so the judge names the second position in both orders → the orders
    # disagree → tie (wrong). m3: the rejected answer carries [ok] → wrong. Correct: m1, m2, m4, m5 → 4/6.
    assert report["overall"]["acc_all"] == pytest.approx(4 / 6)
    assert report["overall"]["parse_rate"] == 1.0
