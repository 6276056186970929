"""Residual-stream collection (batched, padding masked) and the token alignment of the two STS conditions."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from trainer.sts.activations import (
    collect_residual,
    decoder_layers,
    in_context_pairs,
    iter_aligned,
    split_demonstrations,
)
from trainer.sts.scores import domain_score, feature_shift, top_shifted_dimensions
from trainer.sts.transferability import shifted_dimensions, target_features, target_scores


def tiny_model(seed: int = 0, layers: int = 2) -> Any:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=True, pad_token_id=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model: Any = Qwen2ForCausalLM(config)
        return model.eval()


class IdentitySae:
    """A test double for an SAE: features are ReLU of the activations themselves (d_sae = d_in)."""

    def __init__(self, d_in: int) -> None:
        self.cfg = type("Cfg", (), {"d_in": d_in, "d_sae": d_in})()
        self.W_enc = torch.eye(d_in)

    def parameters(self) -> Any:
        return iter([self.W_enc])

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x)


def test_in_context_pairs_append_the_same_ids_to_both_contexts() -> None:
    pairs = in_context_pairs([[7, 8], [9]], [[1, 2], [3]], prefix=[5], separator=[6])
    # base: prefix + example; icl: prefix + demo₁ + sep + demo₂ + sep + example
    assert pairs[0].base_ids == (5, 7, 8) and pairs[0].icl_ids == (5, 1, 2, 6, 3, 6, 7, 8)
    assert pairs[1].base_ids == (5, 9) and pairs[1].icl_ids == (5, 1, 2, 6, 3, 6, 9)
    assert [p.n_shared for p in pairs] == [2, 1]
    for p in pairs:  # the shared continuation is the last n_shared tokens of both
        assert p.base_ids[-p.n_shared:] == p.icl_ids[-p.n_shared:]
    with pytest.raises(ValueError, match="demonstrations"):
        in_context_pairs([[1]], [])
    with pytest.raises(ValueError, match=r"examples\[1\]"):
        in_context_pairs([[1], []], [[2]])


def test_split_demonstrations_leaves_the_demonstrations_out_of_the_scored_examples() -> None:
    examples = [[i] for i in range(6)]
    demos, rest = split_demonstrations(examples, 2, seed=3)
    assert len(demos) == 2 and len(rest) == 4
    assert sorted(map(tuple, demos + rest)) == [(i,) for i in range(6)]
    assert split_demonstrations(examples, 2, seed=3) == (demos, rest)  # seeded
    with pytest.raises(ValueError, match="n:"):
        split_demonstrations(examples[:2], 2)


def test_batched_collection_equals_one_at_a_time_and_the_hidden_states() -> None:
    model = tiny_model()
    sequences = [[1, 2, 3, 4, 5, 6], [7, 8], [9, 10, 11], [12]]
    batched = collect_residual(model, sequences, layer=0, batch_size=4)
    assert [a.shape for a in batched] == [torch.Size([n, 16]) for n in (6, 2, 3, 1)]  # padding removed
    for seq, acts in zip(sequences, batched, strict=True):
        alone = collect_residual(model, [seq], layer=0, batch_size=1)[0]
        assert torch.allclose(acts, alone, atol=1e-5)
        # block 0's output is hidden_states[1] (hidden_states[0] is the embeddings)
        hidden = model(input_ids=torch.tensor([seq]), output_hidden_states=True).hidden_states[1][0]
        assert torch.allclose(acts, hidden, atol=1e-5)
    with pytest.raises(ValueError, match="layer: the model has 2 blocks"):
        collect_residual(model, sequences, layer=2)
    with pytest.raises(ValueError, match=r"sequences\[1\]"):
        collect_residual(model, [[1], []], layer=0)
    with pytest.raises(ValueError, match="decoder blocks"):
        decoder_layers(torch.nn.Linear(2, 2))


def test_rows_are_aligned_by_token_of_the_shared_continuation() -> None:
    model = tiny_model(layers=1)
    with torch.no_grad():  # no attention output: a block's output depends on its own token only
        block: Any = decoder_layers(model)[0]
        block.self_attn.o_proj.weight.zero_()
    pairs = in_context_pairs([[7, 8, 9], [10, 11]], [[1, 2, 3, 4], [5, 6]], prefix=[12])
    base_rows, icl_rows = next(iter_aligned(model, pairs, layer=0))
    assert base_rows.shape == icl_rows.shape == (5, 16)
    # aligned by token, the two conditions agree exactly here: no shift at all
    assert torch.allclose(base_rows, icl_rows, atol=1e-6)
    # row-by-index subtraction (the authors' code) would compare different tokens: a large "shift"
    base_all = torch.cat(collect_residual(model, [p.base_ids for p in pairs], 0))
    icl_all = torch.cat(collect_residual(model, [p.icl_ids for p in pairs], 0))[:base_all.shape[0]]
    assert feature_shift(icl_all, base_all).sum() > 1e-3  # ≈ 0.07 here, against exactly 0 aligned


def test_streamed_pipeline_equals_the_formulas_on_whole_matrices() -> None:
    model = tiny_model()
    sae = IdentitySae(16)
    pairs = in_context_pairs([[7, 8, 9], [10, 11], [13, 14, 15, 16]], [[1, 2], [3, 4]], prefix=[12])
    result = shifted_dimensions(model, sae, 1, pairs, top_k=5, batch_size=2)
    base = torch.cat([a[-p.n_shared:] for a, p in zip(collect_residual(model, [p.base_ids for p in pairs], 1), pairs, strict=True)])
    icl = torch.cat([a[-p.n_shared:] for a, p in zip(collect_residual(model, [p.icl_ids for p in pairs], 1), pairs, strict=True)])
    shift = feature_shift(torch.relu(icl), torch.relu(base))
    assert result.tokens == 9  # 3 + 2 + 4 tokens of the shared continuations
    assert torch.allclose(result.shift, shift, atol=1e-5)
    assert result.dims.tolist() == top_shifted_dimensions(shift, 5).tolist()
    domains = {"a": [[12, 1, 2, 3], [12, 4]], "b": [[12, 20, 21, 22, 23]]}
    scores = target_scores(model, sae, 1, domains, result.dims, batch_size=1)
    for name, sequences in domains.items():
        whole = torch.relu(torch.cat(collect_residual(model, sequences, 1)))
        assert scores[name] == pytest.approx(domain_score(whole, result.dims), rel=1e-5)
    assert target_features(model, sae, 1, domains["a"], result.dims).shape == (6, 5)  # 4 + 2 tokens
