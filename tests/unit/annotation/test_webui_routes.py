"""The web UI under /ui on SQLite: login and sessions, CSRF, the task forms, the dashboard, assets."""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

import webui
from services.annotation import accounts, queue
from services.annotation.app import create_app, request_time
from services.annotation.models import AnnotatorRole, LabelKind
from services.annotation.routes_ui_tasks import submission_from_form
from services.annotation.schemas import Submission
from services.annotation.ui_session import SESSION_COOKIE
from services.common.db import session_scope
from services.common.errors import Conflict, InvalidInput
from services.common.models import ApiKey
from tests.conftest import Tenant
from tests.unit.annotation.test_api import BASE, T0, Clock, buy, create, h, seed_step
from tests.unit.annotation.test_quality_api import known_project

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


def refused_to_task(response: Any, project_id: str) -> bool:
    """The post was answered with a 303 to the task page, which then came back 200 (Post/Redirect/Get)."""
    first = response.history[0] if response.history else response
    return bool(first.status_code == 303 and first.headers["location"] == f"/ui/projects/{project_id}/task"
                and response.status_code == 200)


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
    # A refused form redirects back to the task page (Post/Redirect/Get) with the error and what was typed.
    empty = client.post(submit_url, data={**form, "rationale": "kept on the page"})
    assert refused_to_task(empty, pid) and "pick one of the candidate answers" in empty.text
    assert "kept on the page" in empty.text  # what was typed comes back
    bad = client.post(submit_url, data={**form, "choice": "candidate-7"})
    assert refused_to_task(bad, pid) and "candidate 7 does not exist" in bad.text
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
    assert refused_to_task(late, pid) and "lease expired" in late.text


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
    assert refused_to_task(nothing, pid) and "there is no submission to undo" in nothing.text
    url = re.search(r'action="(/ui/projects/[^"]+/submit)"', page.text).group(1)
    form = {"csrf_token": csrf_of(page.text), "submission_id": "s1", "answer": "4"}
    no_reason = client.post(url, data=form)
    assert refused_to_task(no_reason, pid) and "requires a rationale" in no_reason.text
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


# ------------------------------------------------------------------- issue 21: defects, skip, gate


def task_form(page: str, action: str) -> str:
    found = re.search(rf'action="(/ui/projects/[0-9a-f]+/assignments/[0-9a-f]+/{action})"', page)
    assert found, f"no {action} form on the page"
    return found.group(1)


def prompt_on(page: str) -> str:
    found = re.search(r"Question (q\d+)\?", page)
    assert found, "no task on the page"
    return found.group(1)


def test_a_refused_submit_redirects_and_a_reload_does_not_resubmit(client: TestClient, sqlite_tenant: Tenant) -> None:
    pid = project_with_tasks(client, sqlite_tenant, 2)
    add_account(pid, "alice")
    add_account(pid, "bob")
    login(client, "alice")
    page = client.get(f"/ui/projects/{pid}/task").text
    secret = "my private reasoning " * 3
    refused = client.post(task_form(page, "submit"), data={"csrf_token": csrf_of(page), "submission_id": "s1",
                                                          "rationale": secret}, follow_redirects=False)
    assert refused.status_code == 303 and refused.headers["location"] == f"/ui/projects/{pid}/task"
    assert "private" not in refused.headers["location"]  # the typed text never goes in the URL
    assert "rewardhub_ui_flash=" in refused.headers["set-cookie"] and "HttpOnly" in refused.headers["set-cookie"]
    shown = client.get(f"/ui/projects/{pid}/task")
    assert shown.status_code == 200 and 'id="form-error"' in shown.text and secret in shown.text
    assert "rewardhub_ui_flash=" in shown.headers["set-cookie"]  # deleted once shown
    reloaded = client.get(f"/ui/projects/{pid}/task")  # a reload: the same task, no error, nothing posted
    assert 'id="form-error"' not in reloaded.text and secret not in reloaded.text
    assert prompt_on(reloaded.text) == "q0" and stats(client, sqlite_tenant, pid)["annotators"] == []

    # Another account never sees alice's flash, even with her cookie in its browser.
    refused = client.post(task_form(page, "submit"), data={"csrf_token": csrf_of(page), "submission_id": "s2"},
                          follow_redirects=False)
    flash = client.cookies.get("rewardhub_ui_flash")
    assert refused.status_code == 303 and flash
    login(client, "bob")
    client.cookies.set("rewardhub_ui_flash", flash, path="/ui")
    assert 'id="form-error"' not in client.get(f"/ui/projects/{pid}/task").text


def test_a_typed_text_too_long_for_the_cookie_is_dropped_with_a_note(client: TestClient,
                                                                     sqlite_tenant: Tenant) -> None:
    pid = project_with_tasks(client, sqlite_tenant, 1, label_schema={"rationale": "required"})
    add_account(pid, "alice")
    login(client, "alice")
    page = client.get(f"/ui/projects/{pid}/task").text
    long_answer = secrets.token_hex(3000)  # random: the signed cookie's zlib cannot shrink it
    client.post(task_form(page, "submit"), data={"csrf_token": csrf_of(page), "submission_id": "s1",
                                                 "answer": long_answer}, follow_redirects=False)
    assert len(client.cookies.get("rewardhub_ui_flash") or "") <= 3000
    shown = client.get(f"/ui/projects/{pid}/task").text
    assert "requires a rationale" in shown and "too long to keep" in shown and long_answer not in shown


def test_undo_shows_only_when_there_is_something_to_undo(client: TestClient, sqlite_tenant: Tenant) -> None:
    pid = project_with_tasks(client, sqlite_tenant, 2)
    other = project_with_tasks(client, sqlite_tenant, 1, name="other")
    alice = add_account(pid, "alice")
    with session_scope() as session:
        accounts.add_membership(session, alice, other)
    login(client, "alice")
    first = client.get(f"/ui/projects/{pid}/task").text
    assert 'id="undo-form"' not in first  # 0 labels: nothing to undo
    client.post(task_form(first, "submit"), data={"csrf_token": csrf_of(first), "submission_id": "s1",
                                                  "choice": "candidate-0"})
    second = client.get(f"/ui/projects/{pid}/task").text
    assert 'id="undo-form"' in second
    assert 'id="undo-form"' not in client.get(f"/ui/projects/{other}/task").text  # per project
    client.post(f"/ui/projects/{pid}/undo", data={"csrf_token": csrf_of(second), "undo_key": field(second, "undo_key")})
    assert 'id="undo-form"' not in client.get(f"/ui/projects/{pid}/task").text  # its only label taken back


def test_unknown_ui_paths_are_an_html_404_and_the_api_keeps_json(client: TestClient, sqlite_tenant: Tenant) -> None:
    anonymous = client.get("/ui/no/such/page")
    assert anonymous.status_code == 404 and anonymous.headers["content-type"].startswith("text/html")
    assert 'id="error-message"' in anonymous.text and "/ui/no/such/page" in anonymous.text
    assert anonymous.headers["content-security-policy"].startswith("default-src 'self'")
    pid = project_with_tasks(client, sqlite_tenant, 1)
    add_account(pid, "alice")
    login(client, "alice")
    known = client.get("/ui/projects")
    assert known.status_code == 404 and "<html" in known.text and "Log out" in known.text  # the viewer's page
    api = client.get("/v1/annotation/nope", headers=h(sqlite_tenant, "admin"))
    assert api.status_code == 404 and api.headers["content-type"].startswith("application/json")
    assert client.post("/ui/queue").status_code == 405  # a wrong method on a real page is still 405
    assert client.get("/ui/static/nope.js").json()["error"]["code"] == "not_found"


def test_the_lease_carries_its_iso_time_for_the_browser(client: TestClient, sqlite_tenant: Tenant) -> None:
    pid = project_with_tasks(client, sqlite_tenant, 1, lease_seconds=600)
    add_account(pid, "alice")
    login(client, "alice")
    page = client.get(f"/ui/projects/{pid}/task").text
    expires = re.search(r'<time datetime="([^"]+)" title="([^"]+)">', page)
    assert expires and expires.group(1) == expires.group(2)
    assert datetime.fromisoformat(expires.group(1)).replace(tzinfo=None) == \
        (T0 + timedelta(seconds=600)).replace(tzinfo=None)
    shown = re.search(r'id="lease"[^>]*>([^;]*);', page, re.S)
    assert shown and "until" not in shown.group(1)  # no clock time to misread: the browser shows time left


def test_come_back_later_returns_the_task_after_the_others(client: TestClient, sqlite_tenant: Tenant) -> None:
    pid = project_with_tasks(client, sqlite_tenant, 3)
    add_account(pid, "alice")
    login(client, "alice")
    page = client.get(f"/ui/projects/{pid}/task").text
    assert prompt_on(page) == "q0" and "Come back later" in page and "Never show again" in page
    later = client.post(task_form(page, "later"), data={"csrf_token": csrf_of(page)}, follow_redirects=False)
    assert later.headers["location"] == f"/ui/projects/{pid}/task?notice=deferred"
    page = client.get(later.headers["location"]).text
    assert prompt_on(page) == "q1" and "comes back to you" in page  # q0 waits behind q1 and q2
    client.post(task_form(page, "submit"), data={"csrf_token": csrf_of(page), "submission_id": "a",
                                                 "choice": "candidate-0"})
    page = client.get(f"/ui/projects/{pid}/task").text
    assert prompt_on(page) == "q2"
    never = client.post(task_form(page, "skip"), data={"csrf_token": csrf_of(page)}, follow_redirects=False)
    assert never.headers["location"] == f"/ui/projects/{pid}/task?notice=skipped"
    page = client.get(f"/ui/projects/{pid}/task").text
    assert prompt_on(page) == "q0"  # nothing else left: the put-off task is back
    counts = stats(client, sqlite_tenant, pid)["annotators"][0]
    assert (counts["submitted"], counts["skipped"]) == (1, 1)  # "later" is not a skip
    client.post(task_form(page, "later"), data={"csrf_token": csrf_of(page)})
    assert prompt_on(client.get(f"/ui/projects/{pid}/task").text) == "q0"  # still the only one; q2 never


def test_shortcuts_no_longer_bind_escape_to_skipping() -> None:
    script = (webui.STATIC_DIR / "task.js").read_text()
    assert 'key === "Escape") {\n      send(' not in script and '"Escape"' in script  # Esc only leaves a text box
    page = (webui.TEMPLATES_DIR / "task.html").read_text()
    assert "<kbd>S</kbd> or <kbd>Esc</kbd>" not in page and "it never skips" in page


def test_come_back_later_frees_the_slot_at_once_and_is_refused_after_submit(client: TestClient,
                                                                            sqlite_tenant: Tenant) -> None:
    pid = project_with_tasks(client, sqlite_tenant, 1)
    alice, bob = add_account(pid, "alice"), add_account(pid, "bob")
    with session_scope() as session:
        view = queue.next_task(session, pid, alice, now=T0)
        assert view is not None
        assert queue.next_task(session, pid, bob, now=T0) is None  # overlap 1: alice holds the only slot
        first = queue.come_back_later(session, pid, alice, view.assignment_id, now=T0)
        again = queue.come_back_later(session, pid, alice, view.assignment_id, now=T0 + timedelta(seconds=5))
        assert first.state == again.state == "deferred"
        taken = queue.next_task(session, pid, bob, now=T0 + timedelta(seconds=6))
        assert taken is not None and taken.task_id == view.task_id  # the slot was handed back at once
        queue.submit(session, pid, bob, taken.assignment_id, Submission(submission_id="b", candidate=0),
                     now=T0 + timedelta(seconds=7))
        assert queue.next_task(session, pid, alice, now=T0 + timedelta(seconds=8)) is None  # done meanwhile
    with session_scope() as session:
        mine = queue.next_task(session, pid, bob, now=T0 + timedelta(seconds=9))
        assert mine is None
        with pytest.raises(Conflict) as late:
            queue.come_back_later(session, pid, bob, taken.assignment_id, now=T0 + timedelta(seconds=10))
        assert late.value.code == "lease_not_active"


def test_dashboard_cards_read_label_quality_for_the_projects_they_show(client: TestClient,
                                                                       sqlite_tenant: Tenant) -> None:
    pid, _ids = known_project(client, sqlite_tenant)  # accounts alice, bob, carol and reviewer rita
    other = str(create(client, sqlite_tenant, name="other")["id"])
    login(client, "rita")
    board = client.get("/ui/dashboard")
    url = f"/ui/dashboard/projects/{pid}/quality"
    assert f'data-quality-url="{url}"' in board.text and 'data-field="alpha"' in board.text
    assert 'src="/ui/static/dashboard.js"' in board.text
    read = client.get(url)
    assert read.status_code == 200 and read.headers["cache-control"] == "no-store"
    quality = read.json()
    assert quality["krippendorff_alpha"]["value"] == pytest.approx(2 / 3)  # worked in test_quality_api
    assert [(a["username"], a["gold_n"], a["adjudicated_n"]) for a in quality["annotators"]] == [
        ("alice", 3, 1), ("bob", 3, 1), ("carol", 0, 0)]
    assert client.get(f"/ui/dashboard/projects/{other}/quality").status_code == 404  # not rita's project
    login(client, "alice")
    assert client.get(url).status_code == 403  # annotators never see accuracy against the hidden key
    script = (webui.STATIC_DIR / "dashboard.js").read_text()
    assert "data-quality-url" in script and "figure.note" in script and '" (n = "' in script
