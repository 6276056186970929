"""How the reviewer screen shows a label: one short text per question, side by side per annotator."""

from __future__ import annotations

from typing import Any

from services.annotation.label_schema import (
    LabelSchema,
    MathAnswerQuestion,
    MultiLabelQuestion,
    PreferencePairQuestion,
    Question,
    RankingQuestion,
    RatingQuestion,
)
from services.annotation.models import LabelKind
from services.annotation.schemas import AnnotationSummary, CandidateOut

EMPTY = "—"


def shown(question: Question, value: Any, candidates: list[CandidateOut]) -> str:
    """One question's answer as text: a math answer (or "ambiguous"), the labels, the point, the order
    (items joined by ">"), the preference (with its rationale)."""
    if value is None:
        return EMPTY
    if isinstance(question, MathAnswerQuestion):
        text = "ambiguous" if value.get("kind") == "ambiguous" else str(value.get("answer") or EMPTY)
        return text + (f" — {value['rationale']}" if value.get("rationale") else "")
    if isinstance(question, MultiLabelQuestion):
        return ", ".join(value) if value else "none"
    if isinstance(question, RatingQuestion):
        return f"{value:g}"
    if isinstance(question, RankingQuestion):
        items = question.items if question.items is not None else [c.answer for c in candidates]
        return " > ".join(items[i] if 0 <= i < len(items) else str(i) for i in value)
    if isinstance(question, PreferencePairQuestion):
        choice = "tie" if value.get("choice") == "tie" else f"{value.get('choice')} better"
        return choice + (f" — {value['rationale']}" if value.get("rationale") else "")
    return str(value)


def label_cells(schema: LabelSchema, label: AnnotationSummary, candidates: list[CandidateOut]) -> list[str]:
    """A label's cells in the schema's question order. A label from before 0014 has no values: its
    math answer comes from the answer columns."""
    values = dict(label.values or {})
    math = schema.math
    if math is not None and math.id not in values:
        values[math.id] = {"kind": label.kind.value, "rationale": label.rationale,
                           "answer": label.answer if label.kind is LabelKind.answer else None}
    return [shown(q, values.get(q.id), candidates) for q in schema.questions]
