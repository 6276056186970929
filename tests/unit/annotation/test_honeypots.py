"""Honeypots (services/annotation/honeypots.py): the seeded per-lease choice, hand-checked and shown to hold
its rate; grading against a hidden answer; the hidden answer's checks naming the field; and, on SQLite
through the queue functions, the rate holding over many leases exactly as the seeded choice says."""

from __future__ import annotations

import hashlib
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.annotation import accounts, honeypots, ingestion, locking, projects, queue
from services.annotation.label_schema import LabelSchema, TaskContext
from services.annotation.models import AnnotationProject, Assignment, Policy, Purchase, Task
from services.annotation.purchases import fulfil, record_purchase
from services.annotation.schemas import HoneypotsIn, RolloutGroupIn, StepIn, Submission
from services.common.db import session_scope
from services.common.errors import Conflict, InvalidInput
from tests.conftest import Tenant

T0 = datetime(2026, 4, 1, 9, 0, tzinfo=UTC)
SCHEMA = LabelSchema.model_validate({"questions": [
    {"id": "answer", "type": "math_answer"},
    {"id": "topic", "type": "single_label", "choices": ["algebra", "geometry"]},
    {"id": "order", "type": "ranking", "items": ["x", "y", "z"], "required": False},
    {"id": "pref", "type": "preference_pair", "rationale": "required", "required": False},
    {"id": "note", "type": "free_text", "required": False},
]})
CONTEXT = TaskContext(candidates=["4", "5"], pairs={"pref": ("so 4", "so 5")})


# ------------------------------------------------------------------------------ the seeded choice


def test_a_turn_is_the_hash_below_the_rate_worked_by_hand() -> None:
    # u = first 8 bytes of SHA-256("s\0a\00") / 2^64 = 0.37887917…: a turn for any rate above u, none at or below.
    u = int.from_bytes(hashlib.sha256(b"s\x00a\x000").digest()[:8], "big") / 2**64
    assert u == pytest.approx(0.378879171)
    assert honeypots.honeypot_turn("s", "a", 0, 0.379) and not honeypots.honeypot_turn("s", "a", 0, 0.378)
    assert not honeypots.honeypot_turn("s", "a", 0, 0.0) and honeypots.honeypot_turn("s", "a", 0, 1.0)
    # Same inputs, same answer; another seed or annotator is another draw.
    draws = [honeypots.honeypot_turn("s", "a", k, 0.5) for k in range(64)]
    assert draws == [honeypots.honeypot_turn("s", "a", k, 0.5) for k in range(64)]
    assert draws != [honeypots.honeypot_turn("t", "a", k, 0.5) for k in range(64)]


@pytest.mark.parametrize("rate", [0.05, 0.2, 0.5])
def test_the_rate_holds_over_many_leases(rate: float) -> None:
    # Turns are Binomial(N, rate): with N = 20,000 the count stays within 4 standard deviations of N·rate.
    n = 20_000
    for annotator in ("ann-1", "ann-2"):
        turns = sum(honeypots.honeypot_turn("seed", annotator, k, rate) for k in range(n))
        assert abs(turns - n * rate) <= 4 * math.sqrt(n * rate * (1 - rate)), (annotator, turns)


# ------------------------------------------------------------------------------------ grading


def test_grading_against_the_hidden_answer() -> None:
    gold = {"answer": {"kind": "answer", "answer": "\\frac{1}{2}"}, "topic": "algebra", "order": [2, 0, 1]}
    right = {"answer": {"kind": "answer", "answer": "0.5"}, "topic": "algebra", "order": [2, 0, 1], "note": "x"}
    assert honeypots.grade(SCHEMA, right, gold)  # 0.5 is the queue's equivalent of 1/2; free text is ignored
    assert not honeypots.grade(SCHEMA, {**right, "topic": "geometry"}, gold)
    assert not honeypots.grade(SCHEMA, {**right, "order": [2, 1, 0]}, gold)  # a ranking is graded whole
    assert not honeypots.grade(SCHEMA, {k: v for k, v in right.items() if k != "order"}, gold)  # left unanswered
    assert not honeypots.grade(SCHEMA, {**right, "answer": {"kind": "ambiguous", "answer": None}}, gold)
    ambiguous = {"answer": {"kind": "ambiguous", "answer": None}}
    assert honeypots.grade(SCHEMA, {"answer": {"kind": "ambiguous", "answer": None, "rationale": "?"}}, ambiguous)
    assert honeypots.grade(SCHEMA, {"pref": {"choice": "A", "rationale": "shorter"}}, {"pref": {"choice": "A"}})
    assert honeypots.grade(SCHEMA, None, {"gone": "x"})  # a question the schema no longer has is skipped


def test_the_hidden_answer_is_checked_naming_the_field() -> None:
    assert honeypots.check_gold(SCHEMA, {"answer": {"candidate": 1}, "pref": "B"}, CONTEXT) == {
        "answer": {"kind": "answer", "answer": "5", "candidate": 1, "rationale": None},
        "pref": {"choice": "B", "rationale": None}}  # no rationale asked of a hidden answer
    assert honeypots.check_gold(SCHEMA, {"answer": "7"}, CONTEXT)["answer"]["answer"] == "7"
    cases: list[tuple[dict[str, Any], str]] = [({"nope": 1}, "gold.nope"), ({"note": "x"}, "gold.note"), ({"topic": "maths"}, "gold.topic"),
                        ({"order": [0, 0, 1]}, "gold.order"), ({"answer": {"candidate": 5}}, "gold.answer.candidate"),
                        ({}, "gold"), ({"topic": None}, "gold")]
    for gold, field in cases:
        with pytest.raises(InvalidInput) as refused:
            honeypots.check_gold(SCHEMA, gold, CONTEXT)
        assert refused.value.field == field, (gold, refused.value.field, refused.value.message)


# ------------------------------------------------------------------- through the queue (SQLite)


def _project(tenant: Tenant, *, real: int, gold: int, rate: float) -> str:
    with session_scope() as session:
        project = AnnotationProject(
            project_id=tenant.project_a, name=f"hp-{real}-{gold}-{rate}", label_budget=real,
            label_schema={"questions": [{"id": "answer", "type": "math_answer"}]}, overlap_k=1, lease_seconds=600,
            rollouts_per_prompt=2, policy=Policy.random, care_params={}, webhook_secret=projects.new_webhook_secret(),
            honeypot_rate=rate, honeypot_seed="unit-seed")
        session.add(project)
        session.flush()
        pid = project.id
    with session_scope() as session:
        project = locking.lock_project(session, pid)
        stored = ingestion.store_step(session, project, StepIn(step=0, groups=[
            RolloutGroupIn(prompt_id=f"r{i}", prompt_text=f"real {i}", answers=["1", "2"]) for i in range(real)]), T0)
        bought = [record_purchase(session, project, g, p, policy="manual", score=None, now=T0)
                  for g, p in zip(stored.groups, stored.prompts, strict=True)]
        session.flush()
        for purchase in bought:
            fulfil(session, project, purchase, priority=None, key_answer=None, now=T0)
    with session_scope() as session:
        out = honeypots.create(session, pid, HoneypotsIn.model_validate({"items": [
            {"prompt_id": f"h{i}", "prompt_text": f"gold {i}", "answers": ["1", "2"], "gold": {"answer": "1"}}
            for i in range(gold)]}), T0)
        assert out.created == gold
    return pid


def test_leases_serve_honeypots_exactly_as_the_seeded_choice_says(sqlite_tenant: Tenant) -> None:
    real, gold, rate = 120, 60, 0.25
    pid = _project(sqlite_tenant, real=real, gold=gold, rate=rate)
    with session_scope() as session:
        annotator_id = accounts.create_annotator(session, "hana", "correct horse battery", project_ids=[pid]).id
    order: list[bool] = []
    now = T0
    for k in range(real + gold + 1):
        now = T0 + timedelta(seconds=k)
        with session_scope() as session:
            view = queue.next_task(session, pid, annotator_id, now=now)
            if view is None:
                break
            task = session.get(Task, view.task_id)
            assert task is not None
            order.append(task.honeypot)
            # Right on even honeypots, wrong on odd ones: accuracy 1/2 when the count is even.
            answer = "1" if not task.honeypot or sum(order) % 2 else "2"
            queue.submit(session, pid, annotator_id, view.assignment_id,
                         Submission(answer=answer, submission_id=f"s{k}"), now=now)
    served = sum(order)
    # Replayed: lease k is a honeypot iff honeypot_turn(seed, annotator, k, rate), while one is left.
    expected, left = [], gold
    for k in range(len(order)):
        turn = honeypots.honeypot_turn("unit-seed", annotator_id, k, rate) and left > 0
        left -= turn
        expected.append(turn)
    assert order == expected
    assert len(order) - served == real  # every real task was served, none twice
    # The rate held: 180 leases at most, Binomial(~160, 0.25) → ~40 ± 4σ honeypots.
    assert abs(served - rate * len(order)) <= 4 * math.sqrt(len(order) * rate * (1 - rate)), served
    with session_scope() as session:
        # Honeypots spend no budget, deliver no label and hold no purchase.
        assert session.query(Purchase).filter(Purchase.annotation_project_id == pid).count() == real
        assert all(t.purchase_id is None for t in session.query(Task).filter(Task.honeypot.is_(True)))
        quality = honeypots.results(session, pid, LabelSchema.model_validate(
            {"questions": [{"id": "answer", "type": "math_answer"}]}))
        assert len(quality) == served and sum(right for _, _, right in quality) == (served + 1) // 2
        stats = queue.project_stats(session, pid, now=now)
        assert (stats.tasks_done, stats.tasks_open) == (real, 0)


def test_no_honeypot_without_a_real_task_waiting_and_none_twice(sqlite_tenant: Tenant) -> None:
    pid = _project(sqlite_tenant, real=1, gold=3, rate=1.0)  # every lease is a honeypot turn
    with session_scope() as session:
        annotator_id = accounts.create_annotator(session, "ivo", "correct horse battery", project_ids=[pid]).id
    served: list[str] = []
    for k in range(6):
        with session_scope() as session:
            view = queue.next_task(session, pid, annotator_id, now=T0 + timedelta(seconds=k))
            if view is None:
                break
            served.append(view.prompt_id)
            queue.submit(session, pid, annotator_id, view.assignment_id,
                         Submission(answer="1", submission_id=f"s{k}"), now=T0 + timedelta(seconds=k))
    # Three honeypot turns while the real task waits, then the real one; then nothing (not a honeypot alone).
    assert served == ["h0", "h1", "h2", "r0"]
    with session_scope() as session:
        assert session.query(Assignment).filter(Assignment.annotator_id == annotator_id).count() == 4


def test_honeypots_before_any_step_leave_that_step_to_the_trainer(sqlite_tenant: Tenant) -> None:
    with session_scope() as session:
        project = AnnotationProject(
            project_id=sqlite_tenant.project_a, name="early", label_budget=1,
            label_schema={"questions": [{"id": "answer", "type": "math_answer"}]}, overlap_k=1,
            rollouts_per_prompt=2, policy=Policy.random, care_params={}, webhook_secret=projects.new_webhook_secret())
        session.add(project)
        session.flush()
        pid = project.id
    with session_scope() as session:
        out = honeypots.create(session, pid, HoneypotsIn.model_validate({"items": [
            {"prompt_id": "g0", "prompt_text": "gold", "answers": ["1", "2"], "gold": {"answer": "1"}}]}), T0)
        assert (out.created, out.step) == (1, 0)
    with session_scope() as session:  # the trainer's first step is still step 0
        project = locking.lock_project(session, pid)
        stored = ingestion.store_step(session, project, StepIn(step=0, groups=[
            RolloutGroupIn(prompt_id="r0", prompt_text="real", answers=["1", "2"])]), T0)
        assert [p.external_id for p in stored.prompts] == ["r0"]
    with session_scope() as session, pytest.raises(Conflict, match="already posted"):
        ingestion.store_step(session, locking.lock_project(session, pid), StepIn(step=0, groups=[
            RolloutGroupIn(prompt_id="r1", prompt_text="real", answers=["1", "2"])]), T0)

