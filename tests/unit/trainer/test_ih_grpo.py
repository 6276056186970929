"""IH-GRPO's pure functions against hand-computed values (trainer/algorithms/ih_grpo.py)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from trainer.algorithms.ih_grpo import (
    EXECUTION_MODES,
    auto_print_last_expression,
    c_loss,
    c_term,
    code_blocks,
    delayed_call_count,
    delayed_turn,
    gamed_turn,
    immediate_turn,
    is_final_answer,
    log_partition_without_tool,
    no_tool_turn,
    tool_token_terms,
)

F = "```"


def block(code: str) -> str:
    return f"{F}python\n{code}\n{F}"


# ---------------------------------------------------------------- delayed-call count and anti-gaming


def test_two_distinct_blocks_then_a_call_count_one_delayed_call() -> None:
    text = block("x = 3 * 4") + "\nthen\n" + block("y = x + 1\nprint(y)") + "<tool_call>"
    assert delayed_call_count(text) == 1  # max(2 - 1, 0)


def test_three_blocks_count_two_and_one_block_counts_none() -> None:
    three = block("a = 1") + " next " + block("b = a + 1") + " and " + block("c = b * 2") + "<tool_call>"
    assert delayed_call_count(three) == 2  # max(3 - 1, 0)
    assert delayed_call_count(block("a = 1") + "<tool_call>") == 0  # max(1 - 1, 0)


def test_no_call_no_count() -> None:
    assert delayed_call_count(block("a = 1") + " so " + block("b = 2")) == 0


@pytest.mark.parametrize("text, rule", [
    (block("a = 1") + " so " + block("   ") + "<tool_call>", "empty block"),
    (block("a = 1") + "\n  \n" + block("b = 2") + "<tool_call>", "whitespace-only separation"),
    (block("a = 1") + " again " + block("a = 1  # same") + "<tool_call>", "duplicated code"),
    (block("a = 1") + " again " + block("a = 1\nb = 2") + "<tool_call>", "rewrites the earlier block"),
    (block("a = 1") + " show " + block("print(a)") + "<tool_call>", "print-only block after code"),
])
def test_gamed_turns_count_zero(text: str, rule: str) -> None:
    assert gamed_turn(text.partition("<tool_call>")[0]), rule
    assert delayed_call_count(text) == 0, rule


def test_distinct_blocks_are_not_gaming() -> None:
    assert not gamed_turn(block("a = 1") + " then " + block("b = a + 1\nprint(b)"))


# ---------------------------------------------------------------- execution semantics


def test_delayed_runs_the_turns_blocks_at_the_marker_and_continues() -> None:
    text = block("x = 2") + " then " + block("y = x * 5\nprint(y)") + "<tool_call>"
    decision = delayed_turn(text)
    assert decision.code == "x = 2\n\ny = x * 5\nprint(y)\n"
    assert not decision.done and decision.blocks == 2 and decision.delayed_calls == 1


def test_delayed_does_not_run_blocks_without_a_marker_and_a_final_answer_ends() -> None:
    written = delayed_turn(block("x = 2") + " so \\boxed{2}")
    assert written.code is None and written.done
    assert delayed_turn("<tool_call>").done  # a call with no code is a void turn


def test_final_answer_needs_no_code_after_the_last_box() -> None:
    assert is_final_answer("so \\boxed{7}")
    assert not is_final_answer("\\boxed{7} but check " + block("print(7)"))
    assert is_final_answer(block("print(7)") + " so \\boxed{7}")
    assert not is_final_answer("no answer")


def test_immediate_runs_the_block_at_its_fence_and_none_runs_nothing() -> None:
    decision = immediate_turn(block("x = 2") + "\n")
    assert decision.code == "x = 2\n" and not decision.done
    assert immediate_turn("so \\boxed{2}").done
    nothing = no_tool_turn(block("x = 2") + "<tool_call>")
    assert nothing.code is None and nothing.done
    assert set(EXECUTION_MODES.names()) == {"delayed", "immediate", "none"}


def test_code_blocks_and_auto_print() -> None:
    assert code_blocks(block("a") + " " + f"{F}py\nb\n{F}") == ["a\n", "b\n"]
    assert auto_print_last_expression("x = 3\nx * 2") == "x = 3\nprint(x * 2)"
    assert auto_print_last_expression("print(1)") == "print(1)"
    assert auto_print_last_expression("x = 1") == "x = 1"
    assert auto_print_last_expression("def (") == "def ("


# ---------------------------------------------------------------- the c term


def test_log_z_and_c_term_by_hand() -> None:
    # Vocabulary of 3, the tool token is id 0; logits z = [0, ln 2, 0]: Σ e^z = 1 + 2 + 1 = 4,
    # p = 1/4, log p = −ln 4. log Z = 0 + ln 4 + ln(3/4) = ln 3 = 1.0986 (= logsumexp(ln 2, 0)).
    logits = torch.tensor([[[0.0, math.log(2.0), 0.0], [0.0, math.log(2.0), 0.0]]])
    tool_logit, tool_logp = tool_token_terms(logits, tool_id=0, positions=2)
    assert torch.allclose(tool_logp, torch.full((1, 2), -math.log(4.0)))
    log_z = log_partition_without_tool(tool_logit, tool_logp)
    assert torch.allclose(log_z, torch.full((1, 2), math.log(3.0)))
    # γ = 1 − 1/4 = 0.75; ℓ_t = 2. Non-tool token: (0.75 − 1)·ln 3·2 = −0.5493; tool token: 0.75·ln 3·2 = 1.6479.
    non_tool = torch.tensor([[1.0, 0.0]])
    pg = torch.tensor([[2.0, 2.0]])
    c = c_term(tool_logit, tool_logp, non_tool, pg)
    assert torch.allclose(c, torch.tensor([[-0.5 * math.log(3.0), 1.5 * math.log(3.0)]]), atol=1e-6)
    # Mean over the two counted tokens: (−0.5493 + 1.6479) / 2 = 0.5493; a masked token is left out.
    assert math.isclose(float(c_loss(tool_logit, tool_logp, non_tool, pg, torch.ones(1, 2))), 0.5 * math.log(3.0),
                        rel_tol=1e-5)
    assert math.isclose(float(c_loss(tool_logit, tool_logp, non_tool, pg, torch.tensor([[1.0, 0.0]]))),
                        -0.5 * math.log(3.0), rel_tol=1e-5)


def test_c_term_gradient_flows_through_log_z_only() -> None:
    # d log Z / d z_v = softmax over the non-tool tokens: (2/3, 1/3) for z_1, z_2 and 0 for the tool.
    # Non-tool token, ℓ = 2: dc/dz = (0.75 − 1)·2·(0, 2/3, 1/3) = (0, −1/3, −1/6). ℓ gets no gradient.
    logits = torch.tensor([[[0.0, math.log(2.0), 0.0]]], requires_grad=True)
    pg = torch.tensor([[2.0]], requires_grad=True)
    tool_logit, tool_logp = tool_token_terms(logits, tool_id=0, positions=1)
    c_term(tool_logit, tool_logp, torch.ones(1, 1), pg).sum().backward()
    assert logits.grad is not None
    assert torch.allclose(logits.grad, torch.tensor([[[0.0, -1.0 / 3.0, -1.0 / 6.0]]]), atol=1e-6)
    assert pg.grad is None or float(pg.grad.abs().sum()) == 0.0


def test_clamps_keep_a_certain_marker_finite() -> None:
    # float64 (in float32, 1 − 1e-7 rounds to 1 − 1.19e-7, so log(1 − p) is −15.94 there: finite too).
    # p = 1 (log p = 0): log p → −1e-7, p → 1 − 1e-7, log(1 − p) = ln 1e-7 = −16.118; log Z = 5 + 1e-7 − 16.118.
    log_z = log_partition_without_tool(torch.tensor([5.0], dtype=torch.float64), torch.tensor([0.0], dtype=torch.float64))
    assert math.isclose(float(log_z), 5.0 + 1e-7 + math.log(1e-7), rel_tol=1e-6)
    assert math.isfinite(float(log_partition_without_tool(torch.tensor([5.0]), torch.tensor([0.0]))))
    # p → 0 (log p = −200): p clamps to 1e-7, log(1 − 1e-7) ≈ −1e-7; log Z = 0 + 200 − 1e-7.
    assert math.isclose(float(log_partition_without_tool(torch.tensor([0.0]), torch.tensor([-200.0]))), 200.0,
                        rel_tol=1e-6)


def test_log_z_identity_on_a_tiny_models_logits(tmp_path: Path) -> None:
    """log Z_t = z_tool − log p_t + log(1 − p_t) equals logsumexp over every token but the marker."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.agent.toy import build_tool_model

    path = build_tool_model(tmp_path / "m", seed=1, hidden_size=32, num_layers=1)
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True)
    tool = tokenizer.convert_tokens_to_ids("<tool_call>")
    ids = tokenizer("Compute 123 * 45 + 6.\n```python\nx = 1\n```", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=ids).logits.double()
    tool_logit, tool_logp = tool_token_terms(logits, tool, positions=logits.shape[1])
    others = torch.cat([logits[..., :tool], logits[..., tool + 1:]], dim=-1)
    assert torch.allclose(log_partition_without_tool(tool_logit, tool_logp), torch.logsumexp(others, dim=-1),
                          atol=1e-6)
