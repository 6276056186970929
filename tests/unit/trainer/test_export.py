"""Checkpoints in Hugging Face format: a trained tiny model's ``<checkpoint>/hf/`` loads with transformers
alone (``AutoModelForCausalLM`` / ``AutoTokenizer``) and gives the trained model's logits exactly."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from tests.conftest import SQLITE_ONLY, LiveServer, require_module
from trainer.config import parse_config
from trainer.grpo import CHECKPOINTS, GRPOTrainer
from trainer.rewards import CallableRewards, RewardItem

pytestmark = pytest.mark.slow


def letter_share(completion: str, _truth: Any, _item: RewardItem) -> float:
    chars = [c for c in completion if not c.isspace()]
    return sum(c.isalpha() for c in chars) / len(chars) if chars else 0.0


def run_config(tmp_path: Path, name: str, **overrides: Any) -> Any:
    data = tmp_path / f"{name}.jsonl"
    data.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": f"Say something ({i})."}],
                                        "reward_model": {"ground_truth": "x"}}) + "\n" for i in range(8)))
    settings: dict[str, Any] = {"model": {"tiny": {"seed": 0}}, "dataset": str(data), "group_size": 4,
                                "prompts_per_step": 2, "max_steps": 2, "learning_rate": 3e-2,
                                "max_completion_length": 6, "seed": 0, "output_dir": str(tmp_path / name)}
    settings.update(overrides)
    return parse_config(settings)


PROBE = [[1, 40, 41, 42, 43, 44, 45, 46], [1, 100, 200, 300, 301, 302, 303, 304]]


def logits(model: Any) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        out: torch.Tensor = model(input_ids=torch.tensor(PROBE)).logits
    return out


def saved(outcome: Any) -> Path:
    assert outcome.checkpoint is not None
    return Path(outcome.checkpoint)


def test_trained_checkpoint_loads_with_transformers_alone_and_gives_the_same_logits(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    config = run_config(tmp_path, "run", checkpoint_every=1)
    trainer = GRPOTrainer(config, rewards=CallableRewards(letter_share))
    outcome = trainer.train()
    assert outcome.status == "succeeded"
    hf = saved(outcome) / "hf"
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
            "tokenizer_config.json"} <= {p.name for p in hf.iterdir()}
    assert (Path(config.output_dir) / CHECKPOINTS / "step-000001" / "hf" / "model.safetensors").is_file()

    loaded = AutoModelForCausalLM.from_pretrained(str(hf), local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(str(hf), local_files_only=True)
    trained = logits(trainer.model)
    base = AutoModelForCausalLM.from_pretrained(str(trainer.base_model), local_files_only=True)
    assert not torch.equal(logits(base), trained)  # training moved the weights: the check below can fail
    assert torch.equal(logits(loaded), trained)
    # The tokenizer and chat template round-trip: the same prompt ids as the run encoded.
    messages = [{"role": "user", "content": "Say something (0)."}]
    ids: Any = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    assert ids == trainer.encode_prompt(0)
    generation = GenerationConfig.from_pretrained(str(hf))
    assert generation.eos_token_id == tokenizer.eos_token_id == trainer.tokenizer.eos_token_id


def test_export_hf_final_and_none(tmp_path: Path) -> None:
    final = run_config(tmp_path, "final", checkpoint_every=1, export_hf="final")
    outcome = GRPOTrainer(final, rewards=CallableRewards(letter_share)).train()
    checkpoints = Path(final.output_dir) / CHECKPOINTS
    assert not (checkpoints / "step-000001" / "hf").exists()
    assert (saved(outcome) / "hf" / "model.safetensors").is_file()

    none = run_config(tmp_path, "none", max_steps=1, export_hf="none")
    outcome = GRPOTrainer(none, rewards=CallableRewards(letter_share)).train()
    assert not (saved(outcome) / "hf").exists()


def test_a_cancelled_run_exports_its_last_checkpoint(tmp_path: Path) -> None:
    config = run_config(tmp_path, "cancel", max_steps=5, export_hf="final")
    trainer = GRPOTrainer(config, rewards=CallableRewards(letter_share))
    outcome = trainer.train(should_stop=lambda: trainer.step >= 1)
    assert outcome.status == "cancelled"
    assert (saved(outcome) / "hf" / "model.safetensors").is_file()


def test_cli_export_hf_from_a_checkpoint_without_one(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    from rewardhub.cli import app

    config = run_config(tmp_path, "cli", max_steps=1, export_hf="none")
    trainer = GRPOTrainer(config, rewards=CallableRewards(letter_share))
    checkpoint = saved(trainer.train())
    out = tmp_path / "exported"
    result = CliRunner().invoke(app, ["export-hf", str(checkpoint), str(out)])
    assert result.exit_code == 0, result.output
    loaded = AutoModelForCausalLM.from_pretrained(str(out), local_files_only=True)
    assert torch.equal(logits(loaded), logits(trainer.model))

    missing = CliRunner().invoke(app, ["export-hf", str(tmp_path), str(tmp_path / "x")])
    assert missing.exit_code == 2
    assert f"rewardhub export-hf: {tmp_path} is not a training checkpoint (no model.pt)" in missing.output


# ---------------------------------------------------------------- report_to through the training loop


def test_the_loop_reports_every_logged_step_to_tensorboard(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = run_config(tmp_path, "tb", report_to=["tensorboard"], export_hf="none")
    outcome = GRPOTrainer(config, rewards=CallableRewards(letter_share)).train()
    logged = [json.loads(line) for line in (Path(config.output_dir) / "metrics.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(Path(config.output_dir) / "tensorboard"))
    events.Reload()
    for key in ("reward_mean", "loss", "lr", "step_time_s"):
        recorded = [(e.step, e.value) for e in events.Scalars(key)]
        # TensorBoard stores float32.
        assert recorded == [(m["step"], pytest.approx(m[key], rel=1e-6)) for m in logged], key
    assert len(logged) == outcome.steps == 2


def test_a_tracker_failing_mid_run_does_not_stop_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    from trainer import tracking

    def broken(self: Any, metrics: Any, step: int) -> None:
        raise RuntimeError("event file gone")

    monkeypatch.setattr(tracking.TensorBoardTracker, "log", broken)
    config = run_config(tmp_path, "broken", report_to=["tensorboard"], export_hf="none", max_steps=3)
    with caplog.at_level("WARNING", logger="trainer.tracking"):
        outcome = GRPOTrainer(config, rewards=CallableRewards(letter_share)).train()
    assert outcome.status == "succeeded" and outcome.steps == 3
    assert [r.getMessage() for r in caplog.records if r.name == "trainer.tracking"] == [
        "report_to: tensorboard failed at step 1 (RuntimeError: event file gone); it gets no more metrics this "
        "run, training goes on (metrics.jsonl has every step)"]


# ---------------------------------------------------------------- DeepSpeed ZeRO-3 (2 ranks, CPU)


@SQLITE_ONLY
@pytest.mark.timeout(600)
def test_zero3_checkpoint_exports_the_consolidated_weights(live_server: LiveServer, tmp_path: Path) -> None:
    """Under ZeRO-3 each rank holds a shard; hf/ must hold the whole, trained tensors."""
    from tests.integration.test_deepspeed_train import launch, write_config

    require_module("deepspeed", "DeepSpeed (dev extra)")
    from transformers import AutoModelForCausalLM

    config = write_config(tmp_path / "z3", live_server.url, stage=3, max_steps=1, deepspeed={
        "zero_stage": 3, "overrides": {"zero_optimization": {"stage3_param_persistence_threshold": 0}}})
    launch(config, live_server.tenant.keys["trainer"])
    step = tmp_path / "z3" / "run" / "checkpoints" / "step-000001"
    full = torch.load(step / "model.pt", weights_only=True)
    exported = AutoModelForCausalLM.from_pretrained(str(step / "hf"), local_files_only=True).state_dict()
    base = AutoModelForCausalLM.from_pretrained(str(tmp_path / "z3" / "run" / "base-model"),
                                                local_files_only=True).state_dict()
    assert set(full) <= set(exported)
    for name, tensor in full.items():
        assert torch.equal(exported[name], tensor), name
    assert any(not torch.equal(full[k], base[k]) for k in full)  # trained: the comparison can fail
