"""Per-question guidelines (services/annotation/question_guidelines.py): when a text is a new version, and on
the pages: each question's guidelines beside it with their version and KaTeX math, and the gate asking for
each question's current version, by form post (Post/Redirect/Get)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from fastapi.testclient import TestClient

from services.annotation.app import create_app, request_time
from services.annotation.models import QuestionGuidelines
from services.annotation.question_guidelines import next_version
from tests.conftest import Tenant
from tests.unit.annotation.test_api import BASE, Clock, h
from tests.unit.annotation.test_webui_routes import add_account, csrf_of, login, project_with_tasks

QUESTIONS: list[dict[str, Any]] = [
    {"id": "answer", "type": "math_answer", "prompt": "The final answer"},
    {"id": "topic", "type": "single_label", "prompt": "Topic", "choices": ["algebra", "geometry"],
     "guidelines": "Pick **one**; $x^2$ is algebra. <script>alert(1)</script>"},
]


@pytest.fixture
def client(sqlite_tenant: Tenant) -> Any:
    app = create_app()
    app.dependency_overrides[request_time] = Clock()
    with TestClient(app) as test_client:
        yield test_client


def test_a_version_is_made_only_when_the_text_changes() -> None:
    old = QuestionGuidelines(annotation_project_id="p", question_id="q", version=3, text="Be brief.")
    assert next_version(None, "") is None and next_version(None, "  ") is None  # never had any: no version
    assert next_version(None, "Be brief.") == 1
    assert next_version(old, "Be brief.") is None  # the same text again
    assert next_version(old, "Be briefer.") == 4
    assert next_version(old, "") == 4  # removing the text is a version too: the history shows it


def _versions(html: str) -> dict[str, str]:
    return dict(re.findall(r'name="q-version-([^"]+)" value="(\d+)"', html))


def test_question_guidelines_show_beside_the_question_and_gate_each_version(
        client: TestClient, sqlite_tenant: Tenant) -> None:
    pid = project_with_tasks(client, sqlite_tenant, 2, guidelines_required=True,
                             label_schema={"questions": QUESTIONS})
    add_account(pid, "alice")
    login(client, "alice")
    gate = client.get(f"/ui/projects/{pid}/task").text
    assert 'id="gate-question-topic"' in gate and "guidelines version 1" in gate and "new for you" in gate
    assert '<span class="math inline">x^2</span>' in gate and "&lt;script&gt;" in gate and "<script>alert" not in gate
    assert 'id="guidelines-gate"' not in gate  # no project guidelines: only the question's
    assert _versions(gate) == {"topic": "1"} and 'name="version"' not in gate
    confirm = f"/ui/projects/{pid}/guidelines/confirm"
    done = client.post(confirm, data={"csrf_token": csrf_of(gate), "q-version-topic": "1"}, follow_redirects=False)
    assert done.status_code == 303
    page = client.get(done.headers["location"]).text
    assert "Thank you for reading" in page and 'id="label-form"' in page
    found = re.search(r'<div class="question-guidelines guidelines-body small" id="question-guidelines-topic">(.*?)</div>',
                      page, re.S)
    assert found and "Guidelines version 1" in found.group(1) and "<strong>one</strong>" in found.group(1)
    assert '<span class="math inline">x^2</span>' in found.group(1)  # typeset by math.js (.guidelines-body .math)

    changed = client.put(f"{BASE}/{pid}/questions/topic/guidelines", headers=h(sqlite_tenant, "admin"),
                         json={"guidelines": "Geometry wins ties."})
    assert changed.status_code == 200 and changed.json()["version"] == 2
    again = client.get(f"/ui/projects/{pid}/task").text
    assert "Geometry wins ties." in again and "guidelines version 2" in again and _versions(again) == {"topic": "2"}
    stale = client.post(confirm, data={"csrf_token": csrf_of(again), "q-version-topic": "1"})  # a page from before
    assert 'id="gate-question-topic"' in stale.text
    assert "the guidelines of question &#39;topic&#39; changed (now version 2)" in stale.text
    client.post(confirm, data={"csrf_token": csrf_of(again), "q-version-topic": "2"})
    assert "Guidelines version 2" in client.get(f"/ui/projects/{pid}/task").text
    history = client.get(f"{BASE}/{pid}/questions/topic/guidelines", headers=h(sqlite_tenant, "admin")).json()
    assert [v["version"] for v in history["versions"]] == [2, 1] and history["versions"][1]["text"].startswith("Pick")
