"""RLAVR's ``pending_rule: requeue`` (trainer/rlavr.py): the label feed moves waiting prompts to the ready
queue, the step's prompts take ready, then deferred, then fresh ones, the pending decisions join the
waiting set, and the session polls the feed page by page with the run's key, journals each poll and
replays the journal after a resume. Expected values are worked out by hand in the comments."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from trainer import rlavr
from trainer.config import ConfigError, parse_config
from trainer.rlavr import (
    GroupDecision,
    RlavrError,
    RlavrSession,
    apply_feed,
    effective_weight,
    order_step_prompts,
    track_pending,
)


def decision(prompt_id: str, status: str, weight: float = 1.0) -> GroupDecision:
    return GroupDecision(prompt_id=prompt_id, pseudo_label="1", label_status=status,
                         label="7" if status == "labelled" else None, advantage_weight=weight)


# ---------------------------------------------------------------- pure pieces


def test_apply_feed_moves_arrivals_and_retractions() -> None:
    waiting, ready = {"a": 0, "b": 1, "c": 2}, {"d": 3}
    entries = [{"prompt_id": "b", "event": "labelled"},  # b arrives first
               {"prompt_id": "x", "event": "labelled"},  # not this run's: ignored
               {"prompt_id": "d", "event": "retracted"},  # d had arrived, is untrained: back to waiting
               {"prompt_id": "a", "event": "labelled"},  # a arrives second
               {"prompt_id": "b", "event": "labelled"},  # an edit while ready: nothing more
               {"prompt_id": "c", "event": "retracted"}]  # c never arrived: nothing
    new_waiting, new_ready, arrived = apply_feed(entries, waiting, ready)
    assert new_waiting == {"c": 2, "d": 3} and list(new_waiting) == ["c", "d"]
    assert new_ready == {"b": 1, "a": 0} and list(new_ready) == ["b", "a"]
    assert arrived == ["b", "a"]
    assert waiting == {"a": 0, "b": 1, "c": 2} and ready == {"d": 3}  # the inputs are left alone
    assert apply_feed([], waiting, ready) == (waiting, ready, [])


def test_order_step_prompts_ready_then_deferred_then_fresh() -> None:
    # candidates = [5, 6] ++ [1] ++ [6, 2, 3, 4] without the repeated 6 = [5, 6, 1, 2, 3, 4];
    # chosen = the first 4 = [5, 6, 1, 2]; nothing ready is left; the displaced fresh 3 and 4 wait.
    assert order_step_prompts([5, 6], [1], [6, 2, 3, 4], 4) == ([5, 6, 1, 2], [], [3, 4])
    # More ready than fit: [1, 2] go now, 3 stays ready (and its fresh draw is not also deferred).
    assert order_step_prompts([1, 2, 3], [], [3, 4], 2) == ([1, 2], [3], [4])
    # Nothing queued: the sampler's draw unchanged.
    assert order_step_prompts([], [], [7, 8], 2) == ([7, 8], [], [])
    # Deferred prompts go before the new draw; the draw's own overflow is deferred in turn.
    assert order_step_prompts([], [4], [9, 8], 2) == ([4, 9], [], [8])


def test_track_pending_joins_and_leaves() -> None:
    decisions = [decision("p", "pending"), decision("q", "labelled"), decision("r", "none"),
                 decision("s", "pending")]
    # p joins at row 0; q (waiting at row 1) trained with its label: leaves; r: unchanged;
    # s was already waiting at row 9: stays at 9.
    assert track_pending(decisions, [0, 1, 2, 3], {"q": 1, "s": 9}) == {"s": 9, "p": 0}


def test_both_rules_train_a_pending_label_at_weight_zero() -> None:
    for rule in ("weight_zero", "requeue"):
        assert effective_weight(decision("p", "pending"), rule) == 0.0
        assert effective_weight(decision("p", "labelled"), rule) == 1.0
        assert effective_weight(decision("p", "none", 0.4), rule) == 0.4
    with pytest.raises(ValueError, match=r"rlavr\.pending_rule"):
        effective_weight(decision("p", "none"), "replay")


# ---------------------------------------------------------------- the session


def config(tmp_path: Path, rule: str = "requeue") -> Any:
    return parse_config({"model": {"tiny": {}}, "dataset": str(tmp_path / "d.jsonl"), "group_size": 4,
                         "output_dir": str(tmp_path / "run"), "reward": {"spec": {"type": "math"}},
                         "rlavr": {"annotation_project_id": "ap1", "url": "http://ann:9", "pending_rule": rule,
                                   "max_retries": 1}}, local=True)


class FeedDouble(httpx.BaseTransport):
    """Test double of the annotation service's label feed: serves ``entries`` after the cursor, ``page``
    at a time, and records each request's path, query and Authorization header."""

    def __init__(self, entries: list[dict[str, Any]], page: int = 2, fail_first: bool = False) -> None:
        self.entries, self.page, self.fail_first = entries, page, fail_first
        self.requests: list[tuple[str, dict[str, str], str | None]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append((request.url.path, dict(request.url.params), request.headers.get("Authorization")))
        if self.fail_first and len(self.requests) == 1:
            return httpx.Response(503, text="busy")
        cursor, limit = int(request.url.params["cursor"]), int(request.url.params["limit"])
        data = [e for e in self.entries if e["seq"] > cursor][: min(limit, self.page)]
        return httpx.Response(200, json={"data": data, "next_cursor": str(data[-1]["seq"] if data else cursor)})


def entry(seq: int, prompt_id: str, event: str = "labelled") -> dict[str, Any]:
    return {"seq": seq, "event": event, "purchase_id": f"pu{seq}", "prompt_id": prompt_id, "step": 0,
            "policy": "random", "score": 0.5, "label_kind": "answer", "label": "7", "values": None,
            "labelled_by": ["alice"], "labelled_at": None}


def test_weight_zero_keeps_the_draw_and_never_polls(tmp_path: Path) -> None:
    feed = FeedDouble([entry(1, "a")])
    session = RlavrSession(config(tmp_path, "weight_zero"), tmp_path / "run", api_key="k", transport=feed)
    assert not session.requeue and session.step_prompts(0, [3, 1]) == [3, 1]
    assert feed.requests == [] and not (tmp_path / "run" / rlavr.LABELS_LOG).exists()


def test_requeue_polls_page_by_page_journals_and_replays(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rlavr, "FEED_PAGE", 2)
    (tmp_path / "run").mkdir()
    feed = FeedDouble([entry(1, "other"), entry(2, "b"), entry(3, "a"), entry(4, "c", "retracted")],
                      fail_first=True)
    session = RlavrSession(config(tmp_path), tmp_path / "run", api_key="trainer-key", transport=feed)
    session.waiting = {"a": 0, "b": 1}
    # Feed after cursor 0: other (ignored), b, a, c (not ours) -> ready [b(1), a(0)]; the draw [2, 1]
    # -> candidates [1, 0, 2] -> chosen [1, 0]; fresh 2 is deferred.
    assert session.step_prompts(0, [2, 1]) == [1, 0]
    assert session.queue_metrics == {"rlavr/labels_arrived": 2.0, "rlavr/requeued": 2.0}
    assert (session.cursor, session.waiting, session.ready, session.deferred) == ("4", {}, {}, [2])
    # One 503 retried, then pages of 2 until a short one: cursors 0 (twice), 2, 4; the run's key each time.
    assert [q["cursor"] for _, q, _ in feed.requests] == ["0", "0", "2", "4"]
    assert {(path, auth) for path, _, auth in feed.requests} == {
        ("/v1/annotation/projects/ap1/labels", "Bearer trainer-key")}
    journal = [json.loads(x) for x in (tmp_path / "run" / rlavr.LABELS_LOG).read_text().splitlines()]
    assert [(x["step"], x["cursor"], x["next_cursor"], x["arrived"], x["requeued"]) for x in journal] == [
        (0, "0", "4", ["b", "a"], ["b", "a"])]
    assert [e["prompt_id"] for e in journal[0]["entries"]] == ["b", "a"]  # only the run's own prompts are kept

    # A resumed run (state from the checkpoint before step 0) replays the journal: same prompts, no request,
    # although the feed now has one more label that the replay must not see.
    feed.entries.append(entry(5, "b"))
    state = {"cursor": "0", "waiting": [["a", 0], ["b", 1]], "ready": [], "deferred": []}
    resumed = RlavrSession(config(tmp_path), tmp_path / "run", api_key="trainer-key", transport=feed)
    resumed.load_state_dict(state)
    asked = len(feed.requests)
    assert resumed.step_prompts(0, [2, 1]) == [1, 0] and len(feed.requests) == asked
    assert resumed.state_dict() == {"pending_rule": "requeue", "cursor": "4", "waiting": [], "ready": [],
                                    "deferred": [2]}
    assert len((tmp_path / "run" / rlavr.LABELS_LOG).read_text().splitlines()) == 1  # nothing appended
    # Step 1 is not journalled: polled from cursor 4 (entry 5 is for b, no longer waiting).
    assert resumed.step_prompts(1, [3, 4]) == [2, 3] and resumed.deferred == [4]
    assert feed.requests[-1][1]["cursor"] == "4"


def test_feed_refusal_names_the_call(tmp_path: Path) -> None:
    refusing = httpx.MockTransport(lambda request: httpx.Response(403, text='{"detail": "not your project"}'))
    session = RlavrSession(config(tmp_path), tmp_path / "run", api_key="k", transport=refusing)
    with pytest.raises(RlavrError, match=r"label feed after cursor 0: HTTP 403: .*not your project"):
        session.poll_labels("0")


def test_requeue_config_and_single_process(tmp_path: Path) -> None:
    assert config(tmp_path).rlavr.pending_rule == "requeue"
    assert config(tmp_path, "weight_zero").rlavr.pending_rule == "weight_zero"
    with pytest.raises(ConfigError, match=r"rlavr\.pending_rule"):
        config(tmp_path, "replay")
    with pytest.raises(RlavrError, match="requeue needs a single training process"):
        RlavrSession(config(tmp_path), tmp_path / "run", world_size=2, api_key="k")
