"""Checkpoints in Hugging Face format: ``<checkpoint>/hf/`` loads with ``from_pretrained`` and vLLM as it is.

The folder holds what ``save_pretrained`` writes (``config.json``, ``model.safetensors``,
``generation_config.json``) and the tokenizer's files (with the chat template), so
``AutoModelForCausalLM.from_pretrained(hf)``, ``AutoTokenizer.from_pretrained(hf)`` and
``vllm.LLM(model=hf)`` need no rewardhub code.

The weights come from what the checkpoint already holds: in a single process the module itself;
under DeepSpeed (ZeRO-2 or ZeRO-3) the consolidated ``model.pt`` that
:func:`trainer.checkpoint.save_sharded` writes (ZeRO-3's shards gathered), so no second gather is
needed. The main rank writes into a temporary folder and renames it, so ``hf/`` is complete or absent.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

HF_DIR = "hf"
CONSOLIDATED = "model.pt"
# Files a checkpoint may hold beside the policy that belong with it in hf/ too (the MTP head, trainer.mtp).
# They go into hf/mtp/, not hf/ itself: vLLM's loader takes every *.safetensors at the top of a model
# folder (without an index file) for the model's own weights.
SIDECAR_FILES = ("mtp_head.safetensors", "mtp_head.json")
SIDECAR_DIR = "mtp"


def sidecar_files(checkpoint_dir: Path) -> list[Path]:
    """The :data:`SIDECAR_FILES` present in ``checkpoint_dir``."""
    return [Path(checkpoint_dir) / name for name in SIDECAR_FILES if (Path(checkpoint_dir) / name).is_file()]


def save_hf(model: Any, tokenizer: Any, out_dir: Path, *, state_dict: dict[str, torch.Tensor] | None = None,
            extra_files: list[Path] | None = None) -> Path:
    """Write ``model`` (with ``state_dict``'s weights when given) and ``tokenizer`` to ``out_dir`` atomically;
    ``extra_files`` (the MTP head's) are copied into its ``mtp/`` subfolder."""
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".tmp-{out_dir.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    # transformers writes safetensors (its only format since v5); tied weights are stored once.
    model.save_pretrained(str(tmp), state_dict=state_dict)
    generation_config = getattr(model, "generation_config", None)
    if generation_config is not None and not (tmp / "generation_config.json").exists():
        generation_config.save_pretrained(str(tmp))  # a model that cannot generate skips it in save_pretrained
    tokenizer.save_pretrained(str(tmp))
    for extra in extra_files or []:
        (tmp / SIDECAR_DIR).mkdir(exist_ok=True)
        shutil.copyfile(extra, tmp / SIDECAR_DIR / extra.name)
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return out_dir


def export_checkpoint(checkpoint_dir: Path, *, policy: Any, tokenizer: Any, collective: Any) -> Path:
    """``<checkpoint_dir>/hf/`` from a just-written checkpoint of ``policy``; every rank calls it."""
    out = Path(checkpoint_dir) / HF_DIR
    if collective.is_main:
        from trainer.policy import DeepSpeedPolicy

        module = policy.module
        if isinstance(policy, DeepSpeedPolicy):  # the consolidated full weights, not this rank's shards
            state = torch.load(Path(checkpoint_dir) / CONSOLIDATED, map_location="cpu", weights_only=True)
            save_hf(module, tokenizer, out, state_dict=state, extra_files=sidecar_files(checkpoint_dir))
        else:
            save_hf(module, tokenizer, out, extra_files=sidecar_files(checkpoint_dir))
    collective.barrier()
    return out


def export_from_checkpoint(checkpoint_dir: Path, out_dir: Path, *, base_model: Path | None = None) -> Path:
    """A Hugging Face folder from a saved checkpoint, outside any run (``rewardhub export-hf``).

    The architecture and tokenizer come from ``base_model``, by default the model directory the run
    recorded in the checkpoint's ``state.json``; the weights from the checkpoint's ``model.pt``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    checkpoint_dir = Path(checkpoint_dir)
    weights = checkpoint_dir / CONSOLIDATED
    if not weights.is_file():
        raise FileNotFoundError(f"{checkpoint_dir} is not a training checkpoint (no {CONSOLIDATED})")
    base = base_model or _recorded_base_model(checkpoint_dir)
    if not (base / "config.json").is_file():
        raise FileNotFoundError(f"base model {base} is not a local model directory (no config.json)")
    state = torch.load(weights, map_location="cpu", weights_only=True)
    dtype = next(iter(state.values())).dtype
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=dtype, local_files_only=True)
    model.load_state_dict(state)
    tokenizer = AutoTokenizer.from_pretrained(str(base), local_files_only=True)
    return save_hf(model, tokenizer, Path(out_dir), extra_files=sidecar_files(checkpoint_dir))


def _recorded_base_model(checkpoint_dir: Path) -> Path:
    meta_path = checkpoint_dir / "state.json"
    extra = json.loads(meta_path.read_text()).get("extra", {}) if meta_path.is_file() else {}
    recorded = extra.get("base_model")
    if not recorded:
        raise FileNotFoundError(f"{checkpoint_dir} does not record its base model; pass --base-model DIR")
    return Path(recorded)
