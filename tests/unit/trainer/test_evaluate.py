"""Checkpoint evaluation (trainer/evaluate.py): the pass@k estimator against hand-computed values, the
per-source summary of hand-made samples, a tiny model evaluated with an in-process reward whose scores
the test recomputes from the recorded completions, and the periodic evaluation of a training run."""

from __future__ import annotations

import json
import math
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
import yaml

from trainer.config import ConfigError, load_config, parse_config
from trainer.data import load_rows
from trainer.evaluate import (
    EvalSample,
    EvalSettings,
    avg_at_k,
    check_ks,
    default_ks,
    evaluate,
    load_for_eval,
    pass_at_k,
    summarize,
    write_outputs,
)
from trainer.rewards import CallableRewards, RewardItem
from trainer.rollout import TransformersEngine

# ---------------------------------------------------------------- the estimator, by hand


@pytest.mark.parametrize(("n", "c", "k", "expected"), [
    (5, 2, 2, 0.7),                  # 1 - C(3,2)/C(5,2) = 1 - 3/10
    (10, 3, 4, 1 - 35 / 210),        # 1 - C(7,4)/C(10,4) = 1 - 35/210 = 0.8333…
    (4, 1, 1, 0.25),                 # pass@1 = c/n
    (8, 3, 1, 0.375),
    (4, 0, 2, 0.0),                  # nothing passes
    (4, 4, 4, 1.0),
    (3, 2, 2, 1.0),                  # n - c = 1 < k: every pair holds a pass
    (6, 2, 3, 0.8),                  # 1 - C(4,3)/C(6,3) = 1 - 4/20
    (16, 1, 16, 1.0),
    (16, 1, 8, 0.5),                 # 1 - C(15,8)/C(16,8) = 1 - 6435/12870
])
def test_pass_at_k_hand_values(n: int, c: int, k: int, expected: float) -> None:
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_is_stable_where_binomials_overflow_floats() -> None:
    # C(2000, 1000) ~ 2e600 overflows a float; the product form does not. Exact value by fractions.
    exact = 1 - Fraction(math.comb(1990, 1000), math.comb(2000, 1000))
    assert pass_at_k(2000, 10, 1000) == pytest.approx(float(exact), rel=1e-9)
    assert pass_at_k(200, 1, 1) == pytest.approx(0.005, abs=1e-15)


@pytest.mark.parametrize(("n", "c", "k"), [(4, 5, 1), (4, -1, 1), (4, 1, 5), (4, 1, 0)])
def test_pass_at_k_refuses_impossible_counts(n: int, c: int, k: int) -> None:
    with pytest.raises(ValueError, match="pass_at_k"):
        pass_at_k(n, c, k)


def test_avg_at_k_and_the_reported_ks() -> None:
    assert avg_at_k([1.0, 0.0, 0.5]) == pytest.approx(0.5)
    assert avg_at_k([0.25]) == 0.25
    with pytest.raises(ValueError):
        avg_at_k([])
    assert default_ks(16) == [1, 2, 4, 8, 16]
    assert default_ks(6) == [1, 2, 4, 6]
    assert default_ks(1) == [1]
    assert check_ks([4, 1, 4], 4) == [1, 4]
    with pytest.raises(ValueError, match="ks"):
        check_ks([1, 8], 4)


# ---------------------------------------------------------------- the summary, by hand


def sample(prompt: int, j: int, source: str, score: float | None, status: str = "ok", *, tokens: int = 3,
           truncated: bool = False) -> EvalSample:
    return EvalSample(prompt_index=prompt, sample_index=j, data_source=source, completion=f"c{prompt}{j}",
                      tokens=tokens, truncated=truncated, score=score, status=status)


def test_summary_leaves_non_ok_samples_out_and_counts_them() -> None:
    samples = [
        # source a, prompt 0: 1 0 1 0, all scored
        sample(0, 0, "a", 1.0, tokens=2), sample(0, 1, "a", 0.0, tokens=4),
        sample(0, 2, "a", 1.0, tokens=6, truncated=True), sample(0, 3, "a", 0.0, tokens=8),
        # source a, prompt 1: 0, timeout, 1, 1 -> three scored, two pass
        sample(1, 0, "a", 0.0), sample(1, 1, "a", None, "timeout"), sample(1, 2, "a", 1.0), sample(1, 3, "a", 1.0),
        # no data_source, prompt 2: every sample an error
        *(sample(2, j, "", None, "error", tokens=1, truncated=True) for j in range(4)),
    ]
    report = summarize(samples, k=4, ks=[1, 2, 4], pass_threshold=1.0)
    assert list(report) == ["a", "default", "all"]
    a = report["a"]
    # prompt 0: avg 1/2, pass@1 1/2, pass@2 1 - C(2,2)/C(4,2) = 5/6, pass@4 1
    # prompt 1: n=3, c=2: avg 2/3, pass@1 2/3, pass@2 1 (n-c < 2), pass@4 undefined (n < 4)
    assert a["prompts"] == 2 and a["samples"] == 8
    assert a["avg@4"] == pytest.approx((0.5 + 2 / 3) / 2)
    assert a["avg@4_prompts"] == 2
    assert a["pass@1"] == pytest.approx((0.5 + 2 / 3) / 2)
    assert a["pass@2"] == pytest.approx((5 / 6 + 1.0) / 2)
    assert a["pass@2_prompts"] == 2
    assert a["pass@4"] == 1.0 and a["pass@4_prompts"] == 1
    assert a["mean_tokens"] == pytest.approx((2 + 4 + 6 + 8 + 3 * 4) / 8)
    assert a["truncation_rate"] == pytest.approx(1 / 8)
    assert a["non_ok_count"] == 1 and a["status_timeout"] == 1 and a["status_ok"] == 7
    none = report["default"]
    assert none["avg@4"] is None and none["avg@4_prompts"] == 0  # never a silent 0
    assert none["pass@1"] is None and none["pass@1_prompts"] == 0
    assert none["non_ok_count"] == 4 and none["status_error"] == 4 and none["truncation_rate"] == 1.0
    everything = report["all"]
    assert everything["prompts"] == 3 and everything["non_ok_count"] == 5
    assert everything["avg@4"] == pytest.approx((0.5 + 2 / 3) / 2) and everything["avg@4_prompts"] == 2


def test_a_threshold_below_one_counts_partial_scores_as_passes() -> None:
    samples = [sample(0, 0, "s", 0.6), sample(0, 1, "s", 0.4)]
    assert summarize(samples, k=2, ks=[1], pass_threshold=0.5)["s"]["pass@1"] == 0.5
    assert summarize(samples, k=2, ks=[1], pass_threshold=1.0)["s"]["pass@1"] == 0.0


@pytest.mark.parametrize(("field", "value"), [("k", 0), ("temperature", 0.0), ("max_new_tokens", 0),
                                              ("max_prompts", 0), ("ks", (1, 9))])
def test_settings_name_the_bad_field(field: str, value: Any) -> None:
    values: dict[str, Any] = {"k": 4, "max_new_tokens": 4, field: value}
    with pytest.raises(ValueError, match=field):
        EvalSettings(**values)


# ---------------------------------------------------------------- a tiny model, graded in-process

K = 4
MAX_NEW = 6


def write_rows(path: Path) -> Path:
    rows = [{"data_source": "alpha" if i < 2 else "beta", "reward_model": {"ground_truth": str(i)},
             "prompt": [{"role": "user", "content": f"Count to {i}."}]} for i in range(3)]
    rows.append({"data_source": "beta", "reward_model": {"ground_truth": "x"}, "prompt": "Plain text prompt 3"})
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def length_grader(completion: str, _truth: Any, _item: RewardItem) -> float | tuple[float | None, str]:
    """By the completion's length mod 3: 0 -> a timeout (no score), 1 -> 1.0, 2 -> 0.0."""
    rest = len(completion) % 3
    return (None, "timeout") if rest == 0 else 1.0 if rest == 1 else 0.0


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    from trainer.tiny_models import build_tiny_causal_lm

    folder = build_tiny_causal_lm(tmp_path_factory.mktemp("tiny") / "model", seed=3)
    return load_for_eval(folder)


def run_eval(tiny: tuple[Any, Any], rows_path: Path, **settings: Any) -> Any:
    model, tokenizer = tiny
    values: dict[str, Any] = {"k": K, "max_new_tokens": MAX_NEW, "seed": 5, "prompts_per_batch": 3, **settings}
    return evaluate(TransformersEngine(model, tokenizer), tokenizer, load_rows(rows_path),
                    CallableRewards(length_grader), EvalSettings(**values))


def test_a_tiny_model_evaluated_with_an_in_process_reward(tiny: tuple[Any, Any], tmp_path: Path) -> None:
    result = run_eval(tiny, write_rows(tmp_path / "rows.jsonl"))
    report_path, samples_path = write_outputs(tmp_path / "out", result)
    report = json.loads(report_path.read_text())
    lines = [json.loads(line) for line in samples_path.read_text().splitlines()]
    assert len(lines) == 4 * K
    assert [(s["prompt_index"], s["sample_index"]) for s in lines] == [(p, j) for p in range(4) for j in range(K)]
    assert {s["data_source"] for s in lines if s["prompt_index"] < 2} == {"alpha"}
    # Every recorded score is the grader's on the recorded completion; the length grader is recomputed here.
    for s in lines:
        rest = len(s["completion"]) % 3
        expected = (None, "timeout") if rest == 0 else (1.0 if rest == 1 else 0.0, "ok")
        assert (s["score"], s["status"]) == expected, s
        assert 0 <= s["tokens"] <= MAX_NEW and (not s["truncated"] or s["tokens"] == MAX_NEW)
    assert any(s["status"] == "timeout" for s in lines) and any(s["score"] == 1.0 for s in lines)
    for source in ("alpha", "beta"):
        mine = [s for s in lines if s["data_source"] == source]
        per_prompt = [[s["score"] for s in mine if s["prompt_index"] == p and s["score"] is not None]
                      for p in sorted({s["prompt_index"] for s in mine})]
        means = [sum(scores) / len(scores) for scores in per_prompt if scores]
        stats = report["sources"][source]
        assert stats["avg@4"] == pytest.approx(sum(means) / len(means))
        assert stats["avg@4_prompts"] == len(means)
        full = [scores for scores in per_prompt if len(scores) == K]  # pass@4 only where all 4 were scored
        assert stats["pass@4_prompts"] == len(full)
        if full:
            assert stats["pass@4"] == pytest.approx(sum(1.0 in scores for scores in full) / len(full))
        assert stats["non_ok_count"] == sum(s["status"] != "ok" for s in mine)
        assert stats["mean_tokens"] == pytest.approx(sum(s["tokens"] for s in mine) / len(mine))
        assert stats["truncation_rate"] == pytest.approx(sum(s["truncated"] for s in mine) / len(mine))
    assert report["k"] == K and report["ks"] == [1, 2, 4] and report["prompts"] == 4
    assert result.metrics()["eval/alpha/avg@4"] == report["sources"]["alpha"]["avg@4"]


def test_the_evaluation_is_seeded(tiny: tuple[Any, Any], tmp_path: Path) -> None:
    rows = write_rows(tmp_path / "rows.jsonl")
    first = [s.completion for s in run_eval(tiny, rows).samples]
    assert [s.completion for s in run_eval(tiny, rows).samples] == first
    assert [s.completion for s in run_eval(tiny, rows, seed=6).samples] != first
    assert len(run_eval(tiny, rows, max_prompts=2).samples) == 2 * K


# ---------------------------------------------------------------- periodic evaluation in the run config


def eval_run(tmp_path: Path, **evaluation: Any) -> Any:
    rows = write_rows(tmp_path / "heldout.jsonl")
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"prompt": f"Say something ({i}).", "reward_model": {"ground_truth": "x"}})
                             + "\n" for i in range(4)))
    return parse_config({"model": {"tiny": {"seed": 0}}, "dataset": str(train), "group_size": 2,
                         "prompts_per_step": 2, "max_steps": 3, "max_completion_length": 4, "seed": 0,
                         "output_dir": str(tmp_path / "run"), "eval": {"data": str(rows), **evaluation}},
                        local=True)


def test_periodic_eval_metrics_reach_metrics_jsonl(tmp_path: Path) -> None:
    from trainer.grpo import METRICS_FILE, GRPOTrainer

    config = eval_run(tmp_path, every_n_steps=2, k=2, max_prompts=3)
    GRPOTrainer(config, rewards=CallableRewards(length_grader)).train()
    run = tmp_path / "run"
    steps = [json.loads(line) for line in (run / METRICS_FILE).read_text().splitlines()]
    assert [s["step"] for s in steps] == [1, 2, 3]
    assert not any(key.startswith("eval/") for key in steps[0])  # step 1 is not a multiple of 2
    for logged in steps[1:]:  # step 2 (every 2) and step 3 (the last)
        folder = run / "eval" / f"step-{logged['step']:06d}"
        samples = [json.loads(line) for line in (folder / "samples.jsonl").read_text().splitlines()]
        assert len(samples) == 3 * 2
        scored = [s for s in samples if s["score"] is not None]
        assert logged["eval/all/non_ok_count"] == len(samples) - len(scored)
        assert logged["eval/all/samples"] == 6.0
        report = json.loads((folder / "report.json").read_text())
        for source, stats in report["sources"].items():
            for name in ("avg@2", "pass@1", "pass@2", "mean_tokens", "truncation_rate"):
                if stats[name] is None:
                    assert f"eval/{source}/{name}" not in logged
                else:
                    assert logged[f"eval/{source}/{name}"] == pytest.approx(stats[name])
        alpha = [s for s in samples if s["data_source"] == "alpha"]
        assert logged["eval/alpha/mean_tokens"] == pytest.approx(sum(s["tokens"] for s in alpha) / len(alpha))


def test_eval_config_fields_and_paths(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"eval\.k"):
        eval_run(tmp_path, k=0)
    with pytest.raises(ConfigError, match=r"eval\.every_n_steps"):
        eval_run(tmp_path, every_n_steps=0)
    # A config that arrives over the API may have an eval section too; the trainer service confines its
    # data to the project's datasets (tests/unit/trainer/test_api_run_sections.py).
    data = eval_run(tmp_path).model_dump(mode="json", exclude_unset=True)
    assert parse_config(data).eval is not None
    # In a YAML file, eval.data is taken from the file's folder, like dataset.
    (tmp_path / "run.yaml").write_text(yaml.safe_dump({"model": {"tiny": {}}, "dataset": "train.jsonl",
                                                       "eval": {"data": "heldout.jsonl"}}))
    loaded: Any = load_config(tmp_path / "run.yaml")
    assert loaded.eval.data == str(tmp_path / "heldout.jsonl")
