"""The annotation SDK's quality methods (honeypots, per-question guidelines) against the real service
(``live_server``: a loopback uvicorn on SQLite and on PostgreSQL), sync and async."""

from __future__ import annotations

import asyncio

import pytest

from rewardhub.annotation_client import LabelSchema
from rewardhub.client import AnnotationClient, AnnotationError, AsyncAnnotationClient
from tests.conftest import LiveServer

SCHEMA: LabelSchema = {"questions": [
    {"id": "answer", "type": "math_answer", "guidelines": "Lowest terms: $\\frac{1}{2}$."},
    {"id": "topic", "type": "single_label", "choices": ["algebra", "geometry"]},
]}


def test_honeypots_and_question_guidelines_through_the_sdk(live_server: LiveServer) -> None:
    url, tenant = live_server.url, live_server.tenant
    admin = AnnotationClient(url, tenant.keys["admin"])
    trainer = AnnotationClient(url, tenant.keys["trainer"])
    annotator = AnnotationClient(url, tenant.keys["annotator"])
    pid = admin.create_project(tenant.project_a, "gold", label_budget=2, label_schema=SCHEMA, policy="random",
                               rollouts_per_prompt=2, guidelines_required=True)["id"]
    assert admin.set_honeypot_rate(pid, 1.0)["honeypot_rate"] == 1.0
    with pytest.raises(AnnotationError) as refused:
        admin.set_honeypot_rate(pid, 1.5)
    assert (refused.value.status_code, refused.value.field) == (422, "honeypot_rate")
    step = trainer.post_step(pid, 0, [{"prompt_id": "r0", "prompt_text": "1+1?", "answers": ["2", "3"]}])
    if not step["purchased"]:  # the policy may not have bought it
        trainer.purchase(pid, 0, ["r0"])
    added = admin.add_honeypots(pid, [
        {"prompt_id": "h0", "prompt_text": "2+2?", "answers": ["4", "5"], "gold": {"answer": "4"}},
        {"prompt_id": "h1", "prompt_text": "2+3?", "answers": ["5", "6"], "gold": {"topic": "maths"}}])
    assert (added["created"], added["rejected"]) == (1, 1)
    assert [(i["status"], i["field"]) for i in added["items"]] == [("ok", None), ("invalid_input", "items[1].gold.topic")]

    history = admin.set_question_guidelines(pid, "topic", "Algebra **or** geometry.")
    assert (history["version"], len(history["versions"])) == (1, 1)
    state = annotator.guidelines(pid)
    assert state["needs_confirmation"] is True
    assert {q["question_id"]: q["version"] for q in state["questions"]} == {"answer": 1, "topic": 1}
    with pytest.raises(AnnotationError) as gated:
        annotator.next_task(pid)
    assert gated.value.code == "guidelines_unconfirmed"
    annotator.confirm_question_guidelines(pid, {q["question_id"]: q["version"] for q in state["questions"]})
    task = annotator.next_task(pid)
    assert task is not None and task["prompt_id"] == "h0"  # rate 1: a honeypot while a real task waits
    annotator.submit(pid, task["assignment_id"], {"answer": {"answer": "4"}, "topic": "algebra"})
    real = annotator.next_task(pid)
    assert real is not None and real["prompt_id"] == "r0"
    assert set(real) == set(task)
    quality = admin.quality(pid)
    assert [(a["honeypot_accuracy"], a["honeypot_n"]) for a in quality["annotators"]] == [(1.0, 1)]

    async def read() -> tuple[int, int]:
        async with AsyncAnnotationClient(url, tenant.keys["admin"]) as client:
            listed = await client.list_honeypots(pid)
            versions = await client.question_guidelines(pid, "topic")
            return listed["data"][0]["correct"], versions["version"]

    assert asyncio.run(read()) == (1, 1)
