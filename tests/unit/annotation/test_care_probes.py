"""CARE probes learn a separable signal online, and the selector state round-trips through bytes."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from services.annotation.care import CareParams, CareSelector, GroupView, LabelledView
from services.annotation.care import probes as pr
from services.annotation.models import Policy

N, DIM = 8, 8


def labelled_stream(count: int, seed: int) -> list[LabelledView]:
    """Majority (rollouts 0–4) correct iff the prompt feature's first coordinate is positive; then the
    3 other rollouts form one wrong cluster, else they are the correct answer (c = 3)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        prompt = rng.normal(size=DIM).astype(np.float32)
        right = bool(prompt[0] > 0)
        prompt[0] = 2.0 if right else -2.0
        correct = [right] * 5 + [not right] * 3
        rollouts = rng.normal(size=(N, DIM)).astype(np.float32)
        rollouts[:, 1] += np.where(correct, 2.0, -2.0)
        view = GroupView(n=N, clusters=[[0, 1, 2, 3, 4], [5, 6, 7]], prompt_features=prompt,
                         rollout_features=rollouts)
        out.append(LabelledView(f"{seed}:{i}", view, correct))
    return out


def test_probes_learn_a_separable_signal_from_bought_labels() -> None:
    params = replace(CareParams(), lr=3e-3, history_samples=32, warmup_steps=0)
    selector = CareSelector(Policy.care, params, N)
    store: dict[str, GroupView] = {}
    for step in range(60):
        batch = labelled_stream(16, seed=step)
        store.update({e.key: e.view for e in batch})
        selector.observe(batch, history=lambda keys: {k: store[k] for k in keys})
    test = labelled_stream(200, seed=999)
    decision = selector.decide([e.view for e in test], step=60)
    truth = np.array([e.correct[0] for e in test])
    reliability = np.array(decision.reliability, dtype=float)
    assert ((reliability > 0.5) == truth).mean() > 0.95
    # Stage 2 puts its mass on c = 3 exactly where the majority is wrong, so S separates them.
    gaps = np.array(decision.scores, dtype=float)
    assert gaps[~truth].min() > gaps[truth].max()
    # Acquisition then buys wrong-majority prompts only.
    assert all(not truth[i] for i, s in enumerate(decision.selected) if s)


def test_untrained_probe_does_not_separate_the_same_signal() -> None:
    # The check above can fail: before training the same probe is at chance.
    selector = CareSelector(Policy.care, CareParams(), N)
    test = labelled_stream(200, seed=999)
    decision = selector.decide([e.view for e in test], step=0)
    truth = np.array([e.correct[0] for e in test])
    assert ((np.array(decision.reliability, dtype=float) > 0.5) == truth).mean() < 0.8


def test_stage2_never_puts_mass_on_impossible_counts() -> None:
    views = [e.view for e in labelled_stream(4, seed=1)]
    batch = pr.make_batch(views, DIM, 4000.0)
    torch.manual_seed(0)
    stage1 = pr.Probe(DIM + 1 + 2 * N, DIM + 4, 2)
    stage2 = pr.Probe(DIM + 1 + 2 * N, DIM + 4, N + 1)
    _, p_c = pr.predict(stage1, stage2, batch)
    allowed = np.zeros(N + 1, dtype=bool)
    allowed[[0, 3]] = True  # c = 0 or the size of the one non-majority cluster
    assert np.allclose(p_c[:, ~allowed], 0.0)
    assert np.allclose(p_c.sum(1), 1.0)


def test_state_round_trip_restores_probes_optimiser_buffer_and_counters() -> None:
    selector = CareSelector(Policy.care, CareParams(), N)
    data = labelled_stream(12, seed=3)
    selector.decide([e.view for e in data], step=0)
    selector.observe(data[:6])
    selector.observe(data[6:], history=lambda keys: {e.key: e.view for e in data if e.key in keys})
    restored = CareSelector.from_bytes(selector.to_bytes(), policy=Policy.care, params=CareParams(), n=N)
    assert (restored.steps_seen, restored.observations, restored.feature_dim) == (1, 2, DIM)
    assert [(e.key, e.correct, e.y1, e.y2) for e in restored.buffer] == \
        [(e.key, e.correct, e.y1, e.y2) for e in selector.buffer]
    views = [e.view for e in labelled_stream(5, seed=4)]
    assert restored.decide(views, step=1).scores == selector.decide(views, step=1).scores
    # Training continues identically (the AdamW moments came back too).
    more = labelled_stream(4, seed=5)
    restored.observe(more)
    selector.observe(more)
    assert restored.decide(views, step=2).reliability == selector.decide(views, step=2).reliability


def test_state_with_another_architecture_keeps_the_buffer_and_rebuilds_probes() -> None:
    selector = CareSelector(Policy.care, CareParams(), N)
    selector.observe(labelled_stream(4, seed=6))
    smaller = replace(CareParams(), prompt_hidden=16)
    restored = CareSelector.from_bytes(selector.to_bytes(), policy=Policy.care, params=smaller, n=N)
    assert restored.stage1 is None and len(restored.buffer) == 4
    other_n = CareSelector.from_bytes(selector.to_bytes(), policy=Policy.care, params=CareParams(), n=4)
    assert other_n.buffer == [] and other_n.stage1 is None


def test_buffer_is_fifo_and_bounded() -> None:
    selector = CareSelector(Policy.random, replace(CareParams(), buffer_size=5), N)
    selector.observe(labelled_stream(4, seed=7))
    selector.observe(labelled_stream(4, seed=8))
    assert [e.key for e in selector.buffer] == ["7:3", "8:0", "8:1", "8:2", "8:3"]
    assert selector.stage1 is None  # baselines do not train probes
