"""Residual-stream activations at one layer of a Hugging Face causal LM, and the token alignment of
the two conditions STS compares.

**Where.** ``layer = l`` (0-based) is the residual stream *after* decoder block ``l`` (sae-lens'
``blocks.l.hook_resid_post``), read with a forward hook on the block itself rather than from
``output_hidden_states`` (whose last entry has the final norm applied in most HF models).

**Batching.** Sequences are sorted by length, right-padded with an attention mask and run
``batch_size`` at a time; only the rows of real tokens come back (with right padding and a causal
mask, a real token never attends to a pad, so its activation is the unpadded one — the tests check
batched against one-at-a-time).

**Alignment.** The spec's ``Σ_t (f_icl[t,d] − f_base[t,d])²`` compares the same token ``t`` in two
runs: the fine-tuning example alone (base) and the same example after two demonstrations (the
in-context stand-in for the fine-tuned model). The authors' code subtracts the two feature
matrices row by row, by index, although the in-context rows start with the demonstrations, so
their row ``t`` is mostly a different token. Here every example is tokenized once and its token ids
are appended unchanged to both contexts (``prefix + example`` and ``prefix + demonstrations +
example``, ids concatenated, never re-tokenized as one string, so no BPE merge can cross the
boundary); row ``t`` of both conditions is then token ``t`` of the shared continuation, the last
``len(example)`` positions of each sequence. The demonstrations' and the prefix's own rows are
left out. The absolute positions differ by the context length, which is part of the in-context
effect being measured.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class AlignedPair:
    """One fine-tuning example in both conditions; its tokens are the last ``n_shared`` of each."""

    base_ids: tuple[int, ...]
    icl_ids: tuple[int, ...]
    n_shared: int


def in_context_pairs(examples: Sequence[Sequence[int]], demonstrations: Sequence[Sequence[int]], *,
                     prefix: Sequence[int] = (), separator: Sequence[int] = ()) -> list[AlignedPair]:
    """Base ``prefix + example`` and in-context ``prefix + demo₁ + sep + demo₂ + sep + … + example``.

    ``examples`` and ``demonstrations`` are token-id sequences (tokenize each piece on its own,
    without special tokens); ``prefix`` (e.g. a BOS token) starts both conditions.
    """
    if not demonstrations:
        raise ValueError("demonstrations: need at least one demonstration for the in-context condition")
    context: list[int] = []
    for demo in demonstrations:
        if not demo:
            raise ValueError("demonstrations: a demonstration has no tokens")
        context.extend(int(i) for i in demo)
        context.extend(int(i) for i in separator)
    pairs = []
    for index, example in enumerate(examples):
        if not example:
            raise ValueError(f"examples[{index}]: has no tokens")
        ids = [int(i) for i in example]
        pairs.append(AlignedPair(tuple([*prefix, *ids]), tuple([*prefix, *context, *ids]), len(ids)))
    return pairs


def split_demonstrations(examples: Sequence[Sequence[int]], n: int = 2, *,
                         seed: int = 0) -> tuple[list[list[int]], list[list[int]]]:
    """``n`` demonstrations drawn with ``seed`` and the other examples (a demonstration is never scored
    after itself). The authors take two fixed examples of the fine-tuning set; the spec says two."""
    if not 1 <= n < len(examples):
        raise ValueError(f"n: need 1 <= n < the number of examples ({len(examples)}), got {n}")
    chosen = set(random.Random(seed).sample(range(len(examples)), n))
    demos = [list(examples[i]) for i in sorted(chosen)]
    rest = [list(e) for i, e in enumerate(examples) if i not in chosen]
    return demos, rest


def decoder_layers(model: Any) -> torch.nn.ModuleList:
    """The decoder blocks of a Hugging Face causal LM (Llama/Qwen/Mistral, GPT-2, GPT-NeoX, OPT)."""
    for path in ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers"):
        node: Any = model
        for name in path.split("."):
            node = getattr(node, name, None)
            if node is None:
                break
        if isinstance(node, torch.nn.ModuleList):
            return node
    raise ValueError(f"model: cannot find the decoder blocks of {type(model).__name__}")


def iter_residual(model: Any, sequences: Sequence[Sequence[int]], layer: int, *, batch_size: int = 32,
                  pad_id: int = 0) -> Iterator[tuple[list[int], list[torch.Tensor]]]:
    """Yield ``(indices, activations)`` per batch: for each sequence index, its ``[len, d_model]``
    float32 residual stream after block ``layer``, padding removed. Batches go shortest first."""
    blocks = decoder_layers(model)
    if not 0 <= layer < len(blocks):
        raise ValueError(f"layer: the model has {len(blocks)} blocks (0..{len(blocks) - 1}), got {layer}")
    if batch_size < 1:
        raise ValueError(f"batch_size: must be at least 1, got {batch_size}")
    for index, sequence in enumerate(sequences):
        if not sequence:
            raise ValueError(f"sequences[{index}]: has no tokens")
    captured: list[torch.Tensor] = []

    def hook(_module: torch.nn.Module, _inputs: Any, output: Any) -> None:
        captured.append(output if isinstance(output, torch.Tensor) else output[0])

    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    device = next(model.parameters()).device
    handle = blocks[layer].register_forward_hook(hook)
    try:
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            lengths = [len(sequences[i]) for i in chunk]
            width = max(lengths)
            ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, i in enumerate(chunk):
                ids[row, :lengths[row]] = torch.tensor(list(sequences[i]), dtype=torch.long)
                mask[row, :lengths[row]] = 1
            captured.clear()
            with torch.no_grad():
                model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
            hidden = captured[0].float().cpu()
            yield chunk, [hidden[row, :lengths[row]] for row in range(len(chunk))]
    finally:
        handle.remove()


def collect_residual(model: Any, sequences: Sequence[Sequence[int]], layer: int, *, batch_size: int = 32,
                     pad_id: int = 0) -> list[torch.Tensor]:
    """Every sequence's ``[len, d_model]`` residual stream after block ``layer``, in input order."""
    out: list[torch.Tensor | None] = [None] * len(sequences)
    for indices, acts in iter_residual(model, sequences, layer, batch_size=batch_size, pad_id=pad_id):
        for i, a in zip(indices, acts, strict=True):
            out[i] = a
    return [a for a in out if a is not None]


def iter_aligned(model: Any, pairs: Sequence[AlignedPair], layer: int, *, batch_size: int = 16,
                 pad_id: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(base_rows, icl_rows)``, two ``[tokens, d_model]`` matrices per batch of pairs whose row
    ``t`` is the same token of the shared continuation in the base and in the in-context run."""
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        base = collect_residual(model, [p.base_ids for p in chunk], layer, batch_size=batch_size, pad_id=pad_id)
        icl = collect_residual(model, [p.icl_ids for p in chunk], layer, batch_size=batch_size, pad_id=pad_id)
        yield (torch.cat([b[-p.n_shared:] for b, p in zip(base, chunk, strict=True)]),
               torch.cat([c[-p.n_shared:] for c, p in zip(icl, chunk, strict=True)]))
