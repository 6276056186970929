"""GET /v1/annotation/projects/{id}/quality on SQLite: a project with known labels, figures worked by hand."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from services.annotation import accounts, queue
from services.annotation.app import create_app, request_time
from services.annotation.models import AnnotatorRole
from services.annotation.schemas import Decision, Submission
from services.common.db import session_scope
from tests.conftest import Tenant
from tests.unit.annotation.test_api import BASE, T0, Clock, buy, create, h, seed_step

# No honeypots in these projects: nothing to grade (null, not 0).
NO_HONEYPOTS = {"honeypot_accuracy": None, "honeypot_n": 0}
PASSWORD = "correct horse battery"
# What each annotator answers, by prompt. q1 disagrees (a reviewer settles it as "5"); on q3
# alice writes \frac{8}{2}, which the queue's equivalence takes as bob's "4".
ALICE = {"q0": "4", "q1": "4", "q2": "5", "q3": "\\frac{8}{2}"}
BOB = {"q0": "4", "q1": "5", "q2": "5", "q3": "4"}
GOLD = [{"prompt_id": "q0", "answer": "4"}, {"prompt_id": "q1", "answer": "5"}, {"prompt_id": "q2", "answer": "4"}]


@pytest.fixture
def client(sqlite_tenant: Tenant) -> Iterator[TestClient]:
    app = create_app()
    app.dependency_overrides[request_time] = Clock()
    with TestClient(app) as test_client:
        yield test_client


def account(project_id: str, username: str, role: AnnotatorRole = AnnotatorRole.annotator) -> str:
    with session_scope() as session:
        return accounts.create_annotator(session, username, PASSWORD, role=role, project_ids=[project_id]).id


def label_all(project_id: str, annotator_id: str, answers: dict[str, str]) -> list[str]:
    """Take and answer every task the queue offers this annotator; returns the prompt ids in order."""
    seen: list[str] = []
    with session_scope() as session:
        while (view := queue.next_task(session, project_id, annotator_id, now=T0)) is not None:
            seen.append(view.prompt_id)
            queue.submit(session, project_id, annotator_id, view.assignment_id,
                         Submission(submission_id=f"{annotator_id}-{view.prompt_id}", answer=answers[view.prompt_id]),
                         now=T0)
    return seen


def adjudicate_all(project_id: str, reviewer_id: str, answer: str) -> int:
    with session_scope() as session:
        disputed = queue.adjudication_queue(session, project_id).data
        for view in disputed:
            queue.adjudicate(session, project_id, reviewer_id, view.task_id, Decision(answer=answer), now=T0)
    return len(disputed)


def known_project(client: TestClient, tenant: Tenant) -> tuple[str, dict[str, str]]:
    """Four tasks labelled by alice and bob (overlap 2), one by carol alone; q1 adjudicated; a key for q0–q2."""
    pid = str(create(client, tenant, overlap_k=2)["id"])
    seed_step(pid, {f"q{i}": ["4", "4", "5", None] for i in range(4)})
    assert buy(client, tenant, pid, [f"q{i}" for i in range(4)]).status_code == 201
    ids = {name: account(pid, name) for name in ("alice", "bob", "carol")}
    ids["rita"] = account(pid, "rita", AnnotatorRole.reviewer)
    assert sorted(label_all(pid, ids["alice"], ALICE)) == ["q0", "q1", "q2", "q3"]
    # bob first says "4" on q2, takes it back, and answers "5": only the live label counts.
    with session_scope() as session:
        served = []
        while (view := queue.next_task(session, pid, ids["bob"], now=T0)) is not None:
            served.append(view.prompt_id)
            first = "4" if view.prompt_id == "q2" else BOB[view.prompt_id]
            queue.submit(session, pid, ids["bob"], view.assignment_id,
                         Submission(submission_id=f"bob-{view.prompt_id}", answer=first), now=T0)
            if view.prompt_id == "q2":
                again = queue.undo_last(session, pid, ids["bob"], now=T0).task
                queue.submit(session, pid, ids["bob"], again.assignment_id,
                             Submission(submission_id="bob-q2-again", answer="5"), now=T0)
    assert sorted(served) == ["q0", "q1", "q2", "q3"]
    assert adjudicate_all(pid, ids["rita"], "5") == 1
    seed_step(pid, {"q4": ["7", "7", "7", "7"]}, step=1)
    assert buy(client, tenant, pid, ["q4"], step=1).status_code == 201
    assert label_all(pid, ids["carol"], {"q4": "7"}) == ["q4"]  # one label of two: not comparable yet
    put = client.put(f"{BASE}/{pid}/answer-key", json={"entries": GOLD}, headers=h(tenant, "admin"))
    assert put.status_code == 200
    return pid, ids


def test_quality_of_a_project_with_known_labels(client: TestClient, sqlite_tenant: Tenant) -> None:
    pid, ids = known_project(client, sqlite_tenant)
    got = client.get(f"{BASE}/{pid}/quality", headers=h(sqlite_tenant, "admin"))
    assert got.status_code == 200, got.text
    body: dict[str, Any] = got.json()
    # Values per task (q0…q3): {4,4}, {4,5}, {5,5}, {\frac{8}{2} ×2} (one cluster, named by its first answer).
    # alpha: o_44 = 2, o_45 = o_54 = 1, o_55 = 2, o_ff = 2; n_4 = 3, n_5 = 3, n_f = 2, n = 8.
    #   D_o = 2/8; D_e = 2·(3·3 + 3·2 + 3·2)/(8·7) = 42/56; alpha = 1 − 0.25/0.75 = 2/3.
    assert body["krippendorff_alpha"] == {"value": pytest.approx(2 / 3), "items": 4, "labels": 8, "note": None}
    # Cohen: p_o = 3/4; alice 4:2, 5:1, f:1 and bob 4:1, 5:2, f:1 → p_e = (2 + 2 + 1)/16 = 5/16;
    #   kappa = (3/4 − 5/16)/(11/16) = 7/11.
    assert body["cohen_kappa"] == {"value": pytest.approx(7 / 11), "items": 4, "labels": 8, "note": None}
    # Fleiss: P_i = 1, 0, 1, 1 → P̄ = 3/4; p = 3/8, 3/8, 2/8 → P̄_e = 22/64; kappa = (3/4 − 22/64)/(42/64) = 13/21.
    assert body["fleiss_kappa"] == {"value": pytest.approx(13 / 21), "items": 4, "labels": 8, "note": None}
    by_name = {a["username"]: a for a in body["annotators"]}
    assert [a["username"] for a in body["annotators"]] == ["alice", "bob", "carol"]  # rita only adjudicated
    # Gold q0 = 4, q1 = 5, q2 = 4: alice 4 ✓ 4 ✗ 5 ✗, bob 4 ✓ 5 ✓ 5 ✗. Adjudicated q1 = 5: alice ✗, bob ✓.
    assert by_name["alice"] == {"annotator_id": ids["alice"], "username": "alice", "labels": 4,
                                "gold_accuracy": pytest.approx(1 / 3), "gold_n": 3,
                                "adjudicated_accuracy": 0.0, "adjudicated_n": 1, **NO_HONEYPOTS}
    assert by_name["bob"] == {"annotator_id": ids["bob"], "username": "bob", "labels": 4,
                              "gold_accuracy": pytest.approx(2 / 3), "gold_n": 3,
                              "adjudicated_accuracy": 1.0, "adjudicated_n": 1, **NO_HONEYPOTS}
    # Nothing to compare carol with: null, not 0.
    assert by_name["carol"] == {"annotator_id": ids["carol"], "username": "carol", "labels": 1,
                                "gold_accuracy": None, "gold_n": 0, "adjudicated_accuracy": None, "adjudicated_n": 0,
                                **NO_HONEYPOTS}
    assert "\\frac" not in got.text  # figures only: no answer text is shown


def test_an_empty_project_has_null_figures_and_only_admins_see_quality(client: TestClient,
                                                                      sqlite_tenant: Tenant) -> None:
    pid = str(create(client, sqlite_tenant, overlap_k=2)["id"])
    body = client.get(f"{BASE}/{pid}/quality", headers=h(sqlite_tenant, "admin")).json()
    empty = {"value": None, "items": 0, "labels": 0, "note": "no task has two labels yet"}
    assert body == {"annotation_project_id": pid, "krippendorff_alpha": empty, "cohen_kappa": empty,
                    "fleiss_kappa": empty, "annotators": [],
                    "questions": [{"question_id": "answer", "type": "math_answer", "level": "nominal",
                                   "krippendorff_alpha": empty}], "honeypots": 0}
    for who, status in (("trainer", 403), ("annotator", 403), ("admin_b", 404)):
        assert client.get(f"{BASE}/{pid}/quality", headers=h(sqlite_tenant, who)).status_code == status
    assert client.get(f"{BASE}/{pid}/quality").status_code == 401
