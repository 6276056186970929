"""The synthetic multi-hop task (deterministic), its environment (protocol, actions, failures), the
scripted agent and a 256-turn episode whose context stays within the memory's budget."""

from __future__ import annotations

import resource

import pytest

from trainer.ziprl.bm25 import Passage
from trainer.ziprl.env import InProcessSearch, MultiHopSearchEnv, SearchResult, parse_action
from trainer.ziprl.episode import ScriptedAgent, find_fact, run_episode
from trainer.ziprl.hrr import hindsight_scores
from trainer.ziprl.memory import CompressionMemory, FullHistory, RecencyWindow
from trainer.ziprl.multihop import generate_questions, generate_world, parse_question, question_text
from trainer.ziprl.text import count_tokens


def test_generation_is_deterministic_and_chains_hold() -> None:
    world = generate_world(3, people=12, companies=5, cities=5, countries=3)
    again = generate_world(3, people=12, companies=5, cities=5, countries=3)
    assert world.documents == again.documents
    assert generate_world(4, people=12, companies=5, cities=5, countries=3).documents != world.documents
    questions = generate_questions(world, 9, seed=1)
    assert [q.question for q in questions] == [q.question for q in generate_questions(world, 9, seed=1)]
    assert [q.hops for q in questions] == [2, 3, 4] * 3
    docs = {d.id: d for d in world.documents}
    for q in questions:
        assert q.answer == q.chain[-1][2] and len(q.evidence_ids) == q.hops
        for (subject, relation, obj), doc_id in zip(q.chain, q.evidence_ids, strict=True):
            assert docs[doc_id].title == subject
            assert f"The {relation} of {subject} is {obj}." in docs[doc_id].text
        names = [q.chain[0][0], *(c[2] for c in q.chain)]
        assert len(set(names)) == len(names)  # no entity twice in a chain
        assert parse_question(q.question) == (q.chain[0][0], [c[1] for c in q.chain])
        row = q.prompt_row()
        assert row["reward_model"]["ground_truth"] == q.answer and row["extra_info"]["hops"] == q.hops
    assert question_text("Ann Lee", ["employer", "founder"]) == "What is the founder of the employer of Ann Lee?"
    assert parse_question("What is love?") is None
    with pytest.raises(ValueError):
        generate_world(0, people=1)


def test_actions_parse() -> None:
    assert parse_action("search: founder of Bolt Labs") == ("search", "founder of Bolt Labs")
    assert parse_action("I think <search>Cy Moe</search> then") == ("search", "Cy Moe")
    assert parse_action("so \\boxed{Port Ash}") == ("answer", "Port Ash")
    assert parse_action("<answer>Port Ash</answer> search: x") == ("answer", "Port Ash")
    assert parse_action("hmm") is None


class FailingSearch:
    """A TEST DOUBLE of a search backend that is down."""

    def search(self, query: str, k: int) -> list[SearchResult]:
        raise ConnectionError("retrieval unreachable")


PASSAGES = [Passage("p1", "The employer of Ann Lee is Bolt Labs. Ann Lee likes chess.", "Ann Lee"),
            Passage("p2", "The founder of Bolt Labs is Cy Moe.", "Bolt Labs"),
            Passage("p3", "Dan Roe likes chess.", "Dan Roe")]
ROW = {"prompt": [{"role": "user", "content": "What is the founder of the employer of Ann Lee?"}],
       "reward_model": {"ground_truth": "Cy Moe"}}


def test_environment_protocol() -> None:
    env = MultiHopSearchEnv(InProcessSearch(PASSAGES), k=2, max_turns=3)
    assert "Question: What is the founder" in env.reset(ROW)
    found = env.step("search: employer of Ann Lee")
    assert not found.done and found.info["passages"][0]["id"] == "p1" and found.observation.startswith("[p1] Ann Lee:")
    assert env.step("what now?").info["status"] == "invalid_action"
    answered = env.step("answer: cy moe.")
    assert answered.done and answered.info["reward"] == 1.0 and answered.info["turn"] == 3
    with pytest.raises(RuntimeError):
        env.step("answer: again")

    env.reset(ROW)
    for _ in range(2):
        assert not env.step("search: chess").done
    last = env.step("search: chess")
    assert last.done and last.info["truncated"] and last.info["reward"] == 0.0

    broken = MultiHopSearchEnv(FailingSearch())
    broken.reset(ROW)
    failed = broken.step("search: anything")
    assert not failed.done and failed.info["status"] == "error" and "retrieval unreachable" in failed.observation
    wrong = broken.step("answer: Dan Roe")
    assert wrong.done and wrong.info["correct"] is False and wrong.info["reward"] == 0.0
    with pytest.raises(ValueError):
        broken.reset({"prompt": "", "reward_model": {"ground_truth": "x"}})


def test_find_fact_reads_every_level() -> None:
    assert find_fact("[p1] The employer of Ann Lee is Bolt Labs.", "Ann Lee", "employer") == "Bolt Labs"
    assert find_fact("[p1] employer Ann Lee Bolt Labs", "Ann Lee", "employer") == "Bolt Labs"
    assert find_fact("[p1] founder Bolt Labs Cy Moe; employer Ann Lee Bolt Labs", "Ann Lee", "employer") == "Bolt Labs"
    assert find_fact("[p1] former employer Ann Lee Rope Co", "Ann Lee", "employer") is None  # the decoy
    assert find_fact("[p1] The employer of Ann Lee is Bolt", "Ann Lee", "employer") is None  # cut mid-sentence


def test_scripted_agent_solves_short_episodes() -> None:
    env = MultiHopSearchEnv(InProcessSearch(PASSAGES), k=2, max_turns=6)
    result = run_episode(env, ScriptedAgent(), lambda q: FullHistory(q), ROW, keep_renders=True)
    # turn 0 searches "employer of Ann Lee", turn 1 "founder of Bolt Labs", turn 2 answers.
    assert (result.correct, result.turns, result.searches, result.answer) == (True, 3, 2, "Cy Moe")
    assert hindsight_scores(result.renders, [["Ann Lee", "employer", "Bolt Labs"], ["Bolt Labs", "founder", "Cy Moe"]]) \
        == [0.5, 1.0]


def test_a_256_turn_episode_keeps_a_bounded_context() -> None:
    world = generate_world(0, people=16, companies=6, cities=5, countries=3)
    question = generate_questions(world, 3, seed=2)[2]  # a 4-hop question
    search = InProcessSearch(world.documents)
    budget = 250
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    env = MultiHopSearchEnv(search, k=3, max_turns=256)
    result = run_episode(env, ScriptedAgent(target_turns=256), lambda q: CompressionMemory(q, budget),
                         question.prompt_row())
    assert result.turns == 256 and result.correct
    assert result.peak_context_tokens <= budget + count_tokens(question.question)
    assert max(r.memory_tokens for r in result.records) <= budget
    assert result.records[-1].raw_tokens > 20 * budget  # the raw history would be far larger
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before < 50_000  # KiB: no growth to speak of
    # The same episode with a recency window of the same budget forgets the early hops.
    env = MultiHopSearchEnv(search, k=3, max_turns=256)
    window = run_episode(env, ScriptedAgent(target_turns=256), lambda q: RecencyWindow(q, budget),
                         question.prompt_row())
    assert window.turns == 256 and window.peak_context_tokens <= budget + count_tokens(question.question)
    assert not window.correct
