"""Label quality on SQLite and PostgreSQL (the ``database`` fixture), through the HTTP API:

* per-question guidelines, versioned (every version kept), and the "read before labelling" gate per question;
* honeypots: gold tasks added with per-item statuses, served at the project's rate (replayed exactly from the
  seeded choice), shaped like any task, graded per annotator, and left out of agreement, stats, the browser,
  exports and purchases;
* Krippendorff's alpha for a ranking question (ordinal rank positions), hand-computed.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from services.annotation import honeypots, ingestion, locking
from services.annotation.models import AnnotationProject, Annotator, Assignment
from services.annotation.schemas import RolloutGroupIn, StepIn
from services.common.auth import create_api_key
from services.common.db import session_scope
from services.common.models import ApiKey, Project, Role
from tests.conftest import Tenant, bearer, make_tenant

BASE = "/v1/annotation/projects"
T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
QUESTIONS: list[dict[str, Any]] = [
    {"id": "answer", "type": "math_answer", "guidelines": "Simplify: write $\\frac{1}{2}$, not $\\frac{2}{4}$."},
    {"id": "topic", "type": "single_label", "choices": ["algebra", "geometry"], "guidelines": "The main topic."},
    {"id": "order", "type": "ranking", "items": ["x", "y", "z"], "required": False},
]
REAL = [f"r{i}" for i in range(6)]


@pytest.fixture
def api(database: str) -> Iterator[tuple[TestClient, Tenant]]:
    from services.annotation.app import create_app

    tenant = make_tenant()
    with TestClient(create_app()) as client:
        yield client, tenant


def h(tenant: Tenant, who: str) -> dict[str, str]:
    return bearer(tenant.keys[who])


def second_annotator(tenant: Tenant) -> dict[str, str]:
    with session_scope() as session:
        project = session.get(Project, tenant.project_a)
        assert project is not None
        _, key = create_api_key(session, role=Role.annotator, projects=[project])
    return bearer(key)


def make_project(client: TestClient, tenant: Tenant) -> str:
    made = client.post(BASE, headers=h(tenant, "admin"), json={
        "project_id": tenant.project_a, "name": "quality", "label_budget": 10, "rollouts_per_prompt": 2,
        "overlap_k": 2, "policy": "random", "guidelines_required": True, "honeypot_rate": 0.5,
        "label_schema": {"questions": QUESTIONS}})
    assert made.status_code == 201, made.text
    assert made.json()["honeypot_rate"] == 0.5
    pid = str(made.json()["id"])
    with session_scope() as session:
        project = locking.lock_project(session, pid)
        ingestion.store_step(session, project, StepIn(step=0, groups=[
            RolloutGroupIn(prompt_id=p, prompt_text=f"What is 2+2? ({p})", answers=["4", "5"]) for p in REAL]), T0)
    bought = client.post(f"{BASE}/{pid}/purchases", headers=h(tenant, "trainer"), json={"step": 0, "prompt_ids": REAL})
    assert bought.status_code == 201, bought.text
    return pid


def test_question_guidelines_are_versioned_and_gate_each_annotator(api: tuple[TestClient, Tenant]) -> None:
    client, tenant = api
    pid = make_project(client, tenant)
    admin, alice = h(tenant, "admin"), h(tenant, "annotator")
    url = f"{BASE}/{pid}/questions/topic/guidelines"
    first = client.get(url, headers=alice).json()
    assert (first["version"], first["guidelines"], [v["version"] for v in first["versions"]]) == (1, "The main topic.", [1])
    changed = client.put(url, headers=admin, json={"guidelines": "The main topic; **geometry** wins ties."}).json()
    assert changed["version"] == 2 and [(v["version"], v["text"]) for v in changed["versions"]] == [
        (2, "The main topic; **geometry** wins ties."), (1, "The main topic.")]  # the old text is kept
    assert client.put(url, headers=admin, json={"guidelines": "The main topic; **geometry** wins ties."}).json()[
        "version"] == 2  # the same text again: no new version
    assert client.put(url, headers=alice, json={"guidelines": "x"}).status_code == 403
    missing = client.put(f"{BASE}/{pid}/questions/nope/guidelines", headers=admin, json={"guidelines": "x"})
    assert missing.status_code == 404 and missing.json()["error"]["field"] == "question_id"
    schema = client.get(f"{BASE}/{pid}", headers=admin).json()["label_schema"]
    assert schema["questions"][1]["guidelines"] == "The main topic; **geometry** wins ties."

    gated = client.post(f"{BASE}/{pid}/queue/next", headers=alice)
    assert gated.status_code == 409 and gated.json()["error"]["code"] == "guidelines_unconfirmed"
    assert gated.json()["error"]["field"] == "questions.answer"
    state = client.get(f"{BASE}/{pid}/guidelines", headers=alice).json()
    assert state["needs_confirmation"] is True
    assert [(q["question_id"], q["version"], q["confirmed_version"]) for q in state["questions"]] == [
        ("answer", 1, None), ("topic", 2, None)]
    stale = client.post(f"{BASE}/{pid}/guidelines/confirm", headers=alice, json={"questions": {"answer": 1, "topic": 1}})
    assert stale.status_code == 409
    assert (stale.json()["error"]["code"], stale.json()["error"]["field"]) == ("guidelines_changed", "questions.topic")
    nothing = client.post(f"{BASE}/{pid}/guidelines/confirm", headers=alice, json={})
    assert nothing.status_code == 422 and nothing.json()["error"]["field"] == "version"
    ok = client.post(f"{BASE}/{pid}/guidelines/confirm", headers=alice, json={"questions": {"answer": 1, "topic": 2}})
    assert ok.status_code == 204, ok.text
    assert client.post(f"{BASE}/{pid}/queue/next", headers=alice).status_code == 200
    # A new version asks again, and only for the question that changed.
    client.put(url, headers=admin, json={"guidelines": "Version three."})
    again = client.get(f"{BASE}/{pid}/guidelines", headers=alice).json()
    assert again["needs_confirmation"] is True
    assert [(q["question_id"], q["version"], q["confirmed_version"]) for q in again["questions"]] == [
        ("answer", 1, 1), ("topic", 3, 2)]
    assert client.post(f"{BASE}/{pid}/queue/next", headers=alice).json()["error"]["field"] == "questions.topic"


def _values(answer: Any, topic: str, order: list[int]) -> dict[str, Any]:
    return {"answer": answer, "topic": topic, "order": order}


# What each annotator answers: honeypot h0's hidden answer is 4 + algebra, h1's is candidate 1 ("5").
ANSWERS = {
    "alice": {"h0": _values({"answer": "4"}, "algebra", [0, 1, 2]), "h1": _values({"answer": "5"}, "geometry", [0, 1, 2])},
    "bob": {"h0": _values({"answer": "4"}, "geometry", [0, 1, 2]),
            "h1": _values({"answer": "\\frac{10}{2}"}, "algebra", [2, 1, 0])},
}


def _real(who: str, prompt_id: str) -> dict[str, Any]:
    if prompt_id == "r5" and who == "bob":
        return _values({"candidate": 0}, "algebra", [1, 0, 2])  # the one disagreement: the ranking
    return _values({"candidate": 0}, "algebra", [0, 1, 2])


def _label_everything(client: TestClient, pid: str, who: str, headers: dict[str, str]) -> tuple[list[str], str]:
    """Lease and answer until the queue is empty: the prompt ids in lease order, and the annotator's id."""
    served: list[str] = []
    assignments: list[str] = []
    real_keys: set[str] | None = None
    gold_keys: set[str] | None = None
    for _ in range(20):
        lease = client.post(f"{BASE}/{pid}/queue/next", headers=headers)
        if lease.status_code == 204:
            assert real_keys == gold_keys  # a honeypot's lease has exactly the fields of a real one
            with session_scope() as session:
                assignment = session.get(Assignment, assignments[0])
                assert assignment is not None
                return served, assignment.annotator_id
        assert lease.status_code == 200, lease.text
        view = lease.json()
        prompt_id = view["prompt_id"]
        served.append(prompt_id)
        assignments.append(view["assignment_id"])
        assert "honeypot" not in lease.text and "gold" not in lease.text
        keys = set(view)
        if prompt_id.startswith("h"):
            gold_keys = keys
        else:
            real_keys = keys
        assert view["overlap_k"] == 2 and view["priority"] == 0.0 and view["n"] == 2 and view["step"] == 0
        values = ANSWERS[who][prompt_id] if prompt_id.startswith("h") else _real(who, prompt_id)
        done = client.post(f"{BASE}/{pid}/assignments/{view['assignment_id']}/submit", json={"values": values},
                           headers={**headers, "Idempotency-Key": view["assignment_id"]})
        assert done.status_code == 201, done.text
        if prompt_id.startswith("h"):
            assert done.json()["task_status"] == "open"  # a honeypot is never done nor disputed
    raise AssertionError(f"the queue never ran dry: {served}")


def _expected_order(seed: str, annotator_id: str, rate: float, real: int, gold: int) -> list[str]:
    """The lease order honeypots.honeypot_turn implies: a turn serves a honeypot while one is left and a real
    task is waiting too; otherwise the real task."""
    out: list[str] = []
    real_left, gold_left = real, gold
    while real_left:
        if honeypots.honeypot_turn(seed, annotator_id, len(out), rate) and gold_left:
            out.append("gold")
            gold_left -= 1
        else:
            out.append("real")
            real_left -= 1
    return out


def test_honeypots_are_served_at_the_rate_graded_and_kept_out_of_real_labels(
        api: tuple[TestClient, Tenant]) -> None:
    client, tenant = api
    pid = make_project(client, tenant)
    admin = h(tenant, "admin")
    client.patch(f"{BASE}/{pid}", headers=admin, json={"guidelines_required": False})
    gold = client.post(f"{BASE}/{pid}/honeypots", headers=admin, json={"items": [
        {"prompt_id": "h0", "prompt_text": "What is 2+2? (h0)", "answers": ["4", "5"],
         "gold": {"answer": "4", "topic": "algebra"}},
        {"prompt_id": "h1", "prompt_text": "What is 2+3? (h1)", "answers": ["4", "5"], "gold": {"answer": {"candidate": 1}}},
        {"prompt_id": "h2", "prompt_text": "x", "answers": ["4", "5"], "gold": {"nope": 1}},
        {"prompt_id": "r0", "prompt_text": "x", "answers": ["4", "5"], "gold": {"topic": "algebra"}},
        {"prompt_id": "h3", "prompt_text": "x", "answers": ["4"], "gold": {"topic": "algebra"}},
        {"prompt_id": "h4", "prompt_text": "x", "answers": ["4", "5"], "gold": {"topic": "maths"}},
    ]})
    assert gold.status_code == 201, gold.text
    body = gold.json()
    assert (body["created"], body["rejected"], body["step"]) == (2, 4, 0)  # the newest step, like its real tasks
    assert [(i["status"], i["field"]) for i in body["items"]] == [
        ("ok", None), ("ok", None), ("invalid_input", "items[2].gold.nope"), ("conflict", "items[3].prompt_id"),
        ("invalid_input", "items[4].answers"), ("invalid_input", "items[5].gold.topic")]
    assert client.post(f"{BASE}/{pid}/honeypots", headers=h(tenant, "annotator"), json={"items": [
        {"prompt_id": "h9", "prompt_text": "x", "answers": ["4", "5"], "gold": {"topic": "algebra"}}]}).status_code == 403
    bought = client.post(f"{BASE}/{pid}/purchases", headers=h(tenant, "trainer"), json={"step": 0, "prompt_ids": ["h0"]})
    assert bought.status_code == 409 and bought.json()["error"]["code"] == "honeypot"

    people = {"alice": h(tenant, "annotator"), "bob": second_annotator(tenant)}
    ids = {who: annotator_id(client, pid, headers) for who, headers in people.items()}
    # The first seed under which each of them is served at least one honeypot: a deterministic test.
    seed = next(f"seed-{i}" for i in range(100) if all(
        "gold" in _expected_order(f"seed-{i}", ids[who], 0.5, real=len(REAL), gold=2) for who in people))
    with session_scope() as session:
        project = session.get(AnnotationProject, pid)
        assert project is not None
        project.honeypot_seed = seed
    runs = {who: _label_everything(client, pid, who, headers) for who, headers in people.items()}
    served = {who: order for who, (order, _) in runs.items()}
    for who, (order, leased_by) in runs.items():
        assert leased_by == ids[who]
        expected = _expected_order(seed, leased_by, 0.5, real=len(REAL), gold=2)
        assert ["gold" if p.startswith("h") else "real" for p in order] == expected, (who, order)
        assert sorted(p for p in order if p.startswith("r")) == REAL

    quality = client.get(f"{BASE}/{pid}/quality", headers=admin).json()
    assert quality["honeypots"] == 2
    graded = {a["annotator_id"]: (a["labels"], a["honeypot_accuracy"], a["honeypot_n"]) for a in quality["annotators"]}
    served_gold = {who: sum(p.startswith("h") for p in order) for who, order in served.items()}
    assert sorted(graded.values()) == sorted([
        (6, _share(served["alice"], {"h0": True, "h1": True}), served_gold["alice"]),
        (6, _share(served["bob"], {"h0": False, "h1": True}), served_gold["bob"])])
    # Agreement over the six real tasks only (honeypot labels left out): the answer and topic agree everywhere.
    assert quality["krippendorff_alpha"]["items"] == 6
    figures = {q["question_id"]: q for q in quality["questions"]}
    assert figures["topic"]["krippendorff_alpha"]["items"] == 6
    # Ranking: 18 (task, item) units of two ranks; 15 agree, r5 swaps items 0 and 1. Pooled n_1 = n_2 = n_3 = 12,
    # n = 36; o_12 = o_21 = 2; ordinal δ²_12 = (24 − 12)² = 144, δ²_13 = (36 − 12)² = 576, δ²_23 = 144.
    # D_o = 4·144/36 = 16; D_e = 2·144·(144 + 576 + 144)/(36·35) = 248832/1260; α = 1 − 16·1260/248832 = 397/432.
    assert figures["order"]["level"] == "ordinal"
    assert figures["order"]["krippendorff_alpha"] == {"value": pytest.approx(397 / 432), "items": 6, "labels": 12,
                                                      "note": None}

    listing = client.get(f"{BASE}/{pid}/honeypots", headers=admin).json()
    assert listing["honeypot_rate"] == 0.5
    rows = {r["prompt_id"]: r for r in listing["data"]}
    assert set(rows) == {"h0", "h1"} and "gold" not in str(listing) and "algebra" not in str(listing)
    stats = client.get(f"{BASE}/{pid}/stats", headers=admin).json()
    # With a math_answer question only its answer decides (queue._complete_if_ready): all six real tasks are done,
    # and the two honeypots are in no count.
    assert (stats["tasks_open"], stats["tasks_done"], stats["tasks_in_adjudication"]) == (0, 6, 0)
    browsed = client.get(f"{BASE}/{pid}/tasks", headers=h(tenant, "trainer")).json()["data"]
    assert sorted(r["prompt_id"] for r in browsed) == REAL
    for kind in ("final", "raw"):
        export = client.get(f"{BASE}/{pid}/exports/labels", params={"format": "jsonl", "kind": kind},
                            headers=h(tenant, "trainer"))
        assert export.status_code == 200, export.text
        assert "h0" not in export.text and "h1" not in export.text and "r0" in export.text


def _share(order: list[str], right: dict[str, bool]) -> float | None:
    graded = [right[p] for p in order if p.startswith("h")]
    return sum(graded) / len(graded) if graded else None


def annotator_id(client: TestClient, pid: str, headers: dict[str, str]) -> str:
    """The annotator account of an API key (made by its first call, here ``GET …/guidelines``)."""
    assert client.get(f"{BASE}/{pid}/guidelines", headers=headers).status_code == 200
    clear = headers["Authorization"].removeprefix("Bearer ")
    with session_scope() as session:
        found = session.scalar(select(Annotator.id).join(ApiKey, ApiKey.id == Annotator.api_key_id)
                               .where(ApiKey.prefix == clear[:10]))
    assert found is not None
    return str(found)
