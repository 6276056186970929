"""The multi-turn agent engine (trainer/agent): turns, stop markers, observation masks, budgets,
the tool sessions, and the loss mask through collate and the GRPO loop."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from trainer.agent import (
    AgentRolloutEngine,
    AgentSettings,
    CodeToolEnvironment,
    LocalPythonTool,
    SandboxSessionTool,
    StepResult,
    ToolResult,
    cut_turn,
    format_observation,
)
from trainer.data import PromptRow
from trainer.grpo import collate
from trainer.rollout import Rollout, SamplingSettings, TransformersEngine

EOS = 0


class FakeCharTokenizer:
    """TEST DOUBLE: one token per character (id = code point), EOS id 0 (decoded as nothing)."""

    eos_token_id = EOS
    pad_token_id = 1

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": [ord(ch) for ch in text]}

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(chr(i) for i in ids if i not in (EOS, 1))


class ScriptedEngine:
    """TEST DOUBLE of a rollout engine: answers each call with the next scripted text per row
    (a text may run past its stop marker: the engine must cut it), and records what it was asked."""

    def __init__(self, script: list[list[str]]) -> None:
        self.script = script  # script[call][row]
        self.calls: list[tuple[list[list[int]], SamplingSettings]] = []

    def eos_ids(self) -> list[int]:
        return [EOS]

    def generate(self, prompts: list[list[int]], sampling: SamplingSettings, seed: int) -> list[Rollout]:
        texts = self.script[len(self.calls)]
        self.calls.append((prompts, sampling))
        out = []
        for i, prompt in enumerate(prompts):
            ids = [EOS if ch == "$" else ord(ch) for ch in texts[i]][: sampling.max_new_tokens]
            out.append(Rollout(i, list(prompt), ids, "", truncated=False))
        return out

    def sync_weights(self, model: torch.nn.Module) -> None:
        del model


class Echo:
    """A user environment in a few lines: answers ``[seen N]`` until the text holds ``done``."""

    def __init__(self) -> None:
        self.turns = 0

    def reset(self, row: PromptRow) -> str:
        return ""

    def step(self, action: str) -> StepResult:
        self.turns += 1
        if "done" in action:
            return StepResult("", done=True, info={"solved": 1.0})
        return StepResult(f"[seen {self.turns}]", done=False, info={"tool_calls": 1.0})


def echo_factory(row: PromptRow) -> Echo:
    return Echo()


ROW = PromptRow(0, "q", "x")


def run(script: list[list[str]], settings: AgentSettings, group: int = 1) -> tuple[list[Rollout], ScriptedEngine]:
    engine = ScriptedEngine(script)
    agent = AgentRolloutEngine(engine, FakeCharTokenizer(), lambda row: Echo(), settings)
    rollouts = agent.generate([[ord("q")]], SamplingSettings(group_size=group, max_new_tokens=999), seed=0,
                              rows=[ROW])
    return rollouts, engine


def test_turns_observations_masks_and_bounds() -> None:
    # Turn 1 stops at the marker (the scripted "zzz" after it is cut); observation "[seen 1]"; turn 2 ends the episode.
    settings = AgentSettings(stop_markers=("<go>",), max_turns=5, max_episode_tokens=100)
    [rollout], engine = run([["ab<go>zzz"], ["done$"]], settings)
    assert rollout.text == "ab<go>[seen 1]done"
    turn1, obs, turn2 = len("ab<go>"), len("[seen 1]"), len("done") + 1  # the EOS is kept
    assert rollout.loss_mask == [1] * turn1 + [0] * obs + [1] * turn2
    assert rollout.turn_bounds == [(0, turn1), (turn1 + obs, turn1 + obs + turn2)]
    assert rollout.episode_stats is not None and rollout.episode_stats["turns"] == 2.0
    assert rollout.episode_stats["solved"] == 1.0 and rollout.episode_stats["observation_tokens"] == obs
    assert not rollout.truncated
    # The second turn was sampled from the prompt + turn 1 + the observation, with the markers as stop strings.
    context, sampling = engine.calls[1]
    assert FakeCharTokenizer().decode(context[0]) == "qab<go>[seen 1]"
    assert sampling.stop_strings == ("<go>",) and sampling.group_size == 1


def test_turn_limit_ends_the_episode_without_a_dangling_observation() -> None:
    settings = AgentSettings(stop_markers=("<go>",), max_turns=2, max_episode_tokens=100)
    [rollout], engine = run([["a<go>"], ["b<go>"]], settings)
    assert rollout.text == "a<go>[seen 1]b<go>" and len(engine.calls) == 2
    assert rollout.episode_stats is not None and rollout.episode_stats["turn_limit"] == 1.0


def test_token_budget_counts_observations_and_truncates() -> None:
    # Budget 12: "ab<go>" (6) + "[seen 1]" (8) would be 14, so the observation is cut to 6 and the episode ends.
    settings = AgentSettings(stop_markers=("<go>",), max_turns=5, max_episode_tokens=12)
    [rollout], engine = run([["ab<go>"], ["never"]], settings)
    assert len(rollout.completion_ids) == 12 and rollout.truncated
    assert rollout.loss_mask == [1] * 6 + [0] * 6 and len(engine.calls) == 1
    assert engine.calls[0][1].max_new_tokens == 12  # the first turn may use the whole budget


def test_eos_ends_the_episode_and_each_group_member_gets_its_own_environment() -> None:
    settings = AgentSettings(stop_markers=("<go>",), max_turns=5, max_episode_tokens=100)
    rollouts, engine = run([["x<go>", "y$"], ["done$"]], settings, group=2)
    assert [r.text for r in rollouts] == ["x<go>[seen 1]done", "y"]
    assert len(engine.calls[1][0]) == 1  # only the unfinished episode samples again


def test_vllm_gets_the_stop_markers_as_stop_strings() -> None:
    from trainer.rollout import vllm_sampling_kwargs

    kwargs = vllm_sampling_kwargs(SamplingSettings(group_size=1, max_new_tokens=8, stop_strings=("<tool_call>",)),
                                  [EOS], seed=1)
    assert kwargs["stop"] == ["<tool_call>"] and kwargs["include_stop_str_in_output"] is True
    assert "stop" not in vllm_sampling_kwargs(SamplingSettings(group_size=1, max_new_tokens=8), [EOS], seed=1)


def test_rows_are_required() -> None:
    agent = AgentRolloutEngine(ScriptedEngine([]), FakeCharTokenizer(), lambda row: Echo(), AgentSettings())
    with pytest.raises(ValueError, match="rows"):
        agent.generate([[1]], SamplingSettings(group_size=1, max_new_tokens=4), seed=0)


def test_cut_turn_reasons() -> None:
    decode = FakeCharTokenizer().decode
    ids = [ord(c) for c in "ab<go>cd"]
    assert cut_turn(ids, decode, {EOS}, ("<go>",), 99) == (ids[:6], "marker")
    assert cut_turn([*ids, EOS], decode, {EOS}, (), 99) == ([*ids, EOS], "eos")
    assert cut_turn(ids, decode, {EOS}, ("<go>",), 3) == (ids[:3], "budget")
    assert cut_turn(ids, decode, {EOS}, ("zz",), 99) == (ids, "length")


# ---------------------------------------------------------------- the loss mask in the batch


def test_collate_single_turn_counts_every_token_and_multi_turn_masks_observations() -> None:
    single = [Rollout(0, [5, 6], [7, 8, 9], "", False), Rollout(0, [5], [7], "", False)]
    batch = collate(single, pad_id=0)
    assert batch.loss_mask is None and batch.truncated is None
    assert torch.equal(batch.counted, batch.completion_mask)
    multi = [Rollout(0, [5, 6], [7, 8, 9], "", True, loss_mask=[1, 0, 1]), Rollout(0, [5], [7], "", False)]
    batch = collate(multi, pad_id=0)
    assert batch.counted.tolist() == [[1.0, 0.0, 1.0], [1.0, 0.0, 0.0]]
    assert batch.truncated is not None and batch.truncated.tolist() == [True, False]


# ---------------------------------------------------------------- tools


def test_local_python_session_keeps_state_and_reports_errors() -> None:
    session = LocalPythonTool(timeout_s=10).open()
    try:
        assert session.execute("x = 6 * 7").status == "success"
        result = session.execute("print(x)")
        assert (result.status, result.stdout) == ("success", "42\n")
        error = session.execute("1 / 0")
        assert error.status == "runtime_error" and "ZeroDivisionError" in error.stderr
    finally:
        session.close()


def test_local_python_interpreters_are_reused_with_a_fresh_namespace() -> None:
    tool = LocalPythonTool(timeout_s=10)
    first = tool.open()
    first.execute("secret = 1")
    process = first._proc
    first.close()
    second = tool.open()
    try:
        leaked = second.execute("print(secret)")
        assert leaked.status == "runtime_error" and "NameError" in leaked.stderr
        assert second._proc is process  # the same interpreter, emptied
    finally:
        second.close()
        tool.close()
    assert process is not None and process.poll() is not None


def test_local_python_session_timeout_answers_timeout() -> None:
    session = LocalPythonTool(timeout_s=0.3).open()
    try:
        assert session.execute("while True:\n    pass").status == "timeout"
        assert session.execute("print(1)").stdout == "1\n"  # a fresh namespace after the kill
    finally:
        session.close()


def test_local_python_output_is_cut() -> None:
    session = LocalPythonTool(timeout_s=10, max_output_bytes=100).open()
    try:
        result = session.execute("print('a' * 1000)")
        assert result.truncated and len(result.stdout) == 100
    finally:
        session.close()


def test_code_environment_runs_delayed_blocks_at_the_marker() -> None:
    env = CodeToolEnvironment(LocalPythonTool(timeout_s=10), "delayed")
    env.reset(ROW)
    try:
        turn = "```python\nx = 123 * 45\n```\nthen\n```python\ny = x + 6\nprint(y)\n```<tool_call>"
        result = env.step(turn)
        assert result.observation == "\n```output\n5541\n```\n" and not result.done
        assert result.info["tool_calls"] == 1.0 and result.info["delayed_calls"] == 1.0
        assert env.step("```python\ny\n```<tool_call>").observation == "\n```output\n5541\n```\n"  # state persists
        assert env.step("so \\boxed{5541}").done
    finally:
        env.close()


def test_format_observation_shows_errors_and_truncation() -> None:
    assert format_observation(ToolResult("runtime_error", "", "Traceback\nZeroDivisionError: x"), 100) == \
        "\n```output\nZeroDivisionError: x\n```\n"
    assert format_observation(ToolResult("success", "a" * 50), 10) == "\n```output\naaaaaaaaaa…[truncated]\n```\n"


def fake_sandbox() -> tuple[httpx.MockTransport, list[tuple[str, str]]]:
    """TEST DOUBLE of the sandbox sessions API (the contract in docs/multi_turn.md): one namespace
    per session, 404 for unknown sessions, 429 once two are open."""
    sessions: dict[str, dict[str, Any]] = {}
    log: list[tuple[str, str]] = []

    def handle(request: httpx.Request) -> httpx.Response:
        log.append((request.method, request.url.path))
        assert request.headers["authorization"] == "Bearer k"
        parts = request.url.path.strip("/").split("/")
        if request.method == "POST" and parts == ["v1", "sessions"]:
            if len(sessions) >= 2:
                return httpx.Response(429, json={"error": {"code": "sessions_exhausted", "message": "full"}})
            sid = f"s{len(log)}"
            sessions[sid] = {}
            return httpx.Response(201, json={"session_id": sid})
        sid = parts[2]
        if sid not in sessions:
            return httpx.Response(404, json={"error": {"code": "session_not_found", "message": sid}})
        if request.method == "DELETE":
            del sessions[sid]
            return httpx.Response(204)
        body = json.loads(request.content)
        namespace = sessions[sid]
        import contextlib
        import io

        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(body["code"], namespace)  # the double's "sandbox": trusted test code only
        return httpx.Response(200, json={"status": "success", "stdout": out.getvalue(), "stderr": "",
                                         "truncated": False, "execution_count": 1, "duration_s": 0.01})

    return httpx.MockTransport(handle), log


def test_sandbox_session_client_follows_the_contract() -> None:
    transport, log = fake_sandbox()
    tool = SandboxSessionTool("http://sandbox.test", "k", transport=transport)
    one, two, three = tool.open(), tool.open(), tool.open()
    assert one.execute("a = 2").status == "success"
    assert one.execute("print(a * 21)").stdout == "42\n"
    assert two.execute("b = 1").status == "success"
    refused = three.execute("c = 1")
    assert refused.status == "error" and "sessions_exhausted" in refused.stderr
    one.close()
    assert ("DELETE", f"/v1/sessions/{'s1'}") in log
    one.session_id = "gone"
    gone = one.execute("print(1)")
    assert gone.status == "error" and "session_not_found" in gone.stderr and one.session_id is None
    tool.close()


def test_sandbox_unreachable_is_a_tool_error_not_an_exception() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    session = SandboxSessionTool("http://sandbox.test", "k", transport=httpx.MockTransport(refuse)).open()
    result = session.execute("print(1)")
    assert result.status == "error" and "unreachable" in result.stderr


# ---------------------------------------------------------------- a tiny model through the real engine


@pytest.fixture(scope="module")
def tool_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from trainer.agent.toy import build_tool_model

    return build_tool_model(tmp_path_factory.mktemp("agent") / "model", seed=2, hidden_size=32, num_layers=1)


def _load(path: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return (AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True),
            AutoTokenizer.from_pretrained(str(path), local_files_only=True))


def test_stop_strings_keep_the_same_tokens_up_to_the_marker(tool_model: Path) -> None:
    """Sampling with a stop string draws exactly the tokens an unstopped run draws, up to the marker."""
    model, tokenizer = _load(tool_model)
    engine = TransformersEngine(model, tokenizer)
    prompt = tokenizer("Compute 1 * 2 + 3.\n", add_special_tokens=False)["input_ids"]
    free = engine.generate([prompt], SamplingSettings(group_size=1, max_new_tokens=40), seed=5)[0]
    # Stop at the text of the sampled tokens 2..3, which the unstopped run must reach at the same place.
    marker = tokenizer.decode(free.completion_ids[2:4], skip_special_tokens=True)
    assert marker.strip(), "the random model sampled special tokens only; pick another seed"
    stopped = engine.generate([prompt], SamplingSettings(group_size=1, max_new_tokens=40, stop_strings=(marker,)),
                              seed=5)[0]
    kept, reason = cut_turn(stopped.completion_ids, lambda ids: tokenizer.decode(ids, skip_special_tokens=True),
                            set(engine.eos_ids()), (marker,), 40)
    assert reason == "marker"
    assert kept == free.completion_ids[:len(kept)] and len(kept) <= 4


def test_agent_engine_on_a_tiny_model_with_the_local_tool(tool_model: Path) -> None:
    model, tokenizer = _load(tool_model)
    agent = AgentRolloutEngine(TransformersEngine(model, tokenizer), tokenizer,
                               lambda row: CodeToolEnvironment(LocalPythonTool(timeout_s=10), "delayed"),
                               AgentSettings(max_turns=3, max_episode_tokens=24))
    rows = [PromptRow(0, "Compute 1 * 2 + 3.\n", "5"), PromptRow(1, "Compute 4 * 5 + 6.\n", "26")]
    prompts = [tokenizer(r.prompt, add_special_tokens=False)["input_ids"] for r in rows]
    rollouts = agent.generate(prompts, SamplingSettings(group_size=2, max_new_tokens=24), seed=3, rows=rows)
    assert [r.prompt_index for r in rollouts] == [0, 0, 1, 1]
    for rollout in rollouts:
        assert rollout.loss_mask is not None and len(rollout.loss_mask) == len(rollout.completion_ids) <= 24
        assert rollout.turn_bounds and rollout.turn_bounds[0][0] == 0
        sampled = sum(end - start for start, end in rollout.turn_bounds)
        assert sampled == sum(rollout.loss_mask)


@pytest.fixture(scope="module")
def warm_model(tool_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    import shutil

    from trainer.agent.toy import warm_up

    model_dir = tmp_path_factory.mktemp("warm") / "model"
    shutil.copytree(tool_model, model_dir)
    warm_up(model_dir, "delayed", steps=30, seed=0, tool_share=1.0, batch_size=8)  # so that some episodes call
    return model_dir


def multi_turn_config(model_dir: Path, tmp_path: Path, **ih_grpo: float) -> Any:
    from trainer.config import parse_config

    tmp_path.mkdir(parents=True, exist_ok=True)
    dataset = tmp_path / "data.jsonl"
    dataset.write_text("".join(json.dumps({"prompt": f"Compute {a} * 12 + 3.\n", "reward_model": {"ground_truth":
                                           str(a * 12 + 3)}}) + "\n" for a in (101, 202)))
    multi: dict[str, Any] = {"max_turns": 3, "tools": {"backend": "local"}}
    if ih_grpo:
        multi["ih_grpo"] = ih_grpo
    return parse_config({"model": {"path": str(model_dir)}, "dataset": str(dataset), "group_size": 2,
                         "prompts_per_step": 2, "max_steps": 1, "max_completion_length": 48, "learning_rate": 1e-3,
                         "output_dir": str(tmp_path / "run"), "export_hf": "none", "multi_turn": multi}, local=True)


def alternate(text: str, truth: Any, item: Any) -> float:
    """1 for every second rollout of the batch, so that every group's advantages are ±1."""
    return float(int(item.id) % 2)


def test_grpo_loop_trains_multi_turn_with_the_mask_and_the_c_term(warm_model: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import trainer.grpo as grpo
    from trainer.rewards import CallableRewards

    config = multi_turn_config(warm_model, tmp_path)
    seen: list[torch.Tensor] = []
    original = grpo.grpo_policy_loss

    def spy(logp: torch.Tensor, old: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor, **kw: Any) -> Any:
        seen.append(mask.detach().clone())
        return original(logp, old, adv, mask, **kw)

    monkeypatch.setattr(grpo, "grpo_policy_loss", spy)
    trainer = grpo.GRPOTrainer(config, rewards=CallableRewards(alternate))
    assert trainer.agent is not None and trainer.tool_token_id == trainer.tokenizer.convert_tokens_to_ids("<tool_call>")
    rollouts, _, _ = trainer._collect(0)
    metrics = trainer.train_step()
    for name in ("turns_mean", "tool_calls_per_episode", "delay_call_rate", "tokens_per_episode"):
        assert name in metrics
    assert "skipped_update" not in metrics  # the rewards spread every group: an update with the c term
    assert torch.isfinite(torch.tensor(metrics["c_loss"])) and seen
    # The mask the loss gets is the collated loss mask: observation tokens are 0.
    batch = collate(rollouts, trainer.tokenizer.pad_token_id)
    assert batch.loss_mask is not None
    for row, rollout in enumerate(rollouts):
        assert batch.counted[row, :len(rollout.completion_ids)].tolist() == [float(m) for m in rollout.loss_mask or []]


def test_the_c_term_refuses_a_marker_that_is_not_one_token() -> None:
    from trainer.agent.setup import marker_token_id
    from trainer.config import ConfigError

    assert marker_token_id(FakeCharTokenizer(), "<") == ord("<")
    with pytest.raises(ConfigError, match="one token"):
        marker_token_id(FakeCharTokenizer(), "<tool_call>")


def test_a_user_environment_factory_loads_from_the_config() -> None:
    from trainer.agent.setup import environment_factory
    from trainer.config import ConfigError, parse_config

    config = parse_config({"model": {"tiny": {}}, "dataset": "d.jsonl",
                           "multi_turn": {"environment": "tests.unit.trainer.test_agent:echo_factory"}}, local=True)
    assert config.multi_turn is not None and config.multi_turn.markers == ()
    assert isinstance(environment_factory(config.multi_turn)(ROW), Echo)
    config = parse_config({"model": {"tiny": {}}, "dataset": "d.jsonl",
                           "multi_turn": {"environment": "no_such_module:x"}}, local=True)
    with pytest.raises(ConfigError, match=r"multi_turn\.environment"):
        environment_factory(config.multi_turn)


@pytest.mark.parametrize("section, message", [
    ({"execution": "later"}, "multi_turn.execution: must be one of 'delayed', 'immediate' or 'none'"),
    ({"execution": "immediate", "ih_grpo": {"coefficient": 0.01}}, "ih_grpo: the c term"),
    ({"stop_markers": [""]}, "multi_turn.stop_markers"),
    ({"max_turns": 0}, "multi_turn.max_turns"),
    ({"tools": {"backend": "docker"}}, "multi_turn.tools.backend"),
    ({"ih_grpo": {"p_min": 0.7}}, "multi_turn.ih_grpo.p_min"),
])
def test_multi_turn_config_errors_name_the_field(section: dict[str, Any], message: str) -> None:
    from trainer.config import ConfigError, parse_config

    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        parse_config({"model": {"tiny": {}}, "dataset": "d.jsonl", "multi_turn": section}, local=True)


def test_multi_turn_defaults_and_what_it_is_not_combined_with() -> None:
    from trainer.config import ConfigError, parse_config

    base = {"model": {"tiny": {}}, "dataset": "d.jsonl"}
    config = parse_config({**base, "multi_turn": {}}, local=True)
    assert config.multi_turn is not None
    assert config.multi_turn.markers == ("<tool_call>",) and config.multi_turn.max_turns == 5
    assert config.multi_turn.c_term_enabled and config.multi_turn.ih_grpo.coefficient == 0.001
    immediate = parse_config({**base, "multi_turn": {"execution": "immediate"}}, local=True).multi_turn
    assert immediate is not None and immediate.markers == ("```\n",) and not immediate.c_term_enabled
    with pytest.raises(ConfigError, match="eval"):
        parse_config({**base, "multi_turn": {}, "eval": {"data": "e.jsonl"}}, local=True)
    # Configs that come over the service API: registered environments and the sandbox backend only
    # (tests/unit/trainer/test_api_run_sections.py).
    with pytest.raises(ConfigError, match=r"multi_turn\.tools\.backend"):
        parse_config({**base, "multi_turn": {"tools": {"backend": "local"}}})


def test_the_c_term_changes_the_update_and_coefficient_zero_turns_it_off(warm_model: Path, tmp_path: Path) -> None:
    from trainer.grpo import GRPOTrainer
    from trainer.rewards import CallableRewards

    def step(name: str, **ih_grpo: float) -> tuple[torch.Tensor, dict[str, Any]]:
        trainer = GRPOTrainer(multi_turn_config(warm_model, tmp_path / name, **ih_grpo),
                              rewards=CallableRewards(alternate))
        metrics = trainer.train_step()
        return trainer.model.get_input_embeddings().weight.detach().clone(), metrics

    off, off_metrics = step("off", coefficient=0.0)
    on, on_metrics = step("on", coefficient=1.0)  # large, so that one step shows it
    assert "c_loss" not in off_metrics and "c_loss" in on_metrics
    assert off_metrics["reward_mean"] == on_metrics["reward_mean"]  # the same episodes
    assert not torch.allclose(off, on)


def test_the_sandbox_backend_from_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    from trainer.agent.setup import tool_backend
    from trainer.config import parse_config

    monkeypatch.setenv("REWARDHUB_URL", "http://platform.test:8000/")
    monkeypatch.setenv("REWARDHUB_SANDBOX_TOKEN", "tok")
    config = parse_config({"model": {"tiny": {}}, "dataset": "d.jsonl", "multi_turn": {"tools": {"timeout_s": 2}}},
                          local=True)
    assert config.multi_turn is not None
    tool = tool_backend(config.multi_turn)
    assert isinstance(tool, SandboxSessionTool)
    assert str(tool.client.base_url) == "http://platform.test:8000/services/sandbox/"
    assert tool.client.headers["authorization"] == "Bearer tok" and tool.timeout_s == 2
    tool.close()
