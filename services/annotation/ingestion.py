"""Ingestion: a step's prompts and rollout groups checked, stored, and voted on (no selection yet).

``store_step`` validates shapes (n answers per group, one feature width across the project) and
stores prompts, rollout groups and their pseudo-labels: the majority vote over answer clusters.
What the policy then buys is ``steps.ingest_step``'s part.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
from sqlalchemy import exists, select
from sqlalchemy.orm import Session

from services.annotation import answer_key
from services.annotation.equivalence import cluster_answers
from services.annotation.locking import lock_project
from services.annotation.models import (
    AnnotationProject,
    AnswerSource,
    Prompt,
    PseudoLabel,
    RolloutGroup,
    Task,
)
from services.annotation.schemas import PromptIn, PromptsOut, RolloutGroupIn, StepIn
from services.common.errors import Conflict, InvalidInput

# -------------------------------------------------------------------------------------- prompts


def register_prompts(session: Session, annotation_project_id: str, prompts: list[PromptIn]) -> PromptsOut:
    """Add prompts under the trainer's ids; a known id with the same text is left as it is."""
    lock_project(session, annotation_project_id)  # concurrent registrations of one id must not race
    seen: dict[str, int] = {}
    for index, prompt in enumerate(prompts):
        if prompt.id in seen:
            raise InvalidInput(f"prompt id {prompt.id!r} appears twice (also at prompts[{seen[prompt.id]}])",
                               field=f"prompts[{index}].id")
        seen[prompt.id] = index
    existing = prompts_by_external_id(session, annotation_project_id, list(seen))
    created = 0
    for index, prompt in enumerate(prompts):
        known = existing.get(prompt.id)
        if known is None:
            session.add(Prompt(annotation_project_id=annotation_project_id, external_id=prompt.id, text=prompt.text))
            created += 1
        elif known.text != prompt.text:
            raise Conflict(f"prompt {prompt.id!r} is already registered with a different text",
                           field=f"prompts[{index}].text", code="prompt_text_mismatch")
    session.flush()
    return PromptsOut(created=created, existing=len(prompts) - created)


def prompts_by_external_id(session: Session, annotation_project_id: str, ids: list[str]) -> dict[str, Prompt]:
    found: dict[str, Prompt] = {}
    for start in range(0, len(ids), answer_key.CHUNK):
        chunk = ids[start:start + answer_key.CHUNK]
        for prompt in session.scalars(select(Prompt).where(Prompt.annotation_project_id == annotation_project_id,
                                                           Prompt.external_id.in_(chunk))):
            found[prompt.external_id] = prompt
    return found


# ------------------------------------------------------------------------------------ rollout groups


@dataclass
class Vote:
    """The majority vote of one rollout group."""

    clusters: list[list[int]]
    pseudo_label: str | None
    majority_ratio: float
    valid_ratio: float


def vote(answers: list[str | None]) -> Vote:
    """Cluster by equivalence; majority = largest cluster (ties: earliest); ratio = size / n."""
    clusters = cluster_answers(answers)
    n = len(answers)
    valid = sum(1 for a in answers if a is not None and a.strip())
    if not clusters:
        return Vote(clusters=[], pseudo_label=None, majority_ratio=0.0, valid_ratio=valid / n)
    majority = clusters[0]
    pseudo = answers[majority[0]]
    return Vote(clusters=clusters, pseudo_label=pseudo, majority_ratio=len(majority) / n, valid_ratio=valid / n)


def _check_group_shapes(project: AnnotationProject, groups: list[RolloutGroupIn]) -> int | None:
    """Every group has n answers and matching per-rollout lists; features all-or-none with one width."""
    n = project.rollouts_per_prompt
    seen: dict[str, int] = {}
    widths: set[int] = set()
    with_features = [g.prompt_features is not None or g.rollout_features is not None for g in groups]
    for index, group in enumerate(groups):
        where = f"groups[{index}]"
        if group.prompt_id in seen:
            raise InvalidInput(f"prompt {group.prompt_id!r} appears twice in this step (also at "
                               f"groups[{seen[group.prompt_id]}])", field=f"{where}.prompt_id")
        seen[group.prompt_id] = index
        if len(group.answers) != n:
            raise InvalidInput(f"has {len(group.answers)} answers, but this project's groups have n = {n} "
                               "rollouts (rollouts_per_prompt)", field=f"{where}.answers")
        for name in ("completions", "response_lengths", "mean_token_probs", "rollout_features"):
            values = getattr(group, name)
            if values is not None and len(values) != n:
                raise InvalidInput(f"has {len(values)} entries but the group has n = {n} rollouts",
                                   field=f"{where}.{name}")
        if any(with_features) and not with_features[index]:
            raise InvalidInput("other groups of this step carry features; give prompt_features and "
                               "rollout_features for every group or for none", field=f"{where}.prompt_features")
        if with_features[index]:
            if group.prompt_features is None or group.rollout_features is None:
                missing = "prompt_features" if group.prompt_features is None else "rollout_features"
                raise InvalidInput("give both prompt_features and rollout_features", field=f"{where}.{missing}")
            widths.add(len(group.prompt_features))
            for row_index, row in enumerate(group.rollout_features):
                widths.add(len(row))
                if len(widths) > 1:
                    raise InvalidInput(f"feature vectors must all have one width; found {sorted(widths)}",
                                       field=f"{where}.rollout_features[{row_index}]")
            if len(widths) > 1:
                raise InvalidInput(f"feature vectors must all have one width; found {sorted(widths)}",
                                   field=f"{where}.prompt_features")
    return widths.pop() if widths else None


def _check_feature_width(session: Session, project: AnnotationProject, width: int | None) -> None:
    if width is None:
        return
    previous = session.scalar(select(RolloutGroup.feature_dim).where(
        RolloutGroup.annotation_project_id == project.id, RolloutGroup.feature_dim.is_not(None)).limit(1))
    if previous is not None and previous != width:
        raise InvalidInput(f"feature vectors have width {width}, but earlier steps of this project used "
                           f"{previous}; the probes need one width", field="groups[0].prompt_features")


def _resolve_prompts(session: Session, project: AnnotationProject, groups: list[RolloutGroupIn]) -> list[Prompt]:
    known = prompts_by_external_id(session, project.id, [g.prompt_id for g in groups])
    prompts = []
    for index, group in enumerate(groups):
        prompt = known.get(group.prompt_id)
        if prompt is None:
            if group.prompt_text is None:
                raise InvalidInput(f"unknown prompt {group.prompt_id!r}: register it with POST …/prompts or send "
                                   "its prompt_text", field=f"groups[{index}].prompt_id")
            prompt = Prompt(annotation_project_id=project.id, external_id=group.prompt_id, text=group.prompt_text)
            session.add(prompt)
        elif group.prompt_text is not None and group.prompt_text != prompt.text:
            raise Conflict(f"prompt {group.prompt_id!r} is registered with a different text",
                           field=f"groups[{index}].prompt_text", code="prompt_text_mismatch")
        prompts.append(prompt)
    session.flush()
    return prompts


def _float32(values: list[float] | list[list[float]] | None) -> bytes | None:
    return None if values is None else np.asarray(values, dtype=np.float32).tobytes()


@dataclass
class StoredStep:
    prompts: list[Prompt]
    groups: list[RolloutGroup]
    votes: list[Vote]
    key: dict[str, str]  # answer-key entries of these prompts (answer-key or oracle projects only)


def store_step(session: Session, project: AnnotationProject, body: StepIn, now: datetime, *,
               join_posted: bool = False) -> StoredStep:
    """Validate a step and store its prompts, rollout groups and pseudo-labels (no selection).

    A step already posted is refused, unless ``join_posted`` (honeypots join the newest step, so that their
    tasks look like its tasks); honeypot groups never count as posting a step."""
    width = _check_group_shapes(project, body.groups)
    gold = exists().where(Task.rollout_group_id == RolloutGroup.id, Task.honeypot.is_(True))
    if not join_posted and session.scalar(select(RolloutGroup.id).where(
            RolloutGroup.annotation_project_id == project.id, RolloutGroup.step == body.step, ~gold)
            .limit(1)) is not None:
        raise Conflict(f"step {body.step} was already posted to this project", field="step",
                       code="step_already_posted")
    _check_feature_width(session, project, width)
    prompts = _resolve_prompts(session, project, body.groups)
    external_ids = [p.external_id for p in prompts]
    key = answer_key.answers(session, project.id, external_ids) if answer_key.needed(project) else {}
    if answer_key.needed(project):
        why = ("answers its purchases" if project.answer_source is AnswerSource.answer_key
               else "the oracle_cag policy needs")
        for index, external_id in enumerate(external_ids):
            if external_id not in key:
                raise InvalidInput(f"prompt {external_id!r} has no entry in this project's answer key, which {why}",
                                   field=f"groups[{index}].prompt_id")
    groups, votes = [], []
    for group_in, prompt in zip(body.groups, prompts, strict=True):
        group = RolloutGroup(
            annotation_project_id=project.id, prompt_id=prompt.id, step=body.step, n=len(group_in.answers),
            answers=group_in.answers, completions=group_in.completions, response_lengths=group_in.response_lengths,
            mean_token_probs=group_in.mean_token_probs, prompt_features=_float32(group_in.prompt_features),
            rollout_features=_float32(group_in.rollout_features), feature_dim=width, created_at=now)
        session.add(group)
        groups.append(group)
        votes.append(vote(group_in.answers))
    session.flush()
    for group, result in zip(groups, votes, strict=True):
        session.add(PseudoLabel(rollout_group_id=group.id, answer=result.pseudo_label,
                                majority_ratio=result.majority_ratio, valid_ratio=result.valid_ratio,
                                clusters=[{"answer": group.answers[c[0]], "members": c} for c in result.clusters]))
    project.last_step = body.step if project.last_step is None else max(project.last_step, body.step)
    return StoredStep(prompts=prompts, groups=groups, votes=votes, key=key)
