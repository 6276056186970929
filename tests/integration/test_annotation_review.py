"""Review of single labels, task history, editing one's own labels and adding existing accounts to a
project, through the SDK against the real annotation service (``live_server``: SQLite and PostgreSQL).

Two annotator keys label two tasks (k = 2): they agree on p0 and disagree on p1. Annotator one edits the
p1 label (the task settles), a reviewer rejects annotator two's p0 label (the label is retracted and the
task is open again), and the history of both tasks is read back in time order.
"""

from __future__ import annotations

import asyncio

import pytest

from rewardhub.annotation_client import LabelSchema
from rewardhub.client import AnnotationClient, AnnotationError, AsyncAnnotationClient
from tests.conftest import LiveServer

SCHEMA: LabelSchema = {"questions": [{"id": "topic", "type": "single_label", "choices": ["a", "b", "c"]}]}
ANSWERS = {"one": {"p0": "a", "p1": "a"}, "two": {"p0": "a", "p1": "b"}}


def test_review_history_edits_and_members_through_the_sdk(live_server: LiveServer) -> None:
    url, tenant = live_server.url, live_server.tenant
    admin = AnnotationClient(url, tenant.keys["admin"])
    trainer = AnnotationClient(url, tenant.keys["trainer"])
    made = admin.create_project(tenant.project_a, "review", label_budget=0, label_schema=SCHEMA, policy="random",
                                overlap_k=2, rollouts_per_prompt=2, label_edit_window_s=3600)
    pid = made["id"]
    assert made["label_edit_window_s"] == 3600

    # --- assign existing accounts ---------------------------------------------------------------------
    other = admin.create_project(tenant.project_a, "other", label_budget=0, label_schema=SCHEMA, policy="random")
    olga = admin.create_annotator(other["id"], "olga", "correct-horse-1")
    rita = admin.create_reviewer(other["id"], "rita", "battery-staple-2")
    added = admin.add_member(pid, username="olga")
    assert (added["id"], added["added"]) == (olga["id"], True)
    assert admin.add_member(pid, username="olga")["added"] is False  # again: a no-op
    assert admin.add_member(pid, annotator_id=rita["id"])["role"] == "reviewer"
    assert sorted(a["username"] for a in admin.iter_annotators(pid)) == ["olga", "rita"]
    with pytest.raises(AnnotationError) as unknown:
        admin.add_member(pid, username="nobody")
    assert (unknown.value.status_code, unknown.value.field) == (404, "username")
    with pytest.raises(AnnotationError) as both:
        admin.add_member(pid, username="olga", annotator_id=olga["id"])
    assert both.value.status_code == 422
    # Another tenancy's admin cannot find olga; the all-projects key can add her there.
    admin_b, root = AnnotationClient(url, tenant.keys["admin_b"]), AnnotationClient(url, tenant.keys["root"])
    pid_b = admin_b.create_project(tenant.project_b, "b", label_budget=0, label_schema=SCHEMA, policy="random")["id"]
    with pytest.raises(AnnotationError) as hidden:
        admin_b.add_member(pid_b, username="olga")
    assert (hidden.value.status_code, hidden.value.field) == (404, "username")
    assert root.add_member(pid_b, username="olga")["added"] is True
    admin.remove_member(pid, rita["id"])
    assert [a["username"] for a in admin.iter_annotators(pid)] == ["olga"]

    # --- two annotator keys label p0 and p1 -------------------------------------------------------------
    trainer.register_prompts(pid, {"p0": "Topic of p0?", "p1": "Topic of p1?"})
    trainer.post_step(pid, 0, [{"prompt_id": p, "answers": ["1", "2"], "completions": ["x", "y"]}
                               for p in ("p0", "p1")])
    admin.set_budget(pid, 2)  # after the step: its policy bought nothing with a budget of 0
    trainer.purchase(pid, 0, ["p0", "p1"])
    second_key = admin.create_api_key(tenant.project_a, "annotator", name="two")["key"]
    clients = {"one": AnnotationClient(url, tenant.keys["annotator"]), "two": AnnotationClient(url, second_key)}
    label_ids: dict[tuple[str, str], str] = {}
    task_ids: dict[str, str] = {}
    for name, client in clients.items():
        while (task := client.next_task(pid)) is not None:
            out = client.submit(pid, task["assignment_id"], {"topic": ANSWERS[name][task["prompt_id"]]})
            label_ids[(name, task["prompt_id"])] = out["id"]
            task_ids[task["prompt_id"]] = task["task_id"]
    one, two = clients["one"], clients["two"]

    # --- annotator one sees and edits their own label --------------------------------------------------
    mine = {m["prompt_id"]: m for m in one.iter_my_labels(pid, limit=1)}
    assert mine.keys() == {"p0", "p1"} and all(m["editable"] for m in mine.values())
    assert mine["p1"]["label"]["values"] == {"topic": "a"} and mine["p1"]["task_status"] == "adjudication"
    edited = one.edit_label(pid, label_ids[("one", "p1")], {"topic": "b"})
    assert edited["values"] == {"topic": "b"} and edited["task_status"] == "done"
    assert one.edit_label(pid, label_ids[("one", "p1")], {"topic": "b"})["replayed"] is True
    with pytest.raises(AnnotationError) as foreign:  # someone else's label: not found
        one.edit_label(pid, label_ids[("two", "p1")], {"topic": "c"})
    assert (foreign.value.status_code, foreign.value.field) == (404, "annotation_id")
    with pytest.raises(AnnotationError) as bad:
        one.edit_label(pid, label_ids[("one", "p0")], {"topic": "z"})
    assert (bad.value.status_code, bad.value.field) == (422, "values.topic")

    # --- review: an annotator may not; the admin rejects two's p0 label ---------------------------------
    with pytest.raises(AnnotationError) as not_reviewer:
        one.reject(pid, label_ids[("two", "p0")])
    assert not_reviewer.value.status_code == 403
    rejected = admin.reject(pid, label_ids[("two", "p0")], comment="not a")
    assert (rejected["decision"], rejected["task_status"], rejected["label_retracted"]) == ("rejected", "open", True)
    assert admin.reject(pid, label_ids[("two", "p0")])["replayed"] is True
    with pytest.raises(AnnotationError) as changed:
        admin.accept(pid, label_ids[("two", "p0")])
    assert (changed.value.status_code, changed.value.code, changed.value.field) == (409, "already_reviewed",
                                                                                    "decision")
    assert admin.accept(pid, label_ids[("one", "p1")])["decision"] == "accepted"
    with pytest.raises(AnnotationError) as settled:  # reviewed: no longer editable
        one.edit_label(pid, label_ids[("one", "p1")], {"topic": "c"})
    assert (settled.value.status_code, settled.value.code) == (409, "not_editable")
    feed = {e["prompt_id"]: e["event"] for e in trainer.iter_labels(pid)}
    assert feed == {"p0": "retracted", "p1": "labelled"}
    assert admin.stats(pid)["tasks_open"] == 1

    # --- history, in time order --------------------------------------------------------------------------
    with pytest.raises(AnnotationError) as no_history:
        one.task_history(pid, task_ids["p1"])
    assert no_history.value.status_code == 403
    p1 = admin.task_history(pid, task_ids["p1"])
    assert [e["type"] for e in p1["events"]] == ["label", "label", "edit", "review"]
    before, after = p1["events"][2]["previous"], p1["events"][2]["label"]
    assert before is not None and after is not None
    assert before["values"] == {"topic": "a"} and after["values"] == {"topic": "b"}
    assert p1["final"] is not None and p1["final"]["values"] == {"topic": "b"}
    p0 = admin.task_history(pid, task_ids["p0"])
    assert [(e["type"], e.get("decision"), e.get("comment")) for e in p0["events"]][-1] == ("review", "rejected",
                                                                                             "not a")
    assert p0["status"] == "open" and p0["final"] is None

    async def read_async() -> list[tuple[str, str | None]]:
        async with AsyncAnnotationClient(url, second_key) as client:
            return [(m["prompt_id"], m["review"]) async for m in client.iter_my_labels(pid)]

    assert sorted(asyncio.run(read_async())) == [("p0", "rejected"), ("p1", None)]
    for client in (admin, trainer, admin_b, root, one, two):
        client.close()
