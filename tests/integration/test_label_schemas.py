"""Label schemas through the annotation API, on SQLite and PostgreSQL (the ``database`` fixture).

A project with every question type, submits with ``values``, refusals naming the field, the label feed
and adjudication carrying values, pre-0014 projects read (and migrated) as one math_answer question,
and the preference-pair export read back with rubric_rm's own ``PreferencePair``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from services.annotation import ingestion, locking
from services.annotation.app import create_app
from services.annotation.schemas import RolloutGroupIn, StepIn
from services.common.auth import create_api_key
from services.common.db import session_scope
from services.common.models import Project, Role
from services.rubric_rm.schemas import PreferencePair
from tests.conftest import Tenant, bearer, make_tenant

T0 = datetime(2026, 4, 1, 9, 0, tzinfo=UTC)
BASE = "/v1/annotation/projects"
QUESTIONS: list[dict[str, Any]] = [
    {"id": "topic", "type": "single_label", "prompt": "Topic?", "choices": ["algebra", "geometry"]},
    {"id": "flags", "type": "multi_label", "choices": ["typo", "unsafe"], "required": False},
    {"id": "quality", "type": "rating", "min": 1, "max": 5, "labels": {"1": "bad", "5": "great"}},
    {"id": "order", "type": "ranking"},
    {"id": "note", "type": "free_text", "max_length": 50, "required": False},
    {"id": "pref", "type": "preference_pair", "rubric_hints": ["Is it correct?"]},
]
# prompt id → (the rollouts' answers, their full completions)
ROLLOUTS = {
    "p0": (["4", "5", "4", "4"], ["so it is 4", "it is 5", "four: 4", "4"]),
    "p1": (["7", "7", "8", None], ["7 it is", "seven, 7", "8", "no idea"]),
}


@pytest.fixture
def api(database: str) -> Iterator[tuple[TestClient, Tenant]]:
    tenant = make_tenant()
    with TestClient(create_app()) as client:
        yield client, tenant


def h(tenant: Tenant, who: str) -> dict[str, str]:
    return bearer(tenant.keys[who])


def make(client: TestClient, tenant: Tenant, name: str, **fields: Any) -> dict[str, Any]:
    body = {"project_id": tenant.project_a, "name": name, "label_budget": 10, "rollouts_per_prompt": 4,
            "policy": "random", **fields}
    made = client.post(BASE, json=body, headers=h(tenant, "admin"))
    assert made.status_code == 201, made.text
    return made.json()


def seed_and_buy(client: TestClient, tenant: Tenant, pid: str) -> None:
    with session_scope() as session:
        project = locking.lock_project(session, pid)
        ingestion.store_step(session, project, StepIn(step=0, groups=[
            RolloutGroupIn(prompt_id=key, prompt_text=f"What is {key}?", answers=answers, completions=completions)
            for key, (answers, completions) in ROLLOUTS.items()]), T0)
    bought = client.post(f"{BASE}/{pid}/purchases", json={"step": 0, "prompt_ids": list(ROLLOUTS)},
                         headers=h(tenant, "trainer"))
    assert bought.status_code == 201, bought.text


def second_annotator(tenant: Tenant) -> dict[str, str]:
    with session_scope() as session:
        project = session.get(Project, tenant.project_a)
        _, key = create_api_key(session, role=Role.annotator, projects=[project])
    return bearer(key)


def submit(client: TestClient, pid: str, who: dict[str, str], lease: dict[str, Any], key: str, **body: Any):
    return client.post(f"{BASE}/{pid}/assignments/{lease['assignment_id']}/submit", json=body,
                       headers={**who, "Idempotency-Key": key})


def test_every_question_type_round_trips_and_bad_values_name_the_field(api: tuple[TestClient, Tenant]) -> None:
    client, tenant = api
    made = make(client, tenant, "typed", label_schema={"questions": QUESTIONS})
    pid = made["id"]
    assert [q["type"] for q in made["label_schema"]["questions"]] == [q["type"] for q in QUESTIONS]
    got = client.get(f"{BASE}/{pid}", headers=h(tenant, "admin")).json()
    assert got["label_schema"] == made["label_schema"]
    assert got["label_schema"]["questions"][2]["step"] == 1.0 and got["label_schema"]["questions"][4]["max_length"] == 50

    # A bad schema on create and on update: 422 naming the exact field, nothing changed.
    bad = [*QUESTIONS[:1], {"id": "b", "type": "single_label", "choices": ["only"]}]
    refused = client.post(BASE, json={"project_id": tenant.project_a, "name": "bad", "label_budget": 1,
                                      "label_schema": {"questions": bad}}, headers=h(tenant, "admin"))
    assert refused.status_code == 422 and refused.json()["error"]["field"] == "label_schema.questions[1].choices"
    patched = client.patch(f"{BASE}/{pid}", json={"label_schema": {"questions": [
        {"id": "r", "type": "rating", "min": 3, "max": 1}]}}, headers=h(tenant, "admin"))
    assert patched.status_code == 422 and patched.json()["error"]["field"] == "label_schema.questions[0]"

    # CARE learns from the math answer: a CARE project without a math_answer question is refused.
    care = client.post(BASE, json={"project_id": tenant.project_a, "name": "care", "label_budget": 1,
                                   "label_schema": {"questions": QUESTIONS[:1]}}, headers=h(tenant, "admin"))
    assert care.status_code == 422 and care.json()["error"]["field"] == "label_schema"
    to_care = client.patch(f"{BASE}/{pid}", json={"policy": "care"}, headers=h(tenant, "admin"))
    assert to_care.status_code == 422 and to_care.json()["error"]["field"] == "label_schema"
    assert client.get(f"{BASE}/{pid}", headers=h(tenant, "admin")).json()["policy"] == "random"

    seed_and_buy(client, tenant, pid)
    who = h(tenant, "annotator")
    lease = client.post(f"{BASE}/{pid}/queue/next", headers=who).json()
    assert lease["prompt_id"] == "p0"
    # The pair: the first completion of each of the two largest clusters ("4": rollouts 0, 2, 3; "5": rollout 1).
    assert lease["pairs"] == {"pref": {"a": "so it is 4", "b": "it is 5"}}
    assert [c["answer"] for c in lease["candidates"]] == ["4", "5"]
    good = {"topic": "algebra", "flags": ["unsafe"], "quality": 4, "order": [1, 0], "note": "fine",
            "pref": {"choice": "A", "rationale": "right answer"}}
    for values, field in [({**good, "quality": 6}, "values.quality"), ({**good, "order": [0, 0]}, "values.order"),
                          ({**good, "pref": "C"}, "values.pref"), ({k: v for k, v in good.items() if k != "topic"},
                                                                   "values.topic"),
                          ({**good, "extra": 1}, "values.extra")]:
        answer = submit(client, pid, who, lease, f"bad-{field}", values=values)
        assert answer.status_code == 422 and answer.json()["error"]["field"] == field, answer.text
    # A top-level math answer in a project without a math_answer question names the field too.
    top = submit(client, pid, who, lease, "top", answer="4")
    assert top.status_code == 422 and top.json()["error"]["field"] == "answer"
    done = submit(client, pid, who, lease, "good", values=good)
    assert done.status_code == 201, done.text
    assert done.json()["values"] == {**good, "quality": 4.0} and done.json()["answer"] is None
    assert done.json()["task_status"] == "done"

    feed = client.get(f"{BASE}/{pid}/labels", headers=h(tenant, "trainer")).json()
    [label] = feed["data"]
    assert label["prompt_id"] == "p0" and label["values"]["pref"] == {"choice": "A", "rationale": "right answer"}

    exported = client.get(f"{BASE}/{pid}/exports/preference-pairs", headers=h(tenant, "trainer"))
    assert exported.status_code == 200 and exported.headers["content-type"].startswith("application/x-ndjson")
    [line] = [json.loads(row) for row in exported.text.splitlines()]
    pair = PreferencePair.model_validate(line)  # exactly what rubric_rm's pipeline reads
    assert (pair.instruction, pair.chosen, pair.rejected, pair.instruction_id) == (
        "What is p0?", "so it is 4", "it is 5", "p0")


def test_disagreement_goes_to_adjudication_with_values(api: tuple[TestClient, Tenant]) -> None:
    client, tenant = api
    pid = make(client, tenant, "pairs", overlap_k=2, label_schema={"questions": [
        {"id": "pref", "type": "preference_pair", "rationale": "off"},
        {"id": "why", "type": "free_text", "required": False}]})["id"]
    seed_and_buy(client, tenant, pid)
    one, two = h(tenant, "annotator"), second_annotator(tenant)
    for who, choices in ((one, ("A", "A")), (two, ("A", "B"))):
        for index, choice in enumerate(choices):
            lease = client.post(f"{BASE}/{pid}/queue/next", headers=who).json()
            out = submit(client, pid, who, lease, f"{choice}-{index}", values={"pref": choice, "why": f"w{index}"})
            assert out.status_code == 201, out.text
    # p0: A and A (the free text differs, which does not count) → done; p1: A and B → adjudication.
    pending = client.get(f"{BASE}/{pid}/adjudications", headers=h(tenant, "admin")).json()["data"]
    [task] = pending
    assert task["prompt_id"] == "p1" and sorted(a["values"]["pref"]["choice"] for a in task["annotations"]) == ["A", "B"]
    assert task["pairs"]["pref"] == {"a": "7 it is", "b": "8"}
    wrong = client.post(f"{BASE}/{pid}/tasks/{task['task_id']}/adjudication", json={"values": {"pref": "X"}},
                        headers=h(tenant, "admin"))
    assert wrong.status_code == 422 and wrong.json()["error"]["field"] == "values.pref"
    settled = client.post(f"{BASE}/{pid}/tasks/{task['task_id']}/adjudication", json={"values": {"pref": "B"}},
                          headers=h(tenant, "admin"))
    assert settled.status_code == 201 and settled.json()["values"] == {"pref": {"choice": "B", "rationale": None}}
    lines = [json.loads(row) for row in client.get(f"{BASE}/{pid}/exports/preference-pairs",
                                                    headers=h(tenant, "trainer")).text.splitlines()]
    assert [(row["instruction_id"], row["winner"]) for row in lines] == [("p0", "A"), ("p1", "B")]
    quality = client.get(f"{BASE}/{pid}/quality", headers=h(tenant, "admin")).json()
    # nominal alpha over (A, A), (A, B): o_AA = 2, o_AB = o_BA = 1, n_A = 3, n_B = 1, n = 4;
    # D_o = 2/4, D_e = 2·3·1 / (4·3) = 1/2, α = 1 − (1/2)/(1/2) = 0
    pref = quality["questions"][0]
    assert pref["level"] == "nominal" and pref["krippendorff_alpha"]["value"] == pytest.approx(0.0)
    assert quality["questions"][1]["krippendorff_alpha"]["note"] == "free text is not compared"
    assert quality["krippendorff_alpha"]["value"] is None


def test_math_projects_keep_working_and_old_rows_read_as_math_answer(api: tuple[TestClient, Tenant]) -> None:
    client, tenant = api
    plain = make(client, tenant, "math")
    assert [q["type"] for q in plain["label_schema"]["questions"]] == ["math_answer"]
    # A math answer plus a rating: the top-level answer still fills `answer` (CARE, agreement, the feed).
    mixed = make(client, tenant, "mixed", label_schema={"questions": [
        {"id": "answer", "type": "math_answer", "rationale": "off"},
        {"id": "difficulty", "type": "rating", "min": 1, "max": 3}]})["id"]
    seed_and_buy(client, tenant, mixed)
    who = h(tenant, "annotator")
    lease = client.post(f"{BASE}/{mixed}/queue/next", headers=who).json()
    missing = submit(client, mixed, who, lease, "m0", candidate=0)
    assert missing.status_code == 422 and missing.json()["error"]["field"] == "values.difficulty"
    too_far = submit(client, mixed, who, lease, "m1", candidate=9, values={"difficulty": 2})
    assert too_far.status_code == 422 and too_far.json()["error"]["field"] == "candidate"
    twice = submit(client, mixed, who, lease, "m2", candidate=0, values={"answer": {"candidate": 0}, "difficulty": 2})
    assert twice.status_code == 422 and twice.json()["error"]["field"] == "values.answer"
    done = submit(client, mixed, who, lease, "m3", candidate=0, values={"difficulty": 2})
    assert done.status_code == 201 and done.json()["answer"] == "4"
    lease = client.post(f"{BASE}/{mixed}/queue/next", headers=who).json()
    via_values = submit(client, mixed, who, lease, "m4", values={"answer": "7", "difficulty": 3})
    assert via_values.status_code == 201 and via_values.json()["answer"] == "7"
    feed = client.get(f"{BASE}/{mixed}/labels", headers=h(tenant, "trainer")).json()["data"]
    assert [(x["label"], x["values"]["difficulty"]) for x in feed] == [("4", 2.0), ("7", 3.0)]

    # A project row written before 0014 (the flat schema, or none at all) reads as one math_answer question.
    with session_scope() as session:
        session.execute(text("UPDATE annotation_projects SET label_schema = :flat WHERE id = :id"),
                        {"flat": json.dumps({"free_form": False, "candidates": True, "ambiguous": True,
                                             "rationale": "required"}), "id": plain["id"]})
    old = client.get(f"{BASE}/{plain['id']}", headers=h(tenant, "admin")).json()["label_schema"]["questions"]
    assert [(q["id"], q["type"], q["free_form"], q["rationale"]) for q in old] == [
        ("answer", "math_answer", False, "required")]
    no_pairs = client.get(f"{BASE}/{plain['id']}/exports/preference-pairs", headers=h(tenant, "trainer"))
    assert no_pairs.status_code == 422 and no_pairs.json()["error"]["field"] == "question_id"


def test_migration_0014_turns_flat_schemas_into_questions_and_back(database: str) -> None:
    from services.common.migrate import downgrade, upgrade

    tenant = make_tenant()
    flat = {"free_form": True, "candidates": False, "ambiguous": True, "rationale": "off"}
    downgrade(revision="0013")
    with session_scope() as session:
        session.execute(text(
            "INSERT INTO annotation_projects (id, project_id, name, description, label_budget, labels_bought, "
            "label_schema, overlap_k, lease_seconds, rollouts_per_prompt, policy, care_params, answer_source, "
            "webhook_secret, guidelines, guidelines_version, guidelines_required, label_seq, lock_version, "
            "created_at) VALUES ('0' || :tail, :project, 'old', '', 1, 0, :schema, 1, 60, 4, 'random', '{}', "
            "'human', 's', '', 0, false, 0, 0, :at)"),
            {"tail": "1" * 31, "project": tenant.project_a, "schema": json.dumps(flat), "at": T0})
    upgrade()

    def stored() -> Any:
        with session_scope() as session:
            value = session.execute(text("SELECT label_schema FROM annotation_projects WHERE name = 'old'")).scalar()
        return json.loads(value) if isinstance(value, str) else value

    [question] = stored()["questions"]
    assert (question["id"], question["type"], question["candidates"], question["rationale"]) == (
        "answer", "math_answer", False, "off")
    downgrade(revision="0013")
    assert stored() == flat
    upgrade()
