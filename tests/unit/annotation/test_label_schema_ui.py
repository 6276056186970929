"""The web UI with a label schema (SQLite, no browser): the question forms post ``values`` and a refusal
comes back as a flash (PRG); the reviewer screen shows labels side by side and settles a dispute."""

from __future__ import annotations

import re
from typing import Any

from fastapi.testclient import TestClient

from services.annotation.label_schema import parse_schema
from services.annotation.models import AnnotatorRole
from services.annotation.routes_ui_tasks import values_from_form
from services.common.auth import create_api_key
from services.common.db import session_scope
from services.common.models import Project, Role
from tests.conftest import Tenant, bearer
from tests.unit.annotation.test_api import BASE, buy, create, h, seed_step
from tests.unit.annotation.test_webui_routes import add_account, app, client, clock, csrf_of, login  # noqa: F401

QUESTIONS: list[dict[str, Any]] = [
    {"id": "topic", "type": "single_label", "choices": ["algebra", "geometry"]},
    {"id": "flags", "type": "multi_label", "choices": ["typo", "unsafe"], "required": False},
    {"id": "quality", "type": "rating", "min": 0, "max": 1, "step": 0.5},
    {"id": "order", "type": "ranking"},
    {"id": "note", "type": "free_text", "required": False},
    {"id": "pref", "type": "preference_pair"},
]


def test_form_fields_become_values() -> None:
    schema = parse_schema({"questions": QUESTIONS})
    fields = {"q-topic": "algebra", "q-flags": [], "q-quality": "0.5", "q-order": "1,0", "q-note": "",
              "q-pref": "B", "q-pref-rationale": " why "}
    assert values_from_form(schema, fields) == {"topic": "algebra", "flags": [], "quality": "0.5",
                                                "order": [1, 0], "pref": {"choice": "B", "rationale": "why"}}
    assert values_from_form(schema, {"q-order": "1,x"})["order"] == "1,x"  # refused later, naming values.order


def test_the_task_page_renders_each_type_and_a_refusal_keeps_what_was_typed(client: TestClient,  # noqa: F811
                                                                            sqlite_tenant: Tenant) -> None:
    pid = create(client, sqlite_tenant, label_schema={"questions": QUESTIONS})["id"]
    seed_step(pid, {"p0": ["4", "5", "4", None]})
    assert buy(client, sqlite_tenant, pid, ["p0"]).status_code == 201
    add_account(pid, "alice")
    login(client, "alice")
    page = client.get(f"/ui/projects/{pid}/task")
    for question in QUESTIONS:
        assert f'id="question-{question["id"]}"' in page.text and f'id="help-{question["id"]}"' in page.text
    assert 'id="choice-0"' not in page.text  # no math form in this project
    assert 'id="q-order-item-1"' in page.text and 'value="0,1"' in page.text  # the candidates 4 and 5
    url = re.search(r'action="(/ui/projects/[^"]+/submit)"', page.text).group(1)
    form = {"csrf_token": csrf_of(page.text), "submission_id": "s1"}
    refused = client.post(url, data={**form, "q-topic": "algebra", "q-quality": "0.7", "q-note": "typed note"})
    assert refused.history[0].status_code == 303 and refused.status_code == 200
    assert "values.quality: must be a point of the scale 0 to 1 in steps of 0.5" in refused.text
    assert 'id="question-quality" data-question-id="quality" data-type="rating"' in refused.text
    assert re.search(r'id="question-quality"[^>]*aria-invalid="true"', refused.text)
    assert ">typed note</textarea>" in refused.text and 'value="algebra" checked' in refused.text
    done = client.post(url, data={**form, "q-topic": "geometry", "q-flags": ["typo", "unsafe"], "q-quality": "1",
                                  "q-order": "1,0", "q-pref": "tie"}, follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"].endswith("?notice=submitted")
    [label] = client.get(f"{BASE}/{pid}/labels", headers=h(sqlite_tenant, "trainer")).json()["data"]
    assert label["values"] == {"topic": "geometry", "flags": ["typo", "unsafe"], "quality": 1.0, "order": [1, 0],
                               "pref": {"choice": "tie", "rationale": None}}


def test_the_reviewer_screen_shows_labels_side_by_side_and_settles(client: TestClient,  # noqa: F811
                                                                  sqlite_tenant: Tenant) -> None:
    schema = {"questions": [{"id": "topic", "type": "single_label", "prompt": "Topic", "choices": ["a", "b"]},
                            {"id": "note", "type": "free_text", "prompt": "Note", "required": False}]}
    pid = create(client, sqlite_tenant, overlap_k=2, label_schema=schema)["id"]
    seed_step(pid, {"p0": ["4", "5", "4", None]})
    assert buy(client, sqlite_tenant, pid, ["p0"]).status_code == 201
    with session_scope() as session:
        _, other = create_api_key(session, role=Role.annotator, projects=[session.get(Project, sqlite_tenant.project_a)])
    for who, value in ((h(sqlite_tenant, "annotator"), "a"), (bearer(other), "b")):
        lease = client.post(f"{BASE}/{pid}/queue/next", headers=who).json()
        out = client.post(f"{BASE}/{pid}/assignments/{lease['assignment_id']}/submit",
                          json={"values": {"topic": value, "note": f"I say {value}"}},
                          headers={**who, "Idempotency-Key": value})
        assert out.status_code == 201, out.text
    add_account(pid, "plain")
    login(client, "plain")
    assert client.get(f"/ui/projects/{pid}/review").status_code == 403  # annotators do not review
    add_account(pid, "rita", AnnotatorRole.reviewer)
    login(client, "rita")
    assert "Review disagreements (1)" in client.get("/ui/queue").text
    listing = client.get(f"/ui/projects/{pid}/review")
    assert listing.status_code == 200 and listing.text.count('<tr data-annotator="') == 2
    assert "<td data-label=\"Topic\">a</td>" in listing.text and "<td data-label=\"Note\">I say b</td>" in listing.text
    task_url = re.search(r'href="(/ui/projects/[0-9a-f]+/review/[0-9a-f]+)"', listing.text).group(1)
    page = client.get(task_url)
    assert 'id="q-topic-0"' in page.text
    csrf = csrf_of(page.text)
    refused = client.post(task_url, data={"csrf_token": csrf})
    assert refused.history[0].headers["location"] == task_url and "values.topic: this question is required" in refused.text
    settled = client.post(task_url, data={"csrf_token": csrf, "q-topic": "b", "q-note": "b is right"},
                          follow_redirects=False)
    assert settled.status_code == 303 and settled.headers["location"] == f"/ui/projects/{pid}/review?notice=adjudicated"
    after = client.get(settled.headers["location"])
    assert "Settled" in after.text and 'id="no-disputes"' in after.text
    [label] = client.get(f"{BASE}/{pid}/labels", headers=h(sqlite_tenant, "trainer")).json()["data"]
    assert label["values"] == {"topic": "b", "note": "b is right"}
    assert client.get(task_url).status_code == 409  # settled: not awaiting adjudication any more
