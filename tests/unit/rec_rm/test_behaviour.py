"""Behaviour features (no look-ahead), the time split, and training on logs with a planted preference."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from services.rec_rm.behaviour import FEATURES, FeatureState, TrainingError, build_examples, time_split, train
from services.rec_rm.items import Event

T0 = datetime(2026, 1, 1, tzinfo=UTC)
CATALOG = {"a": {"cuisine": "thai", "price": 10}, "b": {"cuisine": "thai", "price": 30},
           "c": {"cuisine": "pizza", "price": 20}}


def ev(user: str, item: str, event: str, minute: int) -> Event:
    return Event(user, item, event, T0 + timedelta(minutes=minute))


def test_features_are_computed_from_the_history_before_each_event() -> None:
    events = [ev("u", "a", "click", 0), ev("u", "c", "impression", 1), ev("v", "a", "order", 2),
              ev("u", "b", "click", 3)]
    X, y, state = build_examples(events, CATALOG)
    assert y.tolist() == [1, 0, 1, 1]
    f = dict(zip(FEATURES, X[0], strict=True))
    assert f["user_events"] == 0.0 and f["item_events"] == 0.0 and f["seen_before"] == 0.0  # nothing before it
    last = dict(zip(FEATURES, X[3], strict=True))
    # Before u's click on b: u had 2 events, 1 positive (a: thai, price 10); b had no events.
    assert last["user_events"] == pytest.approx(math.log1p(2))
    assert last["user_positive_rate"] == pytest.approx((1 + 1) / (2 + 2))
    assert last["category_affinity"] == pytest.approx(1.0)  # 1 of u's 1 positives is thai
    # u saw thai once (a, clicked): (1 + 1) / (1 + 2) = 2/3 (and pizza once, not clicked)
    assert last["category_click_rate"] == pytest.approx(2 / 3)
    # |30 - 10| / (|10| + 1) = 20 / 11
    assert last["numeric_distance"] == pytest.approx(20 / 11)
    assert last["item_positives"] == 0.0
    assert isinstance(state, FeatureState) and state.item_positives["a"] == 2


def test_time_split_puts_ties_on_the_test_side() -> None:
    # quantile 0.8 of [0, 1, 2, 3, 4] = 3.2 → first index with t >= 3.2 is 4
    assert time_split(5, [0, 1, 2, 3, 4], 0.2) == 4
    assert time_split(4, [0, 1, 1, 1], 0.5) == 1  # quantile 0.5 = 1 → the first 1


def synthetic_logs(n_users: int = 40, n_events: int = 1200, seed: int = 0) -> list[Event]:
    rng = random.Random(seed)
    likes = {f"u{k}": rng.choice(["thai", "pizza"]) for k in range(n_users)}
    events = []
    for minute in range(n_events):
        user = f"u{rng.randrange(n_users)}"
        item = rng.choice(list(CATALOG))
        p = 0.7 if CATALOG[item]["cuisine"] == likes[user] else 0.1
        events.append(ev(user, item, "click" if rng.random() < p else "impression", minute))
    return events


def test_training_beats_popularity_on_a_planted_preference() -> None:
    model = train(synthetic_logs(n_events=800), CATALOG, max_iter=20)
    metrics = model.metrics
    assert metrics["n_train"] + metrics["n_test"] == 800 and metrics["n_test"] == 160
    assert metrics["auc"] > 0.75 and metrics["auc"] > metrics["popularity_auc"] + 0.1
    assert 0 < metrics["log_loss"] < math.log(2)
    liker = next(u for u, s in model.state.users.items() if s.category_counts["cuisine"]["thai"] > 5
                 and s.category_counts["cuisine"]["pizza"] == 0)
    thai, pizza = model.predict(liker, [("a", CATALOG["a"]), ("c", CATALOG["c"])])
    assert thai > pizza


def test_training_refuses_logs_it_cannot_learn_from() -> None:
    with pytest.raises(TrainingError, match="at least 10"):
        train(synthetic_logs(n_events=5), CATALOG)
    only_clicks = [ev("u", "a", "click", m) for m in range(20)]
    with pytest.raises(TrainingError, match="only positive"):
        train(only_clicks, CATALOG)
    assert np.isfinite(build_examples(only_clicks, CATALOG)[0]).all()
