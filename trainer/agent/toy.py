"""The CPU toy of the IH-GRPO benchmark and tests: ``A * B + C`` that a tiny model cannot compute
in its head but can with two lines of Python, a tiny model whose tokenizer has ``<tool_call>`` as
one token, and templated traces for a supervised warm-up in each execution mode's format.

The traces (what the warm-up teaches, per mode):

- delayed: two blocks (``x = A * B`` then ``y = x + C; print(y)``), then ``<tool_call>``; the output
  comes back; ``\\boxed{value}``. One tool call carrying one delayed block.
- immediate: the first block runs at its closing fence (no output: an assignment), the second
  block runs at its own, then ``\\boxed{value}``. Two tool calls.
- none: ``A * B + C = \\boxed{value}`` straight away (the model must compute in its head).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.agent.code_env import format_observation
from trainer.agent.tools import ToolResult
from trainer.algorithms.ih_grpo import TOOL_CALL_MARKER

FENCE = "```"


@dataclass(frozen=True)
class Problem:
    a: int
    b: int
    c: int

    @property
    def prompt(self) -> str:
        return f"Compute {self.a} * {self.b} + {self.c}.\n"

    @property
    def value(self) -> int:
        return self.a * self.b + self.c


DIGITS = (2, 2, 1)
"""Digits of A, B and C: 2 x 2 + 1 by default (answers up to four digits, out of a tiny model's head)."""


def problems(n: int, seed: int, digits: tuple[int, int, int] = DIGITS) -> list[Problem]:
    rng = random.Random(seed)

    def draw(k: int) -> int:
        return rng.randint(10 ** (k - 1) if k > 1 else 1, 10**k - 1)

    return [Problem(draw(digits[0]), draw(digits[1]), draw(digits[2])) for _ in range(n)]


def observation(stdout: str) -> str:
    """The observation the code environment answers for ``stdout`` (the same formatter)."""
    return format_observation(ToolResult("success", stdout), 512)


def trace(problem: Problem, mode: str) -> list[tuple[str, bool]]:
    """The warm-up trace as (text, sampled?) pieces: sampled pieces are the policy's turns, the
    others the environment's observations (loss mask 0)."""
    a, b, c, value = problem.a, problem.b, problem.c, problem.value
    first = f"{FENCE}python\nx = {a} * {b}\n{FENCE}\n"
    second = f"{FENCE}python\ny = x + {c}\nprint(y)\n{FENCE}"
    answer = f"so \\boxed{{{value}}}"
    if mode == "delayed":
        return [(f"{first}then add {c}\n{second}{TOOL_CALL_MARKER}", True), (observation(f"{value}\n"), False),
                (answer, True)]
    if mode == "immediate":
        return [(first, True), (observation(""), False), (f"then add {c}\n{second}\n", True),
                (observation(f"{value}\n"), False), (answer, True)]
    if mode == "none":
        return [(f"{a} * {b} + {c} = \\boxed{{{value}}}", True)]
    raise ValueError(f"mode: {mode!r} is not delayed, immediate or none")


def corpus() -> list[str]:
    """Extra tokenizer corpus so code, fences and outputs get compact tokens."""
    lines = []
    for problem in problems(100, seed=99) + problems(100, seed=98, digits=(3, 2, 2)):
        for mode in ("delayed", "immediate", "none"):
            lines.append(problem.prompt + "".join(text for text, _ in trace(problem, mode)))
    return lines


def build_tool_model(out_dir: Path, *, seed: int = 0, hidden_size: int = 64, num_layers: int = 2,
                     num_heads: int = 4, num_kv_heads: int = 2) -> Path:
    """A tiny random model whose tokenizer holds ``<tool_call>`` as one (non-special) token, as Qwen's
    does; the embeddings are resized to match (the new row is drawn like the others)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.tiny_models import build_tiny_causal_lm, default_corpus

    build_tiny_causal_lm(out_dir, seed=seed, hidden_size=hidden_size, num_layers=num_layers, num_heads=num_heads,
                         num_kv_heads=num_kv_heads, corpus=default_corpus() + corpus(), vocab_size=640)
    tokenizer = AutoTokenizer.from_pretrained(str(out_dir), local_files_only=True)
    tokenizer.add_tokens([TOOL_CALL_MARKER])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_pretrained(str(out_dir), local_files_only=True)
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


BOXED_VALUE = re.compile(r"\\boxed\{([^{}]*)\}")


def score(completion: str, ground_truth: Any, _item: Any = None) -> float:
    """1.0 when the last ``\\boxed{}`` holds the value, else 0.0 (the toy's reward)."""
    found = BOXED_VALUE.findall(completion)
    return float(bool(found) and found[-1].strip() == str(ground_truth))


def encode_trace(tokenizer: Any, problem: Problem, mode: str) -> tuple[list[int], list[int]]:
    """(ids, loss mask) of prompt + trace + EOS; the mask is 1 on the policy's pieces and the EOS."""
    ids = list(tokenizer(problem.prompt, add_special_tokens=False)["input_ids"])
    mask = [0] * len(ids)
    for text, sampled in trace(problem, mode):
        piece = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids.extend(piece)
        mask.extend([int(sampled)] * len(piece))
    ids.append(int(tokenizer.eos_token_id))
    mask.append(1)
    return ids, mask


def warm_up(model_dir: Path, mode: str, *, steps: int, seed: int, tool_share: float = 0.5, batch_size: int = 16,
            learning_rate: float = 3e-3, digits: tuple[int, int, int] = DIGITS) -> dict[str, float]:
    """A short supervised warm-up, in place: next-token cross-entropy on the policy's tokens of
    templated traces, a ``tool_share`` of them in ``mode``'s tool format and the rest direct answers
    (``none``: all direct). Returns the last loss. Deterministic for a seed."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), local_files_only=True)
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)
        rng = random.Random(seed)
        pool = problems(2048, seed=10_000 + seed, digits=digits)
        loss_value = float("nan")
        for _ in range(steps):
            rows = []
            for problem in rng.sample(pool, batch_size):
                use_tools = mode != "none" and rng.random() < tool_share
                rows.append(encode_trace(tokenizer, problem, mode if use_tools else "none"))
            width = max(len(ids) for ids, _ in rows)
            input_ids = torch.full((batch_size, width), int(tokenizer.pad_token_id))
            labels_mask = torch.zeros((batch_size, width))
            attention = torch.zeros((batch_size, width), dtype=torch.long)
            for row, (ids, mask) in enumerate(rows):
                input_ids[row, :len(ids)] = torch.tensor(ids)
                labels_mask[row, :len(mask)] = torch.tensor(mask, dtype=torch.float32)
                attention[row, :len(ids)] = 1
            logits = model(input_ids=input_ids, attention_mask=attention).logits[:, :-1]
            nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), input_ids[:, 1:].reshape(-1),
                                                    reduction="none").view(batch_size, width - 1)
            weights = labels_mask[:, 1:]
            loss = (nll * weights).sum() / weights.sum()
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            loss_value = float(loss.detach())
    model.save_pretrained(model_dir)
    return {"sft_loss": loss_value}
