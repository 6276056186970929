"""ZipRL in the multi-turn engine: the context is the compression memory, each turn is scored under the
prompt it was sampled with, HRR's per-turn advantages reach the loss, and the sandbox gets the project."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from tests.unit.trainer.test_agent import EOS, FakeCharTokenizer, ScriptedEngine
from trainer.agent import AgentRolloutEngine, AgentSettings, SandboxSessionTool
from trainer.agent.credit import episode_turn_advantages, hrr_metrics, token_advantages
from trainer.data import PromptRow
from trainer.grpo import collate
from trainer.logprobs import completion_logprobs
from trainer.rollout import Rollout, SamplingSettings
from trainer.ziprl.config import ZipRLConfig
from trainer.ziprl.env import InProcessSearch, MultiHopSearchEnv, StepResult
from trainer.ziprl.hrr import HRRConfig
from trainer.ziprl.multihop import generate_questions, generate_world

WORLD = generate_world(seed=0)
QUESTION = generate_questions(WORLD, 3, seed=0)[0]  # 2 hops: Runsen Group -> Upper Glaerkren -> Vaexlaesstan
ROW = PromptRow(0, QUESTION.question, QUESTION.answer, extra_info=QUESTION.prompt_row()["extra_info"])


class ChainSearchEnv:
    """TEST DOUBLE of a searching policy's effect: whatever the policy writes, turn k searches hop k of
    the question's chain (so the needed passages reach the memory); after the chain it answers what
    the policy wrote."""

    def __init__(self, k: int = 1) -> None:
        self.inner = MultiHopSearchEnv(InProcessSearch(WORLD.documents), k=k, max_turns=64)

    def reset(self, row: Any) -> str:
        self.turn = 0
        return self.inner.reset(row)

    def needed_units(self) -> list[list[str]]:
        return self.inner.needed_units()

    def step(self, action: str) -> StepResult:
        chain = self.inner.extra["chain"]
        if self.turn < len(chain):
            subject, relation, _ = chain[self.turn]
            self.turn += 1
            return self.inner.step(f"search: {relation} of {subject}")
        return self.inner.step(f"answer: {action}")


def char_agent(script: list[list[str]], ziprl: ZipRLConfig, **settings: Any) -> tuple[AgentRolloutEngine,
                                                                                     ScriptedEngine]:
    engine = ScriptedEngine(script)
    options = {"stop_markers": ("\n",), "max_turns": 3, "max_episode_tokens": 200, "max_observation_tokens": 10_000}
    options.update(settings)
    return AgentRolloutEngine(engine, FakeCharTokenizer(), lambda row: ChainSearchEnv(),
                              AgentSettings(**options), ziprl=ziprl), engine


def test_the_next_prompt_is_question_memory_and_latest_observation() -> None:
    agent, engine = char_agent([["a\n"], ["b\n"], ["x$"]], ZipRLConfig(budget_tokens=100_000))
    prompt = [ord(c) for c in ROW.prompt]  # type: ignore[union-attr]
    [rollout] = agent.generate([prompt], SamplingSettings(group_size=1, max_new_tokens=50), seed=0, rows=[ROW])
    decode = FakeCharTokenizer().decode
    contexts = [decode(call[0][0]) for call in engine.calls]
    opening = decode(prompt) + "Answer the question."
    assert contexts[0].startswith(opening) and "Memory:" not in contexts[0]
    # Turn 1 sees hop 0's passage as the latest observation, no memory block yet (nothing older).
    assert "Observation:\n[d049] Runsen Group:" in contexts[1] and "Memory:" not in contexts[1]
    # Turn 2: the memory holds turn 0's passage (as the memory keeps it), the observation is hop 1's.
    assert "Memory:\n[d049]" in contexts[2] and "Observation:\n[d055]" in contexts[2]
    assert all(c.startswith(opening) for c in contexts)
    # The rollout: sampled tokens only, one prompt per turn (what each turn was sampled with).
    assert decode(rollout.completion_ids) == "a\nb\nx"
    assert rollout.loss_mask == [1] * len(rollout.completion_ids)
    assert rollout.turn_bounds == [(0, 2), (2, 4), (4, 6)]
    assert rollout.turn_prompts == [call[0][0] for call in engine.calls]
    # h_t: the chain's two facts survive, one per passage (turn 0: hop 0's; turn 1 on: both).
    assert rollout.turn_h == [0.5, 1.0, 1.0]
    stats = rollout.episode_stats or {}
    assert stats["compressions"] == 2 and stats["reward"] == 0.0
    assert stats["peak_context_tokens"] == max(len(call[0][0]) for call in engine.calls)
    assert stats["context_tokens"] == sum(len(call[0][0]) for call in engine.calls)


def test_a_tight_budget_compresses_and_logs_the_savings() -> None:
    agent, _ = char_agent([["a\n"], ["b\n"], ["x$"]], ZipRLConfig(budget_tokens=60))
    [rollout] = agent.generate([[ord("q")]], SamplingSettings(group_size=1, max_new_tokens=50), seed=0, rows=[ROW])
    stats = rollout.episode_stats or {}
    assert stats["saved_tokens"] > 0 and stats["memory_tokens"] <= 60 * stats["compressions"]
    assert stats["raw_history_tokens"] == stats["memory_tokens"] + stats["saved_tokens"]
    from trainer.grpo import episode_metrics

    metrics = episode_metrics([rollout])
    assert metrics["saved_tokens_per_turn"] == stats["saved_tokens"] / 2
    assert 0 < metrics["saved_fraction_per_turn"] < 1


def test_full_history_keeps_every_observation_and_no_memory_is_the_old_engine() -> None:
    agent, engine = char_agent([["a\n"], ["b\n"], ["x$"]], ZipRLConfig(memory="full"))
    agent.generate([[ord("q")]], SamplingSettings(group_size=1, max_new_tokens=50), seed=0, rows=[ROW])
    last = FakeCharTokenizer().decode(engine.calls[2][0][0])
    for doc in ("d049", "d055"):
        passage = next(d for d in WORLD.documents if d.id == doc)
        assert passage.text in last  # verbatim
    plain, plain_engine = char_agent([["a\n"], ["b\n"], ["x$"]], ZipRLConfig(), max_episode_tokens=5000)
    plain.ziprl = None
    [rollout] = plain.generate([[ord("q")]], SamplingSettings(group_size=1, max_new_tokens=50), seed=0, rows=[ROW])
    assert rollout.turn_prompts is None and rollout.turn_h is None
    assert plain_engine.calls[1][0][0][:len(plain_engine.calls[0][0][0])] == plain_engine.calls[0][0][0]


# ---------------------------------------------------------------- rows per turn and their advantages


def _turn_rollout(index: int, prompts: list[list[int]], turns: list[list[int]], h: list[float]) -> Rollout:
    ids = [t for turn in turns for t in turn]
    bounds, start = [], 0
    for turn in turns:
        bounds.append((start, start + len(turn)))
        start += len(turn)
    return Rollout(index, prompts[0], ids, "", False, rollout_logprobs=[-0.5] * len(ids), loss_mask=[1] * len(ids),
                   turn_bounds=bounds, turn_prompts=prompts, turn_h=h)


def test_collate_makes_one_row_per_turn_padded_to_the_split() -> None:
    a = _turn_rollout(0, [[5, 6], [5, 7, 8]], [[10, 11], [12]], [0.5, 1.0])
    b = _turn_rollout(0, [[5]], [[13, 14, 15]], [0.0])
    batch = collate([a, b], pad_id=1, row_multiple=4)
    assert batch.row_rollout is not None and batch.row_turn is not None
    assert batch.row_rollout.tolist() == [0, 0, 1, -1] and batch.row_turn.tolist() == [0, 1, 0, -1]
    assert batch.completion_ids.shape == (4, 3)
    # Row (0, 1): its own prompt [5, 7, 8] left-padded, then its one token.
    assert batch.input_ids[1].tolist() == [5, 7, 8, 12, 1, 1]
    assert batch.counted.tolist() == [[1, 1, 0], [1, 0, 0], [1, 1, 1], [0, 0, 0]]
    assert batch.rollout_logprobs is not None and batch.rollout_logprobs[0, 0] == -0.5
    assert math.isnan(float(batch.rollout_logprobs[3, 0]))


def test_hrr_advantages_per_turn_by_hand() -> None:
    # Group of two: A = (1, -1); h = ((0.5, 1.0), (0.0,)); per_turn h̄: turn 0 (0.5 + 0.0) / 2 = 0.25,
    # turn 1 only episode 0 reaches it: h̄ = 1.0. β = 0.5:
    #   Â_0,0 = 1 + 0.5·(0.5 − 0.25) = 1.125;  Â_0,1 = 1 + 0.5·(1.0 − 1.0) = 1.0
    #   Â_1,0 = −1 + 0.5·(0.0 − 0.25) = −1.125
    a = _turn_rollout(0, [[5, 6], [5, 7, 8]], [[10, 11], [12]], [0.5, 1.0])
    b = _turn_rollout(0, [[5]], [[13, 14, 15]], [0.0])
    shaped = episode_turn_advantages([1.0, -1.0], [a, b], 2, HRRConfig(beta=0.5))
    assert shaped == [[1.125, 1.0], [-1.125]]
    batch = collate([a, b], pad_id=1, row_multiple=4)
    tokens = token_advantages(batch, shaped)
    assert tokens[:, 0].tolist() == [1.125, 1.0, -1.125, 0.0] and tokens.shape == (4, 3)
    # Without HRR every turn carries the outcome advantage.
    assert episode_turn_advantages([1.0, -1.0], [a, b], 2, None) == [[1.0, 1.0], [-1.0]]
    # h mean over the three turns (0.5 + 1.0 + 0.0) / 3 = 0.5; |Â − A| = (0.125 + 0 + 0.125) / 3.
    metrics = hrr_metrics([1.0, -1.0], shaped, [a, b])
    assert metrics["hrr_h_mean"] == pytest.approx(0.5)
    assert metrics["hrr_shift_abs_mean"] == pytest.approx(0.25 / 3)


# ---------------------------------------------------------------- a tiny model: logprobs per turn


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.tiny_models import build_tiny_causal_lm

    path = build_tiny_causal_lm(tmp_path_factory.mktemp("ziprl") / "model", seed=3, hidden_size=32, num_layers=1,
                                corpus=[d.text for d in WORLD.documents] * 2, vocab_size=512)
    model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, dtype=torch.float64)
    return model, AutoTokenizer.from_pretrained(str(path), local_files_only=True)


class CapturingEngine:
    """TEST DOUBLE of a sampling engine that reports each sampled token's log-prob (as vLLM does with
    ``capture_logprobs``): a plain token-by-token sampler from softmax(logits / τ) of ``model``."""

    def __init__(self, model: Any, tokenizer: Any) -> None:
        self.model, self.tokenizer = model, tokenizer

    def eos_ids(self) -> list[int]:
        return [int(self.tokenizer.eos_token_id)]

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], sampling: SamplingSettings, seed: int) -> list[Rollout]:
        generator = torch.Generator().manual_seed(seed % (1 << 62))
        out = []
        for index, prompt in enumerate(prompts):
            ids, logprobs = list(prompt), []
            for _ in range(sampling.max_new_tokens):
                logits = self.model(input_ids=torch.tensor([ids])).logits[0, -1] / sampling.temperature
                logp = torch.log_softmax(logits, -1)
                token = int(torch.multinomial(logp.exp(), 1, generator=generator))
                ids.append(token)
                logprobs.append(float(logp[token]))
                if token in self.eos_ids():
                    break
            completion = ids[len(prompt):]
            out.append(Rollout(index, list(prompt), completion, "", False, rollout_logprobs=logprobs))
        return out

    def sync_weights(self, model: torch.nn.Module) -> None:
        del model


def test_each_turn_is_scored_under_the_context_it_was_sampled_with(tiny: tuple[Any, Any]) -> None:
    model, tokenizer = tiny
    agent = AgentRolloutEngine(CapturingEngine(model, tokenizer), tokenizer, lambda row: ChainSearchEnv(),
                               AgentSettings(stop_markers=(), max_turns=3, max_episode_tokens=18, max_turn_tokens=6,
                                             max_observation_tokens=64),
                               ziprl=ZipRLConfig(budget_tokens=120))
    prompt = tokenizer(ROW.prompt, add_special_tokens=False)["input_ids"]
    rollouts = agent.generate([prompt], SamplingSettings(group_size=2, max_new_tokens=6, temperature=0.9), seed=1,
                              rows=[ROW])
    assert all(r.turn_prompts is not None and len(r.turn_prompts) >= 2 for r in rollouts)
    assert all(r.rollout_logprobs is not None for r in rollouts)
    batch = collate(rollouts, tokenizer.pad_token_id, row_multiple=4)
    logp, _ = completion_logprobs(model, batch, 0.9)
    mask = batch.counted.bool()
    assert batch.rollout_logprobs is not None and int(mask.sum()) > 6
    assert torch.allclose(logp[mask], batch.rollout_logprobs.to(logp.dtype)[mask], atol=1e-6)
    # The same tokens scored as one growing sequence (the raw-history layout) do not match: the
    # memory changed the context between turns.
    for rollout in rollouts:
        rollout.turn_prompts = None
    flat = collate(rollouts, tokenizer.pad_token_id)
    flat_logp, _ = completion_logprobs(model, flat, 0.9)
    flat_mask = flat.counted.bool()
    assert flat.rollout_logprobs is not None
    assert not torch.allclose(flat_logp[flat_mask], flat.rollout_logprobs.to(flat_logp.dtype)[flat_mask], atol=1e-3)


def test_the_policy_rewriter_calls_the_policys_own_generate(tiny: tuple[Any, Any]) -> None:
    model, tokenizer = tiny
    engine = CapturingEngine(model, tokenizer)
    calls: list[int] = []
    original = engine.generate

    def counting(prompts: list[list[int]], sampling: SamplingSettings, seed: int) -> list[Rollout]:
        calls.append(sampling.max_new_tokens)
        return original(prompts, sampling, seed)

    engine.generate = counting  # type: ignore[method-assign]
    agent = AgentRolloutEngine(engine, tokenizer, lambda row: ChainSearchEnv(),
                               AgentSettings(stop_markers=(), max_turns=2, max_episode_tokens=8, max_turn_tokens=4),
                               ziprl=ZipRLConfig(budget_tokens=40, rewriter="policy", rewrite_max_tokens=5))
    [rollout] = agent.generate([tokenizer("q", add_special_tokens=False)["input_ids"]],
                               SamplingSettings(group_size=1, max_new_tokens=4), seed=0, rows=[ROW])
    assert 5 in calls  # a fine-pass rewrite by the policy, at its own token limit
    assert len(rollout.turn_bounds or []) == 2  # the rewrites are not turns


# ---------------------------------------------------------------- the GRPO loop and the config


def ziprl_config(tmp_path: Path, **extra: Any) -> Any:
    from trainer.config import parse_config

    dataset = tmp_path / "data.jsonl"
    rows = [q.prompt_row() for q in generate_questions(WORLD, 2, seed=0)]
    dataset.write_text("".join(json.dumps(row) + "\n" for row in rows))
    multi = {"environment": "tests.unit.trainer.test_agent_ziprl:chain_env", "max_turns": 3, "max_turn_tokens": 4,
             "max_observation_tokens": 48, "ziprl": {"budget_tokens": 80, "hrr": {"beta": 0.5}}}
    return parse_config({"model": {"tiny": {"hidden_size": 32, "num_layers": 1}}, "dataset": str(dataset),
                         "group_size": 2, "prompts_per_step": 2, "max_steps": 1, "max_completion_length": 12,
                         "learning_rate": 1e-3, "output_dir": str(tmp_path / "run"), "export_hf": "none",
                         "gradient_accumulation": 2, "multi_turn": multi, **extra}, local=True)


def chain_env(row: Any) -> ChainSearchEnv:
    return ChainSearchEnv()


def test_grpo_loop_gets_turn_rows_and_token_advantages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import trainer.grpo as grpo
    from trainer.rewards import CallableRewards

    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    original = grpo.grpo_policy_loss

    def spy(logp: torch.Tensor, old: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor, **kw: Any) -> Any:
        seen.append((adv.detach().clone(), mask.detach().clone()))
        return original(logp, old, adv, mask, **kw)

    monkeypatch.setattr(grpo, "grpo_policy_loss", spy)
    trainer = grpo.GRPOTrainer(ziprl_config(tmp_path), rewards=CallableRewards(
        lambda text, truth, item: float(int(item.id) % 2)))  # ±1 advantages in every group
    metrics = trainer.train_step()
    assert "skipped_update" not in metrics
    for name in ("saved_tokens_per_turn", "context_tokens_per_episode", "peak_context_tokens_mean",
                 "hrr_h_mean", "hrr_shift_abs_mean"):
        assert name in metrics
    assert len(seen) == 2  # two micro-batches
    rows = sum(adv.shape[0] for adv, _ in seen)
    assert rows % 2 == 0 and rows >= 4 * 2  # at least two turns per episode (the chain's searches)
    for adv, _ in seen:
        assert adv.dim() == 2  # token-level advantages
    values = {round(float(v), 6) for adv, mask in seen for v in adv[mask.bool()]}
    assert values - {1.0, -1.0}, "HRR moved some turn's advantage away from the outcome's ±1"


def test_ziprl_config_is_validated_under_multi_turn(tmp_path: Path) -> None:
    from trainer.config import ConfigError

    config = ziprl_config(tmp_path)
    parsed = config.multi_turn.ziprl_config
    assert parsed.budget_tokens == 80 and parsed.hrr.beta == 0.5 and parsed.hrr_enabled
    with pytest.raises(ConfigError, match=r"multi_turn.ziprl: .*ziprl.budget_tokens"):
        ziprl_config(tmp_path, **{"multi_turn": {"ziprl": {"budget_tokens": 0}}})
    with pytest.raises(ConfigError, match=r"ziprl.hrr.bogus"):
        ziprl_config(tmp_path, **{"multi_turn": {"ziprl": {"hrr": {"bogus": 1}}}})
    with pytest.raises(ConfigError, match=r"multi_turn.ziprl: not supported with kl_in_reward"):
        ziprl_config(tmp_path, kl_in_reward=True, beta=0.1)


# ---------------------------------------------------------------- the sandbox sees the run's project


def test_the_sandbox_tool_sends_the_project_header(monkeypatch: pytest.MonkeyPatch) -> None:
    from trainer.agent.setup import tool_backend
    from trainer.config import parse_config

    seen: list[str | None] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("x-rewardhub-project"))
        if request.url.path == "/v1/sessions":
            return httpx.Response(201, json={"session_id": "s1"})
        return httpx.Response(200, json={"status": "success", "stdout": "", "stderr": ""})

    session = SandboxSessionTool("http://sandbox.test", "k", transport=httpx.MockTransport(handle),
                                 project="proj-a").open()
    assert session.execute("x = 1").status == "success"
    assert seen == ["proj-a", "proj-a"]
    # From the config: tools.project, else the run's reward project; neither: no header.
    base = {"model": {"tiny": {}}, "dataset": "d.jsonl", "reward": {"spec": {"type": "math"}, "project_id": "p-rw"}}
    for tools, expected in (({"project": "p-tools"}, "p-tools"), ({}, "p-rw")):
        config = parse_config({**base, "multi_turn": {"tools": tools}}, local=True)
        tool = tool_backend(config.multi_turn, config.reward.project_id)
        assert isinstance(tool, SandboxSessionTool) and tool.client.headers.get("x-rewardhub-project") == expected
        tool.close()
    bare = tool_backend(parse_config({"model": {"tiny": {}}, "dataset": "d.jsonl", "multi_turn": {}},
                                     local=True).multi_turn)
    assert isinstance(bare, SandboxSessionTool) and "x-rewardhub-project" not in bare.client.headers
    bare.close()


def test_agent_engine_passes_the_reward_project_to_the_sandbox() -> None:
    from trainer.agent.setup import agent_engine
    from trainer.config import parse_config

    config = parse_config({"model": {"tiny": {}}, "dataset": "d.jsonl", "multi_turn": {},
                           "reward": {"spec": {"type": "math"}, "project_id": "p-rw"}}, local=True)
    agent = agent_engine(config, ScriptedEngine([]), FakeCharTokenizer())
    env = agent.make_env(PromptRow(0, "q", "1"))
    assert env.tools.client.headers["x-rewardhub-project"] == "p-rw"  # type: ignore[attr-defined]
    assert EOS == 0


def test_needed_units_from_the_environment_or_the_ground_truth() -> None:
    from trainer.agent.engine import needed_units
    from trainer.ziprl.env import synthetic_env

    env = synthetic_env(QUESTION.prompt_row())
    env.reset(QUESTION.prompt_row())
    assert needed_units(env, ROW) == QUESTION.needed
    assert needed_units(object(), PromptRow(0, "q", "42")) == [["42"]]
    assert needed_units(object(), PromptRow(0, "q", None)) == []
    with pytest.raises(ValueError, match=r"extra_info\.world_seed"):
        synthetic_env({**QUESTION.prompt_row(), "extra_info": {"world_seed": "x"}})
