"""The annotation SDK (rewardhub.client.AnnotationClient) against the real annotation service.

``live_server`` serves the embedded default on a loopback port, on SQLite and on PostgreSQL. One flow, as
an admin, a trainer, two annotators and a reviewer would run it through the SDK only: a project with a
preference_pair and a rating question, guidelines behind the read-first gate, budget, answer key and
accounts; prompts, a step and a purchase make the tasks; the annotators label (come back later, never show
again, undo), a disagreement is adjudicated, and quality, the label feed and the preference-pair export
are read back. Retry behaviour is in tests/unit/test_annotation_client.py (scripted test doubles).
"""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from rewardhub.annotation_client import ImportMapping, LabelSchema
from rewardhub.client import AnnotationClient, AnnotationError, AsyncAnnotationClient
from tests.conftest import LiveServer

SCHEMA: LabelSchema = {"questions": [
    {"id": "pref", "type": "preference_pair", "rationale": "optional", "rubric_hints": ["Is it correct?"]},
    {"id": "quality", "type": "rating", "min": 1, "max": 5, "labels": {"1": "bad", "5": "great"}},
]}
# prompt id → (the rollouts' answers, their completions); the pair is the first completion of each of the
# two largest answer clusters.
ROLLOUTS: dict[str, tuple[list[str | None], list[str]]] = {
    "p0": (["4", "5", "4", "4"], ["so it is 4", "it is 5", "four: 4", "4"]),
    "p1": (["7", "7", "8", None], ["7 it is", "seven, 7", "8", "no idea"]),
    "p2": (["1", "2", "1", "2"], ["one: 1", "two: 2", "1", "2"]),
}
# What each annotator answers, by prompt: they agree on p0 and disagree on p1's preference.
ANSWERS: dict[str, dict[str, dict[str, Any]]] = {
    "one": {"p0": {"pref": "A", "quality": 4}, "p1": {"pref": {"choice": "A", "rationale": "7"}, "quality": 3},
            "p2": {"pref": "A", "quality": 5}},
    "two": {"p0": {"pref": "A", "quality": 4}, "p1": {"pref": "B", "quality": 3}},
}


def test_admin_trainer_annotators_and_reviewer_through_the_sdk(live_server: LiveServer) -> None:
    url, tenant = live_server.url, live_server.tenant
    admin = AnnotationClient(url, tenant.keys["admin"])
    trainer = AnnotationClient(url, tenant.keys["trainer"])

    # --- admin: project, guidelines gate, accounts, answer key, listing -------------------------------
    made = admin.create_project(tenant.project_a, "prefs", label_budget=0, label_schema=SCHEMA, policy="random",
                                overlap_k=2, rollouts_per_prompt=4, description="pairs for rubric_rm")
    pid = made["id"]
    assert made["webhook_secret"] and [q["type"] for q in made["label_schema"]["questions"]] == [
        "preference_pair", "rating"]
    with pytest.raises(AnnotationError) as refused:  # a bad schema names the field
        admin.create_project(tenant.project_a, "bad", label_budget=1, policy="random", label_schema={
            "questions": [{"id": "x", "type": "single_label", "choices": ["only"]}]})
    assert (refused.value.status_code, refused.value.field) == (422, "label_schema.questions[0].choices")
    admin.create_project(tenant.project_a, "second", label_budget=1, policy="random",
                         label_schema={"questions": [{"id": "t", "type": "free_text"}]})
    assert [p["name"] for p in admin.iter_projects(project_id=tenant.project_a, limit=1)] == ["prefs", "second"]
    updated = admin.update_project(pid, guidelines="Prefer the **correct** answer; $x^2$ is fine.",
                                   guidelines_required=True)
    assert updated["guidelines_version"] == 1 and updated["description"] == "pairs for rubric_rm"
    admin.create_annotator(pid, "alice", "correct-horse-1", display_name="Alice")
    assert admin.create_reviewer(pid, "rita", "battery-staple-2")["role"] == "reviewer"
    assert [(a["username"], a["role"]) for a in admin.iter_annotators(pid, limit=1)] == [
        ("alice", "annotator"), ("rita", "reviewer")]
    with pytest.raises(AnnotationError) as taken:
        admin.create_annotator(pid, "alice", "another-password")
    assert (taken.value.status_code, taken.value.field) == (409, "username")
    assert admin.put_answer_key(pid, {"p0": "4", "p1": "7"}) == {"entries": 2}
    second_key = admin.create_api_key(tenant.project_a, "annotator", name="second annotator")["key"]

    # --- trainer: prompts, a step (budget 0: nothing bought), then a budget and a purchase ------------
    assert trainer.register_prompts(pid, {k: f"What is {k}?" for k in ROLLOUTS}) == {"created": 3, "existing": 0}
    step = trainer.post_step(pid, 0, [{"prompt_id": k, "answers": list(a), "completions": c}
                                      for k, (a, c) in ROLLOUTS.items()], idempotency_key="run-1-step-0")
    assert step["purchased"] == 0 and [g["pseudo_label"] for g in step["groups"]] == ["4", "7", "1"]
    assert admin.set_budget(pid, 3)["budget"] == {"total": 3, "spent": 0, "left": 0 + 3}
    bought = trainer.purchase(pid, 0, list(ROLLOUTS), idempotency_key="buy-0")
    assert [p["prompt_id"] for p in bought["purchases"]] == ["p0", "p1", "p2"] and bought["budget"]["left"] == 0
    assert trainer.purchase(pid, 0, list(ROLLOUTS), idempotency_key="buy-0") == bought  # replayed, not re-bought

    # --- annotator two: the guidelines gate, undo, never show again -----------------------------------
    two = AnnotationClient(url, second_key)
    with pytest.raises(AnnotationError) as gate:
        two.next_task(pid)
    assert (gate.value.status_code, gate.value.code) == (409, "guidelines_unconfirmed")
    two.confirm_guidelines(pid, 1)
    first = two.next_task(pid)
    assert first is not None and first["pairs"]["pref"]["a"] and first["prompt_text"].startswith("What is")
    two.submit(pid, first["assignment_id"], {"pref": "B", "quality": 1})  # a slip ...
    undone = two.undo(pid)  # ... taken back: the same task is leased again
    assert undone["undone"]["values"] == {"pref": {"choice": "B", "rationale": None}, "quality": 1.0}
    task: Any = undone["task"]
    while task is not None:
        if task["prompt_id"] == "p2":
            assert two.never(pid, task["assignment_id"])["task_id"] == task["task_id"]
        else:
            out = two.submit(pid, task["assignment_id"], ANSWERS["two"][task["prompt_id"]])
            assert out["replayed"] is False and not out["undone"]
        task = two.next_task(pid)

    # --- annotator one: come back later -------------------------------------------------------------
    one = AnnotationClient(url, tenant.keys["annotator"])
    one.confirm_guidelines(pid, 1)
    deferred = one.next_task(pid)
    assert deferred is not None and one.current_task(pid) == {**deferred, "resumed": True}
    assert one.later(pid, deferred["assignment_id"])["task_id"] == deferred["task_id"]
    order = []
    while (task := one.next_task(pid)) is not None:
        order.append(task["prompt_id"])
        one.submit(pid, task["assignment_id"], ANSWERS["one"][task["prompt_id"]])
    assert sorted(order) == ["p0", "p1", "p2"] and order[-1] == deferred["prompt_id"]  # the deferred one last

    # --- reviewer: the disagreement on p1 -------------------------------------------------------------
    [dispute] = list(admin.iter_adjudications(pid))
    assert dispute["prompt_id"] == "p1" and dispute["pairs"]["pref"] == {"a": "7 it is", "b": "8"}
    assert sorted(a["values"]["pref"]["choice"] for a in dispute["annotations"] if a["values"]) == ["A", "B"]
    with pytest.raises(AnnotationError) as bad:
        admin.adjudicate(pid, dispute["task_id"], {"pref": "X", "quality": 3})
    assert (bad.value.status_code, bad.value.field) == (422, "values.pref")
    settled = admin.adjudicate(pid, dispute["task_id"], {"pref": "B", "quality": 3})
    assert settled["values"] == {"pref": {"choice": "B", "rationale": None}, "quality": 3.0}
    assert list(admin.iter_adjudications(pid)) == []

    # --- read back: stats, quality, the label feed, the ledger, the export -----------------------------
    stats = admin.stats(pid)
    assert (stats["tasks_done"], stats["tasks_in_adjudication"], stats["tasks_open"]) == (2, 0, 1)
    quality = admin.quality(pid)
    by_question = {q["question_id"]: q["krippendorff_alpha"] for q in quality["questions"]}
    # pref, nominal over (A, A) and (A, B): o_AA = 2, o_AB = o_BA = 1, n_A = 3, n_B = 1, n = 4;
    # D_o = 2/4, D_e = 2·3·1 / (4·3) = 1/2, α = 1 − (1/2)/(1/2) = 0
    assert by_question["pref"]["value"] == pytest.approx(0.0) and by_question["pref"]["items"] == 2
    # quality, ordinal over (4, 4) and (3, 3): no disagreement, D_o = 0, so α = 1 − 0/D_e = 1
    assert by_question["quality"]["value"] == pytest.approx(1.0)
    assert sorted(a["labels"] for a in quality["annotators"]) == [2, 3]  # two: p0, p1; one: p0, p1, p2
    # Against the adjudication of p1 (B, 3), every compared question must match: one gave (A, 3),
    # wrong, 0/1; two gave (B, 3), right, 1/1. No math question, so no gold: None with gold_n 0.
    assert sorted((a["labels"], a["adjudicated_accuracy"], a["adjudicated_n"], a["gold_accuracy"], a["gold_n"])
                  for a in quality["annotators"]) == [(2, 1.0, 1, None, 0), (3, 0.0, 1, None, 0)]
    feed = [entry for entry in trainer.iter_labels(pid, limit=1) if entry["event"] == "labelled"]
    final = {entry["prompt_id"]: entry["values"] for entry in feed}
    assert final.keys() == {"p0", "p1"} and final["p1"] == settled["values"]
    assert [p["prompt_id"] for p in trainer.iter_ledger(pid, limit=2)] == ["p0", "p1", "p2"]
    pairs = list(trainer.export_preference_pairs(pid))
    assert [(p["instruction_id"], p["winner"]) for p in pairs] == [("p0", "A"), ("p1", "B")]
    assert pairs[1]["instruction"] == "What is p1?" and {pairs[1]["response_a"], pairs[1]["response_b"]} == {
        "7 it is", "8"}

    # Tenancy: another project's admin sees none of it.
    with pytest.raises(AnnotationError) as hidden:
        AnnotationClient(url, tenant.keys["admin_b"]).get_project(pid)
    assert hidden.value.status_code == 404

    async def read_async() -> tuple[int, list[str]]:
        async with AsyncAnnotationClient(url, tenant.keys["trainer"]) as client:
            project = await client.get_project(pid)
            return project["budget"]["spent"], [p["winner"] async for p in client.export_preference_pairs(pid)]

    assert asyncio.run(read_async()) == (3, ["A", "B"])
    for client in (admin, trainer, one, two):
        client.close()


MATH_SCHEMA: LabelSchema = {"questions": [{"id": "answer", "type": "math_answer"},
                                          {"id": "quality", "type": "rating", "min": 1, "max": 5}]}
ROWS = [{"qid": "q1", "question": "What is 2+2?", "cands": ["4", "5"], "gold": "4", "src": "gsm8k"},
        {"qid": "q2", "question": "What is 3+4?", "cands": ["7", "8"], "gold": "7", "src": "gsm8k"}]


def test_import_browse_and_export_through_the_sdk(live_server: LiveServer, tmp_path: Path) -> None:
    url, tenant = live_server.url, live_server.tenant
    admin = AnnotationClient(url, tenant.keys["admin"])
    trainer = AnnotationClient(url, tenant.keys["trainer"])
    pid = admin.create_project(tenant.project_a, "math", label_budget=10, label_schema=MATH_SCHEMA, policy="random",
                               overlap_k=2, rollouts_per_prompt=2)["id"]
    source = tmp_path / "tasks.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    mapping: ImportMapping = {"prompt": "question", "id": "qid", "candidates": "cands", "gold": "gold",
                              "metadata": ["src"]}

    # A bad row: nothing stored, the typed error carries every row's status.
    with pytest.raises(AnnotationError) as bad:
        trainer.import_tasks(pid, b'{"qid": "x"}\n', filename="bad.jsonl", mapping=mapping)
    assert bad.value.status_code == 422 and bad.value.field == "rows[0].question"
    assert [r["status"] for r in bad.value.body["rows"]] == ["invalid_input"]
    imported = trainer.import_tasks(pid, source, mapping=mapping, idempotency_key="import-1")
    assert (imported["imported"], [r["prompt_id"] for r in imported["rows"]]) == (2, ["q1", "q2"])
    assert trainer.import_tasks(pid, source, mapping=mapping, idempotency_key="import-1") == imported  # replayed
    assert [t["prompt_id"] for t in trainer.iter_tasks(pid, limit=1)] == ["q1", "q2"]
    assert [t["prompt_id"] for t in trainer.iter_tasks(pid, q="3+4")] == ["q2"]

    # Two annotators: q1 agreed ("4", "4"), q2 disputed ("7" against "8"), settled as "7".
    one, two = AnnotationClient(url, tenant.keys["annotator"]), AnnotationClient(
        url, admin.create_api_key(tenant.project_a, "annotator")["key"])
    for who, picks in ((one, {"q1": 0, "q2": 0}), (two, {"q1": 0, "q2": 1})):
        while (task := who.next_task(pid)) is not None:
            who.submit(pid, task["assignment_id"], {"quality": 4}, candidate=picks[task["prompt_id"]])
    [disputed] = list(trainer.iter_tasks(pid, status="disputed"))
    assert disputed["prompt_id"] == "q2" and len(disputed["annotators"]) == 2
    admin.adjudicate(pid, disputed["task_id"], {"quality": 2}, candidate=0)
    assert [t["prompt_id"] for t in trainer.iter_tasks(pid, status="adjudicated")] == ["q2"]

    # Gold (the imported answer key) and adjudication accuracy, per annotator:
    # one: q1 "4" = gold 4, q2 "7" = gold 7 → 2/2 = 1.0; against q2's adjudication "7" → 1/1 = 1.0;
    # two: q1 "4" right, q2 "8" wrong → 1/2 = 0.5; against the adjudication → 0/1 = 0.0.
    accuracy = sorted((a["gold_accuracy"], a["adjudicated_accuracy"]) for a in admin.quality(pid)["annotators"])
    assert accuracy == [(0.5, 0.0), (1.0, 1.0)]

    final = {r["prompt_id"]: r for r in trainer.iter_exported_labels(pid)}
    assert final.keys() == {"q1", "q2"} and final["q2"]["values"]["answer"]["answer"] == "7"
    assert len(list(trainer.iter_exported_labels(pid, kind="raw", filters={"q": "3+4"}))) == 3  # 2 labels + 1 decision
    size = trainer.export_labels(pid, tmp_path / "labels.parquet", format="parquet")
    table = pq.read_table(tmp_path / "labels.parquet")
    assert size == (tmp_path / "labels.parquet").stat().st_size and table.num_rows == 2
    verl = io.BytesIO()
    assert trainer.export_verl(pid, verl, data_source="openai/gsm8k") == len(verl.getvalue()) > 0
    rows = pq.read_table(io.BytesIO(verl.getvalue())).to_pylist()
    assert [(r["data_source"], r["reward_model"]["ground_truth"]) for r in rows] == [("openai/gsm8k", "4"),
                                                                                       ("openai/gsm8k", "7")]
    with pytest.raises(AnnotationError) as refused:  # a bad filter is a 422 before the stream: no file left
        trainer.export_labels(pid, tmp_path / "none.csv", format="csv", filters={"max_agreement": 2.0})
    assert refused.value.status_code == 422 and not list(tmp_path.glob("none.csv*"))
    for client in (admin, trainer, one, two):
        client.close()
