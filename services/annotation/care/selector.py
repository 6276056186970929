"""A project's selector: scores a step's groups under its policy, and (CARE) trains its probes online.

State (probe and optimiser state dicts, replay buffer, step counters) round-trips through bytes
(``torch.save`` into a ``BytesIO``) for the ``SelectorState`` table. The replay buffer holds group
keys and their labels, not features: features stay in the rollout-group rows, and a loader
brings the sampled history back, so the state stays small with 4096-wide hidden states.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from services.annotation.care import acquisition as acq
from services.annotation.care import probes
from services.annotation.care.cag import cost_table, expected_gap
from services.annotation.care.features import ROLLOUT_EXTRAS, GroupView, LabelledView, labels
from services.annotation.care.params import CareParams
from services.annotation.models import Policy
from services.common.errors import InvalidInput

STATE_VERSION = 1
HistoryLoader = Callable[[list[str]], dict[str, GroupView]]


@dataclass
class Decision:
    """A policy's verdict on one step's groups (index-aligned with the batch)."""

    scores: list[float | None]
    reliability: list[float | None]
    reliable: list[bool]
    selected: list[bool]
    pseudo_weights: list[float] = field(default_factory=list)  # weight if the prompt stays unlabelled

    def ranked_selection(self) -> list[int]:
        """Selected groups, highest score first (ties: batch order)."""
        chosen = [i for i, s in enumerate(self.selected) if s]
        def key(i: int) -> tuple[float, int]:
            score = self.scores[i]
            return (-(score if score is not None else -math.inf), i)

        return sorted(chosen, key=key)

    def final_weights(self, *, bought: set[int], labelled: set[int]) -> list[float]:
        """Per-prompt advantage weights: 1 where ground truth is bought (now) or known (labelled);
        otherwise the policy's pseudo-label weight (CARE: clip(S, 0, 1) if reliable, else 0)."""
        return [acq.advantage_weight(has_label=i in bought or i in labelled, pseudo_weight=w)
                for i, w in enumerate(self.pseudo_weights)]


@dataclass
class BufferEntry:
    key: str
    correct: list[bool]
    y1: int
    y2: int


class CareSelector:
    """Selection for one project. Baselines are stateless; CARE keeps probes and a replay buffer."""

    def __init__(self, policy: Policy, params: CareParams, n: int) -> None:
        self.policy, self.params, self.n = Policy(policy), params, n
        self.steps_seen = 0
        self.observations = 0
        self.feature_dim: int | None = None
        self.stage1: probes.Probe | None = None
        self.stage2: probes.Probe | None = None
        self.opt1: torch.optim.AdamW | None = None
        self.opt2: torch.optim.AdamW | None = None
        self.buffer: list[BufferEntry] = []

    # ------------------------------------------------------------------------------- probes

    def _check_dim(self, dim: int, where: str = "groups[0].prompt_features") -> None:
        if self.feature_dim is not None and dim != self.feature_dim:
            raise InvalidInput(f"feature vectors have width {dim}, but this project's probes were built for "
                               f"width {self.feature_dim}", field=where)

    def _ensure_probes(self, dim: int) -> None:
        self._check_dim(dim)
        if self.stage1 is not None:
            return
        self.feature_dim = dim
        p = self.params
        sizes = dict(prompt_hidden=p.prompt_hidden, response_hidden=p.response_hidden,
                     response_out=p.response_out, head_hidden=p.head_hidden)
        prompt_dim, response_dim = dim + 1 + 2 * self.n, dim + ROLLOUT_EXTRAS
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(p.seed)  # the same project seed gives the same initial probes
            self.stage1 = probes.Probe(prompt_dim, response_dim, 2, **sizes)
            self.stage2 = probes.Probe(prompt_dim, response_dim, self.n + 1, **sizes)
        self.opt1 = torch.optim.AdamW(self.stage1.parameters(), lr=p.lr, weight_decay=p.weight_decay)
        self.opt2 = torch.optim.AdamW(self.stage2.parameters(), lr=p.lr, weight_decay=p.weight_decay)

    # ------------------------------------------------------------------------------ decide

    def decide(self, views: list[GroupView], *, step: int, truth: list[list[bool] | None] | None = None) -> Decision:
        """Score, gate and select one step's groups. ``truth`` (per-rollout correctness from the hidden
        answer key) is read by ``oracle_cag`` only, which is for evaluation."""
        p = self.params
        known = [v.known for v in views]
        if self.policy is Policy.care:
            decision = self._decide_care(views)
        else:
            if self.policy is Policy.random:
                scores = acq.random_scores(len(views), p.seed, step)
            elif self.policy is Policy.low_consensus:
                scores = np.array([acq.low_consensus_score(v) for v in views])
            elif self.policy is Policy.entropy:
                scores = np.array([acq.cluster_entropy(v) for v in views])
            elif self.policy is Policy.low_token_prob:
                missing = next((i for i, v in enumerate(views) if not v.mean_token_probs), None)
                if missing is not None:
                    raise InvalidInput("policy low_token_prob needs each rollout's mean token probability",
                                       field=f"groups[{missing}].mean_token_probs")
                scores = np.array([acq.low_token_prob_score(v) for v in views])
            else:
                if truth is None or any(t is None for t in truth):
                    raise InvalidInput("oracle_cag needs the answer key of every prompt in the step", field="policy")
                scores = np.array([acq.oracle_cag(v, t) for v, t in zip(views, truth, strict=True)])  # type: ignore[arg-type]
            selected = acq.top_p_select(scores, [not k for k in known], p.top_p)
            unbought = acq.baseline_pseudo_weight(mask_non_gt=p.mask_non_gt)
            decision = Decision(scores=[float(s) for s in scores], reliability=[None] * len(views),
                                reliable=[False] * len(views), selected=selected,
                                pseudo_weights=[unbought] * len(views))
        self.steps_seen += 1
        return decision

    def _decide_care(self, views: list[GroupView]) -> Decision:
        p = self.params
        dims = {v.feature_dim for v in views}
        if len(dims) > 1:
            raise InvalidInput(f"feature vectors must all have one width; found {sorted(dims)}",
                               field="groups[0].prompt_features")
        dim = dims.pop()
        self._ensure_probes(dim)
        assert self.stage1 is not None and self.stage2 is not None
        batch = probes.make_batch(views, dim, p.length_scale)
        reliability, p_c = probes.predict(self.stage1, self.stage2, batch)
        gaps = expected_gap(p_c, np.stack([cost_table(self.n, v.majority_size) for v in views]))
        reliable = acq.reliability_gate(reliability, p.reliable_p, warmed_up=self.steps_seen >= p.warmup_steps)
        eligible = [not r and not v.known for r, v in zip(reliable, views, strict=True)]
        selected = acq.top_p_select(gaps, eligible, p.top_p)
        return Decision(scores=[float(g) for g in gaps], reliability=[float(r) for r in reliability],
                        reliable=reliable, selected=selected,
                        pseudo_weights=[acq.care_pseudo_weight(float(g), r) for g, r in zip(gaps, reliable, strict=True)])

    # ----------------------------------------------------------------------------- observe

    def observe(self, examples: list[LabelledView], history: HistoryLoader | None = None) -> None:
        """Learn from newly labelled groups: add them to the replay buffer and (CARE) train the probes
        for ``train_steps`` AdamW steps on the new examples plus ``history_samples`` replayed ones."""
        if not examples:
            return
        p = self.params
        entries = []
        for example in examples:
            y1, y2 = labels(example.view, example.correct)
            entries.append(BufferEntry(example.key, list(example.correct), y1, y2))
        if self.policy is Policy.care and p.train_steps > 0:
            self._train(examples, entries, history)
        fresh = {e.key for e in entries}
        self.buffer = [e for e in self.buffer if e.key not in fresh] + entries
        self.buffer = self.buffer[-p.buffer_size:]  # first in, first out
        self.observations += 1

    def _replayed(self, exclude: set[str], history: HistoryLoader | None) -> list[LabelledView]:
        pool = [e for e in self.buffer if e.key not in exclude]
        take = min(self.params.history_samples, len(pool))
        if history is None or take == 0:
            return []
        rng = np.random.default_rng([self.params.seed, self.observations])
        picked = [pool[i] for i in rng.choice(len(pool), size=take, replace=False)]
        views = history([e.key for e in picked])
        return [LabelledView(e.key, views[e.key], e.correct) for e in picked if e.key in views]

    def _train(self, examples: list[LabelledView], entries: list[BufferEntry], history: HistoryLoader | None) -> None:
        p = self.params
        dim = examples[0].view.feature_dim
        self._ensure_probes(dim)
        assert self.stage1 and self.stage2 and self.opt1 and self.opt2
        batch_views = list(examples) + self._replayed({e.key for e in entries}, history)
        batch_views = [b for b in batch_views if b.view.feature_dim == dim and b.view.n == self.n]
        if len(batch_views) < 2:
            return  # batch norm needs two samples; these labels wait in the buffer for a later batch
        batch = probes.make_batch([b.view for b in batch_views], dim, p.length_scale,
                                  correct=[b.correct for b in batch_views])
        known = {e.key: e for e in self.buffer} | {e.key: e for e in entries}
        counts1 = np.bincount([e.y1 for e in known.values()], minlength=2)
        counts2 = np.bincount([e.y2 for e in known.values()], minlength=self.n + 1)[: self.n + 1]
        w1 = torch.tensor(probes.class_weights(counts1, p.class_weight_min, p.class_weight_max), dtype=torch.float32)
        w2 = torch.tensor(probes.class_weights(counts2, p.class_weight_min, p.class_weight_max), dtype=torch.float32)
        self.stage1.train()
        self.stage2.train()
        for _ in range(p.train_steps):
            probes.train_step(self.stage1, self.opt1, probes.stage1_loss(self.stage1, batch, w1, p.aux_weight),
                              p.grad_clip)
            probes.train_step(self.stage2, self.opt2, probes.stage2_loss(self.stage2, batch, w2), p.grad_clip)

    # ------------------------------------------------------------------------------- state

    def to_bytes(self) -> bytes:
        """``torch.save`` of the probe and optimiser state dicts, the buffer and the counters."""
        state: dict[str, object] = {
            "version": STATE_VERSION, "policy": self.policy.value, "n": self.n,
            "architecture": list(self.params.architecture()), "feature_dim": self.feature_dim,
            "steps_seen": self.steps_seen, "observations": self.observations,
            "buffer": {"keys": [e.key for e in self.buffer],
                       "correct": torch.tensor([e.correct for e in self.buffer], dtype=torch.bool).reshape(-1, self.n),
                       "y1": torch.tensor([e.y1 for e in self.buffer], dtype=torch.long),
                       "y2": torch.tensor([e.y2 for e in self.buffer], dtype=torch.long)},
        }
        if self.stage1 is not None:
            assert self.stage2 is not None and self.opt1 is not None and self.opt2 is not None
            state |= {"stage1": self.stage1.state_dict(), "stage2": self.stage2.state_dict(),
                      "opt1": self.opt1.state_dict(), "opt2": self.opt2.state_dict()}
        out = io.BytesIO()
        torch.save(state, out)
        return out.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, *, policy: Policy, params: CareParams, n: int) -> CareSelector:
        """Restore a selector. A state for another n drops its buffer; another probe architecture
        drops the probes (they are rebuilt, then retrained from the kept buffer)."""
        state = torch.load(io.BytesIO(data), weights_only=True)
        selector = cls(policy, params, n)
        if state.get("version") != STATE_VERSION or state["n"] != n:
            return selector
        selector.steps_seen, selector.observations = int(state["steps_seen"]), int(state["observations"])
        buffer = state["buffer"]
        selector.buffer = [BufferEntry(k, [bool(x) for x in c], int(a), int(b)) for k, c, a, b in
                           zip(buffer["keys"], buffer["correct"].tolist(), buffer["y1"].tolist(),
                               buffer["y2"].tolist(), strict=True)][-params.buffer_size:]
        if "stage1" in state and list(state["architecture"]) == list(params.architecture()):
            selector._ensure_probes(int(state["feature_dim"]))
            assert selector.stage1 and selector.stage2 and selector.opt1 and selector.opt2
            selector.stage1.load_state_dict(state["stage1"])
            selector.stage2.load_state_dict(state["stage2"])
            selector.opt1.load_state_dict(state["opt1"])
            selector.opt2.load_state_dict(state["opt2"])
            for opt in (selector.opt1, selector.opt2):  # the project's current lr / decay win over saved ones
                for group in opt.param_groups:
                    group["lr"], group["weight_decay"] = params.lr, params.weight_decay
        return selector
