"""Teacher scoring agrees with the trainer's log-probs on the same tiny model; top-k; EMA pushes; the cache bound."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from services.common.errors import InvalidInput
from services.common.settings import reset_settings_cache
from services.teacher import registry, scoring, weights
from services.teacher.model_cache import CACHE, LoadedTeacher
from trainer.logprobs import completion_logprobs

PROJECT = "a" * 32
ITEMS = [scoring.ScoreInput([5, 17, 9, 33], [40, 41, 7]),
         scoring.ScoreInput([12], [3, 3, 3, 3, 90]),
         scoring.ScoreInput([100, 101, 102, 103, 104, 105], [8])]


def _teacher(name: str = "t", kind: registry.Kind = "local", path: str = "tiny") -> LoadedTeacher:
    record, _ = registry.register(PROJECT, name, kind, path, "float32")
    return CACHE.get(record)


def test_logprobs_equal_the_trainers_on_the_same_batch(teacher_env: Path) -> None:
    teacher = _teacher()
    outputs = scoring.score_batch(teacher, ITEMS, top_k=0)
    batch = scoring.batch_for(ITEMS, scoring.pad_id_of(teacher))
    with torch.no_grad():
        expected, _ = completion_logprobs(teacher.model, batch, 1.0)
    for row, (item, out) in enumerate(zip(ITEMS, outputs, strict=True)):
        n = len(item.continuation_ids)
        assert torch.equal(torch.tensor(out.logprobs, dtype=expected.dtype), expected[row, :n])
    # At another temperature too (log softmax(l / 0.7)).
    hot = scoring.score_batch(teacher, ITEMS[:1], top_k=0, temperature=0.7)
    with torch.no_grad():
        expected_hot, _ = completion_logprobs(teacher.model, scoring.batch_for(ITEMS[:1], scoring.pad_id_of(teacher)),
                                              0.7)
    assert torch.equal(torch.tensor(hot[0].logprobs, dtype=expected_hot.dtype), expected_hot[0, :3])


def test_an_item_scores_the_same_alone_and_in_a_padded_batch(teacher_env: Path) -> None:
    teacher = _teacher()
    together = scoring.score_batch(teacher, ITEMS, top_k=0)
    alone = [scoring.score_batch(teacher, [item], top_k=0)[0] for item in ITEMS]
    for a, b in zip(together, alone, strict=True):
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-5)


def test_top_k_is_the_models_distribution(teacher_env: Path) -> None:
    teacher = _teacher()
    item = ITEMS[0]
    out = scoring.score_batch(teacher, [item], top_k=5)[0]
    with torch.no_grad():
        ids = torch.tensor([item.context_ids + item.continuation_ids])
        logits = teacher.model(input_ids=ids).logits[0].float()
    full = torch.log_softmax(logits, dim=-1)
    start = len(item.context_ids) - 1  # the logit at c predicts the token at c + 1
    for t in range(len(item.continuation_ids)):
        row = full[start + t]
        best = row.topk(5)
        assert out.top_ids[t] == best.indices.tolist()
        assert out.top_logprobs[t] == pytest.approx(best.values.tolist(), abs=1e-5)
        covered = sum(math.exp(v) for v in out.top_logprobs[t])
        assert out.tail_logprobs[t] == pytest.approx(math.log(1 - covered), abs=1e-5)
        assert out.logprobs[t] == pytest.approx(float(row[item.continuation_ids[t]]), abs=1e-5)


def _state_bytes(state: dict[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save

    return save({k: v.contiguous().clone() for k, v in state.items()})


def test_ema_push_mixes_each_tensor_once_and_survives_a_reload(teacher_env: Path) -> None:
    teacher = _teacher("ema", "ema")
    psi = {k: v.clone() for k, v in teacher.model.state_dict().items()}
    theta = {k: 1.5 * v + 0.01 for k, v in psi.items()}  # a "student" that moved (tied tensors stay equal)
    assert "lm_head.weight" in theta  # tied to model.embed_tokens.weight: sent twice, applied once
    record = registry.read(PROJECT, "ema")
    result = weights.push_weights(record, weights.parse_state_dict(_state_bytes(theta)), 0.25)
    assert result.record.version == 1 and result.record.last_tau == 0.25
    mixed = CACHE.get(result.record).model.state_dict()
    for name in ("model.embed_tokens.weight", "lm_head.weight", "model.layers.0.self_attn.q_proj.weight"):
        # ψ ← 0.75·ψ + 0.25·θ (a tied tensor mixed twice would be 0.5625·ψ + 0.4375·θ)
        assert torch.allclose(mixed[name], 0.75 * psi[name] + 0.25 * theta[name], atol=1e-6)
    CACHE.clear()  # another replica: the folder plus weights.safetensors
    reloaded = CACHE.get(registry.read(PROJECT, "ema")).model.state_dict()
    assert torch.equal(reloaded["model.layers.0.self_attn.q_proj.weight"], mixed["model.layers.0.self_attn.q_proj.weight"])
    # Without tau the upload replaces the weights (the policy's current weights as the teacher).
    replaced = weights.push_weights(registry.read(PROJECT, "ema"), weights.parse_state_dict(_state_bytes(theta)), None)
    assert replaced.record.version == 2
    assert torch.equal(CACHE.get(replaced.record).model.state_dict()["lm_head.weight"], theta["lm_head.weight"])


def test_bad_uploads_name_the_body(teacher_env: Path) -> None:
    teacher = _teacher("ema", "ema")
    record = registry.read(PROJECT, "ema")
    shape = teacher.model.state_dict()["model.norm.weight"].shape
    for state, message in (({"nope": torch.zeros(2)}, "not a tensor"),
                           ({"model.norm.weight": torch.zeros(3, 3)}, "shape"),
                           ({"model.norm.weight": torch.full(shape, float("nan"))}, "NaN")):
        with pytest.raises(InvalidInput, match=message) as err:
            weights.push_weights(record, weights.parse_state_dict(_state_bytes(state)), 0.5)
        assert err.value.field == "body"
    with pytest.raises(InvalidInput, match="safetensors"):
        weights.parse_state_dict(b"not a safetensors file at all")
    with pytest.raises(InvalidInput, match="local"):
        weights.push_weights(registry.read(PROJECT, _teacher("loc").record.name), {"x": torch.zeros(1)}, 0.5)


def test_paths_must_stay_inside_teacher_models_dir(teacher_env: Path) -> None:
    for bad in ("/etc", "../tiny", "missing", ""):
        with pytest.raises(InvalidInput) as err:
            registry.register(PROJECT, "x", "local", bad, "float32")
        assert err.value.field == "path"


def test_cache_keeps_at_most_the_bound(teacher_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REWARDHUB_TEACHER_MODEL_CACHE_SIZE", "1")
    reset_settings_cache()
    first = _teacher("one")
    _teacher("two")
    assert CACHE.loaded() == [(PROJECT, "two")]
    again = CACHE.get(registry.read(PROJECT, "one"))  # reloaded, not the evicted object
    assert again is not first and CACHE.loaded() == [(PROJECT, "one")]


@pytest.mark.gpu
def test_cuda_scoring_equals_the_trainers_on_cuda(teacher_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REWARDHUB_TEACHER_DEVICE", "cuda")
    reset_settings_cache()
    teacher = _teacher()
    assert next(teacher.model.parameters()).device.type == "cuda"
    outputs = scoring.score_batch(teacher, ITEMS, top_k=2)
    with torch.no_grad():
        expected, _ = completion_logprobs(teacher.model, scoring.batch_for(ITEMS, scoring.pad_id_of(teacher)), 1.0)
    for row, (item, out) in enumerate(zip(ITEMS, outputs, strict=True)):
        assert torch.equal(torch.tensor(out.logprobs, dtype=expected.dtype),
                           expected[row, :len(item.continuation_ids)].cpu())


@pytest.mark.gpu
def test_vllm_prompt_logprobs_match_transformers(teacher_env: Path) -> None:
    pytest.importorskip("vllm", reason="the vllm backend needs vllm (the gpu extra)")
    teacher = _teacher()
    reference = scoring.score_batch(teacher, ITEMS, top_k=3)
    scorer = scoring.VllmScorer(str(teacher_env / "tiny"), "float32")
    for ours, theirs in zip(reference, scorer.score(ITEMS, top_k=3), strict=True):
        assert theirs.logprobs == pytest.approx(ours.logprobs, abs=1e-3)
        assert theirs.top_ids[0][:1] == ours.top_ids[0][:1]


def test_a_failed_forward_is_each_items_error_not_the_batchs(teacher_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from services.teacher import operations
    from services.teacher.schemas import ScoreRequest

    _teacher()
    request = ScoreRequest.model_validate({"model": "t", "items": [
        {"id": "a", "context_ids": [5], "continuation_ids": [6]},
        {"id": "b", "context_ids": [], "continuation_ids": [6]}]})
    assert [r.status for r in operations.score(PROJECT, request).results] == ["ok", "invalid_input"]

    def broken(*_args: object, **_kw: object) -> None:
        raise RuntimeError("out of memory (injected)")

    monkeypatch.setattr(scoring, "score_batch", broken)
    results = operations.score(PROJECT, request).results
    assert [r.status for r in results] == ["error", "invalid_input"]
    assert "out of memory (injected)" in (results[0].error or "")


def test_items_past_the_deadline_are_status_timeout(teacher_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from services.teacher import operations
    from services.teacher.schemas import ScoreRequest

    monkeypatch.setenv("REWARDHUB_TEACHER_SCORE_MICRO_BATCH", "1")
    reset_settings_cache()
    _teacher()
    ticks = iter([0.0, 1.0, 100.0])  # a fake clock: the start, the first micro-batch, the second (past 5 s)
    monkeypatch.setattr(operations, "clock", lambda: next(ticks))
    request = ScoreRequest.model_validate({"model": "t", "deadline_s": 5, "items": [
        {"id": "a", "context_ids": [5], "continuation_ids": [6]},
        {"id": "b", "context_ids": [5], "continuation_ids": [7]}]})
    results = operations.score(PROJECT, request).results
    assert [r.status for r in results] == ["ok", "timeout"] and "deadline_s=5" in (results[1].error or "")


def test_a_model_that_cannot_load_is_a_422_naming_model(teacher_env: Path) -> None:
    import shutil

    shutil.copytree(teacher_env / "tiny", teacher_env / "broken", dirs_exist_ok=True)
    (teacher_env / "broken" / "model.safetensors").write_bytes(b"truncated")
    record, _ = registry.register(PROJECT, "broken", "local", "broken", "float32")
    with pytest.raises(InvalidInput, match="could not be loaded") as err:
        CACHE.get(record)
    assert err.value.field == "model"
