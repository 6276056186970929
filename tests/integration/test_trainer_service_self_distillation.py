"""self_distillation: in runs started through the trainer service (POST /v1/runs), issue 17 follow-up.

A tiny model trained by a real worker process against the live server's /v1/rewards, with an ``ema``
teacher model registered in the project's teacher service (the run's own tiny architecture). The body
names no teacher URL and no key: the worker resolves the platform's teacher service and sends the run's
minted key (REWARDHUB_API_KEY holds another key here; were it sent, the teacher would answer 401 and the
run would fail). Two placements of the teacher:

- ``embedded``: no REWARDHUB_GATEWAY_URL — the worker mounts the platform in its own process, teacher
  included (``/services/teacher`` through an in-process transport); π-Play with the bare answer as the
  privileged context: every rollout scored (``/v1/score`` top-k), the groups graded (``/v1/examiner/rewards``);
- ``gateway``: REWARDHUB_GATEWAY_URL is the live server — the teacher at ``<gateway>/services/teacher``
  over HTTP; AMR-SD with the raw reference as the context.

Either way the run logs ``sd/`` metrics and the teacher's EMA model is pushed θ₀ at the start, then one
EMA step (τ = 0.05) per step: version 1 + max_steps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import SQLITE_ONLY, LiveServer, bearer
from tests.integration.test_trainer_service import (  # noqa: F401  (trainer_client is a fixture)
    RUNS,
    run_config,
    set_env,
    trainer_client,
    wait_for,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
TEACHER = "/services/teacher/v1/teacher-models"
TINY = {"seed": 0, "hidden_size": 32, "num_layers": 1}
SECTIONS: dict[str, dict[str, Any]] = {
    "embedded": {"method": "pi_play", "teacher": {"model": "student-ema", "tau": 0.05},
                 "pi_play": {"privileged": "answer", "steps_per_round": 1, "top_k": 5}},
    "gateway": {"method": "amr_sd", "teacher": {"model": "student-ema", "tau": 0.05},
                "amr_sd": {"context": "reference"}},
}


def register_ema(server: LiveServer, data_dir: Path) -> None:
    """The run's tiny architecture as a teacher model folder (<data_dir>/teacher-models/tiny), registered
    in project A as kind ema under the name the run's section gives."""
    from trainer.tiny_models import build_tiny_causal_lm

    build_tiny_causal_lm(data_dir / "teacher-models" / "tiny", seed=TINY["seed"], hidden_size=TINY["hidden_size"],
                         num_layers=TINY["num_layers"])
    answer = httpx.put(f"{server.url}{TEACHER}/student-ema", json={"kind": "ema", "path": "tiny"},
                       headers=bearer(server.tenant.keys["trainer"]), timeout=60)
    assert answer.status_code == 201, answer.text


@pytest.mark.parametrize("placement", ["embedded", "gateway"])
@SQLITE_ONLY
def test_a_self_distillation_run_uses_the_platforms_teacher_with_its_own_key(
        placement: str, trainer_client: httpx.Client, live_server: LiveServer,  # noqa: F811
        isolated_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if placement == "embedded":
        monkeypatch.delenv("REWARDHUB_GATEWAY_URL")
    monkeypatch.setenv("REWARDHUB_API_KEY", "rh_not_the_runs_key")  # a local config's key; never a service run's
    monkeypatch.setenv("REWARDHUB_URL", "http://127.0.0.1:9")  # a local config's platform; never a service run's
    set_env(monkeypatch)
    register_ema(live_server, isolated_env / "data")
    section = SECTIONS[placement]
    config = run_config(model={"tiny": TINY}, max_steps=2, export_hf="none", self_distillation=section)
    created = trainer_client.post(RUNS, json={"config": config})
    assert created.status_code == 201, created.text
    run = wait_for(trainer_client, created.json()["id"], lambda r: r["status"] in ("succeeded", "failed", "cancelled"),
                   limit_s=300)
    assert run["status"] == "succeeded", (run["error"], Path(run["output_dir"], "worker.log").read_text()[-3000:])
    assert "api_key_env" not in run["config"]["self_distillation"]["teacher"]
    steps = [row["metrics"] for row in trainer_client.get(f"{RUNS}/{run['id']}/metrics").json()["data"]]
    assert [m["step"] for m in steps] == [1, 2]
    for metrics in steps:
        assert metrics.get("sd/teacher_failures", 0.0) == 0.0, metrics
        if section["method"] == "pi_play":
            assert metrics["sd/distill_kl"] > 0.0, metrics  # the service's top-k for every rollout
            assert sum(v for k, v in metrics.items() if k.startswith("sd/difficulty/")) == pytest.approx(1.0)
        else:
            assert "sd/alpha" in metrics and "sd/modulated_share" in metrics, sorted(metrics)
            if metrics.get("sd/scored_rollouts", 0.0) > 0:  # a group with A ≠ 0 was scored under the reference
                assert metrics["sd/mean_abs_cig"] >= 0.0
    assert [m.get("sd/lambda") for m in steps] == ([1.0, 0.5] if section["method"] == "pi_play" else [None, None])
    info = httpx.get(f"{live_server.url}{TEACHER}/student-ema", headers=bearer(live_server.tenant.keys["trainer"]),
                     timeout=30).json()
    assert info["version"] == 3 and info["last_tau"] == 0.05, info  # θ₀ replaced once, then one EMA step per step
