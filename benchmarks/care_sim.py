"""CARE against baseline acquisition policies on a synthetic RLVR stream with a hidden answer key.

Each step brings B fresh prompts with n rollouts. A prompt has a latent skill a ~ N(μ_t, 1.5);
each rollout is unparseable with probability 0.05, otherwise correct with probability
sigmoid(a), otherwise one of three distractors drawn with Dirichlet(0.5) weights, so on hard
prompts the majority is often a wrong distractor. μ_t drifts over the run, so the share of
wrong-majority prompts varies from step to step; three streams (easy, medium, hard) shift μ.
Features carry a noisy signal of correctness: the prompt vector holds the skill along one
direction plus N(0, 1) noise; each rollout vector holds ±s (correct / wrong) along another
direction plus N(0, 1) noise.

Every policy gets the same budget, ⌈20% · B⌉ labels per step (answered at once by the key),
and the selection functions are driven directly (no database). Reported per policy:
- label acc: accuracy of the labels training would use (bought label where bought, else pseudo-label);
- caught: share of wrong-majority prompts whose label was bought;
- w-acc: accuracy of the labels weighted by the policy's advantage weights (CARE trains on bought
  prompts and, at clip(S, 0, 1), on reliable ones; the baselines, with ``mask_non_gt`` on as in the
  authors' code, only on what they bought, so their w-acc is 100% by construction);
- train: the share of the stream's prompt weight that trains (Σ weights / prompts), printed beside
  w-acc so that arms that train on different shares are not read as like for like;
- the anchor row "majority vote" buys nothing (TTRL); every other row also prints its label
  accuracy and w-acc as a ratio of the anchor's on the same stream and seed.

Each figure is the median over ``--seeds`` seeds (``--seed``, ``--seed``+1, ...) with its spread
[min-max]. Every (seed, stream) pair has its own RNG stream, so no two streams share draws.

Run: `python benchmarks/care_sim.py [--steps 150] [--batch 64] [--seed 0] [--seeds 5]`.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from services.annotation.care import CareParams, CareSelector, GroupView, LabelledView
from services.annotation.models import Policy

N_ROLLOUTS = 8
DIM = 32
DISTRACTORS = 3
UNPARSEABLE = 0.05
STREAMS = {"easy": 1.2, "medium": 0.4, "hard": -0.4}  # μ offset of each stream


@dataclass
class Prompt:
    view: GroupView
    correct: list[bool]  # per rollout, from the hidden key
    majority_wrong: bool


def cluster(answers: list[int | None]) -> list[list[int]]:
    """Exact-match clusters, largest first, ties by earliest member (as the service votes)."""
    groups: dict[int, list[int]] = {}
    for index, answer in enumerate(answers):
        if answer is not None:
            groups.setdefault(answer, []).append(index)
    return sorted(groups.values(), key=lambda members: (-len(members), members[0]))


def make_step(rng: np.random.Generator, mu: float, batch: int, directions: np.ndarray, signal: float) -> list[Prompt]:
    prompts = []
    for _ in range(batch):
        skill = rng.normal(mu, 1.5)
        q = 1.0 / (1.0 + np.exp(-skill))
        weights = rng.dirichlet([0.5] * DISTRACTORS)
        answers: list[int | None] = []
        for _ in range(N_ROLLOUTS):
            if rng.random() < UNPARSEABLE:
                answers.append(None)
            elif rng.random() < q:
                answers.append(0)  # the key's answer
            else:
                answers.append(1 + int(rng.choice(DISTRACTORS, p=weights)))
        clusters = cluster(answers)
        correct = [a == 0 for a in answers]
        sign = np.where(correct, 1.0, -1.0)[:, None]
        prompt_features = (directions[0] * skill * 0.5 + rng.normal(size=DIM)).astype(np.float32)
        rollout_features = (directions[1][None, :] * sign * signal + rng.normal(size=(N_ROLLOUTS, DIM)))
        lengths = rng.integers(200, 3000, size=N_ROLLOUTS).tolist()
        view = GroupView(n=N_ROLLOUTS, clusters=clusters, prompt_features=prompt_features,
                         rollout_features=rollout_features.astype(np.float32), response_lengths=lengths)
        majority_wrong = not clusters or not correct[clusters[0][0]]
        prompts.append(Prompt(view=view, correct=correct, majority_wrong=majority_wrong))
    return prompts


@dataclass
class Tally:
    prompts: int = 0
    right_labels: int = 0
    wrong_majority: int = 0
    caught: int = 0
    weight: float = 0.0
    weighted_right: float = 0.0

    def add(self, step: list[Prompt], bought: list[bool], weights: list[float]) -> None:
        for prompt, was_bought, w in zip(step, bought, weights, strict=True):
            right = was_bought or not prompt.majority_wrong
            self.prompts += 1
            self.right_labels += right
            self.wrong_majority += prompt.majority_wrong
            self.caught += was_bought and prompt.majority_wrong
            self.weight += w
            self.weighted_right += w * right

    def row(self) -> tuple[float, float, float, float]:
        return (self.right_labels / self.prompts, self.caught / max(self.wrong_majority, 1),
                self.weighted_right / max(self.weight, 1e-9), self.weight / max(self.prompts, 1))


def run_policy(policy: Policy | None, steps: list[list[Prompt]], params: CareParams) -> Tally:
    """One pass over the stream; ``policy=None`` is the majority-vote anchor (buys nothing)."""
    tally = Tally()
    selector = CareSelector(policy or Policy.random, params, N_ROLLOUTS)
    store: dict[str, GroupView] = {}
    for t, step in enumerate(steps):
        if policy is None:
            tally.add(step, [False] * len(step), [1.0] * len(step))
            continue
        truth: list[list[bool] | None] | None = [p.correct for p in step] if policy is Policy.oracle_cag else None
        decision = selector.decide([p.view for p in step], step=t, truth=truth)
        bought = [False] * len(step)
        budget = int(np.ceil(params.top_p * len(step) - 1e-9))
        for index in decision.ranked_selection()[:budget]:
            bought[index] = True
        weights = decision.final_weights(bought={i for i, b in enumerate(bought) if b}, labelled=set())
        tally.add(step, bought, weights)
        examples = [LabelledView(f"{t}:{i}", step[i].view, step[i].correct) for i in range(len(step)) if bought[i]]
        store.update({e.key: e.view for e in examples})
        selector.observe(examples, history=lambda keys: {k: store[k] for k in keys})
    return tally


def stream_rng(seed: int, stream_index: int) -> np.random.Generator:
    """The RNG of one stream under one seed: distinct (seed, stream) pairs never share a stream of draws."""
    return np.random.default_rng([seed, stream_index])


def make_stream(seed: int, stream_index: int, offset: float, n_steps: int, batch: int,
                signal: float) -> list[list[Prompt]]:
    rng = stream_rng(seed, stream_index)
    directions = rng.normal(size=(2, DIM))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    # μ_t drifts ±0.8 over the run, so the wrong-majority share varies from step to step.
    mus = offset + 0.8 * np.sin(np.linspace(0, 3 * np.pi, n_steps))
    return [make_step(rng, float(mu), batch, directions, signal) for mu in mus]


def spread(values: list[float], percent: bool = True) -> str:
    """``median [min-max]`` over the seeds."""
    med, low, high = float(np.median(values)), min(values), max(values)
    return f"{med:.1%} [{low:.1%}-{high:.1%}]" if percent else f"{med:.3f}x [{low:.3f}-{high:.3f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0, help="the first seed")
    parser.add_argument("--seeds", type=int, default=5, help="how many seeds (from --seed on)")
    parser.add_argument("--signal", type=float, default=0.5, help="rollout-feature correctness signal (σ units)")
    parser.add_argument("--lr", type=float, default=None, help="override CARE's probe lr (spec default 1e-4)")
    args = parser.parse_args()
    if args.seeds < 1:
        parser.error("--seeds: must be at least 1")
    torch.set_num_threads(2)
    base = CareParams(seed=args.seed) if args.lr is None else replace(CareParams(seed=args.seed), lr=args.lr)
    # low_token_prob is left out: the synthetic stream has no token probabilities to rank by.
    policies: list[Policy | None] = [None, Policy.random, Policy.low_consensus, Policy.entropy, Policy.care,
                                     Policy.oracle_cag]
    seeds = list(range(args.seed, args.seed + args.seeds))
    print(f"n={N_ROLLOUTS}, batch={args.batch}, steps={args.steps}, budget={base.top_p:.0%} per step, "
          f"signal={args.signal}, care lr={base.lr:g}, warm-up={base.warmup_steps}, seeds {seeds}; "
          "median [min-max] over the seeds; ratios against the majority-vote anchor on the same stream and seed")
    print(f"{'stream':<7} {'wrong maj':<20} {'policy':<14} {'label acc':<21} {'acc/anchor':<23} "
          f"{'caught':<21} {'w-acc':<22} {'w-acc/anchor':<23} {'train':<21} {'secs':>5}")
    started = time.perf_counter()
    for stream_index, (name, offset) in enumerate(STREAMS.items()):
        rows: dict[str, dict[str, list[float]]] = {}
        shares: list[float] = []
        for seed in seeds:
            steps = make_stream(seed, stream_index, offset, args.steps, args.batch, args.signal)
            shares.append(float(np.mean([p.majority_wrong for step in steps for p in step])))
            params = replace(base, seed=seed)
            anchor: tuple[float, float, float] | None = None
            for policy in policies:
                t0 = time.perf_counter()
                acc, caught, wacc, trained = run_policy(policy, steps, params).row()
                anchor = anchor or (acc, caught, wacc)  # the first policy (None) is the anchor
                label = "majority vote" if policy is None else policy.value
                row = rows.setdefault(label, {"acc": [], "ratio": [], "caught": [], "wacc": [], "wratio": [],
                                              "train": [], "secs": []})
                row["train"].append(trained)
                row["acc"].append(acc)
                row["ratio"].append(acc / anchor[0])
                row["caught"].append(caught)
                row["wacc"].append(wacc)
                row["wratio"].append(wacc / anchor[2])
                row["secs"].append(time.perf_counter() - t0)
        for label, row in rows.items():
            print(f"{name:<7} {spread(shares):<20} {label:<14} {spread(row['acc']):<21} "
                  f"{spread(row['ratio'], percent=False):<23} {spread(row['caught']):<21} {spread(row['wacc']):<22} "
                  f"{spread(row['wratio'], percent=False):<23} {spread(row['train']):<21} "
                  f"{float(np.median(row['secs'])):>5.1f}")
    print(f"total {time.perf_counter() - started:.1f}s")


if __name__ == "__main__":
    main()
