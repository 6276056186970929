"""The MTP head on tiny Qwen2 and Llama models: alignment, each regime's gradient flow, the OCC update
loop, warm-up, and saving beside the policy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from trainer.logprobs import completion_logprobs
from trainer.mtp import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    UpdateOptions,
    build_mtp_head,
    joint_logprobs,
    load_mtp_head,
    save_mtp_head,
    sequence_mtp_loss,
    update_with_mtp,
    warmup_mtp_head,
)
from trainer.occ import MtpSettings, mtp_loss
from trainer.rollout import Rollout

VOCAB = 97


def _qwen2(hidden: int = 32) -> Any:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                         max_position_embeddings=128, pad_token_id=0)
    torch.manual_seed(0)
    return Qwen2ForCausalLM(config).double()


def _llama() -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
                         max_position_embeddings=128, pad_token_id=0)
    torch.manual_seed(1)
    return LlamaForCausalLM(config).double()


@pytest.fixture(scope="module", params=["qwen2", "llama"])
def model(request: pytest.FixtureRequest) -> Any:
    return _qwen2() if request.param == "qwen2" else _llama()


def _rollouts() -> list[Rollout]:
    # Prompts of 1..5 tokens, completions of 1..4: left and right padding, a one-token prompt.
    shapes = [(3, 4), (5, 1), (1, 3), (4, 2)]
    return [Rollout(prompt_index=i, prompt_ids=[5 + 7 * i + k for k in range(p)],
                    completion_ids=[40 + 5 * i + k for k in range(c)], text="", truncated=False)
            for i, (p, c) in enumerate(shapes)]


def _batch() -> Any:
    from trainer.grpo import collate

    return collate(_rollouts(), pad_id=0)


def test_main_head_log_probs_are_the_models_own(model: Any) -> None:
    batch = _batch()
    with torch.no_grad():
        joint = joint_logprobs(model, build_mtp_head(model), batch)
        reference, _ = completion_logprobs(model, batch, 1.0)
    torch.testing.assert_close(joint.logp, reference, atol=1e-10, rtol=0)


def test_the_head_predicts_t_plus_2_from_h_t_and_the_next_embedding(model: Any) -> None:
    """Each real completion token y_s of the padded batch gets the log-prob the head gives it on the
    rollout alone: softmax(lm_head(block(eh_proj[enorm E(x_{i+1}); hnorm h_i]))) at i = P+s−2."""
    head = build_mtp_head(model, seed=3)
    batch = _batch()
    with torch.no_grad():
        joint = joint_logprobs(model, head, batch)
        for row, rollout in enumerate(_rollouts()):
            ids = torch.tensor([rollout.prompt_ids + rollout.completion_ids])
            hidden = model.get_decoder()(input_ids=ids).last_hidden_state
            embeddings = model.get_input_embeddings()(ids)
            length = ids.shape[1]
            out = head(hidden[:, :-1], embeddings[:, 1:], torch.ones(1, length - 1, dtype=torch.long),
                       torch.arange(length - 1).unsqueeze(0))
            logp = torch.log_softmax(model.get_output_embeddings()(out)[0], -1)  # row i predicts ids[i + 2]
            p, c = len(rollout.prompt_ids), len(rollout.completion_ids)
            for s in range(c):
                if p + s - 2 < 0:  # a one-token prompt: y_0 has no h_{−1}; masked out
                    assert joint.mtp_mask[row, s] == 0
                    continue
                assert joint.mtp_mask[row, s] == 1
                expected = logp[p + s - 2, ids[0, p + s]]
                torch.testing.assert_close(joint.mtp_logp[row, s], expected, atol=1e-9, rtol=0)


# ---------------------------------------------------------------- gradient flow per regime


def _trunk_grads(model: Any) -> list[torch.Tensor]:
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]


def _losses(model: Any, head: Any, settings: MtpSettings | None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Trunk and head gradients of RL loss (+ the MTP term of ``settings``) on the test batch, with an
    old policy that differs from θ (δ_RL ≠ 0) so that occ's λ_t is not 0."""
    from trainer.algorithms import grpo_policy_loss

    batch = _batch()
    model.zero_grad(set_to_none=True)
    head.zero_grad(set_to_none=True)
    joint = joint_logprobs(model, head, batch, detach_trunk=settings is not None and settings.detach_trunk)
    mask = batch.completion_mask.double()
    shift = torch.linspace(-0.3, 0.3, mask.numel(), dtype=torch.float64).reshape(mask.shape)
    old = joint.logp.detach() - shift
    advantages = torch.tensor([1.0, -1.0, 0.5, -0.5], dtype=torch.float64)
    loss = grpo_policy_loss(joint.logp, old, advantages, mask, loss_type="bnpo").loss
    if settings is not None:
        loss = loss + mtp_loss(settings, logp=joint.logp, old_logp=old, mtp_logp=joint.mtp_logp,
                               advantages=advantages, mask=mask * joint.mtp_mask, loss_type="bnpo").loss
    loss.backward()  # type: ignore[no-untyped-call]
    head_grads = [p.grad.clone() if p.grad is not None else torch.zeros_like(p)
                  for p in head.parameters() if p.requires_grad]
    return _trunk_grads(model), head_grads


def _mtp_part(total: list[torch.Tensor], rl: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([(a - b).flatten() for a, b in zip(total, rl, strict=True)])


@pytest.fixture(scope="module")
def qwen2_and_head() -> tuple[Any, Any]:
    model = _qwen2()
    return model, build_mtp_head(model, seed=5)


def test_detach_no_mtp_gradient_reaches_the_trunk(qwen2_and_head: tuple[Any, Any]) -> None:
    model, head = qwen2_and_head
    rl_only, _ = _losses(model, head, None)
    trunk, head_grads = _losses(model, head, MtpSettings(regime="detach"))
    for ours, alone in zip(trunk, rl_only, strict=True):  # embeddings and the shared lm_head included
        assert torch.equal(ours, alone)
    assert all(float(g.abs().sum()) > 0 for g in head_grads)  # the head itself learns


@pytest.mark.parametrize("regime", ["ce", "policy"])
def test_fixed_lambda_regimes_reach_the_trunk_scaled_by_lambda(qwen2_and_head: tuple[Any, Any], regime: str) -> None:
    model, head = qwen2_and_head
    rl_only, _ = _losses(model, head, None)
    one, _ = _losses(model, head, MtpSettings.model_validate({"regime": regime, "lambda": 0.1}))
    two, _ = _losses(model, head, MtpSettings.model_validate({"regime": regime, "lambda": 0.2}))
    part_one, part_two = _mtp_part(one, rl_only), _mtp_part(two, rl_only)
    assert float(part_one.abs().max()) > 1e-6  # the MTP gradient does reach the trunk
    # Doubling λ doubles it (to 1e-6 of gradients up to ~0.1: the CPU embedding backward sums in float32).
    torch.testing.assert_close(part_two, 2 * part_one, atol=1e-6, rtol=1e-4)
    embedding = next(iter(model.get_input_embeddings().parameters()))
    index = [p is embedding for p in model.parameters()].index(True)
    assert float((one[index] - rl_only[index]).abs().max()) > 0  # the shared embedding / output layer too


def test_occ_reaches_the_trunk_as_policy_with_lambda_t(qwen2_and_head: tuple[Any, Any]) -> None:
    from trainer.occ import log_prob_deltas, occ_coefficient

    model, head = qwen2_and_head
    batch = _batch()
    with torch.no_grad():
        joint = joint_logprobs(model, head, batch)
    mask = batch.completion_mask.double() * joint.mtp_mask
    shift = torch.linspace(-0.3, 0.3, mask.numel(), dtype=torch.float64).reshape(mask.shape)
    lambda_t = float(occ_coefficient(*log_prob_deltas(joint.logp, joint.logp - shift, joint.mtp_logp), mask).coefficient)
    assert lambda_t != 0.0
    rl_only, _ = _losses(model, head, None)
    occ, _ = _losses(model, head, MtpSettings(regime="occ"))
    occ_two, _ = _losses(model, head, MtpSettings(regime="occ", lambda_plus=2.0))
    policy, _ = _losses(model, head, MtpSettings.model_validate({"regime": "policy", "lambda": lambda_t}))
    if lambda_t > 0:  # scaling the advantages by λ < 0 flips which side the clip bites: not linear
        torch.testing.assert_close(_mtp_part(occ_two, rl_only), 2 * _mtp_part(occ, rl_only), atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(_mtp_part(occ, rl_only), _mtp_part(policy, rl_only), atol=1e-6, rtol=1e-4)
    assert float(_mtp_part(occ, rl_only).abs().max()) > 1e-8


# ---------------------------------------------------------------- the update loop: λ_t per mini-batch


def _update(model: Any, head: Any, settings: MtpSettings, mini_batches: int) -> list[dict[str, float]]:
    from trainer.grpo import collate

    rollouts = _rollouts() * 2  # 8 rollouts
    batch = collate(rollouts, pad_id=0)
    parameters = list(model.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=1e-2)
    advantages = torch.tensor([1.0, -1.0, 0.5, -0.5, -1.0, 1.0, -0.5, 0.5], dtype=torch.float64)
    options = UpdateOptions(mini_batches=mini_batches, gradient_accumulation=2, loss_type="dapo")
    return update_with_mtp(model, head, optimizer, batch, advantages, settings, options, seed=7)


def test_lambda_t_is_zero_throughout_with_one_mini_batch() -> None:
    model = _qwen2()
    head = build_mtp_head(model, seed=1)
    history = _update(model, head, MtpSettings(regime="policy"), mini_batches=1)
    assert len(history) == 2 and [m["mtp_lambda_occ"] for m in history] == [0.0, 0.0]
    assert all(m["mtp_inner"] == 0.0 and m["mtp_norm_sq"] > 0 for m in history)
    with pytest.raises(ValueError, match="mini_batches ≥ 2"):
        _update(model, head, MtpSettings(regime="occ"), mini_batches=1)


def test_lambda_t_is_zero_on_the_first_mini_batch_only() -> None:
    model = _qwen2()
    head = build_mtp_head(model, seed=1)
    history = _update(model, head, MtpSettings(regime="occ"), mini_batches=2)
    first = [m for m in history if m["mini_batch"] == 0]
    later = [m for m in history if m["mini_batch"] == 1]
    assert len(first) == 2 and len(later) == 2
    assert all(m["mtp_lambda"] == 0.0 and m["mtp_inner"] == 0.0 for m in first)
    assert all(m["mtp_lambda"] != 0.0 for m in later)  # the first optimizer step moved π_θ: δ_RL ≠ 0
    assert all(0.0 <= m["mtp_acceptance"] <= 1.0 for m in history)


# ---------------------------------------------------------------- warm-up and saving


def test_warmup_teaches_the_head_the_next_next_token() -> None:
    model = _qwen2().float()
    head = build_mtp_head(model, seed=2)
    # Counting sequences: x_{i+2} = x_{i+1} + 1, learnable from the next token's embedding alone.
    starts = torch.arange(1, 9).unsqueeze(1)
    ids = (starts + torch.arange(10).unsqueeze(0)) % (VOCAB - 1) + 1
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # a left-padded row
    before = sequence_mtp_loss(model, head, ids, mask)
    trunk = [p.detach().clone() for p in model.parameters()]
    history = warmup_mtp_head(model, head, [(ids, mask)], steps=60, learning_rate=3e-2)
    after = sequence_mtp_loss(model, head, ids, mask)
    assert before.tokens == after.tokens == 8 * 8 - 3  # 8 targets per row, 3 lost to the padding
    assert after.loss.item() < before.loss.item() - 1.0 and after.acceptance > before.acceptance
    assert after.acceptance >= 0.9 and len(history) == 60
    assert all(torch.equal(a, b) for a, b in zip(trunk, model.parameters(), strict=True))  # trunk frozen


def test_save_and_load_beside_the_policy_is_bit_exact(tmp_path: Path) -> None:
    model = _qwen2().float()
    head = build_mtp_head(model, seed=4)
    with torch.no_grad():
        for parameter in head.parameters():  # not the initial values: a trained head
            parameter.add_(torch.randn_like(parameter) * 0.01)
    save_mtp_head(head, tmp_path / "step-000003")
    assert (tmp_path / "step-000003" / WEIGHTS_FILE).is_file() and (tmp_path / "step-000003" / CONFIG_FILE).is_file()
    loaded = load_mtp_head(tmp_path / "step-000003", model)
    saved_state, loaded_state = head.state_dict(), loaded.state_dict()
    assert saved_state.keys() == loaded_state.keys()
    assert all(torch.equal(saved_state[k], loaded_state[k]) for k in saved_state)
    batch = _batch()
    with torch.no_grad():
        assert torch.equal(joint_logprobs(model, head, batch).mtp_logp, joint_logprobs(model, loaded, batch).mtp_logp)


def test_loading_refuses_another_models_head_and_a_missing_one(tmp_path: Path) -> None:
    save_mtp_head(build_mtp_head(_qwen2(hidden=32)), tmp_path / "a")
    with pytest.raises(ValueError, match="hidden_size: saved 32, model 48"):
        load_mtp_head(tmp_path / "a", _qwen2(hidden=48))
    with pytest.raises(FileNotFoundError, match="no MTP head"):
        load_mtp_head(tmp_path / "empty", _qwen2())
