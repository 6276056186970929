"""Memory-lean log-probs: chunked log-softmax and entropy (values and gradients), micro-batched forwards."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from trainer.grpo import collate
from trainer.grpo import completion_logprobs as grpo_completion_logprobs
from trainer.logprobs import _chunks, chunked_entropy, chunked_token_logprobs, completion_logprobs
from trainer.rollout import Rollout


def test_hand_computed_logprobs_and_entropy() -> None:
    # log softmax([0, 0])[0] = ln ½ = −0.693147; at τ = 2 of [2, 0]: 1 − ln(e + 1) = 1 − 1.313262 = −0.313262.
    logits = torch.tensor([[[0.0, 0.0], [2.0, 0.0], [9.0, 9.0]]])  # the last column is the extra one: ignored
    assert chunked_token_logprobs(logits, torch.tensor([[0, 0]]))[0, 0].item() == pytest.approx(-0.693147, abs=1e-6)
    assert chunked_token_logprobs(logits, torch.tensor([[1, 0]]), 2.0)[0, 1].item() == pytest.approx(
        -0.313262, abs=1e-6)
    # Uniform over 4: H = ln 4 = 1.386294; [ln 3, 0] gives p = (¾, ¼): H = −¾ ln ¾ − ¼ ln ¼ = 0.562335.
    uniform = torch.zeros((1, 1, 4))
    assert chunked_entropy(uniform, 1)[0, 0].item() == pytest.approx(1.386294, abs=1e-6)
    skewed = torch.tensor([[[math.log(3.0), 0.0]]])
    assert chunked_entropy(skewed, 1)[0, 0].item() == pytest.approx(0.562335, abs=1e-6)


@pytest.mark.parametrize("budget", [1, 7, 40, 10_000])  # a position per block .. the whole tensor in one
def test_chunks_cover_every_cell_once(budget: int) -> None:
    seen = torch.zeros((3, 5), dtype=torch.long)
    for rows, cols in _chunks(3, 5, 4, budget):
        seen[rows, cols] += 1
    assert torch.equal(seen, torch.ones((3, 5), dtype=torch.long))


@pytest.mark.parametrize("budget", [1, 13, 1 << 20])
def test_chunked_matches_naive_values_and_gradients(budget: int) -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn((3, 6, 11), generator=generator, dtype=torch.float64) * 3
    ids = torch.randint(0, 11, (3, 5), generator=generator)
    weights = torch.randn((3, 5), generator=generator, dtype=torch.float64)

    def naive(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scaled = x[:, :5] / 0.7
        logp = torch.log_softmax(scaled, -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
        probs = torch.softmax(scaled, -1)
        return logp, torch.logsumexp(scaled, -1) - (probs * scaled).sum(-1)

    ours_in = logits.clone().requires_grad_(True)
    theirs_in = logits.clone().requires_grad_(True)
    logp = chunked_token_logprobs(ours_in, ids, 0.7, budget=budget)
    entropy = chunked_entropy(ours_in, 5, 0.7, budget=budget)
    ref_logp, ref_entropy = naive(theirs_in)
    assert logp.dtype == torch.float64  # float64 in, float64 out (16-bit and float32 logits give float32)
    assert chunked_token_logprobs(logits.to(torch.bfloat16), ids, budget=budget).dtype == torch.float32
    torch.testing.assert_close(logp, ref_logp, atol=1e-12, rtol=0)
    torch.testing.assert_close(entropy, ref_entropy, atol=1e-12, rtol=0)
    ((logp * weights).sum() + (entropy * weights).sum()).backward()  # type: ignore[no-untyped-call]
    ((ref_logp * weights).sum() + (ref_entropy * weights).sum()).backward()  # type: ignore[no-untyped-call]
    assert ours_in.grad is not None and theirs_in.grad is not None
    torch.testing.assert_close(ours_in.grad, theirs_in.grad, atol=1e-12, rtol=0)
    assert torch.count_nonzero(ours_in.grad[:, 5]) == 0  # the extra logits_to_keep column gets no gradient


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="temperature must be positive"):
        chunked_token_logprobs(torch.zeros((1, 2, 3)), torch.zeros((1, 1), dtype=torch.long), 0.0)
    with pytest.raises(ValueError, match="do not cover"):
        chunked_token_logprobs(torch.zeros((1, 2, 3)), torch.zeros((1, 3), dtype=torch.long))


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from transformers import AutoModelForCausalLM

    from trainer.tiny_models import build_tiny_causal_lm

    path = build_tiny_causal_lm(Path(tmp_path_factory.mktemp("logprobs")) / "model", seed=2)
    loaded: Any = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True)
    loaded.eval()
    return loaded


def _rollouts() -> list[Rollout]:
    # Prompts of 2..6 tokens and completions of 1..5: left padding, right padding, a padded last column.
    shapes = [(2, 5), (6, 1), (4, 3), (3, 4), (5, 2), (2, 2), (6, 5)]
    return [Rollout(prompt_index=i, prompt_ids=[10 + i + k for k in range(p)],
                    completion_ids=[100 + 3 * i + k for k in range(c)], text="", truncated=False)
            for i, (p, c) in enumerate(shapes)]


@pytest.mark.parametrize("micro", [1, 3, 7])
def test_micro_batched_forward_equals_one_shot(model: Any, micro: int) -> None:
    batch = collate(_rollouts(), pad_id=0)
    with torch.no_grad():
        whole, whole_entropy = completion_logprobs(model, batch, 0.8, with_entropy=True)
        parts, parts_entropy = completion_logprobs(model, batch, 0.8, with_entropy=True, micro_batch_size=micro)
    assert whole_entropy is not None and parts_entropy is not None
    torch.testing.assert_close(parts, whole, atol=1e-6, rtol=0)
    torch.testing.assert_close(parts_entropy, whole_entropy, atol=1e-6, rtol=0)


def test_padded_batch_matches_each_rollout_alone(model: Any) -> None:
    """logits_to_keep, left-padded prompts and right-padded completions: each real completion token's
    log-prob is the one the model gives that rollout unpadded (full logits, plain log-softmax)."""
    rollouts = _rollouts()
    batch = collate(rollouts, pad_id=0)
    with torch.no_grad():
        logp, _ = completion_logprobs(model, batch, 1.0, micro_batch_size=2)
        for row, rollout in enumerate(rollouts):
            ids = torch.tensor([rollout.prompt_ids + rollout.completion_ids])
            full = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
            p, c = len(rollout.prompt_ids), len(rollout.completion_ids)
            alone = full[p - 1: p - 1 + c].gather(-1, ids[0, p:].unsqueeze(-1)).squeeze(-1)
            torch.testing.assert_close(logp[row, :c].double(), alone, atol=1e-5, rtol=0)
            assert batch.completion_mask[row, :c].sum() == c and batch.completion_mask[row, c:].sum() == 0


def test_gradients_through_micro_batches_match(model: Any) -> None:
    batch = collate(_rollouts(), pad_id=0)
    weights = torch.linspace(-1, 1, batch.completion_ids.numel()).reshape(batch.completion_ids.shape)
    grads = []
    for micro in (None, 2):
        model.zero_grad(set_to_none=True)
        logp, _ = completion_logprobs(model, batch, 1.0, micro_batch_size=micro)
        (logp * weights * batch.completion_mask).sum().backward()  # type: ignore[no-untyped-call]
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[1], grads[0], atol=1e-6, rtol=1e-5)


def test_the_loop_still_imports_it_from_grpo() -> None:
    assert grpo_completion_logprobs is completion_logprobs
