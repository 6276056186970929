"""Item-level problems of reward items (each names its field), duplicate ids, and the JSON guards around them."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from rewardhub.reward_specs import MultiSpec, RewardSpec
from services.common.errors import safe_text
from services.common.reward_api import (
    GradeRequest,
    RewardItem,
    cap_batch,
    digest,
    item_problem,
    merge,
    screen,
    text_problem,
)
from services.common.settings import reset_settings_cache


@pytest.fixture(autouse=True)
def limits(isolated_env: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name, value in {"MAX_ITEM_CHARS": "50", "MAX_GROUND_TRUTH_BYTES": "100", "MAX_METADATA_BYTES": "40",
                        "MAX_JSON_DEPTH": "4"}.items():
        monkeypatch.setenv(f"REWARDHUB_{name}", value)
    reset_settings_cache()
    yield
    reset_settings_cache()


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(("fields", "reason"), [
    ({"completion": "ab\x00"}, "completion: contains a NUL character at position 2"),
    ({"completion": "a\ud800"}, "completion: contains a lone surrogate (U+D800) at position 1, which is not valid "
                                "Unicode text"),
    ({"completion": "x" * 51}, "completion: is 51 characters long; the limit is 50"),
    ({"prompt": "\udfff"}, "prompt: contains a lone surrogate (U+DFFF) at position 0"),
    ({"prompt": [{"role": "user", "content": "ok"}, {"role": "as\x00"}]}, "prompt[1].role: contains a NUL"),
    ({"prompt": [{"role": "user", "content": [{"type": "text", "text": "\ud800"}]}]},
     "prompt[0].content[0].text: contains a lone surrogate"),
    ({"prompt": [{"role": "user", "content": "x", "name": float("nan")}]}, "prompt[0].name: nan is not a finite"),
    ({"prompt": [{"role": "user", "content": "x" * 30}, {"role": "user", "content": "x" * 30}]},
     "prompt: its messages hold 68 characters of text; the limit is 50"),
    ({"ground_truth": nested(4)}, None),
    ({"ground_truth": nested(5)}, "ground_truth: is nested more than 4 levels deep; the limit is 4"),
    ({"ground_truth": nested(900)}, "ground_truth: is nested more than 4 levels deep"),
    ({"ground_truth": {"a": [1, float("-inf")]}}, "ground_truth.a[1]: -inf is not a finite number"),
    ({"ground_truth": ["ok", "no\x00"]}, "ground_truth[1]: contains a NUL character at position 2"),
    ({"ground_truth": "x" * 99}, "ground_truth: is 101 bytes as JSON; the limit is 100"),
    ({"ground_truth": "é" * 48}, None),  # 98 bytes with its quotes
    ({"ground_truth": "é" * 50}, "ground_truth: is 102 bytes as JSON"),
    ({"metadata": {"source": "s" * 40}}, "metadata: is 53 bytes as JSON; the limit is 40"),
    ({"metadata": {"\x00": 1}}, "metadata: a key contains a NUL character at position 0"),
    ({"metadata": {"k": {"\ud800": 1}}}, "metadata.k: a key contains a lone surrogate"),
    ({"completion": "fine é \U0001f600", "prompt": "q", "ground_truth": {"a": [1.5, None, True]}}, None),
])
def test_item_problems_name_the_field(fields: dict[str, Any], reason: str | None) -> None:
    item = RewardItem(id="a", **{"completion": "ok", **fields})
    found = item_problem(item)
    if reason is None:
        assert found is None
    else:
        assert found is not None and found.startswith(reason), found
    assert item.problem() == found


def test_text_problem_checks_length_first_and_is_none_for_good_text() -> None:
    assert text_problem("abc", 3) is None
    assert text_problem("a\x00cd", 3) == "is 4 characters long; the limit is 3"
    assert text_problem("\ufffe\U0010ffff") is None  # noncharacters are valid Unicode text


def test_the_wire_models_accept_any_text_and_leave_the_verdict_to_each_item() -> None:
    # Text problems are not validation errors: a batch with one bad completion still parses.
    request = GradeRequest.model_validate({"spec": {"type": "exact"}, "items": [
        {"id": "a", "completion": "\x00"}, {"id": "b", "completion": "\ud800"}, {"id": "c", "completion": "x" * 99},
        {"id": "d", "completion": "fine"}]})
    gradable, invalid = screen(request.items)
    assert [item.id for item in gradable] == ["d"] and sorted(invalid) == ["a", "b", "c"]
    assert all(r.status == "invalid_input" and r.score is None and r.details["reason"] for r in invalid.values())
    merged = merge(request.items, invalid, ["graded d"])
    assert [getattr(r, "id", r) for r in merged] == ["a", "b", "c", "graded d"]


def test_duplicate_ids_are_a_request_error_naming_them() -> None:
    items = [RewardItem(id=i, completion="x") for i in ("a", "b", "a", "c", "b", "a")]
    with pytest.raises(ValueError, match=r"^duplicate ids: a, b \("):
        cap_batch(items)
    with pytest.raises(ValidationError) as caught:
        GradeRequest.model_validate({"spec": {"type": "exact"}, "items": [
            {"id": "x", "completion": "1"}, {"id": "x", "completion": "2"}]})
    assert caught.value.errors()[0]["loc"] == ("items",)
    assert cap_batch(items[:2]) == items[:2]


def test_fingerprint_dump_is_the_plain_dump_for_good_items_and_a_digest_for_bad() -> None:
    good = RewardItem(id="a", completion="x", ground_truth={"k": [1]}, metadata={"m": 1})
    assert good.fingerprint_dump() == good.model_dump(mode="json")  # stored keys keep their fingerprints
    deep = RewardItem(id="a", completion="x", ground_truth=nested(900))
    other = RewardItem(id="a", completion="x", ground_truth=nested(901))
    assert deep.fingerprint_dump()["id"] == "a"
    assert deep.fingerprint_dump() != other.fingerprint_dump()
    json.dumps(deep.fingerprint_dump())  # serialisable, whatever the item held


def test_digest_is_stable_and_tells_values_apart() -> None:
    assert digest({"b": 1, "a": ["\ud800", 2.0]}) == digest({"a": ["\ud800", 2.0], "b": 1})
    values = [None, 0, 1, 1.0, True, "1", [1], {"1": 1}, ["\ud800"], ["\ud801"], [[1]], [1, [2]], [[1], 2], "",
              [], {}, math.inf]
    assert len({digest(v) for v in values}) == len(values)
    digest(nested(100_000))  # iterative: no recursion limit


@pytest.mark.parametrize(("spec", "loc"), [
    ({"type": "multi", "graders": {"a": {"type": "exact"}}, "weights": {"a": float("nan")}}, ("multi", "weights", "a")),
    ({"type": "multi", "graders": {"a": {"type": "exact"}}, "weights": {"a": float("inf")}}, ("multi", "weights", "a")),
    ({"type": "multi", "graders": {"a": {"type": "exact"}}, "gates": {"a": float("-inf")}}, ("multi", "gates", "a")),
    ({"type": "multi", "graders": {"m": {"type": "multi", "graders": {"a": {"type": "exact"}},
                                         "weights": {"a": float("nan")}}}},
     ("multi", "graders", "m", "multi", "weights", "a")),
])
def test_multi_weights_and_gates_must_be_finite(spec: dict[str, Any], loc: tuple[str, ...]) -> None:
    with pytest.raises(ValidationError) as caught:
        TypeAdapter(RewardSpec).validate_python(spec)
    assert caught.value.errors()[0]["loc"] == loc
    assert "finite" in caught.value.errors()[0]["msg"]


def test_finite_weights_still_validate() -> None:
    spec = TypeAdapter(RewardSpec).validate_python(
        {"type": "multi", "graders": {"a": {"type": "exact"}}, "weights": {"a": 2.5}, "gates": {"a": 0.5}})
    assert isinstance(spec, MultiSpec) and spec.weights == {"a": 2.5} and spec.gates == {"a": 0.5}


def test_safe_text_escapes_only_what_utf8_cannot_carry() -> None:
    assert safe_text("plain é") == "plain é"
    assert safe_text("tag \ud800!") == "tag \\ud800!"
    safe_text("tag \ud800!").encode("utf-8")


def test_the_python_client_sends_any_text_as_json() -> None:
    from rewardhub.client import _encode

    body = {"items": [{"id": "a", "completion": "x\x00\ud800é", "ground_truth": float("nan")}]}
    raw = _encode(body)
    assert raw.isascii()
    assert json.loads(raw)["items"][0]["completion"] == "x\x00\ud800é"


def test_status_counts_for_the_run_metrics() -> None:
    from trainer.rewards import status_counts

    assert status_counts(["ok", "invalid_input", "invalid_input", "mystery", "timeout"]) == {
        "reward_ok_count": 1.0, "reward_invalid_input_count": 2.0, "reward_timeout_count": 1.0,
        "reward_error_count": 1.0}
