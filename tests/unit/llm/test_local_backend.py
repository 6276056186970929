"""LocalTransformersBackend end to end on a tiny random-weights Qwen2 with a locally trained tokenizer.

A random model writes nonsense: every CDRRM consumer must report it as a parse failure
(``invalid_input``, counted in the parse stats), never turn it into a score or a verdict.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from services.common.llm import LLMBackendError, LocalTransformersBackend, parse_stats

MESSAGES = [{"role": "user", "content": "Which answer is better? End with Winner: Response A or B."}]


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from trainer import tiny_models  # our own module: a broken import is a failure, never a skip

    return Path(tiny_models.build_tiny_causal_lm(tmp_path_factory.mktemp("tiny-lm"), seed=0))


@pytest.fixture(scope="module")
def backend(tiny_model_dir: Path) -> LocalTransformersBackend:
    return LocalTransformersBackend(tiny_model_dir, max_new_tokens=24, timeout_s=120)


def test_chat_is_greedy_and_deterministic(backend: LocalTransformersBackend) -> None:
    first = asyncio.run(backend.chat(MESSAGES))
    second = asyncio.run(backend.chat(MESSAGES))
    assert first.text == second.text
    assert first.finish_reason in ("stop", "length")
    assert first.usage["prompt_tokens"] > 0
    assert 0 < first.usage["completion_tokens"] <= 24
    assert asyncio.run(backend.chat(MESSAGES, max_tokens=3)).usage["completion_tokens"] <= 3


def test_random_model_judgments_are_parse_failures_not_scores(backend: LocalTransformersBackend) -> None:
    from services.rubric_rm.evaluation import evaluate, make_cdrrm_judge
    from services.rubric_rm.judging import judge_pairwise, judge_pointwise
    from services.rubric_rm.pipeline import diagnose_response
    from tests.unit.rubric_rm.helpers import example_rubric

    before = parse_stats().get("PointwiseOutput", {}).get("failed", 0)
    rubric = example_rubric()
    pairwise = asyncio.run(judge_pairwise(backend, "What is 2+2?", "4", "5", rubric))
    assert pairwise.status == "invalid_input" and pairwise.verdict is None and pairwise.score_a is None
    pointwise = asyncio.run(judge_pointwise(backend, "What is 2+2?", "4", rubric))
    assert pointwise.status == "invalid_input" and pointwise.score is None and pointwise.raw_output
    assert parse_stats()["PointwiseOutput"]["failed"] == before + 1
    diagnosis = asyncio.run(diagnose_response(backend, "What is 2+2?", "4"))
    assert diagnosis.status == "invalid_input" and diagnosis.diagnosis is None

    rows = [{"id": "1", "prompt": "What is 2+2?", "chosen": "4", "rejected": "5"}]
    report = asyncio.run(evaluate("rmb", rows, make_cdrrm_judge(backend, generator=backend)))
    assert report["overall"]["parse_rate"] == 0.0 and report["overall"]["acc_all"] == 0.0


def test_bad_model_path_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="model_path"):
        LocalTransformersBackend(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LLMBackendError):
        asyncio.run(LocalTransformersBackend(tmp_path / "empty").chat(MESSAGES))
