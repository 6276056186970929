"""The web UI under /ui on SQLite: login and sessions, CSRF, the task forms, the dashboard, assets."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

import webui
from services.annotation import accounts
from services.annotation.app import create_app, request_time
from services.annotation.models import AnnotatorRole, LabelKind
from services.annotation.routes_ui_tasks import submission_from_form
from services.annotation.ui_session import SESSION_COOKIE
from services.common.db import session_scope
from services.common.errors import InvalidInput
from services.common.models import ApiKey
from tests.conftest import Tenant
from tests.unit.annotation.test_api import BASE, T0, Clock, buy, create, h, seed_step

PASSWORD = "correct horse battery"


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def app(sqlite_tenant: Tenant, clock: Clock) -> Any:
    made = create_app()
    made.dependency_overrides[request_time] = clock
    return made


@pytest.fixture
def client(app: Any) -> Iterator[TestClient]:
    with TestClient(app) as test_client:
        yield test_client


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found, "no CSRF field on the page"
    return found.group(1)


def field(html: str, name: str) -> str:
    found = re.search(rf'name="{name}" value="([^"]+)"', html)
    assert found, f"no {name} field on the page"
    return found.group(1)


def project_with_tasks(client: TestClient, tenant: Tenant, prompts: int = 3, **fields: Any) -> str:
    project = create(client, tenant, **fields)
    seed_step(project["id"], {f"q{i}": ["4", "4", "5", None] for i in range(prompts)})
    assert buy(client, tenant, project["id"], [f"q{i}" for i in range(prompts)]).status_code == 201
    return str(project["id"])


def add_account(project_id: str, username: str, role: AnnotatorRole = AnnotatorRole.annotator) -> str:
    with session_scope() as session:
        return accounts.create_annotator(session, username, PASSWORD, role=role, project_ids=[project_id]).id


def login(client: TestClient, username: str, password: str = PASSWORD, **extra: str) -> Any:
    page = client.get("/ui/login")
    return client.post("/ui/login", data={"username": username, "password": password,
                                          "csrf_token": csrf_of(page.text), **extra}, follow_redirects=False)


def stats(client: TestClient, tenant: Tenant, project_id: str) -> dict[str, Any]:
    return client.get(f"{BASE}/{project_id}/stats", headers=h(tenant, "admin")).json()


# ------------------------------------------------------------------------------------ sessions


def test_login_sets_a_signed_cookie_and_a_bad_login_says_so(client: TestClient, sqlite_tenant: Tenant) -> None:
    pid = project_with_tasks(client, sqlite_tenant, 1)
    add_account(pid, "alice")
    wrong = login(client, "alice", "not the password")
    assert wrong.status_code == 401 and "Wrong username or password." in wrong.text
    nobody = login(client, "mallory", PASSWORD)
    assert nobody.status_code == 401 and "Wrong username or password." in nobody.text
    no_token = client.post("/ui/login", data={"username": "alice", "password": PASSWORD}, follow_redirects=False)
    assert no_token.status_code == 403 and "expired" in no_token.text

    ok = login(client, "alice")
    assert ok.status_code == 303 and ok.headers["location"] == "/ui/queue"
    cookie = ok.headers["set-cookie"]
    assert f"{SESSION_COOKIE}=" in cookie and "HttpOnly" in cookie and "SameSite=lax" in cookie
    assert "Path=/ui" in cookie and "Secure" not in cookie
    assert client.get("/ui/queue").status_code == 200

    # A cookie signed with another secret (or edited) is no session at all.
    value = client.cookies.get(SESSION_COOKIE)
    client.cookies.clear()
    client.cookies.set(SESSION_COOKIE, value[:-3] + ("AAA" if not value.endswith("AAA") else "BBB"))
    tampered = client.get("/ui/queue", follow_redirects=False)
    assert tampered.status_code == 303 and tampered.headers["location"].startswith("/ui/login?next=/ui/queue")


def test_cookie_is_secure_over_https(app: Any, sqlite_tenant: Tenant) -> None:
    with TestClient(app, base_url="https://testserver") as secure:
        pid = project_with_tasks(secure, sqlite_tenant, 1)
        add_account(pid, "alice")
        ok = login(secure, "alice")
        assert ok.status_code == 303 and "Secure" in ok.headers["set-cookie"]


def test_login_keeps_next_only_inside_the_ui(client: TestClient, sqlite_tenant: Tenant) -> None:
    pid = project_with_tasks(client, sqlite_tenant, 1)
    add_account(pid, "alice")
    bounced = client.get(f"/ui/projects/{pid}/task", follow_redirects=False)
    assert bounced.status_code == 303 and bounced.headers["location"] == f"/ui/login?next=/ui/projects/{pid}/task"
    assert login(client, "alice", next=f"/ui/projects/{pid}/task").headers["location"] == f"/ui/projects/{pid}/task"
    for evil in ("https://evil.example/ui/", "//evil.example/ui/", "/v1/annotation/projects"):
        assert login(client, "alice", next=evil).headers["location"] == "/ui/queue"


def test_password_change_and_disabling_end_sessions(client: TestClient, sqlite_tenant: Tenant) -> None:
    pid = project_with_tasks(client, sqlite_tenant, 1)
    alice = add_account(pid, "alice")
    login(client, "alice")
    assert client.get("/ui/queue").status_code == 200
    with session_scope() as session:
        accounts.set_password(session, alice, "another long password")
    assert client.get("/ui/queue", follow_redirects=False).status_code == 303
    assert login(client, "alice", "another long password").status_code == 303
    with session_scope() as session:
        accounts.disable(session, alice)
    assert client.get("/ui/queue", follow_redirects=False).status_code == 303
    assert login(client, "alice", "another long password").status_code == 401


def test_logout_needs_the_token_and_clears_the_session(client: TestClient, sqlite_tenant: Tenant) -> None:
    pid = project_with_tasks(client, sqlite_tenant, 1)
    add_account(pid, "alice")
    login(client, "alice")
    page = client.get("/ui/queue")
    assert client.post("/ui/logout", data={"csrf_token": "forged"}).status_code == 403
    out = client.post("/ui/logout", data={"csrf_token": csrf_of(page.text)}, follow_redirects=False)
    assert out.status_code == 303 and out.headers["location"] == "/ui/login?notice=logged_out"
    assert client.get("/ui/queue", follow_redirects=False).status_code == 303


# ---------------------------------------------------------------------------------- labelling


def test_annotator_labels_skips_and_undoes_through_the_forms(client: TestClient, sqlite_tenant: Tenant,
                                                            clock: Clock) -> None:
    pid = project_with_tasks(client, sqlite_tenant, 3)
    add_account(pid, "alice")
    login(client, "alice")
    queue_page = client.get("/ui/queue")
    assert re.search(r'data-field="open">3<', queue_page.text), queue_page.text

    page = client.get(f"/ui/projects/{pid}/task")
    assert page.status_code == 200 and "Question q0?" in page.text
    assert 'data-tex="4"' in page.text and "2 of 4 rollouts" in page.text and "1 without a parseable" in page.text
    assert 'for="answer"' in page.text and 'id="ambiguous"' in page.text and 'for="rationale"' in page.text
    assignment = re.search(r"/assignments/([0-9a-f]{32})/submit", page.text).group(1)
    submit_url = f"/ui/projects/{pid}/assignments/{assignment}/submit"
    form = {"csrf_token": csrf_of(page.text), "submission_id": field(page.text, "submission_id")}

    forged = client.post(submit_url, data={**form, "csrf_token": "forged", "choice": "candidate-0"})
    assert forged.status_code == 403 and stats(client, sqlite_tenant, pid)["tasks_done"] == 0
    empty = client.post(submit_url, data={**form, "rationale": "kept on the page"})
    assert empty.status_code == 422 and "pick one of the candidate answers" in empty.text
    assert "kept on the page" in empty.text  # what was typed comes back
    bad = client.post(submit_url, data={**form, "choice": "candidate-7"})
    assert bad.status_code == 422 and "candidate 7 does not exist" in bad.text
    done = client.post(submit_url, data={**form, "choice": "candidate-0", "rationale": "majority"},
                       follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"] == f"/ui/projects/{pid}/task?notice=submitted"
    # The same form again (a double click) is the same submission, not a second one.
    assert client.post(submit_url, data={**form, "choice": "candidate-0"}, follow_redirects=False).status_code == 303

    second = client.get(f"/ui/projects/{pid}/task?notice=submitted")
    assert "Saved." in second.text and "Question q1?" in second.text
    second_url = re.search(r'action="(/ui/projects/[0-9a-f]+/assignments/[0-9a-f]+/submit)"', second.text).group(1)
    client.post(second_url, data={"csrf_token": csrf_of(second.text), "submission_id": field(second.text, "submission_id"),
                                  "choice": "own", "answer": r"\frac{8}{2}"})
    third = client.get(f"/ui/projects/{pid}/task")
    assert "Question q2?" in third.text
    skip_url = re.search(r'action="(/ui/projects/[0-9a-f]+/assignments/[0-9a-f]+/skip)"', third.text).group(1)
    assert client.post(skip_url, data={"csrf_token": csrf_of(third.text)}, follow_redirects=False).status_code == 303

    empty_page = client.get(f"/ui/projects/{pid}/task")
    assert "Nothing to label right now" in empty_page.text
    current = stats(client, sqlite_tenant, pid)
    assert current["tasks_done"] == 2 and current["annotators"][0]["submitted"] == 2
    assert current["annotators"][0]["skipped"] == 1

    undo = {"csrf_token": csrf_of(empty_page.text), "undo_key": field(empty_page.text, "undo_key")}
    assert client.post(f"/ui/projects/{pid}/undo", data=undo, follow_redirects=False).status_code == 303
    again = client.post(f"/ui/projects/{pid}/undo", data=undo, follow_redirects=False)  # a double press
    assert again.status_code == 303 and stats(client, sqlite_tenant, pid)["tasks_done"] == 1
    back = client.get(f"/ui/projects/{pid}/task?notice=undone")
    assert "Question q1?" in back.text and "taken back" in back.text

    clock.now = T0 + timedelta(hours=1)  # the lease ran out while the page was open
    late = client.post(re.search(r'action="(/ui/projects/[^"]+/submit)"', back.text).group(1),
                       data={"csrf_token": csrf_of(back.text), "submission_id": field(back.text, "submission_id"),
                             "choice": "candidate-0"})
    assert late.status_code == 409 and "lease expired" in late.text


def test_the_form_follows_the_label_schema(client: TestClient, sqlite_tenant: Tenant) -> None:
    pid = project_with_tasks(client, sqlite_tenant, 1, label_schema={
        "free_form": True, "candidates": False, "ambiguous": False, "rationale": "required"})
    add_account(pid, "alice")
    login(client, "alice")
    page = client.get(f"/ui/projects/{pid}/task")
    assert 'type="radio"' not in page.text and 'data-tex="4"' in page.text  # shown, but not pickable
    assert 'id="ambiguous"' not in page.text
    assert re.search(r'<textarea id="rationale" name="rationale" rows="3" required>', page.text)
    nothing = client.post(f"/ui/projects/{pid}/undo", data={"csrf_token": csrf_of(page.text), "undo_key": "k1"})
    assert nothing.status_code == 409 and "there is no submission to undo" in nothing.text
    url = re.search(r'action="(/ui/projects/[^"]+/submit)"', page.text).group(1)
    form = {"csrf_token": csrf_of(page.text), "submission_id": "s1", "answer": "4"}
    no_reason = client.post(url, data=form)
    assert no_reason.status_code == 422 and "requires a rationale" in no_reason.text
    assert client.post(url, data={**form, "rationale": "2 + 2"}, follow_redirects=False).status_code == 303


def test_heartbeat_renews_the_lease_with_the_csrf_header(client: TestClient, sqlite_tenant: Tenant,
                                                         clock: Clock) -> None:
    pid = project_with_tasks(client, sqlite_tenant, 1, lease_seconds=60)
    add_account(pid, "alice")
    login(client, "alice")
    page = client.get(f"/ui/projects/{pid}/task")
    url = re.search(r'data-renew-url="([^"]+)"', page.text).group(1)
    assert client.post(url).status_code == 403
    clock.now = T0 + timedelta(seconds=30)
    renewed = client.post(url, headers={"X-CSRF-Token": csrf_of(page.text)})
    assert renewed.status_code == 200
    assert datetime.fromisoformat(renewed.json()["lease_expires_at"]).replace(tzinfo=None) == \
        (T0 + timedelta(seconds=90)).replace(tzinfo=None)


def test_other_projects_are_not_found_and_keys_do_not_label(client: TestClient, sqlite_tenant: Tenant) -> None:
    mine = project_with_tasks(client, sqlite_tenant, 1)
    other = create(client, sqlite_tenant, name="other")["id"]
    add_account(mine, "alice")
    login(client, "alice")
    missing = client.get(f"/ui/projects/{other}/task")
    assert missing.status_code == 404 and "not found" in missing.text
    assert "<html" in missing.text  # an error page, not JSON


def test_submission_from_form_rules() -> None:
    flagged = submission_from_form("s", "candidate-1", "x", "1", "  ")
    assert flagged.kind is LabelKind.ambiguous and flagged.candidate is None and flagged.rationale is None
    assert submission_from_form("s", "candidate-2", "typed", "", "why").candidate == 2
    own = submission_from_form("s", "", r"\sqrt{2}", "", "")
    assert own.answer == r"\sqrt{2}" and own.candidate is None
    with pytest.raises(InvalidInput) as nothing:
        submission_from_form("s", "own", "   ", "", "")
    assert nothing.value.field == "answer"
    with pytest.raises(InvalidInput) as odd:
        submission_from_form("s", "candidate-x", "", "", "")
    assert odd.value.field == "choice"


# ----------------------------------------------------------------------------------- dashboard


def test_dashboard_for_reviewers_and_admin_keys_only(client: TestClient, sqlite_tenant: Tenant) -> None:
    pid = project_with_tasks(client, sqlite_tenant, 2)
    add_account(pid, "alice")
    add_account(pid, "rita", AnnotatorRole.reviewer)
    login(client, "alice")
    page = client.get(f"/ui/projects/{pid}/task")
    client.post(re.search(r'action="(/ui/projects/[^"]+/submit)"', page.text).group(1),
                data={"csrf_token": csrf_of(page.text), "submission_id": "one", "choice": "candidate-0"})
    denied = client.get("/ui/dashboard")
    assert denied.status_code == 403 and "reviewer and admin accounts" in denied.text

    login(client, "rita")
    board = client.get("/ui/dashboard")
    assert board.status_code == 200
    assert re.search(r'data-field="budget-spent">2<', board.text) and re.search(r'data-field="tasks-open">1<', board.text)
    assert re.search(r'data-annotator="alice">\s*<th scope="row">alice</th><td class="num" data-field="submitted">1<',
                     board.text)
    assert re.search(r'data-field="pseudo-accuracy">100.0%<', board.text)  # the label "4" is the majority "4"
    assert 'id="dashboard-data"' in board.text

    client.cookies.clear()
    page = client.get("/ui/login")
    for key, status, message in (("rh_not_a_key", 401, "not valid"),
                                 (sqlite_tenant.keys["trainer"], 403, "needs an admin API key")):
        refused = client.post("/ui/login/key", data={"api_key": key, "csrf_token": csrf_of(page.text)})
        assert refused.status_code == status and message in refused.text
        page = refused
    admitted = client.post("/ui/login/key", data={"api_key": sqlite_tenant.keys["admin"],
                                                  "csrf_token": csrf_of(page.text)}, follow_redirects=False)
    assert admitted.status_code == 303 and admitted.headers["location"] == "/ui/dashboard"
    assert f'data-project-id="{pid}"' in client.get("/ui/dashboard").text
    assert client.get(f"/ui/projects/{pid}/task").status_code == 403  # a key does not label

    client.cookies.clear()
    page = client.get("/ui/login")
    client.post("/ui/login/key", data={"api_key": sqlite_tenant.keys["admin_b"], "csrf_token": csrf_of(page.text)})
    assert f'data-project-id="{pid}"' not in client.get("/ui/dashboard").text  # another tenant's project
    with session_scope() as session:
        key = session.scalar(select(ApiKey).where(ApiKey.all_projects.is_(False), ApiKey.role == "admin",
                                                  ApiKey.projects.any(id=sqlite_tenant.project_b)))
        key.revoked_at = T0
    assert client.get("/ui/dashboard", follow_redirects=False).status_code == 303


# -------------------------------------------------------------------------------------- assets


def fake_node_modules(root: Path) -> Path:
    for library, files in webui.VENDOR_FILES.items():
        for name in files:
            path = root / webui.VENDOR_DIST[library] / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"/* {library} {name} */")
    return root


def test_vendor_files_come_from_node_modules(client: TestClient, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(webui, "NODE_MODULES", fake_node_modules(tmp_path / "node_modules"))
    (tmp_path / "node_modules" / "secret.txt").write_text("not served")
    served = client.get("/ui/vendor/katex/contrib/auto-render.min.js")
    assert served.status_code == 200 and served.text == "/* katex contrib/auto-render.min.js */"
    assert client.get("/ui/vendor/chart.js/chart.umd.min.js").status_code == 200
    assert webui.resolve_vendor_file("katex", "../../secret.txt") is None
    assert client.get("/ui/vendor/katex/%2e%2e/%2e%2e/secret.txt").status_code == 404
    assert client.get("/ui/vendor/lodash/lodash.js").status_code == 404
    login_page = client.get("/ui/login")
    assert "vendor-missing" not in login_page.text and "/ui/vendor/katex/katex.min.js" in login_page.text
    assert client.get("/ui/static/task.js").status_code == 200
    assert client.get("/ui/static/nope.js").status_code == 404


def test_missing_vendor_libraries_are_reported(client: TestClient, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(webui, "NODE_MODULES", tmp_path / "empty")
    page = client.get("/ui/login")
    assert 'id="vendor-missing"' in page.text and "npm ci --prefix webui" in page.text
    assert "katex and chart.js are not installed" in page.text and "/ui/vendor/katex/" not in page.text
    missing = client.get("/ui/vendor/katex/katex.min.js")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "vendor_missing"
    assert "npm ci --prefix webui" in missing.json()["error"]["message"]


def test_pages_send_security_headers(client: TestClient) -> None:
    page = client.get("/ui/login")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-store" and page.headers["x-content-type-options"] == "nosniff"
