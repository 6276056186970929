"""The multi-hop environment's `search` tool backed by the retrieval service over HTTP gives the same
passages as the in-process bm25s index, and a scripted agent solves its questions through it."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from services.retrieval.app import create_app
from tests.conftest import SQLITE_ONLY, Tenant, bearer, make_tenant
from trainer.ziprl.env import HttpSearch, InProcessSearch, MultiHopSearchEnv
from trainer.ziprl.episode import ScriptedAgent, run_episode
from trainer.ziprl.memory import CompressionMemory
from trainer.ziprl.multihop import generate_questions, generate_world


@pytest.fixture
def tenant(database: str) -> Tenant:
    return make_tenant()


@pytest.fixture
def client(tenant: Tenant) -> Iterator[TestClient]:
    with TestClient(create_app()) as test_client:
        yield test_client


@SQLITE_ONLY
def test_http_search_matches_in_process_search(client: TestClient, tenant: Tenant) -> None:
    world = generate_world(5, people=12, companies=5, cities=5, countries=3)
    key = tenant.keys["trainer"]
    corpus = client.post("/v1/corpora", json={"name": "multihop"}, headers=bearer(key)).json()
    body = "".join(json.dumps({"id": d.id, "title": d.title, "text": d.text}) + "\n" for d in world.documents)
    uploaded = client.post(f"/v1/corpora/{corpus['id']}/documents", content=body.encode(), headers=bearer(key))
    assert uploaded.status_code == 200, uploaded.text

    remote, local = HttpSearch("", key, corpus["id"], client=client), InProcessSearch(world.documents)
    questions = generate_questions(world, 3, seed=7)
    for q in questions:
        query = f"{q.chain[0][1]} of {q.chain[0][0]}"
        assert [(h.id, round(h.score, 4)) for h in remote.search(query, 3)] == \
            [(h.id, round(h.score, 4)) for h in local.search(query, 3)]
    for q in questions:
        env = MultiHopSearchEnv(remote, k=3, max_turns=10)
        result = run_episode(env, ScriptedAgent(), lambda text: CompressionMemory(text, 300), q.prompt_row())
        assert result.correct, (q.question, result.answer)
        assert 1 <= result.searches <= q.hops  # one search may bring two hops' passages
