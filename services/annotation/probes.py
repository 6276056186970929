"""Probe training data: bought labels turned into per-rollout correctness on stored rollout groups.

The CARE probes (``care``) learn only from bought labels: ``unseen_labelled_groups`` collects the
labels a project's selector has not seen, ``rollout_correctness`` scores each rollout against the
label once per answer cluster, and ``stored_view`` / ``history_loader`` give the probes the stored
groups' features (replayed history included).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from services.annotation.care import GroupView
from services.annotation.care.selector import HistoryLoader
from services.annotation.equivalence import answers_equivalent
from services.annotation.models import (
    AnnotationProject,
    LabelKind,
    PseudoLabel,
    Purchase,
    PurchaseStatus,
    RolloutGroup,
)


@dataclass
class LabelledGroup:
    """A bought, answered group: what the probes train on."""

    group: RolloutGroup
    clusters: list[list[int]]
    correct: list[bool]


def rollout_correctness(answers: list[str | None], clusters: list[list[int]], label: str) -> list[bool]:
    """r_j = 1[answer_j ≡ GT], decided once per cluster (its members are equivalent)."""
    correct = [False] * len(answers)
    for members in clusters:
        if answers_equivalent(answers[members[0]], label):
            for index in members:
                correct[index] = True
    return correct


def unseen_labelled_groups(session: Session, project: AnnotationProject, now: datetime) -> list[LabelledGroup]:
    """Bought labels the selector has not learnt from yet, as training examples; marks them observed.

    Ambiguous labels carry no ground truth: they are marked observed but give no example.
    """
    rows = session.execute(
        select(Purchase, RolloutGroup, PseudoLabel)
        .join(RolloutGroup, RolloutGroup.id == Purchase.rollout_group_id)
        .join(PseudoLabel, PseudoLabel.rollout_group_id == Purchase.rollout_group_id)
        .where(Purchase.annotation_project_id == project.id, Purchase.status == PurchaseStatus.labelled,
               Purchase.observed_at.is_(None))
        .order_by(Purchase.label_seq)).all()
    examples = []
    for purchase, group, pseudo in rows:
        purchase.observed_at = now
        if purchase.label_kind is not LabelKind.answer or purchase.label is None:
            continue
        clusters = [c["members"] for c in pseudo.clusters]
        examples.append(LabelledGroup(group=group, clusters=clusters,
                                      correct=rollout_correctness(group.answers, clusters, purchase.label)))
    return examples


def stored_view(group: RolloutGroup, clusters: list[list[int]]) -> GroupView:
    """A stored rollout group (float32 feature bytes) as the probes see it."""
    width = group.feature_dim
    prompt = rollouts = None
    if width is not None and group.prompt_features is not None and group.rollout_features is not None:
        prompt = np.frombuffer(group.prompt_features, dtype=np.float32).reshape(width)
        rollouts = np.frombuffer(group.rollout_features, dtype=np.float32).reshape(group.n, width)
    return GroupView(n=group.n, clusters=clusters, prompt_features=prompt, rollout_features=rollouts,
                     response_lengths=group.response_lengths, mean_token_probs=group.mean_token_probs,
                     known=True)


def history_loader(session: Session, annotation_project_id: str) -> HistoryLoader:
    """Loads replayed groups (by rollout-group id) with their clusters for probe training."""

    def load(keys: list[str]) -> dict[str, GroupView]:
        rows = session.execute(select(RolloutGroup, PseudoLabel)
                               .join(PseudoLabel, PseudoLabel.rollout_group_id == RolloutGroup.id)
                               .where(RolloutGroup.annotation_project_id == annotation_project_id,
                                      RolloutGroup.id.in_(keys))).all()
        return {group.id: stored_view(group, [c["members"] for c in pseudo.clusters]) for group, pseudo in rows}

    return load
