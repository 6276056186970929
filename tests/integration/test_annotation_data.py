"""Annotation data on SQLite and PostgreSQL (the ``database`` fixture): import each format (JSONL, CSV,
Parquet, a `datasets` folder) → label through the API → browse with filters → export each format
(JSONL, CSV, Parquet, `datasets`, veRL) and read it back with pandas / pyarrow / datasets.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from services.annotation.app import create_app
from services.common.auth import create_api_key
from services.common.db import session_scope
from services.common.models import Project, Role
from services.common.settings import get_settings
from tests.conftest import Tenant, bearer, make_tenant

BASE = "/v1/annotation/projects"
QUESTIONS: list[dict[str, Any]] = [
    {"id": "answer", "type": "math_answer"},
    {"id": "topic", "type": "single_label", "choices": ["algebra", "geometry"]},
    {"id": "quality", "type": "rating", "min": 1, "max": 5},
    {"id": "flags", "type": "multi_label", "choices": ["typo", "unsafe"], "required": False},
]
MAPPING = {"prompt": "question", "id": "qid", "candidates": "cands", "gold": "gold", "metadata": ["src", "level"]}
JSONL_ROWS = [
    {"qid": "q1", "question": "What is 2+2?", "cands": ["4", "5"], "gold": "4", "src": "gsm8k", "level": 1},
    {"qid": "q2", "question": "What is 3+4?", "cands": ["7", "8"], "gold": "7", "src": "gsm8k", "level": 2},
]


@pytest.fixture
def api(database: str) -> Iterator[tuple[TestClient, Tenant]]:
    tenant = make_tenant()
    with TestClient(create_app()) as client:
        yield client, tenant


def h(tenant: Tenant, who: str) -> dict[str, str]:
    return bearer(tenant.keys[who])


def jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def upload(client: TestClient, tenant: Tenant, pid: str, name: str, data: bytes, mapping: dict[str, Any],
           key: str | None = None, **form: str) -> Any:
    headers = {**h(tenant, "trainer"), **({"Idempotency-Key": key} if key else {})}
    return client.post(f"{BASE}/{pid}/imports", files={"file": (name, data)},
                       data={"mapping": json.dumps(mapping), **form}, headers=headers)


def make_project(client: TestClient, tenant: Tenant) -> str:
    made = client.post(BASE, json={"project_id": tenant.project_a, "name": "data", "label_budget": 10,
                                   "rollouts_per_prompt": 2, "overlap_k": 2, "policy": "random",
                                   "label_schema": {"questions": QUESTIONS}}, headers=h(tenant, "admin"))
    assert made.status_code == 201, made.text
    return str(made.json()["id"])


def second_annotator(tenant: Tenant) -> dict[str, str]:
    with session_scope() as session:
        project = session.get(Project, tenant.project_a)
        assert project is not None
        _, key = create_api_key(session, role=Role.annotator, projects=[project])
    return bearer(key)


def label(client: TestClient, pid: str, who: dict[str, str], choose: dict[str, int]) -> dict[str, Any]:
    """Take the next task and answer it: candidate ``choose[prompt id]``; returns the stored values."""
    lease = client.post(f"{BASE}/{pid}/queue/next", headers=who).json()
    values = {"answer": {"candidate": choose[lease["prompt_id"]]}, "topic": "algebra", "quality": 4,
              "flags": ["typo"]}
    done = client.post(f"{BASE}/{pid}/assignments/{lease['assignment_id']}/submit", json={"values": values},
                       headers={**who, "Idempotency-Key": f"{lease['assignment_id']}"})
    assert done.status_code == 201, done.text
    return {"prompt_id": lease["prompt_id"], "values": done.json()["values"]}


def tasks(client: TestClient, tenant: Tenant, pid: str, **params: Any) -> list[dict[str, Any]]:
    page = client.get(f"{BASE}/{pid}/tasks", params=params, headers=h(tenant, "trainer"))
    assert page.status_code == 200, page.text
    assert set(page.json()) == {"data", "next_cursor"}
    return list(page.json()["data"])


def test_import_label_browse_export_round_trip(api: tuple[TestClient, Tenant], tmp_path: Path) -> None:
    client, tenant = api
    pid = make_project(client, tenant)

    # JSONL: two tasks; a retry with the same key is replayed and adds nothing.
    first = upload(client, tenant, pid, "a.jsonl", jsonl(JSONL_ROWS), MAPPING, key="imp-1")
    assert first.status_code == 200, first.text
    assert first.json()["imported"] == 2 and [r["status"] for r in first.json()["rows"]] == ["ok", "ok"]
    again = upload(client, tenant, pid, "a.jsonl", jsonl(JSONL_ROWS), MAPPING, key="imp-1")
    assert again.headers.get("Idempotent-Replayed") == "true" and again.json() == first.json()
    assert len(tasks(client, tenant, pid)) == 2

    # Label: q1 agreed (candidate 0 twice), q2 disputed (0 against 1), then adjudicated as candidate 0 ("7").
    one, two = h(tenant, "annotator"), second_annotator(tenant)
    given = [label(client, pid, who, {"q1": 0, "q2": pick}) for who, pick in ((one, 0), (one, 0), (two, 0), (two, 1))]
    q1_values = next(g["values"] for g in given if g["prompt_id"] == "q1")
    assert q1_values == {"answer": {"kind": "answer", "answer": "4", "candidate": 0, "rationale": None},
                         "topic": "algebra", "quality": 4.0, "flags": ["typo"]}
    assert [t["prompt_id"] for t in tasks(client, tenant, pid, status="disputed")] == ["q2"]
    [q2] = tasks(client, tenant, pid, max_agreement=0.99)
    settled = client.post(f"{BASE}/{pid}/tasks/{q2['task_id']}/adjudication", json={"values": {
        "answer": {"candidate": 0}, "topic": "geometry", "quality": 2}}, headers=h(tenant, "admin"))
    assert settled.status_code == 201, settled.text

    # CSV (candidates as a JSON array), Parquet, and a `datasets` folder on the server: one task each.
    csv_text = 'qid,question,cands,gold,src,level\nq3,"What is 1+1, then?","[""2"", ""3""]",2,csv,3\n'
    assert upload(client, tenant, pid, "b.csv", csv_text.encode(), MAPPING).json()["imported"] == 1
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist([{"qid": "q4", "question": "What is 9-3?", "cands": ["6", "5"],
                                          "gold": "6", "src": "parquet", "level": 4}]), buffer)
    assert upload(client, tenant, pid, "c.parquet", buffer.getvalue(), MAPPING).json()["imported"] == 1
    import datasets  # the dev extra; the server reads the folder with pyarrow alone

    folder = get_settings().data_dir / "imports" / "ds"
    datasets.Dataset.from_list([{"qid": "q5", "question": "What is 2*5?", "cands": ["10", "25"], "gold": "10",
                                 "src": "hf", "level": 5}]).save_to_disk(str(folder))
    from_path = client.post(f"{BASE}/{pid}/imports/from-path", json={"source_path": "ds", "mapping": MAPPING},
                            headers=h(tenant, "admin"))
    assert from_path.status_code == 200 and from_path.json()["imported"] == 1, from_path.text
    escape = client.post(f"{BASE}/{pid}/imports/from-path", json={"source_path": "../rewardhub.db"},
                         headers=h(tenant, "admin"))
    assert escape.status_code == 422 and escape.json()["error"]["field"] == "source_path"
    trainer_path = client.post(f"{BASE}/{pid}/imports/from-path", json={"source_path": "ds"},
                               headers=h(tenant, "trainer"))
    assert trainer_path.status_code == 403

    # Browse: every task with its metadata back; filters by text, status, annotator and a question's value.
    every = tasks(client, tenant, pid)
    assert [(t["prompt_id"], t["status"], t["metadata"]) for t in every] == [
        ("q1", "labelled", {"src": "gsm8k", "level": 1}), ("q2", "adjudicated", {"src": "gsm8k", "level": 2}),
        ("q3", "open", {"src": "csv", "level": "3"}), ("q4", "open", {"src": "parquet", "level": 4}),
        ("q5", "open", {"src": "hf", "level": 5})]
    assert [t["prompt_id"] for t in tasks(client, tenant, pid, q="1+1, THEN")] == ["q3"]
    assert [t["prompt_id"] for t in tasks(client, tenant, pid, status="open", limit=2)] == ["q3", "q4"]
    who_two = every[1]["annotators"][-1]
    assert [t["prompt_id"] for t in tasks(client, tenant, pid, annotator=who_two)] == ["q1", "q2"]
    assert [t["prompt_id"] for t in tasks(client, tenant, pid, question="topic", value="geometry")] == ["q2"]
    assert [t["prompt_id"] for t in tasks(client, tenant, pid, question="answer", value="4")] == ["q1"]
    assert [t["prompt_id"] for t in tasks(client, tenant, pid, question="flags", value="typo")] == ["q1"]
    assert [t["prompt_id"] for t in tasks(client, tenant, pid, question="quality", value="2")] == ["q2"]
    bad = client.get(f"{BASE}/{pid}/tasks", params={"question": "nope", "value": "x"}, headers=h(tenant, "trainer"))
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "question"

    # Export: JSONL keeps values nested, exactly as stored.
    ids = {t["prompt_id"]: t["task_id"] for t in every}
    q2_values = {"answer": {"kind": "answer", "answer": "7", "candidate": 0, "rationale": None},
                 "topic": "geometry", "quality": 2.0}
    out = client.get(f"{BASE}/{pid}/exports/labels", params={"format": "jsonl"}, headers=h(tenant, "trainer"))
    assert out.status_code == 200 and out.headers["content-type"].startswith("application/x-ndjson")
    final = [json.loads(line) for line in out.text.splitlines()]
    assert [(r["prompt_id"], r["task_id"], r["status"], r["label"], r["values"], r["metadata"]) for r in final] == [
        ("q1", ids["q1"], "labelled", "4", q1_values, {"src": "gsm8k", "level": 1}),
        ("q2", ids["q2"], "adjudicated", "7", q2_values, {"src": "gsm8k", "level": 2})]

    # CSV and Parquet: values flattened one column per question part (lists as JSON text).
    flat: dict[str, list[Any]] = {"values.answer.kind": ["answer", "answer"], "values.answer.answer": ["4", "7"],
            "values.answer.candidate": [0, 0], "values.topic": ["algebra", "geometry"],
            "values.quality": [4.0, 2.0], "values.flags": ['["typo"]', None],
            "metadata": ['{"level": 1, "src": "gsm8k"}', '{"level": 2, "src": "gsm8k"}']}
    frame = pd.read_csv(io.StringIO(client.get(f"{BASE}/{pid}/exports/labels", params={"format": "csv"},
                                               headers=h(tenant, "trainer")).text), dtype=str, keep_default_na=False)
    for column, expected in flat.items():
        assert list(frame[column]) == ["" if v is None else str(v) for v in expected], column
    assert list(frame["prompt_id"]) == ["q1", "q2"] and list(frame["values.answer.rationale"]) == ["", ""]
    table = pq.read_table(io.BytesIO(client.get(f"{BASE}/{pid}/exports/labels", params={"format": "parquet"},
                                                headers=h(tenant, "trainer")).content))
    assert table.schema.field("values.quality").type == pa.float64()
    assert {column: table.column(column).to_pylist() for column in flat} == flat
    # datasets: the Parquet file, read back with datasets itself.
    path = tmp_path / "labels.parquet"
    path.write_bytes(client.get(f"{BASE}/{pid}/exports/labels", params={"format": "datasets"},
                                headers=h(tenant, "trainer")).content)
    loaded = datasets.Dataset.from_parquet(str(path))
    assert loaded.to_list() == table.to_pylist()

    # raw: every annotation, then the adjudication; the filters apply to exports too.
    raw = [json.loads(line) for line in client.get(f"{BASE}/{pid}/exports/labels", params={
        "kind": "raw", "status": "adjudicated"}, headers=h(tenant, "trainer")).text.splitlines()]
    assert [(r["source"], r["prompt_id"], r["answer"]) for r in raw] == [
        ("annotation", "q2", "7"), ("annotation", "q2", "8"), ("adjudication", "q2", "7")]

    # veRL: data_source, prompt as a chat list, ability, reward_model {style, ground_truth}, extra_info.
    verl = pq.read_table(io.BytesIO(client.get(f"{BASE}/{pid}/exports/verl", headers=h(tenant, "trainer")).content))
    assert verl.to_pylist() == [
        {"data_source": "data", "prompt": [{"role": "user", "content": "What is 2+2?"}], "ability": "math",
         "reward_model": {"style": "rule", "ground_truth": "4"},
         "extra_info": {"split": "train", "index": 0, "prompt_id": "q1", "task_id": ids["q1"]}},
        {"data_source": "data", "prompt": [{"role": "user", "content": "What is 3+4?"}], "ability": "math",
         "reward_model": {"style": "rule", "ground_truth": "7"},
         "extra_info": {"split": "train", "index": 1, "prompt_id": "q2", "task_id": ids["q2"]}}]

    # Tenancy: another project's admin sees none of it.
    other = h(tenant, "admin_b")
    assert client.get(f"{BASE}/{pid}/tasks", headers=other).status_code == 404
    assert client.get(f"{BASE}/{pid}/exports/labels", headers=other).status_code == 404
    assert client.get(f"{BASE}/{pid}/exports/verl", headers=other).status_code == 404
    assert client.post(f"{BASE}/{pid}/imports", files={"file": ("a.jsonl", jsonl(JSONL_ROWS))},
                       headers=other).status_code == 404
    assert client.post(f"{BASE}/{pid}/imports/from-path", json={"source_path": "ds"}, headers=other).status_code == 404


def test_bad_rows_name_the_row_and_field(api: tuple[TestClient, Tenant]) -> None:
    client, tenant = api
    pid = make_project(client, tenant)
    rows: list[dict[str, Any]] = [JSONL_ROWS[0], {"qid": "x", "cands": ["1", "2"]}, {**JSONL_ROWS[1], "cands": ["7"]}]
    refused = upload(client, tenant, pid, "bad.jsonl", jsonl(rows), MAPPING)
    assert refused.status_code == 422, refused.text
    body = refused.json()
    assert body["error"]["field"] == "rows[1].question" and body["imported"] == 0
    assert [(r["row"], r["status"], r["field"]) for r in body["rows"]] == [
        (0, "ok", None), (1, "invalid_input", "question"), (2, "invalid_input", "cands")]
    assert "rollouts_per_prompt = 2" in body["rows"][2]["message"]
    assert tasks(client, tenant, pid) == []  # all or nothing
    partial = upload(client, tenant, pid, "bad.jsonl", jsonl(rows), MAPPING, mode="partial")
    assert partial.status_code == 200 and (partial.json()["imported"], partial.json()["rejected"]) == (1, 2)
    assert [t["prompt_id"] for t in tasks(client, tenant, pid)] == ["q1"]
    # The same prompt again is that row's problem, not a duplicate task.
    dup = upload(client, tenant, pid, "a.jsonl", jsonl(JSONL_ROWS[:1]), MAPPING)
    assert dup.status_code == 422 and "already a task" in dup.json()["rows"][0]["message"]
    broken = upload(client, tenant, pid, "x.jsonl", b'{"question": "a"}\nnot json\n', {}, mode="partial")
    assert broken.json()["rows"][1]["field"] == "row" and "line 2" in broken.json()["rows"][1]["message"]
    bad_map = upload(client, tenant, pid, "x.jsonl", b"{}", {"prompt": ""})
    assert bad_map.status_code == 422 and bad_map.json()["error"]["field"] == "mapping.prompt"
    no_format = upload(client, tenant, pid, "x.txt", b"{}", {})
    assert no_format.status_code == 422 and no_format.json()["error"]["field"] == "format"
    not_parquet = upload(client, tenant, pid, "x.parquet", b"nope", {})
    assert not_parquet.status_code == 422 and not_parquet.json()["error"]["field"] == "file"


def test_browse_page_is_for_reviewers_and_admin_keys(api: tuple[TestClient, Tenant]) -> None:
    import re

    client, tenant = api
    pid = make_project(client, tenant)
    upload(client, tenant, pid, "a.jsonl", jsonl(JSONL_ROWS), MAPPING)
    for username, role in (("ann", "annotator"), ("rev", "reviewer")):
        made = client.post(f"{BASE}/{pid}/annotators", json={"username": username, "password": "pw-" * 4,
                                                             "role": role}, headers=h(tenant, "admin"))
        assert made.status_code == 201, made.text

    def login(username: str) -> None:
        client.cookies.clear()
        page = client.get("/ui/login")
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert token is not None
        done = client.post("/ui/login", data={"username": username, "password": "pw-" * 4,
                                              "csrf_token": token.group(1)}, follow_redirects=False)
        assert done.status_code == 303, done.text

    login("ann")
    assert client.get(f"/ui/projects/{pid}/browse").status_code == 403  # annotators do not browse others' labels
    login("rev")
    page = client.get(f"/ui/projects/{pid}/browse", params={"q": "3+4"})
    assert page.status_code == 200 and 'data-status="open"' in page.text
    assert page.text.count("data-task-id=") == 1 and "What is 3+4?" in page.text
    refused = client.get(f"/ui/projects/{pid}/browse", params={"status": "lost", "max_agreement": "x"})
    assert refused.status_code == 422 and 'id="browse-error"' in refused.text and "max_agreement" in refused.text
    assert client.get(f"/ui/projects/{'0' * 32}/browse").status_code == 404
