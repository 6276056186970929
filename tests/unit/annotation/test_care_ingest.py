"""Every policy through ingest_step on SQLite: budget, purchases, weights and the saved selector state."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select

from services.annotation import answer_key, projects, selection, steps
from services.annotation.models import AnnotationProject, AnswerSource, Policy, Purchase, SelectorState
from services.annotation.schemas import RolloutGroupIn, StepIn
from services.common.db import session_scope
from tests.conftest import Tenant

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def make_project(tenant: Tenant, policy: Policy, budget: int, care_params: dict | None = None) -> str:
    with session_scope() as session:
        project = AnnotationProject(
            project_id=tenant.project_a, name=f"care-{policy.value}", label_budget=budget,
            label_schema={"free_form": True, "candidates": True, "ambiguous": True, "rationale": "optional"},
            rollouts_per_prompt=4, policy=policy, care_params=care_params or {},
            answer_source=AnswerSource.answer_key, webhook_secret=projects.new_webhook_secret())
        session.add(project)
        session.flush()
        answer_key.upload(session, project.id, [(f"s{s}-p{i}", str(i)) for s in range(3) for i in range(10)])
        return project.id


def step(step_no: int, with_features: bool = True) -> StepIn:
    groups = []
    for i in range(10):
        # prompt i: key answer str(i); majority correct for even i, wrong ("x") for odd i
        answers: list[str | None] = [str(i), str(i), str(i), "x"] if i % 2 == 0 else ["x", "x", str(i), None]
        features = {"prompt_features": [float(i % 2), 1.0, -1.0],
                    "rollout_features": [[float(j == 2), 0.5, float(i)] for j in range(4)]} if with_features else {}
        groups.append(RolloutGroupIn(prompt_id=f"s{step_no}-p{i}", prompt_text=f"q{i}", answers=answers,
                                     response_lengths=[100, 200, 300, 400],
                                     mean_token_probs=[0.5 + 0.04 * i] * 4, **features))
    return StepIn(step=step_no, groups=groups)


@pytest.mark.parametrize("policy", list(Policy))
def test_every_policy_buys_within_budget_and_saves_its_state(sqlite_tenant: Tenant, policy: Policy) -> None:
    project_id = make_project(sqlite_tenant, policy, budget=3, care_params={"warmup_steps": 1, "seed": 1})
    outs = []
    for step_no in range(3):
        with session_scope() as session:
            outs.append(steps.ingest_step(session, project_id, step(step_no), now=T0))
    # ⌈0.2 · 10⌉ = 2 per step; the budget of 3 runs out at step 1.
    assert [o.purchased for o in outs] == [2, 1, 0]
    assert [o.budget_exhausted for o in outs] == [False, True, True]
    with session_scope() as session:
        assert session.scalar(select(func.count(Purchase.id)).where(Purchase.annotation_project_id == project_id)) == 3
        state = session.get(SelectorState, project_id)
        assert state is not None and state.policy == policy.value and len(state.state) > 0
    for out in outs:
        for group in out.groups:
            if group.bought:
                assert group.label_status == "labelled" and group.advantage_weight == 1.0
            elif policy is Policy.care:
                expected = min(max(group.score or 0.0, 0.0), 1.0) if group.reliable else 0.0
                assert group.advantage_weight == pytest.approx(expected)
                # Every group splits its 4 votes, so S ≥ cost(0) = √4 = 2 and reliable means weight 1.
                assert group.advantage_weight == (1.0 if group.reliable else 0.0)
            else:
                assert group.advantage_weight == 0.0  # mask_non_gt: baselines train only on what they bought
    if policy is Policy.oracle_cag:  # the oracle buys only wrong-majority prompts (odd ids)
        bought = [g.prompt_id for o in outs for g in o.groups if g.bought]
        assert all(int(p.rsplit("p", 1)[1]) % 2 == 1 for p in bought)
    if policy is Policy.care:
        assert any(g.reliable for g in outs[2].groups)  # gate open after the 1-step warm-up
        assert all(g.reliability is not None for g in outs[0].groups)


def test_care_trains_on_bought_labels_and_marks_them_observed(sqlite_tenant: Tenant) -> None:
    project_id = make_project(sqlite_tenant, Policy.care, budget=10)
    for step_no in range(2):
        with session_scope() as session:
            steps.ingest_step(session, project_id, step(step_no, with_features=False), now=T0)
    with session_scope() as session:
        rows = list(session.scalars(select(Purchase).where(Purchase.annotation_project_id == project_id)))
        assert len(rows) == 4 and all(p.observed_at is not None for p in rows)
        project = session.get(AnnotationProject, project_id)
        assert project is not None
        selector = selection.load_selector(session, project)
        assert len(selector.core.buffer) == 4 and selector.core.steps_seen == 2
        assert selector.core.stage1 is not None and selector.core.feature_dim == 0
