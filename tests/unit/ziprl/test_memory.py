"""The five-level compression memory: relevance, levels, rule and policy rewrites, the budget, savings.

Hand-computed on one question: "What is the founder of the employer of Ann Lee?" has the content
terms Q = {founder, employer, ann, lee} (|Q| = 4).
"""

from __future__ import annotations

import pytest

from trainer.ziprl.memory import (
    CompressionMemory,
    FullHistory,
    Level,
    MemoryItem,
    PolicyAssigner,
    PolicyRewriter,
    RecencyWindow,
    RuleRewriter,
    ThresholdAssigner,
    TurnRecord,
    UniformTruncation,
    fine_prompt,
    level_for,
    parse_coarse_answer,
    relevance,
    savings_summary,
)

QUESTION = "What is the founder of the employer of Ann Lee?"
A = MemoryItem("p1", 0, "The employer of Ann Lee is Bolt Labs. Ann Lee likes chess.", "Ann Lee")
B = MemoryItem("p2", 0, "The founder of Bolt Labs is Cy Moe. Bolt Labs sells rope.", "Bolt Labs")
C = MemoryItem("p3", 0, "Dan Roe likes chess.", "Dan Roe")
D = MemoryItem("p4", 0, "The birthplace of Cy Moe is Port Ash.", "Cy Moe")
EVERYTHING_VERBATIM = ThresholdAssigner(thresholds=((Level.VERBATIM, 0.0),))


def test_chain_relevance_by_hand() -> None:
    # A: best sentence "The employer of Ann Lee is Bolt Labs." has {employer, ann, lee}: 3/4 = 0.75.
    # B: direct {founder} = 1/4 = 0.25; its title {bolt, labs} is in A's best sentence: 0.8 * 0.75 = 0.6.
    # C: no question term, not pointed to: 0.
    # D: direct 0; B's best sentence ("The founder of Bolt Labs is Cy Moe.") names Cy Moe: round 1 uses B's
    #    round-0 score, 0.8 * 0.25 = 0.2; round 2 B's 0.6: 0.8 * 0.6 = 0.48; round 3 changes nothing.
    assert relevance([A, B, C, D], QUESTION) == pytest.approx([0.75, 0.6, 0.0, 0.48])
    assert relevance([A, B, C, D], QUESTION, rounds=1) == pytest.approx([0.75, 0.6, 0.0, 0.2])
    assert relevance([A, B, C, D], QUESTION, gamma=0.5) == pytest.approx([0.75, 0.375, 0.0, 0.1875])
    assert relevance([B], "") == [0.0]  # no content term in the task


def test_level_thresholds() -> None:
    assert [level_for(x) for x in (0.45, 0.449, 0.30, 0.2, 0.1, 0.099)] == [
        Level.VERBATIM, Level.TRIMMED, Level.TRIMMED, Level.SUMMARY, Level.KEY_FACTS, Level.DROPPED]


def test_rule_rewrites_at_each_level() -> None:
    rule = RuleRewriter()
    assert rule.rewrite(B, Level.VERBATIM, QUESTION) == B.text
    # TRIMMED: the first sentence, and sentences sharing a term with Q ("Bolt Labs sells rope." shares none).
    assert rule.rewrite(B, Level.TRIMMED, QUESTION) == "The founder of Bolt Labs is Cy Moe."
    assert rule.rewrite(A, Level.TRIMMED, QUESTION) == A.text  # "Ann Lee likes chess." shares ann, lee
    # SUMMARY: the best sentence; prefixed by the title when the sentence does not name it.
    assert rule.rewrite(A, Level.SUMMARY, QUESTION) == "The employer of Ann Lee is Bolt Labs."
    moved = MemoryItem("x", 0, "Rope is sold. The founder of Bolt Labs is Cy Moe.", "Zed Co")
    assert rule.rewrite(moved, Level.SUMMARY, QUESTION) == "Zed Co: The founder of Bolt Labs is Cy Moe."
    # KEY_FACTS: the best sentence's content words (The, of, is are stop words).
    assert rule.rewrite(A, Level.KEY_FACTS, QUESTION) == "employer Ann Lee Bolt Labs"
    assert rule.rewrite(A, Level.DROPPED, QUESTION) == ""


def _memory(budget: int, items: list[MemoryItem], assigner: ThresholdAssigner | None = None) -> CompressionMemory:
    memory = CompressionMemory(QUESTION, budget, assigner=assigner or EVERYTHING_VERBATIM)
    for item in items:
        memory.observe(item.turn, item.text, item_id=item.id, title=item.title)
    return memory


def test_budget_demotes_the_least_relevant_first() -> None:
    # Lines: "[p1] The employer of Ann Lee is Bolt Labs. Ann Lee likes chess." = 3 + 14 = 17 tokens;
    # "[p2] The founder of Bolt Labs is Cy Moe. Bolt Labs sells rope." = 3 + 14 = 17: 34 in all.
    memory = _memory(30, [A, B])
    record = memory.compress(0)
    # Over 30: B (0.6 < 0.75) goes to TRIMMED, "[p2] The founder of Bolt Labs is Cy Moe." = 12: 29 fits.
    assert [(i.id, i.level) for i in memory.items] == [("p1", Level.VERBATIM), ("p2", Level.TRIMMED)]
    assert (record.raw_tokens, record.memory_tokens, record.saved_tokens) == (34, 29, 5)
    assert record.levels["verbatim"] == 1 and record.levels["trimmed"] == 1

    tight = _memory(25, [A, B])
    tight.compress(0)
    # 29 > 25: B to SUMMARY (the same sentence: 29), then KEY_FACTS "[p2] founder Bolt Labs Cy Moe" = 8: 25 fits.
    assert [(i.id, i.level, i.text) for i in tight.items] == [
        ("p1", Level.VERBATIM, A.text), ("p2", Level.KEY_FACTS, "founder Bolt Labs Cy Moe")]
    assert tight.tokens() == 25 <= tight.budget_tokens  # type: ignore[operator]


def test_the_newest_turn_is_demoted_last_and_levels_never_go_back_up() -> None:
    newer = MemoryItem(B.id, 1, B.text, B.title)
    memory = _memory(20, [A, newer])
    memory.compress(1)
    # Only A (turn 0) may go down while it lasts: TRIMMED 17 (unchanged), SUMMARY 12, KEY_FACTS 8 (25 > 20),
    # DROPPED 0: 17 fits. B (lower relevance, but new) stays verbatim.
    assert [(i.id, i.level) for i in memory.items] == [("p2", Level.VERBATIM)]
    assert memory.records[-1].memory_tokens == 17

    keep = _memory(25, [A, B])
    keep.compress(0)
    keep.budget_tokens = 1000
    keep.compress(1)
    assert keep.items[1].level == Level.KEY_FACTS  # what was cut is gone: no way back up
    keep.observe(2, B.text, item_id="p2", title=B.title)  # read again: the fresh copy replaces it
    keep.compress(2)
    assert [(i.id, i.level) for i in keep.items] == [("p1", Level.VERBATIM), ("p2", Level.VERBATIM)]


def test_thresholds_drop_unrelated_items_without_a_budget() -> None:
    memory = _memory(10_000, [A, B, C, D], assigner=ThresholdAssigner())
    memory.compress(0)
    # 0.75 and 0.6 and 0.48 are VERBATIM (>= 0.45); C (0) is dropped.
    assert [(i.id, i.level) for i in memory.items] == [
        ("p1", Level.VERBATIM), ("p2", Level.VERBATIM), ("p4", Level.VERBATIM)]
    assert memory.records[-1].levels["dropped"] == 0  # dropped items leave the memory


class ScriptedPolicy:
    """A TEST DOUBLE of the policy: answers prompts from a fixed script and records them."""

    def __init__(self, answer: str) -> None:
        self.answer = answer
        self.prompts: list[str] = []

    def __call__(self, prompt: str) -> str:
        self.prompts.append(prompt)
        return self.answer


def test_policy_rewriter_and_its_fallback() -> None:
    short = ScriptedPolicy("Bolt Labs: founded by Cy Moe.")
    rewriter = PolicyRewriter(short)
    assert rewriter.rewrite(B, Level.SUMMARY, QUESTION) == "Bolt Labs: founded by Cy Moe."
    assert "Task: " + QUESTION in short.prompts[0] and "one sentence" in short.prompts[0]
    assert rewriter.rewrite(B, Level.VERBATIM, QUESTION) == B.text and len(short.prompts) == 1  # no call needed

    longer = PolicyRewriter(ScriptedPolicy(B.text + " And more words than before."))
    assert longer.rewrite(B, Level.TRIMMED, QUESTION) == "The founder of Bolt Labs is Cy Moe."  # the rule's
    assert longer.fallbacks == 1
    empty = PolicyRewriter(ScriptedPolicy("   "))
    assert empty.rewrite(A, Level.KEY_FACTS, QUESTION) == "employer Ann Lee Bolt Labs" and empty.fallbacks == 1
    assert "short 'subject relation object' phrases" in fine_prompt(A, Level.KEY_FACTS, QUESTION)


def test_policy_coarse_pass() -> None:
    assert parse_coarse_answer("[p1]: Summary\np2: key facts\nnoise\np3: dropped") == {
        "p1": Level.SUMMARY, "p2": Level.KEY_FACTS, "p3": Level.DROPPED}
    policy = ScriptedPolicy("p1: summary\np3: verbatim")
    memory = CompressionMemory(QUESTION, None, assigner=PolicyAssigner(policy))
    for item in (A, B, C):
        memory.observe(0, item.text, item_id=item.id, title=item.title)
    record = memory.compress(0)
    assert "[p2] (verbatim) The founder of Bolt Labs" in policy.prompts[0]
    # p1 as the policy said; p2 not answered: by its relevance 0.6 (VERBATIM); p3 as the policy said.
    assert [(i.id, i.level) for i in memory.items] == [
        ("p1", Level.SUMMARY), ("p2", Level.VERBATIM), ("p3", Level.VERBATIM)]
    assert record.fallbacks == 1


def test_baselines() -> None:
    full = FullHistory(QUESTION)
    for turn in range(2):
        full.observe(turn, A.text, item_id="p1")
        full.compress(turn)
    assert full.tokens() == 34 and full.records[-1].saved_tokens == 0  # the same passage twice: both kept

    uniform = UniformTruncation(QUESTION, 12)
    uniform.observe(0, "w1 w2 w3 w4 w5 w6", item_id="a")
    uniform.observe(0, "w1 w2 w3 w4 w5 w6", item_id="b")
    uniform.compress(0)
    # 9 + 9 = 18 > 12: ratio 12/18 keeps int(2/3 * 6) = 4 tokens each (7 + 7 = 14); one token off the longest
    # (a first, the earlier on a tie) then b: 6 + 6 = 12.
    assert [i.text for i in uniform.items] == ["w1 w2 w3", "w1 w2 w3"] and uniform.tokens() == 12

    recent = RecencyWindow(QUESTION, 20)
    recent.observe(0, A.text, item_id="p1")
    recent.observe(1, B.text, item_id="p2")
    recent.compress(1)
    assert [i.id for i in recent.items] == ["p2"]
    with pytest.raises(ValueError):
        CompressionMemory(QUESTION, 0)


def test_summary_and_key_facts_take_the_first_of_tied_best_sentences() -> None:
    # Q = {founder, employer, ann, lee}: "The founder of Cy Moe is Al." and "The employer of Cy Moe is Bo."
    # both score 1/4 ("Cy Moe sails." 0): the first of them is kept.
    tied = MemoryItem("t", 0, "Cy Moe sails. The founder of Cy Moe is Al. The employer of Cy Moe is Bo.", "Cy Moe")
    rule = RuleRewriter()
    assert rule.rewrite(tied, Level.SUMMARY, QUESTION) == "The founder of Cy Moe is Al."
    assert rule.rewrite(tied, Level.KEY_FACTS, QUESTION) == "founder Cy Moe Al"


def test_savings_summary() -> None:
    records = [TurnRecord(0, raw_tokens=100, memory_tokens=50, levels={}),
               TurnRecord(1, raw_tokens=200, memory_tokens=50, levels={})]
    # saved fractions 50/100 = 0.5 and 150/200 = 0.75: mean 0.625; memory 50 and 50.
    assert savings_summary(records) == {"memory_tokens_mean": 50.0, "memory_tokens_peak": 50.0,
                                        "saved_fraction_mean": 0.625}
    assert savings_summary([])["saved_fraction_mean"] == 0.0
