"""Evaluation jobs through the real trainer service: each kind runs in its own worker process, reports
progress, serves its report and per-sample JSONL; configs are checked field by field and confined.

Kinds at tiny sizes: ``model`` (a tiny random model, graded by the live server's own /v1/rewards),
``dining`` (VisionServerTestDouble, a TEST DOUBLE of an OpenAI-compatible VLM server on a loopback
port: scripted answers per record, it counts the requests per record), ``sts`` (a tiny model, its SAE
trained in the job). Each runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import base64
import http.server
import json
import re
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import SQLITE_ONLY, LiveServer, bearer
from tests.integration.test_trainer_service import set_env, upload

pytestmark = pytest.mark.slow
EVALS = "/services/trainer/v1/evaluations"
_RECORD = re.compile(r"record (\S+):")


def wait_job(client: httpx.Client, job_id: str, done: Any, limit_s: float = 120) -> dict[str, Any]:
    """Poll the job until ``done(job)`` holds (a state to reach, not a duration to wait)."""
    deadline = time.monotonic() + limit_s
    while True:
        job: dict[str, Any] = client.get(f"{EVALS}/{job_id}").json()
        if done(job):
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"evaluation never reached the expected state: {job}")
        time.sleep(0.1)


def ended(job: dict[str, Any]) -> bool:
    return job["status"] in ("succeeded", "failed", "cancelled")


def area(isolated_env: Path, project_id: str) -> Path:
    return isolated_env / "data" / "projects" / project_id


def tiny_model(isolated_env: Path, project_id: str) -> str:
    from trainer.tiny_models import build_tiny_causal_lm

    build_tiny_causal_lm(area(isolated_env, project_id) / "models" / "tiny", seed=0, hidden_size=32, num_layers=2)
    return "models/tiny"


def model_config(**overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {"checkpoint": "models/tiny", "dataset": "digits",
                              "reward": {"spec": {"type": "regex", "pattern": r"\d"}, "max_retries": 1,
                                         "timeout_s": 30},
                              "k": 2, "max_new_tokens": 4, "prompts_per_batch": 2, "seed": 0}
    config.update(overrides)
    return config


class VisionServerTestDouble:
    """TEST DOUBLE of an OpenAI-compatible VLM server (not a model) on a loopback port.

    Answers each record (found by ``record <id>:`` in the prompt text) with its scripted reply after
    checking that the image part is a base64 PNG data URL; counts the requests per record. With
    ``hold_after`` it answers that many requests, then holds every later one until :meth:`release`.
    """

    def __init__(self, answers: dict[str, str], hold_after: int | None = None) -> None:
        self.answers = answers
        self.requests: Counter[str] = Counter()
        self.problems: list[str] = []
        self.hold_after = hold_after
        self.released = threading.Event()
        self.held = threading.Event()
        self._lock = threading.Lock()
        double = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                status, reply = double.answer(body)
                data = json.dumps(reply).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass  # the worker that asked was killed

            def log_message(self, *_: Any) -> None:
                return None

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        *images, text = body["messages"][-1]["content"]
        match = _RECORD.search(text.get("text", ""))
        if not match or not images:
            self.problems.append(f"unexpected message: {text}")
            return 400, {"error": {"message": "bad request"}}
        for part in images:
            url = part["image_url"]["url"]
            if not url.startswith("data:image/png;base64,") or not base64.b64decode(url.split(",", 1)[1]):
                self.problems.append(f"{match.group(1)}: not a base64 PNG data URL")
        rid = match.group(1)
        with self._lock:
            self.requests[rid] += 1
            hold = self.hold_after is not None and sum(self.requests.values()) > self.hold_after
        if hold:
            self.held.set()
            self.released.wait(60)
        return 200, {"id": "x", "object": "chat.completion", "model": body.get("model", "vlm"),
                     "choices": [{"index": 0, "message": {"role": "assistant", "content": self.answers[rid]},
                                  "finish_reason": "stop"}],
                     "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}

    def release(self) -> None:
        self.released.set()

    def close(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()


DINING_ROWS: list[dict[str, Any]] = [
    {"id": "c1", "task": "classification", "ground_truth": "B"},
    {"id": "c2", "task": "classification", "ground_truth": "A"},
    {"id": "c3", "task": "classification", "ground_truth": "C"},
    {"id": "n1", "task": "nutrition", "ground_truth": {"calories": 500, "protein": 20, "carbohydrates": 60,
                                                       "fat": 10}},
]
DINING_ANSWERS = {"c1": "B", "c2": "C", "c3": "C",
                  "n1": '{"calories": 550, "protein": 20, "carbohydrates": 60, "fat": 10}'}


def make_dining_bench(folder: Path) -> str:
    """The records and their PNG images inside the project's area; returns the records' path in it."""
    (folder / "dining" / "img").mkdir(parents=True, exist_ok=True)
    lines = []
    for row in DINING_ROWS:
        (folder / "dining" / "img" / f"{row['id']}.png").write_bytes(b"\x89PNG\r\n\x1a\n" + row["id"].encode())
        lines.append(json.dumps({**row, "standard_image": f"img/{row['id']}.png",
                                 "prompt": f"record {row['id']}: What is it?"}))
    (folder / "dining" / "bench.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return "dining/bench.jsonl"


@pytest.fixture
def eval_client(live_server: LiveServer, monkeypatch: pytest.MonkeyPatch) -> httpx.Client:
    """Project A's trainer key with its ``digits`` dataset; workers score over HTTP at the live server."""
    set_env(monkeypatch, REWARDHUB_GATEWAY_URL=live_server.url)
    client = httpx.Client(base_url=live_server.url, headers=bearer(live_server.tenant.keys["trainer"]), timeout=30)
    assert upload(client, live_server.tenant.project_a).status_code == 201
    return client


@pytest.fixture
def vlm(monkeypatch: pytest.MonkeyPatch) -> Any:
    double = VisionServerTestDouble(DINING_ANSWERS)
    set_env(monkeypatch, REWARDHUB_LLM_BASE_URL=double.url, REWARDHUB_LLM_MODEL="vlm-test-double")
    yield double
    double.close()


def test_a_model_evaluation_reports_pass_at_k_progress_and_its_samples(
        eval_client: httpx.Client, live_server: LiveServer, isolated_env: Path) -> None:
    tiny_model(isolated_env, live_server.tenant.project_a)
    created = eval_client.post(EVALS, json={"kind": "model", "name": "tiny", "config": model_config()})
    assert created.status_code == 201, created.text
    assert created.json()["progress"]["total"] == 8, "the total is known when the job is created"
    job = wait_job(eval_client, created.json()["id"], ended)
    assert job["status"] == "succeeded", job
    assert job["progress"] == {"stage": "done", "done": 8, "total": 8, "resumed": 0, "fraction": 1.0}
    assert Path(job["output_dir"]) == area(isolated_env, live_server.tenant.project_a) / "evaluations" / job["id"]
    results = eval_client.get(f"{EVALS}/{job['id']}/results").json()
    overall = results["metrics"]["sources"]["all"]
    assert overall["prompts"] == 8 and overall["samples"] == 16 and overall["pass@2_prompts"] == 8
    samples = eval_client.get(f"{EVALS}/{job['id']}/samples")
    assert samples.status_code == 200 and samples.headers["content-type"].startswith("application/jsonl")
    lines = [json.loads(line) for line in samples.text.splitlines()]
    assert sorted((s["prompt_index"], s["sample_index"]) for s in lines) == [(p, i) for p in range(8) for i in (0, 1)]
    # avg@2 recomputed by hand from the recorded samples: the regex grader scores 1 iff a digit appears.
    by_prompt: dict[int, list[float]] = {}
    for s in lines:
        assert s["status"] == "ok" and s["score"] == (1.0 if re.search(r"\d", s["completion"]) else 0.0), s
        by_prompt.setdefault(s["prompt_index"], []).append(s["score"])
    assert overall["avg@2"] == pytest.approx(sum(sum(v) / 2 for v in by_prompt.values()) / 8)
    listed = eval_client.get(EVALS).json()
    assert [j["id"] for j in listed["data"]] == [job["id"]]
    # The CLI shows the same progress and fetches the same results.
    from typer.testing import CliRunner

    from rewardhub.cli import app

    env = {"REWARDHUB_URL": live_server.url, "REWARDHUB_API_KEY": live_server.tenant.keys["trainer"],
           "REWARDHUB_TRAINER_URL": ""}
    shown = CliRunner().invoke(app, ["evaluations", "status", job["id"], "--watch"], env=env)
    assert shown.exit_code == 0, shown.output
    assert f"{job['id']}  model  succeeded done       8/8" in shown.output
    saved = isolated_env / "samples.jsonl"
    fetched = CliRunner().invoke(app, ["evaluations", "results", job["id"], "--samples", str(saved)], env=env)
    assert fetched.exit_code == 0, fetched.output
    assert '"avg@2"' in fetched.output and len(saved.read_text().splitlines()) == 16
    listed_cli = CliRunner().invoke(app, ["evaluations", "list"], env=env)
    assert listed_cli.exit_code == 0 and job["id"] in listed_cli.output


def test_a_dining_evaluation_asks_the_configured_vlm_once_per_record(
        eval_client: httpx.Client, live_server: LiveServer, isolated_env: Path, vlm: VisionServerTestDouble) -> None:
    records = make_dining_bench(area(isolated_env, live_server.tenant.project_a))
    body = {"kind": "dining", "config": {"records": records, "concurrency": 2}}
    created = eval_client.post(EVALS, json=body, headers={"Idempotency-Key": "dining-1"})
    assert created.status_code == 201, created.text
    retried = eval_client.post(EVALS, json=body, headers={"Idempotency-Key": "dining-1"})
    assert retried.headers["Idempotent-Replayed"] == "true" and retried.json()["id"] == created.json()["id"]
    job = wait_job(eval_client, created.json()["id"], ended)
    assert job["status"] == "succeeded", job
    assert job["progress"]["done"] == job["progress"]["total"] == 4
    assert vlm.requests == Counter({"c1": 1, "c2": 1, "c3": 1, "n1": 1}) and vlm.problems == []
    metrics = job["metrics"]
    assert metrics["counts"]["ok"] == 4 and metrics["complete"] is True
    assert metrics["tasks"]["classification"]["accuracy"] == pytest.approx(2 / 3)
    assert metrics["tasks"]["nutrition"]["nutrients"]["calories"]["mae"] == pytest.approx(50.0)  # |550 - 500|
    lines = eval_client.get(f"{EVALS}/{job['id']}/samples").text.splitlines()
    assert sorted(json.loads(line)["id"] for line in lines) == ["c1", "c2", "c3", "n1"]
    assert len(eval_client.get(EVALS).json()["data"]) == 1, "a retried start never starts a second job"


def test_an_sts_evaluation_trains_its_sae_and_scores_each_target(
        eval_client: httpx.Client, live_server: LiveServer, isolated_env: Path) -> None:
    require_sae_lens()
    folder = area(isolated_env, live_server.tenant.project_a)
    tiny_model(isolated_env, live_server.tenant.project_a)
    write_sts_texts(folder)
    config = {"model": "models/tiny", "layer": 0, "fine_tuning": "sts/tune.jsonl",
              "targets": {"add": "sts/add.jsonl", "say": "sts/say.jsonl", "sort": "sts/sort.jsonl"},
              "deltas": {"add": 0.2, "say": 0.0, "sort": -0.1}, "top_k": 8, "d_sae": 32, "sae_epochs": 2,
              "max_examples": 12}
    created = eval_client.post(EVALS, json={"kind": "sts", "config": config})
    assert created.status_code == 201, created.text
    assert created.json()["progress"]["total"] == 5, "SAE, shift, and one item per target domain"
    job = wait_job(eval_client, created.json()["id"], ended, limit_s=180)
    assert job["status"] == "succeeded", job
    assert job["progress"]["done"] == 5 and job["metrics"]["resumed_stages"] == []
    assert set(job["metrics"]["scores"]) == {"add", "say", "sort"} and len(job["metrics"]["dims"]) == 8
    assert job["metrics"]["validation"]["n"] == 3
    assert (Path(job["output_dir"]) / "sae" / "cfg.json").is_file() and (Path(job["output_dir"]) / "shift.pt").is_file()
    lines = [json.loads(line) for line in eval_client.get(f"{EVALS}/{job['id']}/samples").text.splitlines()]
    assert {row["domain"]: row["score"] for row in lines} == job["metrics"]["scores"]


def require_sae_lens() -> None:
    from tests.conftest import require_module

    require_module("sae_lens", "the STS dependency (train extra)")


def write_sts_texts(folder: Path, tuning: int = 10) -> None:
    (folder / "sts").mkdir(parents=True, exist_ok=True)
    texts = {"tune": [f"add {i} and {i + 1} gives {2 * i + 1}" for i in range(tuning)],
             "add": [f"add {i} and {i} gives {2 * i}" for i in range(6)],
             "say": [f"say {i} {i}" for i in range(6)],
             "sort": [f"sort {i} {i - 1} gives {i - 1} {i}" for i in range(6)]}
    for name, values in texts.items():
        (folder / "sts" / f"{name}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in values))


@pytest.mark.parametrize(("kind", "change", "field"), [
    ("model", {"k": 0}, "config.k"),
    ("model", {"ks": [4]}, "config"),
    ("model", {"checkpoint": "/etc"}, "config.checkpoint"),
    ("model", {"checkpoint": "../../x"}, "config.checkpoint"),
    ("model", {"dataset": "../digits.jsonl"}, "config.dataset"),
    ("model", {"reward": {"spec": {"type": "regex", "pattern": "x"}, "url": "http://169.254.169.254"}},
     "config.reward.url"),
    ("model", {"reward": {"spec": {"type": "regex", "pattern": "x"}, "api_key_env": "REWARDHUB_SECRET_KEY"}},
     "config.reward.api_key_env"),
    ("model", {"surprise": 1}, "config.surprise"),
    ("dining", {"records": "dining/bench.jsonl", "base_url": "http://169.254.169.254/v1"}, "config.base_url"),
    ("dining", {"records": "/etc/passwd"}, "config.records"),
    ("dining", {"records": "dining/bench.jsonl", "concurrency": 0}, "config.concurrency"),
    ("sts", {"model": "models/tiny", "layer": -1, "fine_tuning": "a.jsonl", "targets": {"x": "b.jsonl"}},
     "config.layer"),
    ("sts", {"model": "models/tiny", "layer": 0, "fine_tuning": "../a.jsonl", "targets": {"x": "b.jsonl"}},
     "config.fine_tuning"),
])
@SQLITE_ONLY
def test_a_bad_config_is_a_422_naming_the_field(eval_client: httpx.Client, live_server: LiveServer,
                                                 isolated_env: Path, vlm: VisionServerTestDouble, kind: str,
                                                 change: dict[str, Any], field: str) -> None:
    tiny_model(isolated_env, live_server.tenant.project_a)
    make_dining_bench(area(isolated_env, live_server.tenant.project_a))
    config = model_config(**change) if kind == "model" else change
    response = eval_client.post(EVALS, json={"kind": kind, "config": config})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == field, response.json()
    assert eval_client.get(EVALS).json()["data"] == []


@SQLITE_ONLY
def test_dining_images_outside_the_area_and_unknown_kinds_are_refused(
        eval_client: httpx.Client, live_server: LiveServer, isolated_env: Path, vlm: VisionServerTestDouble) -> None:
    folder = area(isolated_env, live_server.tenant.project_a)
    make_dining_bench(folder)
    secret = isolated_env / "secret.png"
    secret.write_bytes(b"\x89PNG\r\n\x1a\nsecret")
    (folder / "dining" / "evil.jsonl").write_text(json.dumps(
        {"id": "e", "task": "classification", "prompt": "record e: ?", "ground_truth": "A",
         "standard_image": str(secret)}) + "\n")
    response = eval_client.post(EVALS, json={"kind": "dining", "config": {"records": "dining/evil.jsonl"}})
    assert response.status_code == 422 and response.json()["error"]["field"] == "config.records", response.text
    assert eval_client.post(EVALS, json={"kind": "bogus", "config": {}}).status_code == 422
    assert vlm.requests == Counter()


def test_jobs_of_another_project_are_not_found_and_cancel_stops_a_job(
        eval_client: httpx.Client, live_server: LiveServer, isolated_env: Path) -> None:
    tiny_model(isolated_env, live_server.tenant.project_a)
    job_id = eval_client.post(EVALS, json={"kind": "model", "config": model_config(prompts_per_batch=1)}).json()["id"]
    stranger = httpx.Client(base_url=live_server.url, headers=bearer(live_server.tenant.keys["admin_b"]), timeout=30)
    assert stranger.get(f"{EVALS}/{job_id}").status_code == 404
    assert stranger.post(f"{EVALS}/{job_id}/cancel").status_code == 404
    # Cancelled while queued (it ends at once) or, had its worker started, between two of its 8 batches.
    assert eval_client.post(f"{EVALS}/{job_id}/cancel").status_code == 202
    job = wait_job(eval_client, job_id, ended)
    assert job["status"] == "cancelled" and job["progress"]["done"] < 8, job
    assert eval_client.get(f"{EVALS}/{job_id}/results").status_code == 409
    assert eval_client.post(f"{EVALS}/{job_id}/cancel").status_code == 409, "already over"
    resumed = eval_client.post(f"{EVALS}/{job_id}/resume")
    assert resumed.status_code == 202, resumed.text
    done = wait_job(eval_client, job_id, ended)
    assert done["status"] == "succeeded" and done["attempt"] == 2, done
    assert done["progress"]["resumed"] == job["progress"]["done"], "a resumed job keeps what was finished"
    assert eval_client.post(f"{EVALS}/{job_id}/resume").status_code == 409, "a succeeded job has nothing left"


@SQLITE_ONLY
def test_the_cli_starts_a_job_watches_it_to_the_end_and_names_a_bad_field(
        eval_client: httpx.Client, live_server: LiveServer, isolated_env: Path, vlm: VisionServerTestDouble) -> None:
    from typer.testing import CliRunner

    from rewardhub.cli import app

    records = make_dining_bench(area(isolated_env, live_server.tenant.project_a))
    env = {"REWARDHUB_URL": live_server.url, "REWARDHUB_API_KEY": live_server.tenant.keys["trainer"],
           "REWARDHUB_TRAINER_URL": ""}
    bad = isolated_env / "bad.json"
    bad.write_text(json.dumps({"records": records, "base_url": "http://10.0.0.1/v1"}))
    refused = CliRunner().invoke(app, ["evaluations", "start", "dining", "--config", str(bad)], env=env)
    assert refused.exit_code == 1 and "422" in refused.output and "config.base_url" in refused.output
    good = isolated_env / "dining.json"
    good.write_text(json.dumps({"records": records}))
    started = CliRunner().invoke(app, ["evaluations", "start", "dining", "--config", str(good), "--watch"], env=env)
    assert started.exit_code == 0, started.output
    job_id = started.output.split()[0]
    job = eval_client.get(f"{EVALS}/{job_id}").json()
    assert job["status"] == "succeeded" and job["progress"]["done"] == 4, job
    assert sum(vlm.requests.values()) == 4, "the refused start asked nothing"
