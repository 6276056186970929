"""OCC wired into real training runs (issue 18): the MTP head in GRPOTrainer on the tiny model (CPU).

What is checked: the head joins the optimizer on the run's schedule; the warm-up runs once before the
first RL step and leaves every RNG as it found it; ``detach`` leaves the trunk's update exactly the
RL one; occ's λ_t is exactly 0 on a rollout batch's first mini-batch and not later; the step metrics
carry the MTP numbers; a resumed mtp run is bit-exact; the head travels with checkpoints and the
HF export; ``rewardhub train`` runs a config with an ``mtp:`` section end to end.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from typer.testing import CliRunner

from tests.conftest import SQLITE_ONLY, LiveServer
from trainer.config import ConfigError, load_config, parse_config
from trainer.grpo import CHECKPOINTS, GRPOTrainer
from trainer.mtp import CONFIG_FILE, WEIGHTS_FILE, load_mtp_head
from trainer.policy import LocalPolicy
from trainer.rewards import CallableRewards, RewardItem

MTP_METRICS = ("mtp_lambda", "mtp_inner", "mtp_norm_sq", "mtp_acceptance", "mtp_loss", "mtp_ce", "mtp_grad_norm")


def letter_share(completion: str, _truth: Any, _item: RewardItem) -> float:
    """A dense reward (almost every group has a spread), as the loop tests use."""
    chars = [c for c in completion if not c.isspace()]
    return sum(c.isalpha() for c in chars) / len(chars) if chars else 0.0


def run_config(tmp_path: Path, name: str, *, local: bool = False, **overrides: Any) -> Any:
    data = tmp_path / f"{name}.jsonl"
    data.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": f"Say something ({i})."}],
                                        "reward_model": {"ground_truth": "x"}}) + "\n" for i in range(8)))
    settings: dict[str, Any] = {"model": {"tiny": {"seed": 0, "hidden_size": 32}}, "dataset": str(data),
                                "group_size": 4, "prompts_per_step": 2, "max_steps": 2, "learning_rate": 3e-3,
                                "max_completion_length": 5, "seed": 0, "output_dir": str(tmp_path / name),
                                "export_hf": "none"}
    settings.update(overrides)
    return parse_config(settings, local=local)


def trainer(tmp_path: Path, name: str, **overrides: Any) -> GRPOTrainer:
    return GRPOTrainer(run_config(tmp_path, name, **overrides), rewards=CallableRewards(letter_share))


def trunk(model: Any) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


# ---------------------------------------------------------------- config


def test_the_config_refuses_occ_with_one_optimizer_step_and_mtp_with_deepspeed(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"mtp: mtp.regime: occ .*mini_batches ≥ 2 \(got mini_batches=1"):
        run_config(tmp_path, "a", mtp={"regime": "occ"})
    assert run_config(tmp_path, "b", mini_batches=2, mtp={"regime": "occ"}).mtp.regime == "occ"
    assert run_config(tmp_path, "c", num_iterations=2, mtp={"regime": "occ"}).mtp.regime == "occ"
    with pytest.raises(ConfigError, match="mtp: not supported with deepspeed"):
        run_config(tmp_path, "d", mtp={"regime": "detach"}, deepspeed={"zero_stage": 2})
    # A folder to load the head from is a local config's option only (a tenant names no server file).
    with pytest.raises(ConfigError, match=r"mtp\.init_from: Extra inputs"):
        run_config(tmp_path, "e", mtp={"init_from": "/etc"})
    assert run_config(tmp_path, "f", local=True, mtp={"init_from": "/x"}).mtp.init_from == "/x"
    assert run_config(tmp_path, "g").mtp is None
    with pytest.raises(ConfigError, match="mtp: not supported with multi_turn"):
        run_config(tmp_path, "h", local=True, mtp={"regime": "ce"}, multi_turn={"execution": "none"})
    # In a YAML file a relative init_from is taken from the file's folder, like dataset and model.path.
    (tmp_path / "run.yaml").write_text(yaml.safe_dump({"model": {"tiny": {}}, "dataset": "d.jsonl",
                                                       "mtp": {"init_from": "heads/h1"}}))
    assert getattr(load_config(tmp_path / "run.yaml").mtp, "init_from", None) == str(tmp_path / "heads" / "h1")


# ---------------------------------------------------------------- the head in the optimizer


def test_the_head_is_a_parameter_group_of_its_own_on_the_runs_schedule(tmp_path: Path) -> None:
    run = trainer(tmp_path, "groups", max_steps=4, warmup_steps=2, lr_schedule="linear",
                  mtp={"regime": "ce", "learning_rate": 1e-2})
    assert run.mtp_head is not None and isinstance(run.policy, LocalPolicy)
    groups = run.policy.optimizer.param_groups
    assert len(groups) == 2
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in run.mtp_head.parameters() if p.requires_grad}
    assert groups[0]["initial_lr"] == 3e-3 and groups[1]["initial_lr"] == 1e-2
    # Warm-up over W = 2 steps: after n optimizer steps lr = base · n / W; both groups follow it.
    assert [g["lr"] for g in groups] == [0.0, 0.0]  # n = 0
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
        run.scheduler.step()
    assert [g["lr"] for g in groups] == pytest.approx([3e-3 * 0.5, 1e-2 * 0.5])  # n = 1: 1/2


# ---------------------------------------------------------------- warm-up


def test_the_warmup_runs_once_before_the_first_step_and_leaves_the_rng_alone(tmp_path: Path) -> None:
    run = trainer(tmp_path, "warm", max_steps=1, mtp={"regime": "detach", "warmup_steps": 20,
                                                     "warmup_learning_rate": 3e-2, "warmup_prompts": 4})
    assert run.mtp_head is not None
    before = {k: v.clone() for k, v in run.mtp_head.state_dict().items()}
    weights = trunk(run.model)
    rng = torch.random.get_rng_state()
    metrics = run._mtp_warmup()
    assert torch.equal(torch.random.get_rng_state(), rng)  # the RL steps draw as they would without it
    assert all(torch.equal(v, weights[k]) for k, v in run.model.state_dict().items())  # trunk frozen
    assert any(not torch.equal(v, before[k]) for k, v in run.mtp_head.state_dict().items())
    assert metrics["mtp_warmup_sequences"] == 4 * 4  # 4 prompts x group_size 4
    assert metrics["mtp_warmup_ce"] < metrics["mtp_warmup_ce_first"]
    assert all(p.grad is None for p in run.mtp_head.parameters())  # nothing left for the RL step to add to
    assert run.mtp_warmed_up and run._mtp_warmup() == {}  # once


# ---------------------------------------------------------------- the regimes in the update


def test_detach_leaves_the_trunk_update_exactly_the_rl_one(tmp_path: Path) -> None:
    plain = trainer(tmp_path, "plain", max_steps=1)
    detach = trainer(tmp_path, "detach", max_steps=1, mtp={"regime": "detach"})
    assert detach.mtp_head is not None
    head_before = {k: v.clone() for k, v in detach.mtp_head.state_dict().items()}
    initial = trunk(plain.model)
    first, second = plain.train_step(), detach.train_step()
    assert first["loss"] != 0.0 and first["reward_mean"] == second["reward_mean"]
    assert any(not torch.equal(value, initial[name]) for name, value in plain.model.state_dict().items())  # it moved
    assert all(torch.equal(value, detach.model.state_dict()[name]) for name, value in plain.model.state_dict().items())
    assert any(not torch.equal(v, head_before[k]) for k, v in detach.mtp_head.state_dict().items())  # head learns
    for key in MTP_METRICS:
        assert math.isfinite(second[key]), key
    assert second["mtp_lambda"] == 1.0  # detach: the head's own CE, coefficient 1


def test_ce_reaches_the_trunk(tmp_path: Path) -> None:
    plain = trainer(tmp_path, "plain", max_steps=1)
    ce = trainer(tmp_path, "ce", max_steps=1, mtp={"regime": "ce", "lambda": 0.5})
    plain.train_step()
    metrics = ce.train_step()
    assert metrics["mtp_lambda"] == 0.5
    assert any(not torch.equal(value, ce.model.state_dict()[name]) for name, value in plain.model.state_dict().items())


def test_occ_lambda_is_zero_on_the_first_mini_batch_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import trainer.grpo as grpo
    from trainer.occ import mtp_loss

    run = trainer(tmp_path, "occ", max_steps=1, mini_batches=2, mtp={"regime": "occ"})
    seen: list[dict[str, float]] = []

    def recording(*args: Any, **kwargs: Any) -> Any:  # records each micro-batch's metrics
        out = mtp_loss(*args, **kwargs)
        seen.append(out.metrics)
        return out

    monkeypatch.setattr(grpo, "mtp_loss", recording)
    metrics = run.train_step()
    assert metrics.get("skipped_update") is None and len(seen) == 2  # 2 mini-batches x 1 micro-batch
    # π_old comes from the same micro-batches before any step: δ_RL = 0 exactly, λ_t = 0 exactly.
    assert seen[0]["mtp_inner"] == 0.0 and seen[0]["mtp_lambda"] == 0.0 and seen[0]["mtp_norm_sq"] > 0
    assert seen[1]["mtp_inner"] != 0.0 and seen[1]["mtp_lambda"] != 0.0  # the first step moved π_θ
    assert metrics["mtp_lambda"] == pytest.approx((seen[0]["mtp_lambda"] + seen[1]["mtp_lambda"]) / 2)


# ---------------------------------------------------------------- checkpoints


def test_a_resumed_mtp_run_is_bit_exact(tmp_path: Path) -> None:
    settings: dict[str, Any] = {"max_steps": 3, "mini_batches": 2, "lr_schedule": "cosine", "warmup_steps": 1,
                                "mtp": {"regime": "occ", "warmup_steps": 5, "warmup_prompts": 2,
                                        "learning_rate": 1e-2}}
    straight = trainer(tmp_path, "straight", **settings)
    done = straight.train()
    config = run_config(tmp_path, "interrupted", **settings)
    first = GRPOTrainer(config, rewards=CallableRewards(letter_share))
    cancelled = first.train(should_stop=lambda: first.step >= 2)
    assert cancelled.status == "cancelled" and cancelled.checkpoint is not None
    assert {WEIGHTS_FILE, CONFIG_FILE} <= {p.name for p in cancelled.checkpoint.iterdir()}
    resumed = GRPOTrainer(config, rewards=CallableRewards(letter_share))
    assert resumed.resume() is True and resumed.step == 2 and resumed.mtp_warmed_up
    rest = resumed.train()
    assert [m["step"] for m in rest.history] == [3]
    after, before = rest.history[0], done.history[2]
    for key in ("loss", "reward_mean", "lr", *MTP_METRICS):
        assert after[key] == before[key], key
    assert "mtp_warmup_ce" in done.history[0] and "mtp_warmup_ce" not in after  # warmed once, not again
    assert straight.mtp_head is not None and resumed.mtp_head is not None
    for ours, theirs in ((resumed.model, straight.model), (resumed.mtp_head, straight.mtp_head)):
        mine = ours.state_dict()
        assert all(torch.equal(value, mine[name]) for name, value in theirs.state_dict().items())


def test_resuming_needs_the_mtp_section_the_checkpoint_was_written_with(tmp_path: Path) -> None:
    run = trainer(tmp_path, "with", max_steps=1, mtp={"regime": "detach"})
    outcome = run.train()
    assert outcome.checkpoint is not None
    plain = trainer(tmp_path, "without", max_steps=1)
    with pytest.raises(ValueError, match="holds an MTP head"):
        plain.resume(outcome.checkpoint)


def test_a_head_loads_from_init_from_and_the_hf_export_carries_it(tmp_path: Path) -> None:
    run = trainer(tmp_path, "source", max_steps=1, export_hf="final", mtp={"regime": "ce"})
    outcome = run.train()
    assert outcome.checkpoint is not None and run.mtp_head is not None
    hf = outcome.checkpoint / "hf"
    assert "model.safetensors" in {p.name for p in hf.iterdir()}
    # In hf/mtp/: vLLM would take a *.safetensors at the top of the folder for the model's own weights.
    assert {p.name for p in hf.glob("*.safetensors")} == {"model.safetensors"}
    assert {WEIGHTS_FILE, CONFIG_FILE} <= {p.name for p in (hf / "mtp").iterdir()}
    from transformers import AutoModelForCausalLM

    exported = load_mtp_head(hf, AutoModelForCausalLM.from_pretrained(str(hf), local_files_only=True))
    trained = run.mtp_head.state_dict()
    assert all(torch.equal(value, trained[name]) for name, value in exported.state_dict().items())
    # `rewardhub export-hf` (outside the run) carries it too.
    from trainer.export import export_from_checkpoint

    again = export_from_checkpoint(outcome.checkpoint, tmp_path / "exported")
    assert (again / "mtp" / WEIGHTS_FILE).read_bytes() == (outcome.checkpoint / WEIGHTS_FILE).read_bytes()
    # A new run starting its head from that folder (a local config's mtp.init_from).
    config = run_config(tmp_path, "next", local=True, max_steps=1, mtp={"regime": "ce", "init_from": str(hf)})
    follow = GRPOTrainer(config, rewards=CallableRewards(letter_share))
    assert follow.mtp_head is not None
    assert all(torch.equal(value, trained[name]) for name, value in follow.mtp_head.state_dict().items())


# ---------------------------------------------------------------- `rewardhub train` end to end


@SQLITE_ONLY
def test_rewardhub_train_with_an_mtp_section(live_server: LiveServer, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from rewardhub.cli import app

    monkeypatch.setenv("RH_MTP_KEY", live_server.tenant.keys["trainer"])
    (tmp_path / "digits.jsonl").write_text("".join(
        json.dumps({"prompt": [{"role": "user", "content": f"Say 7 ({i})"}], "reward_model": {"ground_truth": "7"}})
        + "\n" for i in range(4)))
    config = {"model": {"tiny": {"seed": 0, "hidden_size": 32}}, "dataset": "digits.jsonl", "output_dir": "run",
              "reward": {"spec": {"type": "regex", "pattern": r"\d"}, "url": live_server.url,
                         "api_key_env": "RH_MTP_KEY"},
              "group_size": 4, "prompts_per_step": 2, "max_steps": 2, "max_completion_length": 4,
              "learning_rate": 1e-3, "mini_batches": 2, "export_hf": "final",
              "mtp": {"regime": "occ", "lambda_plus": 1.0, "warmup_steps": 3, "warmup_prompts": 2}}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(app, ["train", str(path)])
    assert result.exit_code == 0, result.output
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in logged] == [1, 2]
    assert "mtp_warmup_ce" in logged[0]
    updated = [m for m in logged if not m.get("skipped_update")]
    assert all(math.isfinite(m[key]) for m in updated for key in MTP_METRICS)
    final = tmp_path / "run" / CHECKPOINTS / "step-000002"
    assert (final / WEIGHTS_FILE).is_file() and (final / "hf" / "mtp" / WEIGHTS_FILE).is_file()
