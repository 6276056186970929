"""User-behaviour prediction: P(this user engages with this item), learnt from the interaction logs.

Every logged event is one example: label 1 when its ``event`` is a positive one (default ``click``
and ``order``), 0 otherwise (``impression``, ``skip``...). Its features are computed from the
history *before* it (events are replayed in time order, the state updated after each), so no
example sees its own future:

====================  =====================================================================
user_events           log(1 + n_u), the user's earlier events
user_positive_rate    (pos_u + 1) / (n_u + 2), smoothed
item_events           log(1 + n_i), the item's earlier events (any user)
item_positives        log(1 + pos_i): the item's popularity (the popularity baseline's score)
item_positive_rate    (pos_i + 1) / (n_i + 2)
category_affinity     mean over the item's categorical attributes of the share of the user's earlier
                      positives with the same value (a list attribute: any shared member)
category_affinity_max the largest of those shares
category_click_rate   mean over the item's categorical attributes of (pos_u,v + 1) / (n_u,v + 2): the
                      user's smoothed click rate on items sharing a value (events of any kind)
numeric_distance      mean over numeric attributes of |x_item - mean_u(x)| / (|mean_u(x)| + 1),
                      the user's mean over their positives; 1.0 when the user has none
seen_before           1 when the user had an event on this item before
====================  =====================================================================

The model is scikit-learn's HistGradientBoostingClassifier. Held-out evaluation is a TIME split:
the examples at or after the ``1 - test_fraction`` quantile of timestamps are the test set (ties
go to the test side), the model is fitted on the earlier ones, and AUC and log-loss are reported
on the later ones, next to the popularity baseline's AUC (``item_positives`` alone). The state
after all events (every user's and item's counts) is kept with the model: scoring a
recommendation uses the logs as of training; train again to take newer logs in.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from services.rec_rm.items import Event

FEATURES = ("user_events", "user_positive_rate", "item_events", "item_positives", "item_positive_rate",
            "category_affinity", "category_affinity_max", "category_click_rate", "numeric_distance", "seen_before")
DEFAULT_POSITIVE_EVENTS = ("click", "order")


def attribute_kinds(catalog: dict[str, dict[str, Any]]) -> tuple[list[str], list[str]]:
    """(categorical keys, numeric keys) of a catalog's attributes: strings or lists of strings are
    categorical, numbers (not booleans) numeric; a key with both kinds counts as categorical."""
    categorical: set[str] = set()
    numeric: set[str] = set()
    for attributes in catalog.values():
        for key, value in attributes.items():
            if isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value)):
                categorical.add(key)
            elif isinstance(value, int | float) and not isinstance(value, bool):
                numeric.add(key)
    return sorted(categorical), sorted(numeric - categorical)


def _values(value: Any) -> set[str]:
    if isinstance(value, list):
        return {str(v).casefold() for v in value}
    return {str(value).casefold()} if value is not None else set()


@dataclass
class UserState:
    events: int = 0
    positives: int = 0
    category_counts: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    category_events: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    numeric_sums: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    numeric_counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    seen: set[str] = field(default_factory=set)


@dataclass
class FeatureState:
    """Everyone's history so far: what the features are computed from."""

    categorical: list[str]
    numeric: list[str]
    positive_events: frozenset[str]
    users: dict[str, UserState] = field(default_factory=dict)
    item_events: Counter[str] = field(default_factory=Counter)
    item_positives: Counter[str] = field(default_factory=Counter)

    def features(self, user_id: str, item_id: str, attributes: dict[str, Any]) -> list[float]:
        user = self.users.get(user_id) or UserState()
        n_i, pos_i = self.item_events[item_id], self.item_positives[item_id]
        shares, rates = [], []
        for key in self.categorical:
            if key not in attributes:
                continue
            values = _values(attributes[key])
            counts = user.category_counts.get(key)
            seen = user.category_events.get(key)
            # The share of the user's positives sharing a value (a list attribute counts once per positive).
            shared = sum(counts[v] for v in values) if counts else 0
            shown = sum(seen[v] for v in values) if seen else 0
            shares.append(min(1.0, shared / user.positives) if user.positives else 0.0)
            rates.append((shared + 1) / (shown + 2))
        distances = []
        for key in self.numeric:
            value = attributes.get(key)
            if not isinstance(value, int | float) or isinstance(value, bool):
                continue
            count = user.numeric_counts.get(key, 0)
            if count == 0:
                distances.append(1.0)
                continue
            mean = user.numeric_sums[key] / count
            distances.append(abs(float(value) - mean) / (abs(mean) + 1.0))
        return [math.log1p(user.events), (user.positives + 1) / (user.events + 2), math.log1p(n_i),
                math.log1p(pos_i), (pos_i + 1) / (n_i + 2), sum(shares) / len(shares) if shares else 0.0,
                max(shares) if shares else 0.0, sum(rates) / len(rates) if rates else 0.5, sum(distances) / len(distances) if distances else 1.0,
                1.0 if item_id in user.seen else 0.0]

    def update(self, event: Event, attributes: dict[str, Any]) -> None:
        user = self.users.setdefault(event.user_id, UserState())
        positive = event.event in self.positive_events
        user.events += 1
        user.seen.add(event.item_id)
        self.item_events[event.item_id] += 1
        for key in self.categorical:
            if key in attributes:
                for value in _values(attributes[key]):
                    user.category_events[key][value] += 1
        if not positive:
            return
        user.positives += 1
        self.item_positives[event.item_id] += 1
        for key in self.categorical:
            if key in attributes:
                for value in _values(attributes[key]):
                    user.category_counts[key][value] += 1
        for key in self.numeric:
            number = attributes.get(key)
            if isinstance(number, int | float) and not isinstance(number, bool):
                user.numeric_sums[key] += float(number)
                user.numeric_counts[key] += 1


def build_examples(events: Sequence[Event], catalog: dict[str, dict[str, Any]],
                   positive_events: Iterable[str] = DEFAULT_POSITIVE_EVENTS,
                   progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray, FeatureState]:
    """(X, y, state after every event) from events in time order (sorted here, stably)."""
    categorical, numeric = attribute_kinds(catalog)
    state = FeatureState(categorical=categorical, numeric=numeric, positive_events=frozenset(positive_events))
    ordered = sorted(events, key=lambda e: e.timestamp)
    rows, labels = [], []
    for index, event in enumerate(ordered):
        attributes = catalog.get(event.item_id, {})
        rows.append(state.features(event.user_id, event.item_id, attributes))
        labels.append(1 if event.event in state.positive_events else 0)
        state.update(event, attributes)
        if progress is not None and (index + 1) % 1000 == 0:
            progress(index + 1)
    X = np.asarray(rows, dtype=np.float64).reshape(len(rows), len(FEATURES))
    return X, np.asarray(labels, dtype=np.int64), state


def time_split(n: int, timestamps: Sequence[float], test_fraction: float) -> int:
    """Index of the first test example in time-sorted examples: the first at or after the
    ``1 - test_fraction`` quantile of the timestamps (ties go to the test side)."""
    if n == 0:
        return 0
    cut = float(np.quantile(np.asarray(timestamps, dtype=np.float64), 1.0 - test_fraction))
    return next((i for i, t in enumerate(timestamps) if t >= cut), n)


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC (ties count one half), the Mann–Whitney U statistic / (n_pos · n_neg)."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores))


@dataclass
class TrainedModel:
    estimator: Any
    state: FeatureState
    metrics: dict[str, Any]

    def predict(self, user_id: str, items: Sequence[tuple[str, dict[str, Any]]]) -> list[float]:
        return self.predict_many([(user_id, item_id, attrs) for item_id, attrs in items])

    def predict_many(self, pairs: Sequence[tuple[str, str, dict[str, Any]]]) -> list[float]:
        """P(engage) for each (user id, item id, item attributes), in one call of the model."""
        if not pairs:
            return []
        X = np.asarray([self.state.features(u, i, attrs) for u, i, attrs in pairs], dtype=np.float64)
        return [float(p) for p in self.estimator.predict_proba(X)[:, 1]]


class TrainingError(ValueError):
    """The logs cannot train a model (too few events, one class only on a side of the split)."""


def train(events: Sequence[Event], catalog: dict[str, dict[str, Any]], *,
          positive_events: Iterable[str] = DEFAULT_POSITIVE_EVENTS, test_fraction: float = 0.2,
          max_iter: int = 100, learning_rate: float = 0.1, seed: int = 0,
          progress: Callable[[int], None] | None = None) -> TrainedModel:
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import log_loss

    if len(events) < 10:
        raise TrainingError(f"interactions: {len(events)} logged events; at least 10 are needed to train")
    X, y, state = build_examples(events, catalog, positive_events, progress)
    times = sorted(e.timestamp.timestamp() for e in events)
    split = time_split(len(times), times, test_fraction)
    if split == 0 or split == len(times):
        raise TrainingError("interactions: all events share one timestamp range; the time split leaves one side empty")
    y_train, y_test = y[:split], y[split:]
    for name, part in (("training", y_train), ("held-out", y_test)):
        if len(set(part.tolist())) < 2:
            raise TrainingError(f"interactions: the {name} part of the time split has only "
                                f"{'positive' if part.all() else 'negative'} events; need both")
    # Early stopping on a random 15% of the training part (never the held-out later events).
    model = HistGradientBoostingClassifier(max_iter=max_iter, learning_rate=learning_rate, random_state=seed,
                                           early_stopping=len(X) >= 200, validation_fraction=0.15,
                                           n_iter_no_change=10)
    model.fit(X[:split], y_train)
    probabilities = model.predict_proba(X[split:])[:, 1]
    popularity = X[split:, FEATURES.index("item_positives")]
    metrics = {"auc": auc(y_test, probabilities), "log_loss": float(log_loss(y_test, probabilities, labels=[0, 1])),
               "popularity_auc": auc(y_test, popularity), "n_train": int(split), "n_test": int(len(y) - split),
               "positive_rate_test": float(y_test.mean()),
               "split_at": times[split], "features": list(FEATURES)}
    return TrainedModel(estimator=model, state=state, metrics=metrics)
