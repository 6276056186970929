"""The STS sparse autoencoder (sae-lens' standard SAE): shapes, sparsity, unit decoder rows, save/load."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from tests.conftest import require_module
from trainer.sts.sae import encode, load_or_train_sae, load_sae, save_sae, train_sae


def sparse_data(rows: int = 2048, d_in: int = 16, atoms: int = 32, seed: int = 0) -> torch.Tensor:
    """Each row is a sum of ~1.6 of 32 unit directions in 16 dimensions (a truly sparse code)."""
    g = torch.Generator().manual_seed(seed)
    dictionary = torch.nn.functional.normalize(torch.randn(atoms, d_in, generator=g), dim=1)
    codes = (torch.rand(rows, atoms, generator=g) < 0.05).float() * (1 + 2 * torch.rand(rows, atoms, generator=g))
    return codes @ dictionary


@pytest.fixture(scope="module")
def trained() -> tuple[Any, torch.Tensor]:
    require_module("sae_lens", "a training dependency (rewardhub[train])")
    x = sparse_data()
    return train_sae(x, d_sae=64, l1_coefficient=3.0, lr=3e-3, epochs=20, batch_size=256, seed=0), x


def test_shapes_sparsity_and_unit_decoder_rows(trained: tuple[Any, torch.Tensor]) -> None:
    sae, x = trained
    f = encode(sae, x, batch_size=500)  # several encode batches
    assert f.shape == (2048, 64) and f.dtype == torch.float32
    assert (f >= 0).all()  # ReLU features
    l0 = float((f > 0).sum(dim=1).float().mean())
    assert l0 < 16  # sparse: under a quarter of the 64 features per row (≈ 7 here)
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(64), atol=1e-5)  # decoder norms folded
    reconstruction = sae.decode(f).detach()
    fvu = float((reconstruction - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum())
    assert fvu < 0.5  # it reconstructs: most of the variance is explained (≈ 0.27 here)
    with pytest.raises(ValueError, match=r"activations: need \[tokens, 16\]"):
        encode(sae, torch.zeros(3, 8))


def test_save_and_load_round_trip(trained: tuple[Any, torch.Tensor], tmp_path: Path) -> None:
    sae, x = trained
    save_sae(sae, tmp_path / "sae")
    assert (tmp_path / "sae" / "cfg.json").is_file()
    loaded = load_sae(tmp_path / "sae")
    assert torch.allclose(encode(loaded, x[:100]), encode(sae, x[:100]), atol=1e-6)
    with pytest.raises(FileNotFoundError, match=r"cfg\.json"):
        load_sae(tmp_path / "nothing")


def test_training_is_seeded_and_checks_its_input(trained: tuple[Any, torch.Tensor]) -> None:
    x = sparse_data(rows=256)
    state = torch.get_rng_state()
    one = train_sae(x, d_sae=32, epochs=1, batch_size=64, seed=5)
    two = train_sae(x, d_sae=32, epochs=1, batch_size=64, seed=5)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is untouched
    assert torch.allclose(one.W_enc, two.W_enc) and torch.allclose(one.b_dec, two.b_dec)
    with pytest.raises(ValueError, match="activations"):
        train_sae(torch.zeros(1, 4), d_sae=8)
    with pytest.raises(ValueError, match="NaN"):
        train_sae(torch.full((4, 4), float("nan")), d_sae=8)
    with pytest.raises(ValueError, match="d_sae"):
        train_sae(x, d_sae=0)


def test_an_sae_is_trained_only_when_none_is_given(tmp_path: Path) -> None:
    calls: list[int] = []

    def activations() -> torch.Tensor:
        calls.append(1)
        return sparse_data(rows=256)

    first = load_or_train_sae(tmp_path / "sae", activations, d_sae=32, epochs=1, batch_size=64)
    assert calls == [1] and (tmp_path / "sae" / "cfg.json").is_file()  # trained, then saved
    again = load_or_train_sae(tmp_path / "sae", activations, d_sae=32, epochs=1, batch_size=64)
    assert calls == [1]  # loaded: no activations collected, nothing trained
    x = sparse_data(rows=8)
    assert torch.allclose(encode(again, x), encode(first, x), atol=1e-6)
