"""The sparse autoencoder STS encodes activations with: sae-lens' standard (ReLU) SAE.

sae-lens (``pip install sae-lens``) is used rather than an SAE of our own: it installs beside
torch 2.13.0 without replacing it or pulling CUDA, and trains and encodes on the CPU; its
``SAE.load_from_disk`` also reads the pretrained SAEs published in its format (the authors' code
loads its Llama SAE that way), so a given SAE and one trained here are read by the same code.

The SAE is ``f = ReLU((x − b_dec) W_enc + b_enc)``, ``x̂ = f W_dec + b_dec``, trained on
``‖x − x̂‖² + λ Σ_d f_d ‖W_dec[d]‖`` (sae-lens' ``standard`` architecture: the L1 penalty weighted
by each decoder row's norm, the Anthropic 2024 recipe) with sae-lens' ``SAETrainer`` (Adam, gradient
norm clipped at 1). Inputs are scaled to an average norm of ``sqrt(d_in)`` while training
(``expected_average_only_in``); the scale is folded into the weights at the end, and so are the
decoder norms (``fold_W_dec_norm``: every decoder row has unit norm afterwards, so a feature's
activation is the length of its contribution to the residual stream, comparable across features).
A given SAE is used as it is.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch


def train_sae(activations: torch.Tensor, *, d_sae: int, l1_coefficient: float = 1.0, lr: float = 1e-3,
              batch_size: int = 256, epochs: float = 10.0, seed: int = 0, device: str = "cpu") -> Any:
    """Train a standard ReLU SAE on ``activations`` (``[tokens, d_in]``); return it (sae-lens ``TrainingSAE``).

    ``epochs`` passes over the rows, reshuffled each pass with ``seed``; the global RNG is untouched.
    """
    from sae_lens import SAETrainer, StandardTrainingSAE, StandardTrainingSAEConfig
    from sae_lens.config import LoggingConfig, SAETrainerConfig

    if activations.ndim != 2 or activations.shape[0] < 2:
        raise ValueError(f"activations: need a [tokens, d_in] matrix of at least two rows, got {tuple(activations.shape)}")
    if not torch.isfinite(activations).all():
        raise ValueError("activations: contain NaN or infinite values")
    if d_sae < 1 or batch_size < 1 or epochs <= 0 or l1_coefficient < 0:
        raise ValueError(f"d_sae, batch_size, epochs must be positive and l1_coefficient >= 0 "
                         f"(got {d_sae}, {batch_size}, {epochs}, {l1_coefficient})")
    rows = activations.detach().float().cpu()
    batch_size = min(batch_size, rows.shape[0])
    total = max(batch_size, int(epochs * rows.shape[0]) // batch_size * batch_size)
    generator = torch.Generator().manual_seed(seed)

    def batches() -> Iterator[torch.Tensor]:
        while True:
            order = torch.randperm(rows.shape[0], generator=generator)
            for start in range(0, rows.shape[0] - batch_size + 1, batch_size):
                yield rows[order[start:start + batch_size]]

    config = StandardTrainingSAEConfig(d_in=rows.shape[1], d_sae=d_sae, l1_coefficient=l1_coefficient,
                                       device=device, normalize_activations="expected_average_only_in")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sae = StandardTrainingSAE(config)
        trainer_config = SAETrainerConfig(total_training_samples=total, train_batch_size_samples=batch_size,
                                          lr=lr, lr_end=lr, device=device, n_batches_for_norm_estimate=20,
                                          logger=LoggingConfig(log_to_wandb=False))
        with contextlib.redirect_stderr(io.StringIO()):  # sae-lens' tqdm progress bar
            trained = SAETrainer(trainer_config, sae, batches()).fit()
    trained.fold_W_dec_norm()
    trained.eval()
    return trained


def save_sae(sae: Any, path: Path) -> Path:
    """Write ``sae`` (weights as safetensors, config as JSON) to the folder ``path``, in sae-lens' format."""
    path = Path(path)
    save = getattr(sae, "save_inference_model", None) or sae.save_model
    save(path)
    return path


def load_sae(path: Path, *, device: str = "cpu") -> Any:
    """An SAE saved by ``save_sae`` or any SAE in sae-lens' disk format (``cfg.json`` + weights)."""
    from sae_lens import SAE

    path = Path(path)
    if not (path / "cfg.json").is_file():
        raise FileNotFoundError(f"sae: no sae-lens cfg.json in {path}")
    sae = SAE.load_from_disk(path, device=device)
    sae.eval()
    return sae


def sae_input_size(sae: Any) -> int:
    """The activation width the SAE reads (``d_in``)."""
    return int(sae.cfg.d_in)


def encode(sae: Any, activations: torch.Tensor, *, batch_size: int = 4096) -> torch.Tensor:
    """SAE features ``[tokens, d_sae]`` (float32, CPU) of ``[tokens, d_in]`` activations."""
    if activations.ndim != 2 or activations.shape[1] != sae_input_size(sae):
        raise ValueError(f"activations: need [tokens, {sae_input_size(sae)}], got {tuple(activations.shape)}")
    device = next(sae.parameters()).device
    out = []
    with torch.no_grad():
        for start in range(0, activations.shape[0], batch_size):
            chunk = activations[start:start + batch_size].to(device=device, dtype=sae.W_enc.dtype)
            out.append(sae.encode(chunk).float().cpu())
    if not out:
        return torch.zeros((0, int(sae.cfg.d_sae)))
    return torch.cat(out)


def load_or_train_sae(path: Path | None, activations: Callable[[], torch.Tensor], **train_options: Any) -> Any:
    """The SAE saved at ``path`` if there is one; otherwise one trained on ``activations()`` (called only
    then, so a given SAE costs no activation collection) and saved at ``path`` when it is set."""
    if path is not None and (Path(path) / "cfg.json").is_file():
        return load_sae(Path(path))
    sae = train_sae(activations(), **train_options)
    if path is not None:
        save_sae(sae, Path(path))
    return sae
