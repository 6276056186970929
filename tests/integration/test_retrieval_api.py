"""The retrieval service end to end on SQLite and PostgreSQL: corpora, JSONL uploads, BM25 search,
persistence of the index files, tenancy, idempotency, pagination and bad input."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from services.common.settings import reset_settings_cache
from services.retrieval import index_store
from services.retrieval.app import create_app
from tests.conftest import SQLITE_ONLY, Tenant, bearer, make_tenant

PASSAGES: list[dict[str, Any]] = [
    {"id": "p1", "title": "Varo Kelin", "text": "The employer of Varo Kelin is Brightwell Labs. Varo enjoys chess."},
    {"id": "p2", "title": "Brightwell Labs", "text": "The founder of Brightwell Labs is Ida Moss."},
    {"id": "p3", "title": "Ida Moss", "text": "The birthplace of Ida Moss is Port Elyra."},
    {"_id": 4, "text": "Port Elyra is a harbour city with many bridges."},
]


def jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


@pytest.fixture
def tenant(database: str) -> Tenant:
    return make_tenant()


@pytest.fixture
def client(tenant: Tenant) -> Iterator[TestClient]:
    with TestClient(create_app()) as test_client:
        yield test_client


def _corpus(client: TestClient, tenant: Tenant, name: str = "wiki", key: str = "trainer") -> dict[str, Any]:
    response = client.post("/v1/corpora", json={"name": name}, headers=bearer(tenant.keys[key]))
    assert response.status_code == 201, response.text
    return dict(response.json())


def _upload(client: TestClient, tenant: Tenant, corpus_id: str, body: bytes, **params: str) -> Any:
    return client.post(f"/v1/corpora/{corpus_id}/documents", content=body, params=params,
                       headers={**bearer(tenant.keys["trainer"]), "content-type": "application/x-ndjson"})


def _search(client: TestClient, tenant: Tenant, corpus_id: str, query: str, k: int = 5, key: str = "trainer") -> Any:
    return client.post(f"/v1/corpora/{corpus_id}/search", json={"query": query, "k": k},
                       headers=bearer(tenant.keys[key]))


def test_upload_search_and_persisted_index(client: TestClient, tenant: Tenant) -> None:
    corpus = _corpus(client, tenant)
    assert corpus["project_id"] == tenant.project_a and corpus["document_count"] == 0
    assert _search(client, tenant, corpus["id"], "anything").json() == {"results": []}  # empty corpus
    uploaded = _upload(client, tenant, corpus["id"], jsonl(PASSAGES))
    assert uploaded.status_code == 200, uploaded.text
    assert uploaded.json()["added"] == 4 and uploaded.json()["corpus"]["document_count"] == 4

    found = _search(client, tenant, corpus["id"], "founder of Brightwell Labs", k=2).json()["results"]
    assert [r["id"] for r in found] == ["p2", "p1"]  # p2 has founder + brightwell + labs; p1 brightwell + labs
    assert found[0]["title"] == "Brightwell Labs" and found[0]["score"] > found[1]["score"] > 0
    assert _search(client, tenant, corpus["id"], "zebra").json() == {"results": []}  # no shared term: no match
    assert [r["id"] for r in _search(client, tenant, corpus["id"], "harbour bridges").json()["results"]] == ["4"]

    # The index persists: a fresh process (empty cache) loads the files instead of rebuilding them.
    files = sorted(p.name for p in index_store.root().joinpath(corpus["id"]).iterdir())
    assert len(files) == 1
    index_store._cache.clear()
    again = _search(client, tenant, corpus["id"], "founder of Brightwell Labs", k=2).json()["results"]
    assert [r["id"] for r in again] == ["p2", "p1"]
    # ... and a lost index folder is rebuilt from the passages in the database.
    index_store.forget(corpus["id"])
    assert [r["id"] for r in _search(client, tenant, corpus["id"], "Ida Moss birthplace", k=1).json()["results"]] \
        == ["p3"]


def test_append_replaces_same_id_and_replace_mode(client: TestClient, tenant: Tenant) -> None:
    corpus = _corpus(client, tenant)
    _upload(client, tenant, corpus["id"], jsonl(PASSAGES))
    more = _upload(client, tenant, corpus["id"], jsonl([{"id": "p3", "text": "Ida Moss was born in Quillon."},
                                                        {"id": "p5", "text": "Quillon is far away."}])).json()
    assert (more["added"], more["replaced"], more["corpus"]["document_count"]) == (1, 1, 5)
    assert _search(client, tenant, corpus["id"], "Port Elyra birthplace", k=5).json()["results"][0]["id"] == "4"
    listed = client.get(f"/v1/corpora/{corpus['id']}/documents", params={"limit": 3},
                        headers=bearer(tenant.keys["trainer"])).json()
    assert [d["id"] for d in listed["data"]] == ["p1", "p2", "p3"] and listed["next_cursor"]
    rest = client.get(f"/v1/corpora/{corpus['id']}/documents", params={"cursor": listed["next_cursor"]},
                      headers=bearer(tenant.keys["trainer"])).json()
    assert [d["id"] for d in rest["data"]] == ["4", "p5"] and rest["next_cursor"] is None
    assert rest["data"][0]["text"].startswith("Port Elyra")

    replaced = _upload(client, tenant, corpus["id"], jsonl([{"id": "only", "text": "Brightwell"}]), mode="replace")
    assert replaced.json()["corpus"]["document_count"] == 1
    assert [r["id"] for r in _search(client, tenant, corpus["id"], "Brightwell Labs").json()["results"]] == ["only"]
    # Large appends look existing ids up in batches (bounded IN lists on both databases).
    big = _corpus(client, tenant, name="big")
    rows = [{"id": f"d{i}", "text": f"passage number {i} about topic{i % 7}"} for i in range(1200)]
    assert _upload(client, tenant, big["id"], jsonl(rows)).json()["added"] == 1200
    again = _upload(client, tenant, big["id"], jsonl([{**r, "text": r["text"] + " revised"} for r in rows]))
    assert (again.json()["added"], again.json()["replaced"], again.json()["corpus"]["document_count"]) == (0, 1200, 1200)
    hits = _search(client, tenant, big["id"], "revised topic3", k=3).json()["results"]
    assert len(hits) == 3 and all(h["text"].endswith("revised") and "topic3" in h["text"] for h in hits)


@SQLITE_ONLY  # validation happens before any SQL: one backend is enough
def test_bad_uploads_name_the_line_and_store_nothing(client: TestClient, tenant: Tenant) -> None:
    corpus = _corpus(client, tenant)
    cases = {
        b'{"id": "a", "text": "ok"}\nnot json\n': "documents[line 2]",
        b'{"id": "a"}\n': "documents[line 1].text",
        b'{"text": "no id"}\n': "documents[line 1].id",
        b'{"id": "a", "text": 3}\n': "documents[line 1].text",
        b'{"id": "a", "text": "x"}\n{"id": "a", "text": "y"}\n': "documents[line 2].id",
        b'{"id": "a", "text": "bad \\u0000 nul"}\n': "documents[line 1].text",
        b'[1, 2]\n': "documents[line 1]",
        b"\n\n": "documents",
        b"\xff\xfe": "body",
    }
    for body, field in cases.items():
        response = _upload(client, tenant, corpus["id"], body)
        assert response.status_code in (400, 422), (body, response.text)
        assert response.json()["error"]["field"] == field, (body, response.json())
    assert client.get(f"/v1/corpora/{corpus['id']}", headers=bearer(tenant.keys["trainer"])).json()[
        "document_count"] == 0
    bad_search = client.post(f"/v1/corpora/{corpus['id']}/search", json={"query": "x", "k": 0},
                             headers=bearer(tenant.keys["trainer"]))
    assert bad_search.status_code == 422 and bad_search.json()["error"]["field"] == "k"
    blank = client.post(f"/v1/corpora/{corpus['id']}/search", json={"k": 2}, headers=bearer(tenant.keys["trainer"]))
    assert blank.status_code == 422 and blank.json()["error"]["field"] == "query"
    bad_name = client.post("/v1/corpora", json={"name": "  "}, headers=bearer(tenant.keys["trainer"]))
    assert bad_name.status_code == 422 and bad_name.json()["error"]["field"] == "name"
    duplicate = client.post("/v1/corpora", json={"name": "wiki"}, headers=bearer(tenant.keys["trainer"]))
    assert duplicate.status_code == 409 and duplicate.json()["error"]["field"] == "name"


def test_tenancy_roles_and_idempotency(client: TestClient, tenant: Tenant) -> None:
    headers = {**bearer(tenant.keys["trainer"]), "Idempotency-Key": "create-1"}
    first = client.post("/v1/corpora", json={"name": "kb"}, headers=headers)
    replay = client.post("/v1/corpora", json={"name": "kb"}, headers=headers)
    assert first.status_code == replay.status_code == 201 and replay.headers["idempotent-replayed"] == "true"
    assert replay.json()["id"] == first.json()["id"]
    reused = client.post("/v1/corpora", json={"name": "other"}, headers=headers)
    assert reused.status_code == 409 and reused.json()["error"]["code"] == "idempotency_key_reused"
    corpus_id = first.json()["id"]
    upload_headers = {**bearer(tenant.keys["trainer"]), "Idempotency-Key": "up-1"}
    once = client.post(f"/v1/corpora/{corpus_id}/documents", content=jsonl(PASSAGES[:2]), headers=upload_headers)
    twice = client.post(f"/v1/corpora/{corpus_id}/documents", content=jsonl(PASSAGES[:2]), headers=upload_headers)
    assert twice.headers["idempotent-replayed"] == "true" and twice.json() == once.json()

    # Another project's key sees nothing: 404 naming the corpus, and it is absent from its list.
    for method, path, body in (("GET", f"/v1/corpora/{corpus_id}", None),
                               ("POST", f"/v1/corpora/{corpus_id}/search", {"query": "Varo"}),
                               ("DELETE", f"/v1/corpora/{corpus_id}", None)):
        response = client.request(method, path, json=body, headers=bearer(tenant.keys["admin_b"]))
        assert response.status_code == 404 and response.json()["error"]["field"] == "corpus_id", (method, path)
    assert client.get("/v1/corpora", headers=bearer(tenant.keys["admin_b"])).json()["data"] == []
    mine = client.get("/v1/corpora", headers=bearer(tenant.keys["trainer"])).json()
    assert [c["id"] for c in mine["data"]] == [corpus_id] and mine["next_cursor"] is None
    assert client.get("/v1/corpora", headers=bearer(tenant.keys["annotator"])).status_code == 403
    assert client.get("/v1/corpora").status_code == 401

    deleted = client.delete(f"/v1/corpora/{corpus_id}", headers=bearer(tenant.keys["trainer"]))
    assert deleted.status_code == 204
    assert client.get(f"/v1/corpora/{corpus_id}", headers=bearer(tenant.keys["trainer"])).status_code == 404
    assert not index_store.root().joinpath(corpus_id).exists()



@SQLITE_ONLY
def test_an_unwritable_index_folder_only_costs_persistence(client: TestClient, tenant: Tenant, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the index folder should be")
    monkeypatch.setenv("REWARDHUB_RETRIEVAL_DATA_DIR", str(blocker))
    reset_settings_cache()
    corpus = _corpus(client, tenant)
    assert _upload(client, tenant, corpus["id"], jsonl(PASSAGES)).status_code == 200
    assert [r["id"] for r in _search(client, tenant, corpus["id"], "Ida Moss birthplace", k=1).json()["results"]] \
        == ["p3"]
    index_store._cache.clear()  # a new process: nothing on disk, so it rebuilds from the database
    assert [r["id"] for r in _search(client, tenant, corpus["id"], "Ida Moss birthplace", k=1).json()["results"]] \
        == ["p3"]
