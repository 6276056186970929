"""IH-GRPO (delayed tool execution) as small pure functions: what a turn runs, the delayed-call count
with its anti-gaming rules, and the surrogate ``c_t`` term of the hierarchical-policy loss.

Source: ``../shared/specs/trainer_algorithms.md`` (IH-GRPO) and the authors' public code
(github.com/Lumina04/IH-GRPO-01: ``recipe/simpletir/agent_utils.py``, ``compute_hierarchy_policy_loss``
in ``verl/trainer/ppo/core_algos.py``). Choices the spec leaves open are stated on each function.

Execution modes (``EXECUTION_MODES``, the run config's ``multi_turn.execution``):

- ``delayed`` (IH-GRPO): code blocks are not run as written; a turn ends at the ``<tool_call>``
  marker, which runs the blocks written since the previous marker (the earlier ones already ran in
  the same per-trajectory session, whose namespace persists, so the session holds the effect of every
  block written so far); a ``\\boxed{}`` with no code block after it ends the episode.
- ``immediate`` (baseline): a turn ends at the closing fence of a code block, which runs at once.
- ``none`` (baseline): nothing runs; the first turn is the whole episode.
"""

from __future__ import annotations

import ast
import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch

from trainer.algorithms.registry import Registry

TOOL_CALL_MARKER = "<tool_call>"
CODE_BLOCK = re.compile(r"```(?:python|py)[ \t]*\n?(.*?)```", re.DOTALL)
BOXED = re.compile(r"\\boxed\{")
C_COEFFICIENT = 0.001
"""The authors' weight of the c term: ``policy_loss + c_loss * 0.001`` (verl/workers/actor/dp_actor.py)."""
LOGP_MAX = -1e-7
"""log p_t is clamped to at most −1e-7 before use, so p_t < 1 and log(1 − p_t) is finite."""
P_MIN, P_MAX = 1e-7, 1.0 - 1e-7
"""p_t = exp(log p_t) is clamped to [1e-7, 1 − 1e-7] (the authors' values)."""


def code_blocks(text: str) -> list[str]:
    """The bodies of the fenced ```python (or ```py) blocks of ``text``, in order, unstripped."""
    return [match.group(1) for match in CODE_BLOCK.finditer(text)]


def _logic_lines(code: str) -> set[str]:
    """A block's statements for the duplicate check: comments dropped, all whitespace removed, and
    lines that only print (``print(``, ``display(``, ``pprint(``) left out."""
    lines = set()
    for line in code.splitlines():
        clean = "".join(re.sub(r"#.*", "", line).split())
        if clean and not clean.startswith(("print(", "display(", "pprint(")):
            lines.add(clean)
    return lines


def gamed_turn(text: str) -> bool:
    """Whether a turn games the delayed-call count (the spec's three rules; the authors' check_reward_hacking):

    1. an empty block (only whitespace inside the fences);
    2. two consecutive blocks separated by whitespace only (one block split in two);
    3. duplicated code: a block whose statements (:func:`_logic_lines`) are all in earlier blocks,
       or that repeats every statement of the earlier blocks (rewrites them and adds some), or that
       only prints after earlier blocks.

    Fewer than two blocks never game the count (it is 0 anyway).
    """
    matches = list(CODE_BLOCK.finditer(text))
    if len(matches) < 2:
        return False
    for left, right in itertools.pairwise(matches):
        if not text[left.end():right.start()].strip():
            return True
    seen: set[str] = set()
    for match in matches:
        body = match.group(1)
        if not body.strip():
            return True
        logic = _logic_lines(body)
        if not logic:
            if seen:
                return True  # prints only, after code: a block split off to be counted
            continue
        if logic <= seen or (seen and seen <= logic):
            return True
        seen |= logic
    return False


def delayed_call_count(turn_text: str) -> int:
    """Delayed calls of one turn: ``n = max(blocks − 1, 0)``, the blocks written before its
    ``<tool_call>`` that were not run as written, and 0 when :func:`gamed_turn` says the turn games it.

    Counted only on a turn that ends with the marker (a turn without a call delays nothing). E.g.
    two distinct blocks then ``<tool_call>``: 2 − 1 = 1; three blocks: 2; one block: 0.
    """
    head, marker, _ = turn_text.partition(TOOL_CALL_MARKER)
    if not marker:
        return 0
    n = max(len(code_blocks(head)) - 1, 0)
    return 0 if n and gamed_turn(head) else n


def is_final_answer(text: str) -> bool:
    """A ``\\boxed{`` with no code block starting after the last one: the episode's final answer."""
    found = list(BOXED.finditer(text))
    return bool(found) and CODE_BLOCK.search(text, found[-1].end()) is None


def auto_print_last_expression(code: str) -> str:
    """Notebook semantics, as the authors' executor: a final bare expression (not already a
    ``print(...)``) is printed, so ```` ```python\\n123*456\\n``` ```` shows 56088. Code that does not
    parse is returned as written (the interpreter reports the syntax error)."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return code
    if not tree.body or not isinstance(tree.body[-1], ast.Expr):
        return code
    last = tree.body[-1]
    value = last.value
    if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "print":
        return code
    lines = code.splitlines()
    start, end = last.lineno - 1, (last.end_lineno or last.lineno) - 1
    segment = ast.get_source_segment(code, last)
    if segment is None or last.end_col_offset is None:
        return code
    line = lines[start][:last.col_offset] + f"print({segment})" + lines[end][last.end_col_offset:]
    return "\n".join([*lines[:start], line, *lines[end + 1:]])


@dataclass(frozen=True)
class TurnDecision:
    """What the environment does with one turn: the code to run (None: none), whether the episode
    ends, and the turn's counts (code blocks written, delayed calls)."""

    code: str | None
    done: bool
    blocks: int = 0
    delayed_calls: int = 0


ExecutionMode = Callable[[str], TurnDecision]
EXECUTION_MODES: Registry[ExecutionMode] = Registry("execution")


def _joined(blocks: list[str]) -> str | None:
    code = "\n".join(block for block in blocks if block.strip())
    return code or None


@EXECUTION_MODES.register("delayed")
def delayed_turn(turn_text: str) -> TurnDecision:
    """IH-GRPO: a turn with ``<tool_call>`` runs its blocks written before the marker (joined by
    newlines, empty ones skipped) and continues; otherwise the episode ends: a final answer, or a
    void turn (neither a call with code nor an answer; a marker with no code before it is one), as
    the authors end it."""
    head, marker, _ = turn_text.partition(TOOL_CALL_MARKER)
    blocks = code_blocks(head)
    code = _joined(blocks)
    if marker and code is not None:
        return TurnDecision(code=code, done=False, blocks=len(blocks), delayed_calls=delayed_call_count(turn_text))
    return TurnDecision(code=None, done=True, blocks=len(blocks))


@EXECUTION_MODES.register("immediate")
def immediate_turn(turn_text: str) -> TurnDecision:
    """Baseline: the turn ended at a block's closing fence, and that block runs as written. A turn
    that is a final answer (or has no complete block) ends the episode."""
    blocks = code_blocks(turn_text)
    if is_final_answer(turn_text) or not blocks:
        return TurnDecision(code=None, done=True, blocks=len(blocks))
    return TurnDecision(code=_joined(blocks[-1:]), done=False, blocks=len(blocks))


@EXECUTION_MODES.register("none")
def no_tool_turn(turn_text: str) -> TurnDecision:
    """Baseline without tools: nothing runs and the first turn ends the episode."""
    return TurnDecision(code=None, done=True, blocks=len(code_blocks(turn_text)))


# ---------------------------------------------------------------- the surrogate c term


def clamped_tool_prob(tool_logp: torch.Tensor, *, logp_max: float = LOGP_MAX, p_min: float = P_MIN,
                      p_max: float = P_MAX) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p_t clamped to ≤ ``logp_max``, p_t = exp of it clamped to [``p_min``, ``p_max``])."""
    logp = torch.clamp(tool_logp, max=logp_max)
    return logp, torch.clamp(torch.exp(logp), min=p_min, max=p_max)


def log_partition_without_tool(tool_logit: torch.Tensor, tool_logp: torch.Tensor, *, logp_max: float = LOGP_MAX,
                               p_min: float = P_MIN, p_max: float = P_MAX) -> torch.Tensor:
    """log Z_t = z_tool − log p_t + log(1 − p_t), p_t = π(<tool_call> | context_t), with the clamps
    (log p_t ≤ −1e-7, p_t ∈ [1e-7, 1 − 1e-7]).

    Identity: z_tool − log p_t = logsumexp_v z_v (the full log-partition), so
    log Z_t = log(Σ_v e^{z_v} − e^{z_tool}) = logsumexp over every token but the marker: the
    log-partition of the "do not call now" branch of the hierarchical policy. Logits are those the
    log-probs are taken from (divided by the sampling temperature).
    """
    logp, p = clamped_tool_prob(tool_logp, logp_max=logp_max, p_min=p_min, p_max=p_max)
    return tool_logit - logp + torch.log1p(-p)


def c_term(tool_logit: torch.Tensor, tool_logp: torch.Tensor, non_tool: torch.Tensor, pg_loss: torch.Tensor, *,
           logp_max: float = LOGP_MAX, p_min: float = P_MIN, p_max: float = P_MAX) -> torch.Tensor:
    """Per-token surrogate c_t = (γ_t − 1[y_t ≠ tool]) · log Z_t · sg(ℓ_t), γ_t = sg(1 − p_t).

    ``non_tool`` is 1[y_t ≠ <tool_call>]; ``pg_loss`` the per-token policy loss ℓ_t (detached here).
    Only log Z_t carries a gradient. All ``(B, T)``.
    """
    clamps = {"logp_max": logp_max, "p_min": p_min, "p_max": p_max}
    _, p = clamped_tool_prob(tool_logp, **clamps)
    gamma = (1.0 - p).detach()
    log_z = log_partition_without_tool(tool_logit, tool_logp, **clamps)
    return (gamma - non_tool.to(gamma.dtype)) * log_z * pg_loss.detach()


def c_loss(tool_logit: torch.Tensor, tool_logp: torch.Tensor, non_tool: torch.Tensor, pg_loss: torch.Tensor,
           mask: torch.Tensor, *, logp_max: float = LOGP_MAX, p_min: float = P_MIN,
           p_max: float = P_MAX) -> torch.Tensor:
    """mean(c_t) over the counted tokens: Σ m_t c_t / max(Σ m_t, 1) (observation and padding tokens
    have m_t = 0). The loss adds ``coefficient · c_loss`` (0.001 by default)."""
    mask = mask.to(tool_logit.dtype)
    values = c_term(tool_logit, tool_logp, non_tool, pg_loss, logp_max=logp_max, p_min=p_min, p_max=p_max) * mask
    return values.sum() / mask.sum().clamp(min=1.0)


def tool_token_terms(logits: torch.Tensor, tool_id: int, positions: int,
                     temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(z_tool, log p_tool) at each of the first ``positions`` columns of ``logits`` (B, L, V),
    both on logits / τ; differentiable. log p_tool = z_tool − logsumexp_v z_v."""
    scaled = logits[:, :positions].to(torch.promote_types(logits.dtype, torch.float32)) / temperature
    tool_logit = scaled[..., tool_id]
    return tool_logit, tool_logit - torch.logsumexp(scaled, dim=-1)
