"""A multi-token-prediction (MTP) head for Hugging Face causal LMs, as DeepSeek-V3 and MiMo attach one.

The head predicts token t+2 from the trunk's final hidden state at t and the embedding of token t+1::

    u_t = W_p [ RMSNorm_e(E(x_{t+1})) ; RMSNorm_h(h_t) ]          (concat, then project 2H → H)
    o_t = Block(u_≤t)                                             (one decoder block of the model's own class,
                                                                   causal over positions, with its final norm)
    q(x_{t+2} | x_≤t+1) = softmax(W_out o_t / τ)                  (W_out: the model's own output layer, shared)

``h_t`` is the trunk's ``last_hidden_state`` (after its final norm: what feeds the main head; the
head's own ``hnorm`` re-normalises it, as DeepSeek-V3's ``hnorm``), ``E`` the model's own input
embeddings (shared). The block is built from the model's config: ``AutoModel.from_config`` of a copy
with one layer, so it is the model's own decoder-layer class with its own rotary embedding, causal /
padding mask and final norm (DeepSeek-V3's ``shared_head.norm``); its token-embedding table is unused
(inputs go in as ``inputs_embeds``) and made 1 x H. This works for the Llama-style families whose
base model accepts ``inputs_embeds``, ``attention_mask`` and ``position_ids`` (Qwen2/2.5/3, Llama,
Mistral...) and whose logits are ``lm_head(last_hidden_state)`` (no final logit soft-capping).

Choices the spec leaves open (also in docs/occ.md):

- the head's weights start random (the block's own ``_init_weights``, seeded), and are then warmed up
  with cross-entropy on t+2 (:func:`warmup_mtp_head`) with the trunk frozen;
- positions where either input (h_t or x_{t+1}) is padding are masked out (``mtp_mask``); with a
  one-token prompt the first completion token has no MTP prediction;
- ``detach_trunk=True`` (the ``detach`` regime, the warm-up) detaches h_t, the embeddings and the
  output layer's weight, so the MTP loss trains the head's own parameters only.

Saving: ``mtp_head.safetensors`` (weights) and ``mtp_head.json`` (format version and the trunk
facts the head was built for) in the checkpoint folder, beside the policy's own files.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

import torch
from torch import nn

from trainer.algorithms import LOSS_AGGREGATIONS, grpo_policy_loss
from trainer.logprobs import CompletionBatch, chunked_entropy, chunked_token_logprobs
from trainer.occ import MtpSettings, check_schedule, mtp_loss

WEIGHTS_FILE = "mtp_head.safetensors"
CONFIG_FILE = "mtp_head.json"
FORMAT_VERSION = 1


def block_config(trunk_config: Any) -> Any:
    """The trunk's config with one hidden layer and a 1-entry vocabulary (no special-token ids): the
    MTP block's config.

    ``layer_types`` (sliding / full attention per layer) keeps the trunk's last layer's type.
    """
    values = trunk_config.to_dict()
    values["num_hidden_layers"] = 1
    values["vocab_size"] = 1
    for key in ("pad_token_id", "bos_token_id", "eos_token_id"):  # ids of a vocabulary the block does not have
        values[key] = None
    values["tie_word_embeddings"] = False
    if isinstance(values.get("layer_types"), list) and values["layer_types"]:
        values["layer_types"] = [values["layer_types"][-1]]
    for key in ("architectures", "_name_or_path", "transformers_version"):
        values.pop(key, None)
    config = type(trunk_config)(**values)
    config._attn_implementation = getattr(trunk_config, "_attn_implementation", None) or "sdpa"
    return config


def _norm(block: Any, hidden: int, eps: float) -> nn.Module:
    """An RMSNorm of the model's own class (the block's final norm's type), else torch's."""
    norm = getattr(block, "norm", None)
    if norm is not None:
        try:
            module: nn.Module = type(norm)(hidden, eps=eps)
            return module
        except TypeError:
            pass
    return nn.RMSNorm(hidden, eps=eps)


class MtpHead(nn.Module):
    """One MTP depth: ``enorm``, ``hnorm``, ``eh_proj`` and one decoder ``block`` (DeepSeek-V3's names).

    It owns no output layer and no embeddings: the policy's are used (:func:`mtp_hidden` /
    :func:`joint_logprobs`).
    """

    def __init__(self, trunk_config: Any, *, seed: int = 0) -> None:
        from transformers import AutoModel

        super().__init__()
        hidden = int(trunk_config.hidden_size)
        eps = float(getattr(trunk_config, "rms_norm_eps", 1e-6))
        self.trunk_facts = trunk_facts(trunk_config)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.block: Any = AutoModel.from_config(block_config(trunk_config))  # type: ignore[no-untyped-call]
            self.block.get_input_embeddings().requires_grad_(False)  # 1 x H, never used: inputs_embeds
            self.enorm = _norm(self.block, hidden, eps)
            self.hnorm = _norm(self.block, hidden, eps)
            self.eh_proj = nn.Linear(2 * hidden, hidden, bias=False)
            std = float(getattr(trunk_config, "initializer_range", 0.02))
            nn.init.normal_(self.eh_proj.weight, mean=0.0, std=std)

    def forward(self, hidden: torch.Tensor, next_embeddings: torch.Tensor, attention_mask: torch.Tensor,
                position_ids: torch.Tensor) -> torch.Tensor:
        """``hidden`` h_t and ``next_embeddings`` E(x_{t+1}), both ``(B, N, H)``: the block's output o_t ``(B, N, H)``
        (after its final norm). ``attention_mask`` ``(B, N)`` is 1 where both inputs are real."""
        joined = torch.cat([self.enorm(next_embeddings), self.hnorm(hidden)], dim=-1)
        projected = self.eh_proj(joined)
        out = self.block(inputs_embeds=projected, attention_mask=attention_mask, position_ids=position_ids)
        result: torch.Tensor = out.last_hidden_state
        return result


def trunk_facts(config: Any) -> dict[str, Any]:
    """What a saved head must match in the policy it is loaded beside."""
    return {"model_type": getattr(config, "model_type", None), "hidden_size": int(config.hidden_size),
            "vocab_size": int(config.vocab_size)}


def build_mtp_head(model: Any, *, seed: int = 0) -> MtpHead:
    """A new (random) MTP head for ``model``, on its device and in its dtype."""
    parameter = next(model.parameters())
    head = MtpHead(model.config, seed=seed)
    return head.to(device=parameter.device, dtype=parameter.dtype)


# ---------------------------------------------------------------- forward passes


def _output_layer(model: Any) -> nn.Module:
    layer = model.get_output_embeddings()
    if layer is None:
        raise ValueError("model: has no output layer (get_output_embeddings() is None) for the MTP head to share")
    module: nn.Module = layer
    return module


def _project(model: Any, states: torch.Tensor, detach: bool) -> torch.Tensor:
    """The shared output layer on ``states``; with ``detach`` its weights take no gradient."""
    layer = _output_layer(model)
    if not detach:
        result: torch.Tensor = layer(states)
        return result
    weight = cast(torch.Tensor, layer.weight)
    bias: torch.Tensor | None = getattr(layer, "bias", None)
    return torch.nn.functional.linear(states, weight.detach(), bias.detach() if bias is not None else None)


def mtp_hidden(model: Any, head: MtpHead, hidden: torch.Tensor, input_ids: torch.Tensor,
               attention_mask: torch.Tensor, position_ids: torch.Tensor, *,
               detach_trunk: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The head's output o_i for i = 0 … L−2 ``(B, L−1, H)``, predicting ``input_ids[:, i + 2]``, and the
    mask ``(B, L−1)`` of positions whose inputs (h_i and x_{i+1}) are both real tokens.

    ``hidden`` is the trunk's last hidden state ``(B, L, H)``; ``detach_trunk``: no gradient goes back
    into it or into the shared embeddings.
    """
    embeddings = model.get_input_embeddings()(input_ids[:, 1:])
    states = hidden[:, :-1]
    if detach_trunk:
        embeddings, states = embeddings.detach(), states.detach()
    both = (attention_mask[:, :-1] * attention_mask[:, 1:]).to(attention_mask.dtype)
    # Rows with no valid position (a one-token row) would attend to nothing: give the block a
    # harmless mask there (its outputs are masked out anyway).
    safe = both.clone()
    empty = safe.sum(-1) == 0
    if bool(empty.any()):
        safe[empty, -1] = 1
    out = head(states, embeddings, safe, position_ids[:, :-1])
    return out, both


@dataclass
class JointOutput:
    """One trunk forward, both heads, on a rollout batch's completion tokens (all ``(B, T)``)."""

    logp: torch.Tensor  # main head: log π(y_t | x, y_<t)
    mtp_logp: torch.Tensor  # MTP head: log q(y_t | x, y_<t−1), from h_{t−2} and E(y_{t−1})
    mtp_mask: torch.Tensor  # float, 1 where the MTP head had real inputs for y_t
    mtp_top1: torch.Tensor  # the MTP head's argmax at each position (no gradient)
    entropy: torch.Tensor | None = None  # main head's entropy per token (``with_entropy``)


def _pad_left(batch: CompletionBatch, columns: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ids, mask, pos = batch.input_ids, batch.attention_mask, batch.position_ids
    if columns <= 0:
        return ids, mask, pos
    rows = ids.shape[0]
    return (torch.cat([ids.new_zeros((rows, columns)), ids], 1), torch.cat([mask.new_zeros((rows, columns)), mask], 1),
            torch.cat([pos.new_zeros((rows, columns)), pos], 1))


def joint_logprobs(model: Any, head: MtpHead, batch: CompletionBatch, temperature: float = 1.0, *,
                   detach_trunk: bool = False, device: torch.device | str | None = None,
                   with_entropy: bool = False, entropy_grad: bool = False) -> JointOutput:
    """Main-head and MTP-head log-probs of the completion tokens from one trunk forward.

    ``batch`` is a rollout batch as ``trainer.grpo.Batch`` (left-padded prompts, right-padded
    completions, every completion starting at column P = L − T). The main head's log-probs are
    ``lm_head(h)`` at columns P−1 … L−2, the same values as :func:`trainer.logprobs.completion_logprobs`;
    the MTP head's for y_s (column P+s) come from index P+s−2 of :func:`mtp_hidden`. ``with_entropy``:
    also the main head's entropies (``chunked_entropy``, a gradient only with ``entropy_grad``), as
    :func:`trainer.logprobs.completion_logprobs` gives them.
    """
    device = device or next(model.parameters()).device
    completion = batch.completion_ids.to(device)
    t_max = completion.shape[1]
    prompt_width = batch.input_ids.shape[1] - t_max
    ids, mask, pos = (tensor.to(device) for tensor in _pad_left(batch, 2 - prompt_width))
    length = ids.shape[1]
    hidden = model.get_decoder()(input_ids=ids, attention_mask=mask, position_ids=pos).last_hidden_state
    main_logits = _output_layer(model)(hidden[:, length - t_max - 1:])  # T + 1 columns, the last unused
    logp = chunked_token_logprobs(main_logits, completion, temperature)
    entropy = (chunked_entropy(main_logits if entropy_grad else main_logits.detach(), t_max, temperature)
               if with_entropy else None)
    del main_logits
    out, valid = mtp_hidden(model, head, hidden, ids, mask, pos, detach_trunk=detach_trunk)
    selected = out[:, length - t_max - 2: length - 2]
    mtp_logits = _project(model, selected, detach_trunk)
    mtp_logp = chunked_token_logprobs(mtp_logits, completion, temperature)
    top1 = mtp_logits.detach().argmax(-1)
    mtp_mask = valid[:, length - t_max - 2: length - 2].to(logp.dtype)
    return JointOutput(logp=logp, mtp_logp=mtp_logp, mtp_mask=mtp_mask, mtp_top1=top1, entropy=entropy)


# ---------------------------------------------------------------- warm-up


@dataclass
class SequenceMtpOutput:
    loss: torch.Tensor  # mean cross-entropy of x_{i+2} over valid positions
    acceptance: float  # share of valid positions where the head's top-1 is x_{i+2}
    tokens: int


def sequence_mtp_loss(model: Any, head: MtpHead, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      position_ids: torch.Tensor | None = None, *, detach_trunk: bool = True) -> SequenceMtpOutput:
    """Cross-entropy on t+2 over whole sequences ``(B, L)`` (any padding side):
    CE = −(1/N) Σ_i m_i log q(x_{i+2} | x_≤i+1), m_i = 1 where x_i, x_{i+1}, x_{i+2} are all real."""
    if input_ids.shape[1] < 3:
        raise ValueError("input_ids: MTP training needs sequences of at least 3 tokens")
    if position_ids is None:
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    if detach_trunk:
        with torch.no_grad():
            hidden = model.get_decoder()(input_ids=input_ids, attention_mask=attention_mask,
                                         position_ids=position_ids).last_hidden_state
    else:
        hidden = model.get_decoder()(input_ids=input_ids, attention_mask=attention_mask,
                                     position_ids=position_ids).last_hidden_state
    out, valid = mtp_hidden(model, head, hidden, input_ids, attention_mask, position_ids, detach_trunk=detach_trunk)
    logits = _project(model, out[:, :-1], detach_trunk)  # o_i for i ≤ L−3 predicts x_{i+2}
    targets = input_ids[:, 2:]
    mask = (valid[:, :-1] * attention_mask[:, 2:]).to(logits.dtype)
    logp = chunked_token_logprobs(logits, targets)
    count = mask.sum().clamp(min=1.0)
    loss = -(logp * mask).sum() / count
    accepted = ((logits.detach().argmax(-1) == targets).to(mask.dtype) * mask).sum() / count
    return SequenceMtpOutput(loss=loss, acceptance=float(accepted), tokens=int(mask.sum()))


def warmup_mtp_head(model: Any, head: MtpHead, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], *,
                    steps: int, learning_rate: float = 1e-3, max_grad_norm: float | None = 1.0) -> list[dict[str, float]]:
    """MTP warm-up: ``steps`` AdamW steps of :func:`sequence_mtp_loss` on the head's own parameters,
    the trunk frozen (detached), cycling over ``batches`` of ``(input_ids, attention_mask)``.
    Returns one ``{"mtp_loss", "mtp_acceptance"}`` per step."""
    if steps < 0:
        raise ValueError(f"steps: must be ≥ 0, got {steps}")
    data = list(batches)
    if steps and not data:
        raise ValueError("batches: the MTP warm-up needs at least one batch of sequences")
    trainable = [p for p in head.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=learning_rate, weight_decay=0.0)
    device = next(head.parameters()).device
    history: list[dict[str, float]] = []
    for step in range(steps):
        ids, mask = data[step % len(data)]
        out = sequence_mtp_loss(model, head, ids.to(device), mask.to(device), detach_trunk=True)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()  # type: ignore[no-untyped-call]
        if max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(trainable, max_grad_norm)
        optimizer.step()
        history.append({"mtp_loss": float(out.loss.detach()), "mtp_acceptance": out.acceptance})
    optimizer.zero_grad(set_to_none=True)  # no warm-up gradient left for the RL update to add to
    return history


# ---------------------------------------------------------------- saving beside the policy


def save_mtp_head(head: MtpHead, directory: Path) -> Path:
    """Write ``mtp_head.safetensors`` and ``mtp_head.json`` into ``directory`` (a checkpoint folder)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {name: tensor.detach().contiguous() for name, tensor in head.state_dict().items()}
    save_file(tensors, str(directory / WEIGHTS_FILE), metadata={"format": "pt"})
    meta = {"format_version": FORMAT_VERSION, "trunk": head.trunk_facts,
            "block_config": head.block.config.to_dict()}
    (directory / CONFIG_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
    return directory / WEIGHTS_FILE


EXPORT_SUBDIR = "mtp"  # where trainer.export puts the head in an hf/ folder (kept out of vLLM's weight glob)


def has_mtp_head(directory: Path) -> bool:
    return (Path(directory) / WEIGHTS_FILE).is_file()


def head_folder(directory: Path) -> Path:
    """``directory`` if it holds a head, else its ``mtp/`` subfolder if that does (an hf/ export)."""
    directory = Path(directory)
    return directory / EXPORT_SUBDIR if not has_mtp_head(directory) and has_mtp_head(directory / EXPORT_SUBDIR) \
        else directory


def load_mtp_head(directory: Path, model: Any, *, into: MtpHead | None = None) -> MtpHead:
    """The head saved in ``directory`` for ``model`` (its device and dtype); a clear error if it was
    saved for another trunk (model type, hidden size or vocabulary) or is incomplete. ``into``: load
    the weights into that head in place (an optimizer holding its parameters keeps them)."""
    from safetensors.torch import load_file

    directory = head_folder(directory)
    if not has_mtp_head(directory) or not (directory / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{directory}: no MTP head ({WEIGHTS_FILE} and {CONFIG_FILE}) in this folder")
    meta = json.loads((directory / CONFIG_FILE).read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{directory / CONFIG_FILE}: format_version {meta.get('format_version')!r}, "
                         f"this trainer reads {FORMAT_VERSION}")
    expected = trunk_facts(model.config)
    saved = meta.get("trunk", {})
    wrong = {key: (saved.get(key), value) for key, value in expected.items() if saved.get(key) != value}
    if wrong:
        detail = ", ".join(f"{key}: saved {old!r}, model {new!r}" for key, (old, new) in wrong.items())
        raise ValueError(f"{directory / CONFIG_FILE}: this MTP head was saved for another model ({detail})")
    head = into if into is not None else build_mtp_head(model)
    state = load_file(str(directory / WEIGHTS_FILE), device=str(next(model.parameters()).device))
    head.load_state_dict(state, strict=True)
    return head


def sequences(token_lists: Iterable[list[int]], pad_id: int, rows_per_batch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Right-padded ``(input_ids, attention_mask)`` batches of ``rows_per_batch`` sequences each (the
    last may be smaller), for :func:`warmup_mtp_head`; sequences shorter than 3 tokens are left out."""
    rows = [list(tokens) for tokens in token_lists if len(tokens) >= 3]
    batches: list[tuple[torch.Tensor, torch.Tensor]] = []
    for start in range(0, len(rows), max(1, rows_per_batch)):
        part = rows[start: start + max(1, rows_per_batch)]
        width = max(len(tokens) for tokens in part)
        ids = torch.full((len(part), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(part), width), dtype=torch.long)
        for row, tokens in enumerate(part):
            ids[row, :len(tokens)] = torch.tensor(tokens, dtype=torch.long)
            mask[row, :len(tokens)] = 1
        batches.append((ids, mask))
    return batches


# ---------------------------------------------------------------- one rollout batch's update, with the MTP term


class RolloutBatch(CompletionBatch, Protocol):
    """A rollout batch as ``trainer.grpo.Batch`` holds it (the fields the update reads)."""

    completion_mask: torch.Tensor  # (B, T)


@dataclass
class _Rows:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor


def _take(batch: RolloutBatch, rows: torch.Tensor) -> _Rows:
    return _Rows(batch.input_ids[rows], batch.attention_mask[rows], batch.position_ids[rows],
                 batch.completion_ids[rows], batch.completion_mask[rows])


@dataclass(frozen=True)
class UpdateOptions:
    """The RL side of :func:`update_with_mtp` (the run config's names)."""

    mini_batches: int = 2
    gradient_accumulation: int = 1
    num_iterations: int = 1
    temperature: float = 1.0
    loss_type: str = "dapo"
    epsilon_low: float = 0.2
    epsilon_high: float = 0.28
    max_grad_norm: float | None = 1.0
    max_completion_length: int | None = None


def update_with_mtp(model: Any, head: MtpHead, optimizer: torch.optim.Optimizer, batch: RolloutBatch,
                    advantages: torch.Tensor, settings: MtpSettings, options: UpdateOptions, *,
                    seed: int = 0) -> list[dict[str, float]]:
    """One rollout batch: ``num_iterations`` x ``mini_batches`` optimizer steps of ``gradient_accumulation``
    micro-batches each, every micro-batch's loss = the GRPO policy loss of the main head + the MTP term
    of ``settings.regime`` (:func:`trainer.occ.mtp_loss`); ``optimizer`` holds the policy's and the
    head's parameters. Returns each micro-batch's metrics (``rl_loss``, ``mini_batch`` and the MTP ones).

    π_old is computed before the first optimizer step, without gradient, over the very micro-batches
    the update then takes (same rows, same shapes), so on the first mini-batch δ_RL is exactly 0.
    """
    check_schedule(settings, mini_batches=options.mini_batches, num_iterations=options.num_iterations)
    size = batch.completion_ids.shape[0]
    micro_count = options.mini_batches * options.gradient_accumulation
    if size % micro_count:
        raise ValueError(f"mini_batches: {size} rollouts do not split into mini_batches x gradient_accumulation "
                         f"({micro_count}) equal micro-batches")
    device = next(model.parameters()).device
    order = torch.randperm(size, generator=torch.Generator().manual_seed(seed))
    per_mini, per_micro = size // options.mini_batches, size // micro_count
    parts = [[order[m * per_mini + k * per_micro: m * per_mini + (k + 1) * per_micro]
              for k in range(options.gradient_accumulation)] for m in range(options.mini_batches)]
    with torch.no_grad():
        old = {(m, k): joint_logprobs(model, head, _take(batch, rows), options.temperature).logp
               for m, mini in enumerate(parts) for k, rows in enumerate(mini)}
    aggregation = LOSS_AGGREGATIONS.get(options.loss_type)
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    history: list[dict[str, float]] = []
    for _ in range(options.num_iterations):
        for m, mini in enumerate(parts):
            rows_all = torch.cat(mini)
            mask_all = batch.completion_mask[rows_all]
            tokens = mask_all.sum().to(device) if aggregation.global_token_mean else None
            optimizer.zero_grad(set_to_none=True)
            for k, rows in enumerate(mini):
                part = _take(batch, rows)
                joint = joint_logprobs(model, head, part, options.temperature, detach_trunk=settings.detach_trunk)
                mask = part.completion_mask.to(device)
                mtp_mask = mask * joint.mtp_mask
                mtp_tokens = ((mask_all.to(device) * _mtp_valid(batch, rows_all, device)).sum()
                              if aggregation.global_token_mean else None)
                rl = grpo_policy_loss(joint.logp, old[(m, k)], advantages[rows].to(device), mask,
                                      loss_type=options.loss_type, eps_low=options.epsilon_low,
                                      eps_high=options.epsilon_high,
                                      max_completion_length=options.max_completion_length, num_items_in_batch=tokens)
                term = mtp_loss(settings, logp=joint.logp, old_logp=old[(m, k)], mtp_logp=joint.mtp_logp,
                                advantages=advantages[rows].to(device), mask=mtp_mask, mtp_top1=joint.mtp_top1,
                                targets=part.completion_ids.to(device), loss_type=options.loss_type,
                                eps_low=options.epsilon_low, eps_high=options.epsilon_high,
                                max_completion_length=options.max_completion_length, num_items_in_batch=mtp_tokens)
                loss = rl.loss + term.loss
                if not aggregation.global_token_mean:
                    loss = loss / options.gradient_accumulation
                loss.backward()  # type: ignore[no-untyped-call]
                history.append({"mini_batch": float(m), "rl_loss": float(rl.loss.detach()), **term.metrics})
            if options.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(parameters, options.max_grad_norm)
            optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return history


def mtp_valid_mask(batch: CompletionBatch) -> torch.Tensor:
    """``JointOutput.mtp_mask`` of every row of ``batch`` ``(B, T)`` without a forward (float32)."""
    t_max = batch.completion_ids.shape[1]
    _, mask, _ = _pad_left(batch, 2 - (batch.input_ids.shape[1] - t_max))
    length = mask.shape[1]
    both = mask[:, :-1] * mask[:, 1:]
    return both[:, length - t_max - 2: length - 2].to(torch.float32)


def _mtp_valid(batch: RolloutBatch, rows: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``JointOutput.mtp_mask`` for ``rows`` without a forward: h_{P+s−2} and x_{P+s−1} both real."""
    t_max = batch.completion_ids.shape[1]
    _, mask, _ = _pad_left(_take(batch, rows), 2 - (batch.input_ids.shape[1] - t_max))
    length = mask.shape[1]
    both = mask[:, :-1] * mask[:, 1:]
    return both[:, length - t_max - 2: length - 2].to(device=device, dtype=torch.float32)
