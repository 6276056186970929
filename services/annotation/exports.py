"""Exports of labels: preference-pair labels as the pairs rubric_rm's CDRRM pipeline reads.

One line per finished task whose final label (unanimous, or a reviewer's adjudication) answers the
preference question with A or B, in the label feed's order:
``{"instruction", "response_a", "response_b", "winner", "instruction_id", "pair_id"}`` — the fields of
``services.rubric_rm.schemas.PreferencePair`` (``instruction_id`` is the trainer's prompt id, ``pair_id``
the purchase id). A and B are the two responses the annotators were shown
(``label_schema.preference_responses`` over the task's rollouts, recomputed from the stored rollouts
with the question's current ``source``). Ties are left out: that pipeline's winner is A or B only.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.annotation.label_schema import LabelSchema, PreferencePairQuestion, preference_responses
from services.annotation.models import Prompt, PseudoLabel, Purchase, PurchaseStatus, RolloutGroup
from services.common.errors import InvalidInput

EXPORT_BATCH = 500


def preference_question(schema: LabelSchema, question_id: str | None) -> PreferencePairQuestion:
    """The preference question to export: the one named, or the schema's only one."""
    found = [q for q in schema.questions if isinstance(q, PreferencePairQuestion)]
    if question_id is not None:
        found = [q for q in found if q.id == question_id]
        if not found:
            raise InvalidInput(f"question_id: {question_id!r} is not a preference_pair question of this project",
                               field="question_id")
    if not found:
        raise InvalidInput("this project's label schema has no preference_pair question", field="question_id")
    if len(found) > 1:
        raise InvalidInput("this project has several preference_pair questions: name one with question_id",
                           field="question_id")
    return found[0]


def pair_line(question: PreferencePairQuestion, values: dict[str, Any] | None, prompt: Prompt,
              completions: list[str] | None, clusters: list[dict[str, Any]] | None,
              pair_id: str) -> dict[str, str] | None:
    """One exported pair, or None (no A/B answer, a tie, or no two responses)."""
    answer = (values or {}).get(question.id)
    winner = answer.get("choice") if isinstance(answer, dict) else None
    if winner not in ("A", "B"):
        return None
    pair = preference_responses(completions, clusters or [], question.source)
    if pair is None:
        return None
    return {"instruction": prompt.text, "response_a": pair[0], "response_b": pair[1], "winner": str(winner),
            "instruction_id": prompt.external_id, "pair_id": pair_id}


def preference_pairs(session: Session, annotation_project_id: str, question: PreferencePairQuestion,
                     after: int = 0, limit: int = EXPORT_BATCH) -> tuple[list[dict[str, str]], int | None]:
    """One batch of pairs after feed position ``after``; the position to continue from (None: done)."""
    rows = session.execute(
        select(Purchase.id, Purchase.label_seq, Purchase.label_values, Prompt, RolloutGroup.completions,
               PseudoLabel.clusters)
        .join(Prompt, Prompt.id == Purchase.prompt_id)
        .join(RolloutGroup, RolloutGroup.id == Purchase.rollout_group_id)
        .outerjoin(PseudoLabel, PseudoLabel.rollout_group_id == Purchase.rollout_group_id)
        .where(Purchase.annotation_project_id == annotation_project_id, Purchase.status == PurchaseStatus.labelled,
               Purchase.label_seq > after)
        .order_by(Purchase.label_seq).limit(limit)).all()
    lines = [line for pid, _, values, prompt, completions, clusters in rows
             if (line := pair_line(question, values, prompt, completions, clusters, pid)) is not None]
    return lines, (int(rows[-1][1]) if len(rows) == limit else None)


def jsonl(lines: list[dict[str, str]]) -> str:
    return "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)


def stream_pairs(fetch: Any) -> Iterator[str]:
    """JSONL text, batch by batch: ``fetch(after) -> (lines, next position or None)``."""
    after: int | None = 0
    while after is not None:
        lines, after = fetch(after)
        if lines:
            yield jsonl(lines)
