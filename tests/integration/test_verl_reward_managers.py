"""veRL's own reward managers (legacy naive and batch, and the reward loop's naive manager) score a small
``DataProto`` through the rewardhub veRL adapter, loaded the way veRL loads a ``custom_reward_function``
(by file path). One item of the batch is ``invalid_input`` under a ``multi`` spec, so it lacks a
sub-score the others have; ground truths and ``extra_info`` hold numpy values."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rewardhub.adapters import verl as adapter
from tests.conftest import SQLITE_ONLY, LiveServer
from tests.integration.framework_sources import load

pytestmark = pytest.mark.slow

ADAPTER_PATH = str(Path(adapter.__file__).resolve())
SPEC = {"type": "multi", "graders": {"num": {"type": "numeric"}, "fmt": {"type": "regex", "pattern": "\\\\boxed"}}}
RESPONSES = ["so \\boxed{12}", "it is \\boxed{7}", "maybe \\boxed{3}"]
GROUND_TRUTHS: list[Any] = [np.int64(12), np.float64(3.0), "not a number"]
KEYS = {"score", "status", "status_ok", "sub_num", "sub_fmt"}


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from trainer.tiny_models import default_corpus, train_tokenizer

    return train_tokenizer(default_corpus(200))


@pytest.fixture
def rewardhub_env(live_server: LiveServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[LiveServer]:
    monkeypatch.setenv("REWARDHUB_URL", live_server.url)
    monkeypatch.setenv("REWARDHUB_API_KEY", live_server.tenant.keys["trainer"])
    monkeypatch.setenv("REWARDHUB_SPEC", json.dumps(SPEC))
    monkeypatch.delenv("REWARDHUB_SUB_SCORES", raising=False)
    monkeypatch.delenv("REWARDHUB_PROJECT_ID", raising=False)
    adapter.reset_clients()
    yield live_server
    adapter.reset_clients()


def make_batch(tokenizer: Any) -> Any:
    """A veRL rollout batch: left-padded prompts, right-padded responses, reward_model / extra_info columns."""
    import torch

    protocol = load("verl.protocol")
    pad = tokenizer.pad_token_id
    prompts = [tokenizer(f"What is {i} + {i}?", add_special_tokens=False)["input_ids"] for i in range(3)]
    responses = [tokenizer(r, add_special_tokens=False)["input_ids"] for r in RESPONSES]
    p_len, r_len = max(map(len, prompts)), max(map(len, responses)) + 2
    prompt_ids = torch.tensor([[pad] * (p_len - len(p)) + p for p in prompts])
    response_ids = torch.tensor([r + [pad] * (r_len - len(r)) for r in responses])
    mask = torch.tensor([[0] * (p_len - len(p)) + [1] * len(p) + [1] * len(r) + [0] * (r_len - len(r))
                         for p, r in zip(prompts, responses, strict=True)])
    non_tensors = {
        "data_source": np.array(["gsm8k"] * 3, dtype=object),
        "reward_model": np.array([{"ground_truth": g, "style": "rule"} for g in GROUND_TRUTHS], dtype=object),
        "extra_info": np.array([{"index": np.int64(i), "tags": np.array(["a", "b"]), "weight": np.float32(0.5)}
                                for i in range(3)], dtype=object),
    }
    return protocol.DataProto.from_dict(
        tensors={"prompts": prompt_ids, "responses": response_ids, "attention_mask": mask,
                 "input_ids": torch.cat([prompt_ids, response_ids], dim=1)},
        non_tensors=non_tensors)


def config(name: str, manager: str = "naive") -> Any:
    omegaconf = load("omegaconf")
    return omegaconf.OmegaConf.create({"reward": {
        "custom_reward_function": {"path": ADAPTER_PATH, "name": name, "reward_kwargs": {}},
        "reward_manager": {"source": "register", "name": manager},
        "reward_model": {"enable": False}}})


def check_rows(reward_extra_info: dict[str, Any]) -> None:
    assert set(reward_extra_info) == KEYS
    assert all(len(v) == 3 for v in reward_extra_info.values())
    assert list(reward_extra_info["status"]) == ["ok", "ok", "invalid_input"]
    assert list(reward_extra_info["score"]) == [1.0, 0.5, 0.0]  # normalised: (num + fmt) / 2
    assert list(reward_extra_info["sub_num"]) == [1.0, 0.0, None]  # missing -> None
    assert list(reward_extra_info["sub_fmt"]) == [1.0, 1.0, 1.0]


def attach_and_check(data: Any, reward_extra_info: dict[str, Any]) -> None:
    """What veRL's trainer does with the extra info: numpy columns in non_tensor_batch, then its check."""
    data.non_tensor_batch.update({k: np.array(v) for k, v in reward_extra_info.items()})
    data.check_consistency()


@SQLITE_ONLY
def test_legacy_naive_manager(rewardhub_env: LiveServer, tokenizer: Any) -> None:
    reward = load("verl.trainer.ppo.reward")
    managers = load("verl.workers.reward_manager")
    compute_score = reward.get_custom_reward_fn(config("compute_score"))
    manager = managers.NaiveRewardManager(tokenizer=tokenizer, num_examine=0, compute_score=compute_score)
    data = make_batch(tokenizer)
    out = manager(data, return_dict=True)
    check_rows(out["reward_extra_info"])
    rewards = out["reward_tensor"].sum(dim=-1).tolist()
    assert rewards == [1.0, 0.5, 0.0]
    attach_and_check(data, out["reward_extra_info"])


@SQLITE_ONLY
def test_legacy_batch_manager(rewardhub_env: LiveServer, tokenizer: Any) -> None:
    reward = load("verl.trainer.ppo.reward")
    managers = load("verl.workers.reward_manager")
    compute_score = reward.get_custom_reward_fn(config("compute_score_batch"))
    manager = managers.BatchRewardManager(tokenizer=tokenizer, num_examine=0, compute_score=compute_score)
    data = make_batch(tokenizer)
    out = manager(data, return_dict=True)
    check_rows(out["reward_extra_info"])
    assert out["reward_tensor"].sum(dim=-1).tolist() == [1.0, 0.5, 0.0]
    attach_and_check(data, out["reward_extra_info"])


@pytest.mark.parametrize("name", ["compute_score_async", "compute_score"])
@SQLITE_ONLY
def test_reward_loop_naive_manager(rewardhub_env: LiveServer, tokenizer: Any, name: str) -> None:
    """The reward loop's naive manager awaits (async) or runs in an executor (sync) one sample at a time,
    then veRL's RewardLoopManager takes the extra keys from the first sample for every sample."""
    reward = load("verl.trainer.ppo.reward")
    base = load("verl.experimental.reward_loop.reward_manager.base")
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        manager = reward.load_reward_manager(config(name), tokenizer)
        data = make_batch(tokenizer)

        async def run_all() -> list[dict[str, Any]]:
            return list(await asyncio.gather(*(manager.run_single(data[i:i + 1]) for i in range(len(data)))))

        outputs = loop.run_until_complete(run_all())
        if name == "compute_score_async":
            assert len(adapter_clients(manager)) == 1  # one pooled client for the loop, not one per call
    finally:
        loop.close()
        asyncio.set_event_loop(None)
    infos = [o["reward_extra_info"] for o in outputs]
    keys = list(infos[0])  # RewardLoopManager.compute_rm_score: the first sample's keys, info[key] for all
    columns = {key: np.array([info[key] for info in infos]) for key in keys}
    check_rows(columns)
    rm_scores = base.RewardManagerBase.assemble_rm_scores(data, [o["reward_score"] for o in outputs])
    assert rm_scores.sum(dim=-1).tolist() == [1.0, 0.5, 0.0]
    protocol = load("verl.protocol")
    tensordict = load("tensordict")
    scored = protocol.DataProto(batch=tensordict.TensorDict({"rm_scores": rm_scores}, batch_size=len(data)),
                                non_tensor_batch=columns, meta_info={"reward_extra_keys": keys})
    scored.check_consistency()


def adapter_clients(manager: Any) -> list[Any]:
    """The pooled async clients of the adapter module veRL loaded by path (its own module object)."""
    fn = manager.compute_score
    while hasattr(fn, "func"):  # functools.partial(_call_with_kwargs_async, raw_fn, kwargs)
        fn = fn.args[0] if fn.args else fn.func
    return list(fn.__globals__["_async_clients"].values())


@SQLITE_ONLY
def test_async_variant_reuses_one_client_per_loop(rewardhub_env: LiveServer, monkeypatch: pytest.MonkeyPatch) -> None:
    # Before pooling, a client (and its connections) per call made the async path ~3.5x slower than
    # sync; counting the clients made pins that down without timing anything.
    n = 64
    made: list[object] = []

    class CountedClient(adapter.AsyncRewardClient):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(adapter, "AsyncRewardClient", CountedClient)
    adapter.reset_clients()

    async def many() -> list[dict[str, Any]]:
        return list(await asyncio.gather(*(adapter.compute_score_async("s", f"\\boxed{{{i}}}", i) for i in range(n))))

    results = asyncio.run(many())
    assert [r["score"] for r in results] == [1.0] * n
    assert len(made) == 1  # one pooled client for the 64 calls on that loop
    asyncio.run(many())  # a new event loop gets its own (connections belong to one loop)
    assert len(made) == 2


def test_jsonable_handles_numpy() -> None:
    value = {"a": np.int64(3), "b": np.array([[1.5, np.nan]]), 4: (np.bool_(True), {np.str_("x")}),
             "c": np.float32(np.inf)}
    assert adapter.jsonable(value) == {"a": 3, "b": [[1.5, None]], "4": [True, ["x"]], "c": None}
    json.dumps(adapter.jsonable(value), allow_nan=False)
