"""The admin screens under /ui/admin on SQLite: who may use them, CSRF, the project and member forms, and
refused forms (a 4xx page naming the field, nothing kept)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from services.annotation import accounts
from services.annotation.app import create_app, request_time
from services.annotation.models import Annotator, AnnotatorRole
from services.common.db import session_scope
from tests.conftest import Tenant
from tests.unit.annotation.test_api import BASE, Clock, buy, create, h, seed_step
from tests.unit.annotation.test_webui_routes import PASSWORD, add_account, csrf_of, login


@pytest.fixture
def client(sqlite_tenant: Tenant) -> Iterator[TestClient]:
    made = create_app()
    made.dependency_overrides[request_time] = Clock()
    with TestClient(made) as test_client:
        yield test_client


def key_login(client: TestClient, key: str) -> None:
    page = client.get("/ui/login")
    done = client.post("/ui/login/key", data={"api_key": key, "csrf_token": csrf_of(page.text)},
                       follow_redirects=False)
    assert done.status_code == 303, done.text


def new_project_form(client: TestClient, tenant: Tenant, **fields: str) -> dict[str, str]:
    page = client.get("/ui/admin")
    assert page.status_code == 200, page.text
    return {"csrf_token": csrf_of(page.text), "project_id": tenant.project_a, "name": "labels", "label_budget": "5",
            "overlap_k": "2", "policy": "random", "label_schema": "", "guidelines": "", **fields}


def api_projects(client: TestClient, tenant: Tenant) -> list[dict[str, Any]]:
    return list(client.get(BASE, headers=h(tenant, "admin")).json()["data"])


def error_text(html: str) -> tuple[str, str]:
    """The error banner's field and its text, which always starts with the field's name."""
    found = re.search(r'id="admin-error" data-field="([^"]*)">(.*?)</p>', html)
    assert found, "no error banner on the page"
    text = re.sub(r"<[^>]+>", "", found.group(2))
    assert text.startswith(found.group(1) + ":"), text
    return found.group(1), text


SCHEMA = '{"questions": [{"id": "topic", "type": "single_label", "prompt": "Topic", "choices": ["a", "b"]}]}'


def test_an_admin_key_creates_a_project_and_sees_it_listed(client: TestClient, sqlite_tenant: Tenant) -> None:
    key_login(client, sqlite_tenant.keys["admin"])
    assert "id=\"nav-admin\"" in client.get("/ui/admin").text
    made = client.post("/ui/admin/projects", data=new_project_form(client, sqlite_tenant, label_schema=SCHEMA),
                       follow_redirects=False)
    assert made.status_code == 303
    listed = api_projects(client, sqlite_tenant)
    assert [p["name"] for p in listed] == ["labels"]
    project = listed[0]
    assert made.headers["location"] == f"/ui/admin/projects/{project['id']}?notice=project_created"
    assert project["overlap_k"] == 2 and project["budget"] == {"total": 5, "spent": 0, "left": 5}
    assert [q["type"] for q in project["label_schema"]["questions"]] == ["single_label"]
    page = client.get("/ui/admin").text
    row = re.search(rf'<tr data-project-id="{project["id"]}">(.*?)</tr>', page, re.S)
    assert row and re.search(r'data-field="budget">5<', row.group(1)) and re.search(r'data-field="spent">0<',
                                                                                    row.group(1))
    # Another tenant's admin key does not see it.
    client.cookies.clear()
    key_login(client, sqlite_tenant.keys["admin_b"])
    assert project["id"] not in client.get("/ui/admin").text
    assert client.get(f"/ui/admin/projects/{project['id']}").status_code == 404


@pytest.mark.parametrize(("fields", "status", "field"), [
    ({"label_schema": '{"questions": [{"id": "t", "type": "single_label", "prompt": "T", "choices": []}]}'},
     422, "label_schema.questions[0].choices"),
    ({"label_schema": '{"questions": [}'}, 422, "label_schema"),
    ({"label_budget": "lots"}, 422, "label_budget"),
    ({"overlap_k": "0"}, 422, "overlap_k"),
    ({"policy": "care", "label_schema": SCHEMA}, 422, "label_schema"),  # CARE needs a math_answer question
    ({"name": ""}, 422, "name"),
])
def test_a_refused_new_project_names_the_field_and_keeps_nothing(client: TestClient, sqlite_tenant: Tenant,
                                                                fields: dict[str, str], status: int,
                                                                field: str) -> None:
    key_login(client, sqlite_tenant.keys["admin"])
    refused = client.post("/ui/admin/projects", data=new_project_form(client, sqlite_tenant, **fields))
    assert refused.status_code == status
    shown_field, message = error_text(refused.text)
    assert shown_field == field and message.startswith(f"{field}:")
    assert 'aria-invalid="true"' in refused.text
    if "label_schema" in fields:  # the typed text comes back
        assert 'id="np-schema"' in refused.text and "questions" in refused.text
    assert api_projects(client, sqlite_tenant) == []


def test_a_second_project_of_the_same_name_is_a_409_naming_it(client: TestClient, sqlite_tenant: Tenant) -> None:
    key_login(client, sqlite_tenant.keys["admin"])
    client.post("/ui/admin/projects", data=new_project_form(client, sqlite_tenant))
    again = client.post("/ui/admin/projects", data=new_project_form(client, sqlite_tenant))
    assert again.status_code == 409 and error_text(again.text)[0] == "name"


def test_forms_without_the_csrf_token_are_refused(client: TestClient, sqlite_tenant: Tenant) -> None:
    pid = create(client, sqlite_tenant)["id"]
    key_login(client, sqlite_tenant.keys["admin"])
    form = new_project_form(client, sqlite_tenant)
    for token in ("", "wrong"):
        refused = client.post("/ui/admin/projects", data={**form, "csrf_token": token})
        assert refused.status_code == 403 and "security token" in refused.text
    member = add_account(pid, "alice")
    for path, data in ((f"/ui/admin/projects/{pid}/settings", {"label_budget": "50", "overlap_k": "1",
                                                                "guidelines": ""}),
                       (f"/ui/admin/projects/{pid}/accounts", {"username": "bob", "password": PASSWORD}),
                       (f"/ui/admin/projects/{pid}/members", {"username": "alice"}),
                       (f"/ui/admin/projects/{pid}/members/{member}/remove", {})):
        assert client.post(path, data=data).status_code == 403, path
    assert [p["name"] for p in api_projects(client, sqlite_tenant)] == ["math"]
    project = client.get(f"{BASE}/{pid}", headers=h(sqlite_tenant, "admin")).json()
    assert project["budget"]["total"] == 10
    names = [a["username"] for a in client.get(f"{BASE}/{pid}/annotators", headers=h(sqlite_tenant, "admin"))
             .json()["data"]]
    assert names == ["alice"]


@pytest.mark.parametrize("role", [AnnotatorRole.annotator, AnnotatorRole.reviewer])
def test_annotators_and_reviewers_get_403(client: TestClient, sqlite_tenant: Tenant, role: AnnotatorRole) -> None:
    pid = create(client, sqlite_tenant)["id"]
    add_account(pid, "someone", role)
    login(client, "someone")
    page = client.get("/ui/admin")
    assert page.status_code == 403 and "admin accounts and admin API keys" in page.text
    assert 'id="nav-admin"' not in page.text
    assert client.get(f"/ui/admin/projects/{pid}").status_code == 403
    queue = client.get("/ui/queue")
    form = {"csrf_token": csrf_of(queue.text), "project_id": sqlite_tenant.project_a, "name": "mine",
            "label_budget": "1", "overlap_k": "1", "policy": "random"}
    assert client.post("/ui/admin/projects", data=form).status_code == 403
    assert client.post(f"/ui/admin/projects/{pid}/accounts", data={
        "csrf_token": form["csrf_token"], "username": "sneaky", "password": PASSWORD}).status_code == 403
    assert [p["name"] for p in api_projects(client, sqlite_tenant)] == ["math"]


def test_settings_and_members_through_the_project_page(client: TestClient, sqlite_tenant: Tenant) -> None:
    pid = create(client, sqlite_tenant)["id"]
    other = create(client, sqlite_tenant, name="other")["id"]
    seed_step(pid, {"q0": ["4", "4", "5", None], "q1": ["1", "2", "2", "2"]})
    assert buy(client, sqlite_tenant, pid, ["q0", "q1"]).status_code == 201
    add_account(other, "olga")  # an account of another project of the same tenancy
    key_login(client, sqlite_tenant.keys["admin"])
    page = client.get(f"/ui/admin/projects/{pid}")
    assert page.status_code == 200 and re.search(r'data-field="spent">2<', page.text)
    token = csrf_of(page.text)
    url = f"/ui/admin/projects/{pid}"

    saved = client.post(f"{url}/settings", data={"csrf_token": token, "label_budget": "30", "overlap_k": "3",
                                                 "guidelines": "Be *exact*."}, follow_redirects=False)
    assert saved.status_code == 303 and saved.headers["location"] == f"{url}?notice=settings_saved"
    project = client.get(f"{BASE}/{pid}", headers=h(sqlite_tenant, "admin")).json()
    assert (project["budget"]["total"], project["overlap_k"], project["guidelines"],
            project["guidelines_version"]) == (30, 3, "Be *exact*.", 1)
    below = client.post(f"{url}/settings", data={"csrf_token": token, "label_budget": "1", "overlap_k": "1",
                                                 "guidelines": "changed"})
    assert below.status_code == 409 and error_text(below.text)[0] == "label_budget"
    assert 'value="1"' in below.text  # the typed value comes back
    project = client.get(f"{BASE}/{pid}", headers=h(sqlite_tenant, "admin")).json()
    assert (project["budget"]["total"], project["overlap_k"], project["guidelines"]) == (30, 3, "Be *exact*.")

    made = client.post(f"{url}/accounts", data={"csrf_token": token, "username": "newbie", "password": PASSWORD,
                                                "role": "reviewer"}, follow_redirects=False)
    assert made.status_code == 303 and made.headers["location"] == f"{url}?notice=account_created"
    short = client.post(f"{url}/accounts", data={"csrf_token": token, "username": "shorty", "password": "short"})
    assert short.status_code == 422 and error_text(short.text)[0] == "password"
    taken = client.post(f"{url}/accounts", data={"csrf_token": token, "username": "newbie", "password": PASSWORD})
    assert taken.status_code == 409 and error_text(taken.text)[0] == "username"
    admin_role = client.post(f"{url}/accounts", data={"csrf_token": token, "username": "boss", "password": PASSWORD,
                                                      "role": "admin"})
    assert admin_role.status_code == 422 and error_text(admin_role.text)[0] == "role"

    added = client.post(f"{url}/members", data={"csrf_token": token, "username": "olga"}, follow_redirects=False)
    assert added.headers["location"] == f"{url}?notice=member_added"
    again = client.post(f"{url}/members", data={"csrf_token": token, "username": "olga"}, follow_redirects=False)
    assert again.headers["location"] == f"{url}?notice=already_member"
    nobody = client.post(f"{url}/members", data={"csrf_token": token, "username": "ghost"})
    assert nobody.status_code == 404 and error_text(nobody.text)[0] == "username"

    members = client.get(f"{BASE}/{pid}/annotators", headers=h(sqlite_tenant, "admin")).json()["data"]
    assert [(m["username"], m["role"]) for m in members] == [("newbie", "reviewer"), ("olga", "annotator")]
    listing = client.get(url).text
    assert '<tr data-username="olga">' in listing and '<tr data-username="newbie">' in listing
    olga = next(m["id"] for m in members if m["username"] == "olga")
    removed = client.post(f"{url}/members/{olga}/remove", data={"csrf_token": token}, follow_redirects=False)
    assert removed.headers["location"] == f"{url}?notice=member_removed"
    members = client.get(f"{BASE}/{pid}/annotators", headers=h(sqlite_tenant, "admin")).json()["data"]
    assert [m["username"] for m in members] == ["newbie"]

    client.cookies.clear()
    assert login(client, "newbie").status_code == 303  # the new account logs in


def test_an_admin_account_acts_within_its_tenancy(client: TestClient, sqlite_tenant: Tenant) -> None:
    pid = create(client, sqlite_tenant)["id"]
    add_account(pid, "ada", AnnotatorRole.admin)
    elsewhere = client.post(BASE, json={"project_id": sqlite_tenant.project_b, "name": "b", "label_budget": 1,
                                        "policy": "random"}, headers=h(sqlite_tenant, "root"))
    assert elsewhere.status_code == 201
    login(client, "ada")
    page = client.get("/ui/admin")
    assert page.status_code == 200 and pid in page.text and elsewhere.json()["id"] not in page.text
    assert re.findall(r'<option value="([0-9a-f]{32})"', page.text) == [sqlite_tenant.project_a]
    made = client.post("/ui/admin/projects", data=new_project_form(client, sqlite_tenant, name="ada's"),
                       follow_redirects=False)
    assert made.status_code == 303
    other_tenancy = client.post("/ui/admin/projects", data=new_project_form(
        client, sqlite_tenant, name="no", project_id=sqlite_tenant.project_b))
    assert other_tenancy.status_code == 404 and error_text(other_tenancy.text)[0] == "project_id"  # as the API
    assert client.get(f"/ui/admin/projects/{elsewhere.json()['id']}").status_code == 404
    new_id = made.headers["location"].split("/")[-1].split("?")[0]
    with session_scope() as session:
        ada = session.scalar(select(Annotator).where(Annotator.username == "ada"))
        assert ada is not None and accounts.is_member(session, ada.id, new_id)  # on her dashboard too


def test_user_text_is_escaped(client: TestClient, sqlite_tenant: Tenant) -> None:
    key_login(client, sqlite_tenant.keys["admin"])
    client.post("/ui/admin/projects", data=new_project_form(client, sqlite_tenant, name="<script>x()</script>"))
    page = client.get("/ui/admin").text
    assert "<script>x()</script>" not in page and "&lt;script&gt;x()&lt;/script&gt;" in page

