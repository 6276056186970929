"""Selection: the project's CARE selector, loaded from and saved to its ``SelectorState`` row.

``Selector`` turns stored rows and a step's input into the pure ``care`` views: ``decide`` scores
and selects a step's groups (never with ground truth, except the evaluation-only ``oracle_cag``),
``learn_new_labels`` trains the probes on labels bought since.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
from sqlalchemy.orm import Session

from services.annotation.care import CareSelector, Decision, GroupView, LabelledView
from services.annotation.care.params import care_params_from
from services.annotation.care.selector import HistoryLoader
from services.annotation.ingestion import Vote
from services.annotation.models import AnnotationProject, SelectorState
from services.annotation.probes import (
    LabelledGroup,
    history_loader,
    rollout_correctness,
    stored_view,
    unseen_labelled_groups,
)
from services.annotation.schemas import RolloutGroupIn


@dataclass
class GroupInput:
    """One rollout group as the policy sees it (never with ground truth)."""

    group: RolloutGroupIn
    vote: Vote
    known: bool  # this prompt's label was bought at an earlier step


class Selector:
    """The project's selector behind ``ingest_step``: turns stored rows into the pure ``care`` views."""

    def __init__(self, core: CareSelector, history: HistoryLoader | None = None) -> None:
        self.core = core
        self.history = history

    def decide(self, inputs: list[GroupInput], *, step: int, oracle_answers: list[str | None] | None) -> Decision:
        """Score and select a step's groups. ``oracle_answers`` (hidden answer key) is passed for
        ``oracle_cag`` only; every other policy decides without ground truth."""
        truth = None
        if oracle_answers is not None:
            truth = [None if answer is None else rollout_correctness(i.group.answers, i.vote.clusters, answer)
                     for i, answer in zip(inputs, oracle_answers, strict=True)]
        return self.core.decide([_input_view(i) for i in inputs], step=step, truth=truth)

    def observe(self, examples: list[LabelledGroup]) -> None:
        if examples:
            self.core.observe([LabelledView(key=e.group.id, view=stored_view(e.group, e.clusters),
                                            correct=e.correct) for e in examples], self.history)

    def learn_new_labels(self, session: Session, project: AnnotationProject, now: datetime) -> None:
        """Train on the project's bought labels this selector has not seen yet."""
        self.observe(unseen_labelled_groups(session, project, now))


def _input_view(item: GroupInput) -> GroupView:
    group = item.group
    return GroupView(
        n=len(group.answers), clusters=item.vote.clusters,
        prompt_features=None if group.prompt_features is None else np.asarray(group.prompt_features, np.float32),
        rollout_features=None if group.rollout_features is None else np.asarray(group.rollout_features, np.float32),
        response_lengths=group.response_lengths, mean_token_probs=group.mean_token_probs, known=item.known)


def load_selector(session: Session, project: AnnotationProject) -> Selector:
    """The project's selector from its ``SelectorState`` row (a fresh one before the first step)."""
    params = care_params_from(project.care_params)
    row = session.get(SelectorState, project.id)
    if row is None:
        core = CareSelector(project.policy, params, project.rollouts_per_prompt)
    else:
        core = CareSelector.from_bytes(row.state, policy=project.policy, params=params,
                                       n=project.rollouts_per_prompt)
    return Selector(core, history=history_loader(session, project.id))


def save_selector(session: Session, project: AnnotationProject, selector: Selector, now: datetime) -> None:
    data = selector.core.to_bytes()
    row = session.get(SelectorState, project.id)
    if row is None:
        session.add(SelectorState(annotation_project_id=project.id, policy=project.policy.value, state=data,
                                  updated_at=now))
    else:
        row.policy, row.state, row.updated_at = project.policy.value, data, now
