"""TRL's real GRPOTrainer trains a few steps on a tiny local model with our adapters as its reward functions:
a standard (text) dataset, a conversational one, and one where the model calls a tool through TRL's own
tool loop (the tool returns the right answer; the model's final message does not)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest

from tests.conftest import SQLITE_ONLY, LiveServer

pytestmark = pytest.mark.slow


def _config(tmp_path: Path, **overrides: Any) -> Any:
    from trl.trainer.grpo_config import GRPOConfig

    settings: dict[str, Any] = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4,
                                    num_generations=4, max_completion_length=6, max_steps=2, learning_rate=1e-4,
                                    logging_steps=1, report_to=[], save_strategy="no", use_cpu=True, bf16=False,
                                    seed=0, dataloader_num_workers=0)
    settings.update(overrides)
    return GRPOConfig(**settings)


@SQLITE_ONLY
def test_grpo_trainer_uses_rewardhub_rewards(live_server: LiveServer, tmp_path: Path) -> None:
    from datasets import Dataset
    from trl.trainer.grpo_trainer import GRPOTrainer

    from rewardhub.adapters.trl import TRLRewardFunction
    from trainer.tiny_models import build_tiny_causal_lm

    model_dir = build_tiny_causal_lm(tmp_path / "tiny", seed=0)
    dataset = Dataset.from_list([{"prompt": f"{a} plus {a} is", "ground_truth": str(2 * a)} for a in range(1, 9)])
    calls: list[int] = []

    class CountingReward(TRLRewardFunction):
        def __call__(self, *args: Any, **kwargs: Any) -> list[float | None]:
            scores = super().__call__(*args, **kwargs)
            calls.append(len(scores))
            return scores

    counting = CountingReward({"type": "numeric"}, base_url=live_server.url,
                              api_key=live_server.tenant.keys["trainer"], name="rewardhub_numeric")
    trainer = GRPOTrainer(model=str(model_dir), reward_funcs=[counting], args=_config(tmp_path),
                          train_dataset=dataset)
    trainer.train()

    assert len(calls) >= 2 and all(n == 4 for n in calls)
    logged = [entry for entry in trainer.state.log_history if any(k.startswith("rewards/") for k in entry)]
    assert logged, trainer.state.log_history
    assert any(f"rewards/{counting.__name__}/mean" in entry for entry in logged)
    # The adapter reports the rate of gradeable items through TRL's log_metric.
    assert any(f"{counting.__name__}/ok_rate" in entry for entry in trainer.state.log_history)
    # A random model writes no numbers for most prompts: those are wrong answers (0.0, status ok),
    # never None, because the ground truths are valid numbers.
    assert set(counting.last_statuses) == {"ok"}


@SQLITE_ONLY
def test_grpo_trainer_awaits_the_async_adapter_on_a_conversational_dataset(live_server: LiveServer,
                                                                           tmp_path: Path) -> None:
    """TRL detects the coroutine __call__, awaits it on its daemon loop; one client serves every step."""
    from datasets import Dataset
    from trl.trainer.grpo_trainer import GRPOTrainer

    from rewardhub.adapters.trl import AsyncTRLRewardFunction
    from trainer.tiny_models import build_tiny_causal_lm

    model_dir = build_tiny_causal_lm(tmp_path / "tiny", seed=0)
    dataset = Dataset.from_list([{"prompt": [{"role": "system", "content": "Answer with \\boxed{42}."},
                                             {"role": "user", "content": f"{a} plus {a} is"}],
                                  "ground_truth": str(2 * a)} for a in range(1, 9)])
    seen: list[Any] = []

    class Recording(AsyncTRLRewardFunction):
        async def __call__(self, *args: Any, **kwargs: Any) -> list[float | None]:
            seen.append(kwargs.get("completions"))
            return await super().__call__(*args, **kwargs)

    reward = Recording({"type": "numeric"}, base_url=live_server.url, api_key=live_server.tenant.keys["trainer"])
    trainer = GRPOTrainer(model=str(model_dir), reward_funcs=[cast(Any, reward)], args=_config(tmp_path),
                          train_dataset=dataset)
    assert trainer._has_async_funcs  # TRL took it for an async reward function
    trainer.train()

    assert len(seen) >= 2 and all(isinstance(c[0], list) and c[0][0]["role"] == "assistant" for c in seen)
    assert reward.clients_created == 1
    assert set(reward.last_statuses) == {"ok"}
    # Only the assistant's text is graded, never the system prompt's \boxed{42}.
    assert all("\\boxed{42}" not in text for text in reward.last_texts)
    assert any("rewards/rewardhub_numeric/mean" in entry for entry in trainer.state.log_history)


@SQLITE_ONLY
def test_grpo_tool_loop_grades_the_final_assistant_message_not_the_tool(live_server: LiveServer,
                                                                        tmp_path: Path) -> None:
    """Regression: a tool returned "42", the model then said "I cannot tell." — that once scored 1.0."""
    import trl
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl.chat_template_utils import add_response_schema
    from trl.trainer.grpo_trainer import GRPOTrainer

    from rewardhub.adapters.trl import TRLRewardFunction
    from trainer.tiny_models import build_tiny_causal_lm

    model_dir = build_tiny_causal_lm(tmp_path / "tiny", seed=0)
    tokenizer: Any = AutoTokenizer.from_pretrained(model_dir)
    # A tool-calling chat template and response parser, both as TRL ships them for Qwen2.5.
    tokenizer.chat_template = (Path(trl.__file__).parent / "chat_templates" / "qwen2_5.jinja").read_text()
    tokenizer = add_response_schema(tokenizer)
    tool_call = tokenizer('<tool_call>\n{"name": "lookup", "arguments": {}}\n</tool_call><|im_end|>',
                          add_special_tokens=False)["input_ids"]
    answer = tokenizer("I cannot tell.<|im_end|>", add_special_tokens=False)["input_ids"]

    def lookup() -> str:
        """Look the answer up.

        Returns:
            The answer.
        """
        return "42"

    class ScriptedPolicy(GRPOTrainer):
        """The random tiny model would never call a tool: its generations are scripted (a tool call first,
        then the answer once the tool's result is in the context); TRL's tool loop does everything else."""

        def _generate_single_turn(self, prompt_ids: list[list[int]], images: Any, multimodal_fields: Any,
                                  num_generations: int, has_tool_images: bool = False) -> tuple[list[list[int]], None]:
            texts = [tokenizer.decode(ids) for ids in prompt_ids]
            return [list(answer if "<tool_response>" in text else tool_call) for text in texts], None

    completions_seen: list[Any] = []

    class Recording(TRLRewardFunction):
        def __call__(self, *args: Any, **kwargs: Any) -> list[float | None]:
            completions_seen.extend(kwargs.get("completions") or [])
            return super().__call__(*args, **kwargs)

    reward = Recording({"type": "numeric"}, base_url=live_server.url, api_key=live_server.tenant.keys["trainer"])
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": "What is the answer? Use lookup."}],
                                  "ground_truth": "42"}] * 8)
    trainer = ScriptedPolicy(model=str(model_dir), processing_class=tokenizer, reward_funcs=[reward],
                             args=_config(tmp_path, max_completion_length=256, max_steps=1), train_dataset=dataset,
                             tools=[lookup])
    trainer.train()

    assert completions_seen, "the reward function was never called"
    roles = [[m["role"] for m in c] for c in completions_seen]
    assert all(r == ["assistant", "tool", "assistant"] for r in roles), completions_seen  # TRL ran its tool loop
    assert all(c[1]["content"] == "42" for c in completions_seen)
    assert reward.last_texts == ["I cannot tell."] * len(reward.last_texts)
    assert set(reward.last_statuses) == {"ok"}
    assert trainer.state.log_history[0]["rewards/rewardhub_numeric/mean"] == 0.0
