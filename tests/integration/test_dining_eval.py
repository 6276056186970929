"""DiningBench end to end against VisionLLMTestDouble, a TEST DOUBLE of an OpenAI-compatible VLM server.

The double is not a model: it answers scripted replies per record id, checks that every image part
arrives as a base64 ``image_url`` data URL carrying the record's image bytes, injects 429/500 to
exercise the client's retries, and can hang after N answers to play a crash mid-run.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from rewardhub.cli import app
from services.common.llm.client import OpenAIChatClient
from services.common.llm.scripted import ScriptedLLMServer, ScriptedReply
from trainer.dining.records import load_records
from trainer.dining.report import build_report
from trainer.dining.runner import read_results, run_bench

_DATA_URL = re.compile(r"^data:image/(png|jpeg);base64,([A-Za-z0-9+/=]+)$")
_RECORD = re.compile(r"record (\S+):")


class VisionLLMTestDouble:
    """TEST DOUBLE of an OpenAI-compatible VLM (see the module docstring); served through ScriptedLLMServer."""

    def __init__(self, answers: dict[str, str], images: dict[str, bytes], *,
                 failures: dict[str, list[int]] | None = None, hang_after: int | None = None) -> None:
        self.answers, self.images = answers, images
        self.failures = {k: list(v) for k, v in (failures or {}).items()}
        self.hang_after = hang_after
        self.answered: Counter[str] = Counter()
        self.attempts: Counter[str] = Counter()
        self.problems: list[str] = []
        self.judge_calls = 0
        self.server = ScriptedLLMServer(self._reply, model="vision-test-double")

    def client(self, **kw: Any) -> OpenAIChatClient:
        return OpenAIChatClient("http://vlm.test/v1", "vlm", transport=self.server.transport(),
                                backoff_initial_s=0.001, backoff_max_s=0.01, **kw)

    async def _reply(self, body: dict[str, Any]) -> ScriptedReply | str:
        content = body["messages"][-1]["content"]
        if isinstance(content, str):  # a judge call: text only
            self.judge_calls += 1
            return "Yes" if "Predicted answer:\n是" in content else "No"
        *image_parts, text = content
        match = _RECORD.search(text.get("text", ""))
        if text.get("type") != "text" or not match:
            self.problems.append(f"last part is not the prompt text: {text}")
            return ScriptedReply.error(400, "last part must be the text")
        rid = match.group(1)
        self.attempts[rid] += 1
        for part in image_parts:
            url = part.get("image_url", {}).get("url", "") if part.get("type") == "image_url" else ""
            found = _DATA_URL.match(url)
            if not found or base64.b64decode(found.group(2)) != self.images[rid]:
                self.problems.append(f"{rid}: image part is not this record's base64 data URL")
                return ScriptedReply.error(400, "bad image part")
        if not image_parts:
            self.problems.append(f"{rid}: no image part")
        if self.failures.get(rid):
            status = self.failures[rid].pop(0)
            return ScriptedReply.rate_limited() if status == 429 else ScriptedReply.error(status)
        if self.hang_after is not None and sum(self.answered.values()) >= self.hang_after:
            await asyncio.Event().wait()  # in flight forever: the run is killed meanwhile
        self.answered[rid] += 1
        return self.answers[rid]


def make_bench(tmp_path: Path, rows: list[dict[str, Any]]) -> tuple[Path, dict[str, bytes]]:
    images = {}
    (tmp_path / "img").mkdir(exist_ok=True)
    for row in rows:
        data = b"\x89PNG\r\n\x1a\n" + row["id"].encode()
        (tmp_path / "img" / f"{row['id']}.png").write_bytes(data)
        images[row["id"]] = data
        row.setdefault("standard_image", f"img/{row['id']}.png")
        row["prompt"] = f"record {row['id']}: {row.get('prompt', 'What is it?')}"
    path = tmp_path / "bench.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path, images


ROWS: list[dict[str, Any]] = [
    {"id": "c1", "task": "classification", "ground_truth": "B"},
    {"id": "c2", "task": "classification", "ground_truth": "A"},
    {"id": "n1", "task": "nutrition", "ground_truth": {"calories": 500, "protein": 20, "carbohydrates": 60, "fat": 10}},
    {"id": "v1", "task": "vqa", "ground_truth": "是油炸的"},
]
ANSWERS = {"c1": "B", "c2": "<think>maybe A</think>C",
           "n1": '```json\n{"calories": 550, "protein": 20, "carbohydrates": 60, "fat": 10}\n```', "v1": "是油炸的"}


def test_images_arrive_as_data_urls_retries_recover_and_the_report_is_computed(tmp_path: Path) -> None:
    path, images = make_bench(tmp_path, [dict(r) for r in ROWS])
    double = VisionLLMTestDouble(ANSWERS, images, failures={"c1": [429, 500]})
    records = load_records(path)
    out = tmp_path / "results.jsonl"

    async def go() -> Any:
        return await run_bench(records, double.client(max_retries=3), out, concurrency=2, judge=double.client())

    summary = asyncio.run(go())
    assert double.problems == []
    assert (summary.ok, summary.failed, summary.skipped) == (4, 0, 0)
    assert double.attempts["c1"] == 3  # 429, 500, then the answer
    results = read_results(out)
    assert results["c1"]["attempts"] == 3 and results["v1"]["judge_reply"] == "Yes"
    report = build_report(records, results, judge=True)
    assert report["complete"] and report["counts"]["ok"] == 4
    # c1 right, c2 "C" ≠ A: accuracy 1/2, nothing unreadable
    assert report["tasks"]["classification"]["accuracy"] == 0.5
    assert report["tasks"]["classification"]["unreadable_share"] == 0.0
    assert report["tasks"]["nutrition"]["nutrients"]["calories"]["mape"] == 10.0  # |550 − 500| / 500
    assert report["tasks"]["vqa"]["rouge1"]["f"] == 1.0 and report["tasks"]["vqa"]["judge_accuracy"] == 1.0


def test_a_failing_record_is_an_error_line_and_only_it_is_asked_again(tmp_path: Path) -> None:
    path, images = make_bench(tmp_path, [dict(r) for r in ROWS[:2]])
    records = load_records(path)
    out = tmp_path / "results.jsonl"
    broken = VisionLLMTestDouble(ANSWERS, images, failures={"c2": [500, 500]})
    summary = asyncio.run(run_bench(records, broken.client(max_retries=1), out, concurrency=2))
    assert (summary.ok, summary.failed) == (1, 1)
    line = read_results(out)["c2"]
    assert line["status"] == "error" and "HTTP 500" in line["error"]
    assert build_report(records, read_results(out))["tasks"]["classification"]["unreadable"] == 1
    healthy = VisionLLMTestDouble(ANSWERS, images)
    summary = asyncio.run(run_bench(records, healthy.client(), out, concurrency=2))
    assert (summary.skipped, summary.ok) == (1, 1) and set(healthy.attempts) == {"c2"}
    assert read_results(out)["c2"]["status"] == "ok"


def test_resume_after_a_kill_answers_no_record_twice(tmp_path: Path) -> None:
    rows = [{"id": f"r{i}", "task": "classification", "ground_truth": "A"} for i in range(6)]
    path, images = make_bench(tmp_path, rows)
    records = load_records(path)
    answers = {f"r{i}": "A" for i in range(6)}
    out = tmp_path / "results.jsonl"
    first = VisionLLMTestDouble(answers, images, hang_after=3)

    async def killed_run() -> None:
        three_done = asyncio.Event()
        written: list[str] = []

        def seen(line: dict[str, Any]) -> None:
            written.append(line["id"])
            if len(written) == 3:
                three_done.set()

        task = asyncio.create_task(run_bench(records, first.client(), out, concurrency=2, on_result=seen))
        await three_done.wait()  # two more requests are in flight, hung in the double
        task.cancel()  # the kill: in-flight records are lost, finished ones are on disk
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(killed_run())
    before = read_results(out)
    assert len(before) == 3 and sum(first.answered.values()) == 3
    with out.open("a", encoding="utf-8") as file:
        file.write('{"id": "r5", "sta')  # a write torn by the crash
    second = VisionLLMTestDouble(answers, images)
    summary = asyncio.run(run_bench(records, second.client(), out, concurrency=2))
    assert summary.skipped == 3 and summary.ok == 3
    assert set(second.answered).isdisjoint(before)  # nothing finished before is asked again
    ok_lines = [json.loads(line) for line in out.read_text().splitlines() if line.startswith('{"id"') and
                line.endswith("}")]
    assert Counter(line["id"] for line in ok_lines) == Counter({f"r{i}": 1 for i in range(6)})


def test_cli_eval_dining_prints_the_tables_writes_the_report_and_resumes(tmp_path: Path) -> None:
    path, images = make_bench(tmp_path, [dict(r) for r in ROWS])
    double = VisionLLMTestDouble(ANSWERS, images, failures={"n1": [429]})
    out, report_path = tmp_path / "res.jsonl", tmp_path / "rep.json"
    args = ["eval", "dining", str(path), "--model", "vlm", "--out", str(out), "--report", str(report_path),
            "--judge-model", "judge", "--concurrency", "2", "--rpm", "6000"]
    with double.server:
        result = CliRunner().invoke(app, [*args, "--base-url", double.server.base_url])
        assert result.exit_code == 0, result.output
        assert "classification" in result.output and "MAPE" in result.output and "judge accuracy" in result.output
        report = json.loads(report_path.read_text(encoding="utf-8"))
        assert report["counts"]["ok"] == 4 and report["run"]["answered"] == 4
        assert double.attempts["n1"] == 2 and double.problems == []
        again = CliRunner().invoke(app, [*args, "--base-url", double.server.base_url])
        assert again.exit_code == 0, again.output
        assert json.loads(report_path.read_text())["run"]["skipped"] == 4
        assert sum(double.answered.values()) == 4  # the rerun asked nothing


def test_cli_eval_dining_bad_data_names_the_line_and_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": "x", "task": "classification", "ground_truth": "A"}\n', encoding="utf-8")
    result = CliRunner().invoke(app, ["eval", "dining", str(path), "--base-url", "http://127.0.0.1:9/v1",
                                      "--model", "m"])
    assert result.exit_code == 2 and "bad.jsonl:1: prompt: required" in result.output
