"""Rollouts are drawn from the policy the loss scores: the full softmax at the run's temperature.

A tiny random model samples many first tokens from one prompt; the empirical frequencies must
match softmax(logits / τ) (Pearson χ² and total variation, fixed seed: deterministic), even when
the model's ``generation_config.json`` asks for top_k=20, top_p, min_p and a repetition penalty.
The same check run with top_k=20 asked for explicitly fails by a wide margin, so it can fail.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from trainer.rollout import (
    SamplingSettings,
    TransformersEngine,
    _until_eos,
    eos_token_ids,
    generation_config_eos,
    sampling_generation_config,
    vllm_sampling_kwargs,
)

SAMPLES = 12_000
TEMPERATURE = 0.5  # sharper than the random model's near-uniform softmax, so truncation shows


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[int]]:
    from trainer.tiny_models import build_tiny_causal_lm

    path = build_tiny_causal_lm(tmp_path_factory.mktemp("sampling") / "model", seed=3)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    return path, list(tokenizer("What is 3 + 4?", add_special_tokens=False)["input_ids"])


def _load(path: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True)
    return model, AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def _policy_softmax(model: Any, prompt: list[int]) -> torch.Tensor:
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt])).logits[0, -1].double()
    return torch.softmax(logits / TEMPERATURE, dim=-1)


def _first_token_frequencies(model: Any, tokenizer: Any, prompt: list[int], settings: SamplingSettings,
                             vocab: int) -> torch.Tensor:
    rollouts = TransformersEngine(model, tokenizer).generate([prompt], settings, seed=11)
    first = torch.tensor([r.completion_ids[0] for r in rollouts])
    return torch.bincount(first, minlength=vocab).double()


def _chi_square_and_tv(counts: torch.Tensor, probs: torch.Tensor) -> tuple[float, float, int]:
    expected = probs * counts.sum()
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    tv = 0.5 * float((counts / counts.sum() - probs).abs().sum())
    return chi2, tv, probs.numel() - 1


def _settings(**overrides: Any) -> SamplingSettings:
    return SamplingSettings(group_size=SAMPLES, max_new_tokens=1, temperature=TEMPERATURE, **overrides)


def _write_generation_config(path: Path, **fields: Any) -> None:
    config = json.loads((path / "generation_config.json").read_text())
    config.update(fields)
    (path / "generation_config.json").write_text(json.dumps(config))


def test_sampled_first_tokens_follow_the_full_softmax(tiny: tuple[Path, list[int]]) -> None:
    path, prompt = tiny
    model, tokenizer = _load(path)
    probs = _policy_softmax(model, prompt)
    assert float(probs.sort(descending=True).values[:50].sum()) < 0.6  # top_k=50 would cut a lot
    chi2, tv, df = _chi_square_and_tv(_first_token_frequencies(model, tokenizer, prompt, _settings(),
                                                               probs.numel()), probs)
    # χ² has mean df and sd √(2 df): 6 sd is far in the tail; TV's sampling noise here is about 0.08.
    assert chi2 < df + 6 * math.sqrt(2 * df), chi2
    assert tv < 0.12, tv


def test_the_models_generation_config_does_not_truncate(tiny: tuple[Path, list[int]], tmp_path: Path) -> None:
    import shutil

    path = tmp_path / "truncating"
    shutil.copytree(tiny[0], path)
    prompt = tiny[1]
    # What real checkpoints ship (Qwen2.5 sets top_k 20, top_p 0.8, repetition_penalty 1.05).
    _write_generation_config(path, do_sample=True, top_k=20, top_p=0.8, min_p=0.1, repetition_penalty=1.5,
                             temperature=0.1, no_repeat_ngram_size=1, suppress_tokens=[7, 8, 9])
    model, tokenizer = _load(path)
    assert model.generation_config.top_k == 20
    probs = _policy_softmax(model, prompt)
    chi2, tv, df = _chi_square_and_tv(_first_token_frequencies(model, tokenizer, prompt, _settings(),
                                                               probs.numel()), probs)
    assert chi2 < df + 6 * math.sqrt(2 * df), chi2
    assert tv < 0.12, tv
    assert model.generation_config.top_k == 20  # put back after sampling


def test_explicit_top_k_is_detected_by_the_same_check(tiny: tuple[Path, list[int]]) -> None:
    path, prompt = tiny
    model, tokenizer = _load(path)
    probs = _policy_softmax(model, prompt)
    counts = _first_token_frequencies(model, tokenizer, prompt, _settings(top_k=20), probs.numel())
    chi2, tv, df = _chi_square_and_tv(counts, probs)
    assert int((counts > 0).sum()) == 20
    assert chi2 > 100 * df and tv > 0.4


def test_every_generation_config_eos_id_stops_a_completion(tiny: tuple[Path, list[int]], tmp_path: Path) -> None:
    import shutil

    path = tmp_path / "many-eos"
    shutil.copytree(tiny[0], path)
    model, tokenizer = _load(path)
    vocab = model.config.vocab_size
    # Every token but padding ends a completion: each is then exactly one token long and finished.
    stops = [i for i in range(vocab) if i != tokenizer.pad_token_id]
    _write_generation_config(path, eos_token_id=stops)
    model, tokenizer = _load(path)
    rollouts = TransformersEngine(model, tokenizer).generate(
        [tiny[1], tiny[1][:2]], SamplingSettings(group_size=8, max_new_tokens=5), seed=0)
    assert len(rollouts) == 16
    assert all(len(r.completion_ids) == 1 and not r.truncated for r in rollouts)
    assert generation_config_eos(path)[:3] == [1, 2, 3]


def test_eos_ids_and_cutting() -> None:
    class Tok:
        eos_token_id = 4

    assert eos_token_ids(Tok(), [9, 4, 2]) == [4, 9, 2]
    assert eos_token_ids(Tok(), 4) == [4]
    assert eos_token_ids(None, None) == []
    assert _until_eos([5, 6, 2, 4, 7], [4, 2]) == ([5, 6, 2], True)
    assert _until_eos([5, 6, 7], [4, 2]) == ([5, 6, 7], False)
    assert _until_eos([5, 4], 4) == ([5, 4], True)


def test_generation_config_sets_every_sampling_field() -> None:
    config = sampling_generation_config(SamplingSettings(group_size=3, max_new_tokens=7), [4, 2], 0)
    assert (config.do_sample, config.top_k, config.top_p, config.min_p, config.repetition_penalty,
            config.temperature) == (True, 0, 1.0, None, 1.0, 1.0)
    assert config.eos_token_id == [4, 2] and config.num_return_sequences == 3 and config.max_new_tokens == 7


def test_vllm_sampling_params_are_explicit() -> None:
    kwargs = vllm_sampling_kwargs(SamplingSettings(group_size=2, max_new_tokens=9, temperature=0.7), [4, 2], 5)
    assert kwargs == {"n": 2, "temperature": 0.7, "top_p": 1.0, "top_k": -1, "min_p": 0.0,
                      "repetition_penalty": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0,
                      "max_tokens": 9, "seed": 5, "stop_token_ids": [4, 2]}
    assert vllm_sampling_kwargs(SamplingSettings(group_size=2, max_new_tokens=9, top_k=20), [], 0)["top_k"] == 20


@pytest.mark.parametrize("field, value", [("top_k", 20), ("top_p", 0.9), ("min_p", 0.05),
                                          ("repetition_penalty", 1.05)])
def test_run_config_refuses_off_policy_sampling(field: str, value: float) -> None:
    from trainer.config import ConfigError, parse_config

    with pytest.raises(ConfigError, match=f"^{field}: {value} would sample from a truncated or penalised "
                                          "distribution while the loss scores the full softmax"):
        parse_config({"model": {"tiny": {}}, "dataset": "x", field: value})
    config = parse_config({"model": {"tiny": {}}, "dataset": "x"})
    assert (config.top_k, config.top_p, config.min_p, config.repetition_penalty) == (0, 1.0, 0.0, 1.0)
