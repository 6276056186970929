"""OpenRLHF's ``/get_reward``: the response is found inside a left-truncated query, never the whole query
graded; driven through the endpoint and through OpenRLHF's own rollout + remote-RM client code."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from rewardhub.embedded import build_embedded_app
from services.gateway.openrlhf import completion_of
from tests.conftest import SQLITE_ONLY, LiveServer, Tenant, bearer, make_tenant
from tests.integration.framework_sources import load

MATH = {"type": "math"}
FEW_SHOT = "".join(f"Q: What is {a} + {a}?\nA: The answer is \\boxed{{{2 * a}}}.\n\n" for a in (4, 3, 2, 1))
PROMPT = FEW_SHOT + "Q: What is 5 minus 3?\nA:"


@pytest.fixture
def tenant(isolated_env: Path) -> Tenant:
    return make_tenant()


@pytest.fixture
def client(tenant: Tenant) -> Iterator[TestClient]:
    with TestClient(build_embedded_app()) as test_client:
        test_client.post(f"/v1/projects/{tenant.project_a}/reward-specs", json={"name": "m", "spec": MATH},
                         headers=bearer(tenant.keys["trainer"]))
        yield test_client


def get_reward(client: TestClient, tenant: Tenant, body: dict[str, Any], on_non_ok: str = "zero") -> Any:
    return client.post(f"/get_reward?spec_ref=m@1&on_non_ok={on_non_ok}", json=body,
                       headers=bearer(tenant.keys["trainer"]))


def test_completion_of_finds_the_response() -> None:
    assert completion_of(PROMPT + " 2", PROMPT) == " 2"
    assert completion_of(PROMPT[40:] + " I am not sure.", PROMPT) == " I am not sure."  # truncated
    assert completion_of("\ufffd" + PROMPT[41:] + " 2", PROMPT) == " 2"  # cut inside a character
    chat = "<|im_start|>user\n" + FEW_SHOT + "What is 5 minus 3?<|im_end|>\n<|im_start|>assistant\n"
    assert completion_of(chat[60:] + "I am not sure.<|im_end|>", chat) == "I am not sure.<|im_end|>"
    llama = "<|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    assert completion_of(llama[5:] + "Hello", llama) == "Hello"
    assert completion_of("something else entirely \\boxed{2}", PROMPT) is None
    assert completion_of("no prompt given", None) == "no prompt given"


def test_truncated_few_shot_query_grades_only_the_response(client: TestClient, tenant: Tenant) -> None:
    """Regression: the few-shot's own \\boxed{2} once earned 1.0 for "I am not sure."."""
    truncated = PROMPT[len(PROMPT) // 2:]
    body = {"query": [truncated + " I am not sure.", truncated + " The answer is \\boxed{2}."],
            "prompts": [PROMPT, PROMPT], "labels": ["2", "2"]}
    response = get_reward(client, tenant, body)
    assert response.status_code == 200, response.text
    assert response.json()["rewards"] == [0.0, 1.0]


def test_query_without_the_prompt_is_invalid_input_not_graded_whole(client: TestClient, tenant: Tenant) -> None:
    body = {"query": ["unrelated text with \\boxed{2}", PROMPT + " \\boxed{2}"], "prompts": [PROMPT, PROMPT],
            "labels": ["2", "2"]}
    data = get_reward(client, tenant, body).json()
    assert data["rewards"] == [0.0, 1.0] and data["scores"] == [0.0, 1.0]
    assert data["extra_logs"]["reward_invalid_input"] == [1.0, 0.0]
    assert data["extra_logs"]["reward_ok"] == [0.0, 1.0]
    only_invalid = get_reward(client, tenant, {**body, "query": body["query"][:1], "prompts": [PROMPT],
                                               "labels": ["2"]}).json()
    assert only_invalid["rewards"] == [0.0] and only_invalid["extra_logs"]["reward_invalid_input"] == [1.0]
    strict = get_reward(client, tenant, body, on_non_ok="error")
    assert strict.status_code == 422 and strict.json()["error"]["field"] == "query[0]"


# --- through OpenRLHF's own code -------------------------------------------------------------------


class ScriptedEngine:
    """Test double for OpenRLHF's vLLM engine: always generates ``text``; records the prompt it was given."""

    def __init__(self, tokenizer: Any, text: str) -> None:
        self.ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        self.prompts: list[list[int]] = []

    async def generate(self, prompt_token_ids: list[int], params: Any, multi_modal_data: Any = None) -> Any:
        self.prompts.append(list(prompt_token_ids))
        return SimpleNamespace(outputs=[SimpleNamespace(token_ids=list(self.ids), finish_reason="stop",
                                                        logprobs=None)])


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from trainer.tiny_models import default_corpus, train_tokenizer

    return train_tokenizer(default_corpus(200))


@pytest.mark.parametrize("chat", [False, True], ids=["plain", "chat_template"])
@SQLITE_ONLY
def test_openrlhf_single_turn_executor_with_truncated_prompt(live_server: LiveServer, tokenizer: Any,
                                                             chat: bool) -> None:
    agent = load("openrlhf.utils.agent")
    key = live_server.tenant.keys["trainer"]
    httpx.post(f"{live_server.url}/v1/projects/{live_server.tenant.project_a}/reward-specs",
               json={"name": "m", "spec": MATH}, headers=bearer(key)).raise_for_status()
    host = live_server.url.removeprefix("http://")
    url = f"http://rh:{key}@{host}/get_reward?spec_ref=m@1"  # the key as the URL's password, as the README says
    prompt = PROMPT
    if chat:
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}], tokenize=False,
                                               add_generation_prompt=True)
    full_len = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    max_tokens = 12
    max_length = full_len // 2 + max_tokens  # OpenRLHF keeps only the prompt's last half
    executor = agent.SingleTurnAgentExecutor(remote_rm_url=[url])

    def run(text: str) -> tuple[dict[str, Any], ScriptedEngine]:
        engine = ScriptedEngine(tokenizer, text)
        params = SimpleNamespace(max_tokens=max_tokens, logprobs=None)
        return asyncio.run(executor.execute(prompt, "2", params, max_length, tokenizer, engine)), engine

    unsure, engine = run(" I am not sure.<|im_end|>")
    assert len(engine.prompts[0]) < full_len  # OpenRLHF did truncate the prompt
    assert "\\boxed{2}" in tokenizer.decode(engine.prompts[0])  # and the few-shot answer survived
    assert unsure["reward"] == [0.0], unsure  # not 1.0 from the few-shot's \boxed{2}
    assert unsure["extra_logs"]["reward_ok"] == [1.0]
    right, _ = run(" \\boxed{2}<|im_end|>")
    assert right["reward"] == [1.0] and right["scores"] == [1.0], right
