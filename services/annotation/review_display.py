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
from services.annotation.schemas import AnnotationSummary, CandidateOut, LabelSnapshot

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


def snapshot_cells(schema: LabelSchema, snap: LabelSnapshot, candidates: list[CandidateOut]) -> list[str]:
    """A stored label value (a history entry) as one short text per question."""
    summary = AnnotationSummary(annotator_id="", username="", kind=snap.kind, answer=snap.answer,
                                rationale=snap.rationale, values=snap.values)
    return label_cells(schema, summary, candidates)


def snapshot_text(schema: LabelSchema, snap: LabelSnapshot, candidates: list[CandidateOut]) -> str:
    """The same on one line: "answer: 4 · topic: algebra" (the question's prompt or id before each)."""
    cells = snapshot_cells(schema, snap, candidates)
    if len(cells) == 1:
        return cells[0]
    return " · ".join(f"{q.prompt or q.id}: {cell}" for q, cell in zip(schema.questions, cells, strict=True))


def form_of(schema: LabelSchema, snap: LabelSnapshot) -> dict[str, Any]:
    """A stored label as the label form's fields (the edit page starts from it): the math answer's
    choice/answer/ambiguous/rationale, and ``q-<id>`` (and ``q-<id>-rationale``) for the other questions."""
    values = dict(snap.values or {})
    form: dict[str, Any] = {}
    for question in schema.questions:
        value = values.get(question.id)
        name = f"q-{question.id}"
        if isinstance(question, MathAnswerQuestion):
            kind = value.get("kind") if isinstance(value, dict) else snap.kind.value
            answer = value.get("answer") if isinstance(value, dict) else snap.answer
            candidate = value.get("candidate") if isinstance(value, dict) else snap.candidate_index
            rationale = value.get("rationale") if isinstance(value, dict) else snap.rationale
            form["ambiguous"] = kind == "ambiguous"
            form["choice"] = f"candidate-{candidate}" if candidate is not None else ("own" if answer else "")
            form["answer"] = answer if candidate is None and answer else ""
            form["rationale"] = rationale or ""
        elif value is None:
            continue
        elif isinstance(question, MultiLabelQuestion):
            form[name] = [str(v) for v in value]
        elif isinstance(question, RatingQuestion):
            form[name] = f"{float(value):g}"
        elif isinstance(question, RankingQuestion):
            form[name] = ",".join(str(i) for i in value)
        elif isinstance(question, PreferencePairQuestion):
            form[name] = value.get("choice") or ""
            form[f"{name}-rationale"] = value.get("rationale") or ""
        else:
            form[name] = str(value)
    return form
