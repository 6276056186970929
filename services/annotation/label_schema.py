"""Label schemas: the questions an annotation project asks about each task, and checking answers to them.

A schema is a list of questions, each with an ``id``, a ``type``, a ``prompt``, a ``required`` flag
and the options of its type (a discriminated union on ``type``):

==================  =====================================================  ==================================
type                options                                                a value (``values[question id]``)
==================  =====================================================  ==================================
``math_answer``     ``free_form``, ``candidates``, ``ambiguous``,          ``{"candidate": i}``, ``{"answer":
                    ``rationale`` (today's math form; the default)         "x^2"}`` or ``{"ambiguous": true}``
                                                                           (+ ``"rationale"``); a bare string
                                                                           is an answer
``single_label``    ``choices`` (2–50 distinct strings)                    one of the choices
``multi_label``     ``choices``, ``min_selected``, ``max_selected``        a list of distinct choices
``rating``          ``min``, ``max``, ``step``, ``labels`` (point → text),  a number on the grid
                    ``level`` (``ordinal`` | ``interval``)                 ``min + j·step``
``ranking``         ``items`` (null: the task's candidate answers)         a permutation of the item indexes,
                                                                           best first
``free_text``       ``max_length``                                         a string
``preference_pair`` ``allow_tie``, ``rationale``, ``rubric_hints``,        ``"A"``/``"B"``/``"tie"`` or
                    ``source`` (``completions`` | ``candidates``)          ``{"choice": …, "rationale": …}``
==================  =====================================================  ==================================

Choices the issue left open, and what this module does:

* At most one ``math_answer`` question, and it is always required: it is the label CARE purchases
  are answered with, so it fills the annotation's ``answer`` column (agreement, the label feed and
  adjudication keep working as before). A project without one is a plain labelling queue.
* The legacy schema (``{"free_form", "candidates", "ambiguous", "rationale"}``, or ``{}``) is read as
  one ``math_answer`` question with id ``answer``; stored rows are converted by migration 0014.
* A question that is not required may be left out (or sent as null); an unknown question id is refused.
* A preference pair's two responses come from the task (:func:`preference_responses`): the first
  completion of each of the two largest answer clusters (so A and B differ), else the first two
  completions, else the first two candidate answers. Fewer than two: the question does not apply
  and must be left empty.
* Rating points are checked on the grid with a tolerance of 1e-9 · step; at most 201 points.

Everything here is pure: no database, no clock.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from services.common.errors import InvalidInput
from services.common.validation import StoredText, text_problem

QUESTION_ID = r"^[A-Za-z][A-Za-z0-9_\-]{0,63}$"
MAX_QUESTIONS = 50
MAX_CHOICES = 50
MAX_RATING_POINTS = 201
MATH_QUESTION_ID = "answer"
LEGACY_FIELDS = ("free_form", "candidates", "ambiguous", "rationale")
QuestionType = Literal["math_answer", "single_label", "multi_label", "rating", "ranking", "free_text",
                       "preference_pair"]
QUESTION_TYPES: tuple[str, ...] = QuestionType.__args__  # type: ignore[attr-defined]
Rationale = Literal["off", "optional", "required"]
ChoiceText = Annotated[StoredText, Field(min_length=1, max_length=500)]


class _Question(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=QUESTION_ID, description="Names the question in `values` (letters, digits, _ and -).")
    prompt: StoredText = Field(default="", max_length=2000, description="What the annotator is asked.")
    required: bool = Field(default=True, description="A submission must answer it.")
    guidelines: StoredText = Field(default="", max_length=20_000, description=(
        "Markdown shown with the question (rendered like the project's guidelines)."))


def _distinct(values: Sequence[str], what: str) -> None:
    seen: set[str] = set()
    for index, value in enumerate(values):
        if value in seen:
            raise ValueError(f"{what} {index} ({value!r}) appears twice")
        seen.add(value)


class MathAnswerQuestion(_Question):
    """Today's math form: pick a rollout's answer, type one (LaTeX), or flag the prompt ambiguous."""

    type: Literal["math_answer"] = "math_answer"
    free_form: bool = Field(default=True, description="A free-form answer (LaTeX allowed).")
    candidates: bool = Field(default=True, description="Pick one of the rollouts' candidate answers.")
    ambiguous: bool = Field(default=True, description="Flag the prompt as ambiguous / unanswerable.")
    rationale: Rationale = "optional"

    @model_validator(mode="after")
    def _some_answer(self) -> MathAnswerQuestion:
        if not (self.free_form or self.candidates):
            raise ValueError("at least one of free_form or candidates must be allowed")
        if not self.required:
            raise ValueError("a math_answer question is always required (it is the purchase's label)")
        return self


class SingleLabelQuestion(_Question):
    type: Literal["single_label"]
    choices: list[ChoiceText] = Field(min_length=2, max_length=MAX_CHOICES)

    @field_validator("choices")
    @classmethod
    def _unique(cls, choices: list[str]) -> list[str]:
        _distinct(choices, "choice")
        return choices


class MultiLabelQuestion(_Question):
    type: Literal["multi_label"]
    choices: list[ChoiceText] = Field(min_length=1, max_length=MAX_CHOICES)
    min_selected: int = Field(default=0, ge=0, description="Fewest choices a submission picks.")
    max_selected: int | None = Field(default=None, ge=1, description="Most choices a submission picks (null: all).")

    @field_validator("choices")
    @classmethod
    def _unique(cls, choices: list[str]) -> list[str]:
        _distinct(choices, "choice")
        return choices

    @model_validator(mode="after")
    def _bounds(self) -> MultiLabelQuestion:
        most = len(self.choices) if self.max_selected is None else self.max_selected
        if most > len(self.choices):
            raise ValueError(f"max_selected is {most} but there are only {len(self.choices)} choices")
        if self.min_selected > most:
            raise ValueError(f"min_selected ({self.min_selected}) is above max_selected ({most})")
        return self


def rating_points(low: float, high: float, step: float) -> list[float]:
    """The scale's points low, low + step, …, high (high must lie on the grid)."""
    count = (high - low) / step
    return [low + j * step for j in range(round(count) + 1)]


class RatingQuestion(_Question):
    type: Literal["rating"]
    min: float = Field(default=1, description="The lowest point.")
    max: float = Field(default=5, description="The highest point.")
    step: float = Field(default=1, gt=0, description="Distance between points.")
    labels: dict[str, StoredText] = Field(default_factory=dict, description=(
        "Text for some points, keyed by the point (e.g. {\"1\": \"wrong\", \"5\": \"perfect\"})."))
    level: Literal["ordinal", "interval"] = Field(default="ordinal", description=(
        "How agreement treats the points (Krippendorff's alpha with this level of measurement)."))

    @model_validator(mode="after")
    def _scale(self) -> RatingQuestion:
        for name in ("min", "max", "step"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number")
        if self.max <= self.min:
            raise ValueError(f"max ({self.max:g}) must be above min ({self.min:g})")
        count = (self.max - self.min) / self.step
        if abs(count - round(count)) > 1e-9 * max(1.0, count):
            raise ValueError(f"max - min ({self.max - self.min:g}) is not a whole number of steps of {self.step:g}")
        if round(count) + 1 > MAX_RATING_POINTS:
            raise ValueError(f"the scale has {round(count) + 1} points; at most {MAX_RATING_POINTS}")
        for key, text in self.labels.items():
            try:
                point = float(key)
            except ValueError:
                raise ValueError(f"labels: {key!r} is not a number") from None
            if on_grid(self, point) is None:
                raise ValueError(f"labels: {key!r} is not a point of the scale")
            if len(text) > 200:
                raise ValueError(f"labels: the text for {key!r} is longer than 200 characters")
        return self

    def scale(self) -> list[tuple[str, str]]:
        """Every point as the form writes it (``"%g"``), with its label text ("" where none)."""
        texts = {on_grid(self, float(key)): text for key, text in self.labels.items()}
        return [(f"{point:g}", texts.get(on_grid(self, point), ""))
                for point in rating_points(self.min, self.max, self.step)]


def on_grid(question: RatingQuestion, value: float) -> float | None:
    """``value`` snapped to the scale's point it names, or None when it is off the grid or out of range."""
    if not math.isfinite(value):
        return None
    position = (value - question.min) / question.step
    nearest = round(position)
    if abs(position - nearest) > 1e-9 * max(1.0, abs(position)) or not 0 <= nearest <= round(
            (question.max - question.min) / question.step):
        return None
    point = question.min + nearest * question.step
    return float(int(point)) if abs(point - round(point)) < 1e-12 else point


class RankingQuestion(_Question):
    type: Literal["ranking"]
    items: list[ChoiceText] | None = Field(default=None, min_length=2, max_length=MAX_CHOICES, description=(
        "The things to order; null ranks the task's candidate answers."))

    @field_validator("items")
    @classmethod
    def _unique(cls, items: list[str] | None) -> list[str] | None:
        if items is not None:
            _distinct(items, "item")
        return items


class FreeTextQuestion(_Question):
    type: Literal["free_text"]
    max_length: int = Field(default=2000, ge=1, le=100_000)


class PreferencePairQuestion(_Question):
    """Which of two responses to the task's prompt is better: A, B or (if allowed) a tie."""

    type: Literal["preference_pair"]
    allow_tie: bool = True
    rationale: Rationale = "optional"
    rubric_hints: list[Annotated[StoredText, Field(min_length=1, max_length=2000)]] = Field(
        default_factory=list, max_length=MAX_CHOICES, description="Criteria shown beside the pair.")
    source: Literal["completions", "candidates"] = Field(default="completions", description=(
        "Where A and B come from: the rollouts' full completions (falling back to candidate answers) or "
        "the candidate answers."))


Question = Annotated[MathAnswerQuestion | SingleLabelQuestion | MultiLabelQuestion | RatingQuestion
                     | RankingQuestion | FreeTextQuestion | PreferencePairQuestion, Field(discriminator="type")]


def default_questions() -> list[Question]:
    return [MathAnswerQuestion(id=MATH_QUESTION_ID, prompt="The final answer")]


def _from_legacy(data: Any) -> Any:
    """The pre-0014 schema (math-answer options at the top level, or ``{}``) as one math_answer question."""
    if not isinstance(data, Mapping) or "questions" in data:
        return data
    unknown = sorted(set(data) - set(LEGACY_FIELDS))
    if unknown:
        raise ValueError(f"unknown field {unknown[0]!r}: a label schema is {{\"questions\": [...]}}")
    return {"questions": [{"id": MATH_QUESTION_ID, "type": "math_answer", "prompt": "The final answer",
                           **dict(data)}]}


class LabelSchema(BaseModel):
    """The questions asked about every task of a project (default: one math_answer question)."""

    model_config = ConfigDict(extra="forbid")

    questions: list[Question] = Field(default_factory=default_questions, min_length=1, max_length=MAX_QUESTIONS)

    @model_validator(mode="before")
    @classmethod
    def _legacy(cls, data: Any) -> Any:
        return _from_legacy(data)

    @model_validator(mode="after")
    def _consistent(self) -> LabelSchema:
        seen: set[str] = set()
        for question in self.questions:
            if question.id in seen:
                raise ValueError(f"question id {question.id!r} appears twice")
            seen.add(question.id)
        if sum(isinstance(q, MathAnswerQuestion) for q in self.questions) > 1:
            raise ValueError("at most one math_answer question (it is the purchase's label)")
        return self

    @property
    def math(self) -> MathAnswerQuestion | None:
        return next((q for q in self.questions if isinstance(q, MathAnswerQuestion)), None)

    def question(self, question_id: str) -> Question | None:
        return next((q for q in self.questions if q.id == question_id), None)


def field_of(loc: Sequence[Any], prefix: str) -> str:
    """A pydantic error location inside a schema as the field the API names: the discriminator's tag
    (``questions.1.single_label.choices``) dropped, list indexes as ``[1]`` (the house style)."""
    out = prefix
    parts = list(loc)
    for position, part in enumerate(parts):
        if isinstance(part, int):
            out += f"[{part}]"
        elif position > 0 and isinstance(parts[position - 1], int) and part in QUESTION_TYPES:
            continue
        else:
            out += f".{part}"
    return out


def parse_schema(data: Any, prefix: str = "label_schema") -> LabelSchema:
    """Validate a label schema, raising InvalidInput naming the field (``label_schema.questions[1].choices``)."""
    if isinstance(data, LabelSchema):
        return data
    legacy = isinstance(data, Mapping) and "questions" not in data
    try:
        return LabelSchema.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = tuple(first.get("loc", ()))
        if legacy:  # the caller wrote the old flat fields: name those, not the question they became
            loc = loc[3:] if loc[:1] == ("questions",) else loc
        name = field_of(loc, prefix)
        message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
        raise InvalidInput(f"{name}: {message}", field=name) from None


# ------------------------------------------------------------------------------- checking values


@dataclass(frozen=True)
class TaskContext:
    """What a task offers the questions: its candidate answers, and per preference_pair question id the
    two responses it compares (None: fewer than two)."""

    candidates: Sequence[str] = ()
    pairs: Mapping[str, tuple[str, str] | None] = field(default_factory=dict)


def preference_responses(completions: Sequence[str] | None, clusters: Sequence[Mapping[str, Any]],
                         source: str = "completions") -> tuple[str, str] | None:
    """The two responses a preference question compares (see the module docstring), or None."""
    answers = [str(c["answer"]) for c in clusters]
    if source == "completions" and completions:
        if len(clusters) >= 2:
            picks = [clusters[0]["members"][0], clusters[1]["members"][0]]
            if all(isinstance(i, int) and 0 <= i < len(completions) for i in picks):
                return completions[picks[0]], completions[picks[1]]
        if len(completions) >= 2:
            return completions[0], completions[1]
    if len(answers) >= 2:
        return answers[0], answers[1]
    return None


def ranking_items(question: RankingQuestion, context: TaskContext) -> list[str]:
    return list(question.items) if question.items is not None else list(context.candidates)


def _refuse(question_id: str, message: str, sub: str | None = None) -> InvalidInput:
    name = f"values.{question_id}" + (f".{sub}" if sub else "")
    return InvalidInput(f"{name}: {message}", field=name)


def _text(value: Any, question_id: str, sub: str | None, limit: int) -> str:
    if not isinstance(value, str):
        raise _refuse(question_id, f"must be a string, not {type(value).__name__}", sub)
    problem = text_problem(value, limit)
    if problem:
        raise _refuse(question_id, problem, sub)
    return value


def _rationale(raw: Any, mode: str, question_id: str) -> str | None:
    note = None if raw is None else _text(raw, question_id, "rationale", 20_000).strip() or None
    if mode == "required" and note is None:
        raise _refuse(question_id, "this question requires a rationale", "rationale")
    if mode == "off" and note is not None:
        raise _refuse(question_id, "this question has no rationale field", "rationale")
    return note


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def check_math(question: MathAnswerQuestion, value: Any, context: TaskContext) -> dict[str, Any]:
    """A math answer as ``{"kind", "answer", "candidate", "rationale"}``; a candidate becomes its text."""
    qid = question.id
    if isinstance(value, str):
        value = {"answer": value}
    if not isinstance(value, Mapping):
        raise _refuse(qid, "must be {\"candidate\": i}, {\"answer\": \"…\"} or {\"ambiguous\": true}")
    unknown = sorted(set(value) - {"kind", "answer", "candidate", "ambiguous", "rationale"})
    if unknown:
        raise _refuse(qid, f"unknown field {unknown[0]!r}", unknown[0])
    answer = value.get("answer")
    if answer is not None:
        answer = _text(answer, qid, "answer", 20_000)
        answer = answer if answer.strip() else None
    candidate = value.get("candidate")
    ambiguous = value.get("ambiguous") is True or value.get("kind") == "ambiguous"
    if value.get("kind") not in (None, "answer", "ambiguous"):
        raise _refuse(qid, "kind is 'answer' or 'ambiguous'", "kind")
    rationale = _rationale(value.get("rationale"), question.rationale, qid)
    if ambiguous:
        if not question.ambiguous:
            raise _refuse(qid, "this question does not allow the ambiguous flag", "ambiguous")
        if answer is not None or candidate is not None:
            raise _refuse(qid, "an ambiguous label carries neither answer nor candidate", "ambiguous")
        return {"kind": "ambiguous", "answer": None, "candidate": None, "rationale": rationale}
    if (answer is None) == (candidate is None):
        raise _refuse(qid, "give exactly one of answer or candidate (or ambiguous)", "answer")
    if candidate is not None:
        if not question.candidates:
            raise _refuse(qid, "this question does not allow picking a candidate", "candidate")
        if isinstance(candidate, bool) or not isinstance(candidate, int) or candidate < 0:
            raise _refuse(qid, "must be a candidate index (0 or more)", "candidate")
        if candidate >= len(context.candidates):
            count = len(context.candidates)
            raise _refuse(qid, f"candidate {candidate} does not exist; this task has {count} "
                               f"candidate{'s' if count != 1 else ''}", "candidate")
        return {"kind": "answer", "answer": context.candidates[candidate], "candidate": candidate,
                "rationale": rationale}
    if not question.free_form:
        raise _refuse(qid, "this question allows only picking a candidate", "answer")
    return {"kind": "answer", "answer": answer, "candidate": None, "rationale": rationale}


def check_value(question: Question, value: Any, context: TaskContext) -> Any:
    """One question's value, normalised (see the module docstring for each type's shape)."""
    qid = question.id
    if isinstance(question, MathAnswerQuestion):
        return check_math(question, value, context)
    if isinstance(question, SingleLabelQuestion):
        if not isinstance(value, str) or value not in question.choices:
            raise _refuse(qid, f"must be one of {', '.join(repr(c) for c in question.choices)}")
        return value
    if isinstance(question, MultiLabelQuestion):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise _refuse(qid, "must be a list of choices")
        for picked in value:
            if picked not in question.choices:
                raise _refuse(qid, f"{picked!r} is not one of the choices")
        if len(set(value)) != len(value):
            raise _refuse(qid, "a choice is picked twice")
        most = len(question.choices) if question.max_selected is None else question.max_selected
        if not question.min_selected <= len(value) <= most:
            raise _refuse(qid, f"pick {question.min_selected} to {most} choices, not {len(value)}")
        return [c for c in question.choices if c in value]  # in the schema's order
    if isinstance(question, RatingQuestion):
        number = _number(value)
        point = on_grid(question, number) if number is not None else None
        if point is None:
            raise _refuse(qid, f"must be a point of the scale {question.min:g} to {question.max:g} "
                               f"in steps of {question.step:g}")
        return point
    if isinstance(question, RankingQuestion):
        count = len(ranking_items(question, context))
        if count < 2:
            raise _refuse(qid, f"this task has {count} item{'s' if count != 1 else ''} to rank: leave it empty")
        if (not isinstance(value, list) or any(isinstance(v, bool) or not isinstance(v, int) for v in value)
                or sorted(value) != list(range(count))):
            raise _refuse(qid, f"must order every item index 0 to {count - 1} exactly once, best first")
        return list(value)
    if isinstance(question, FreeTextQuestion):
        text = _text(value, qid, None, question.max_length)
        if question.required and not text.strip():
            raise _refuse(qid, "must not be blank")
        return text
    # preference_pair
    if context.pairs.get(qid) is None:
        raise _refuse(qid, "this task has fewer than two responses to compare: leave it empty")
    raw = value if isinstance(value, Mapping) else {"choice": value}
    unknown = sorted(set(raw) - {"choice", "rationale"})
    if unknown:
        raise _refuse(qid, f"unknown field {unknown[0]!r}", unknown[0])
    allowed = ("A", "B", "tie") if question.allow_tie else ("A", "B")
    choice = raw.get("choice")
    if choice not in allowed:
        raise _refuse(qid, f"must be {', '.join(repr(a) for a in allowed)}", "choice" if raw is value else None)
    return {"choice": choice, "rationale": _rationale(raw.get("rationale"), question.rationale, qid)}


def applies(question: Question, context: TaskContext) -> bool:
    """Whether the task gives the question something to answer (a pair, items to rank)."""
    if isinstance(question, PreferencePairQuestion):
        return context.pairs.get(question.id) is not None
    if isinstance(question, RankingQuestion):
        return len(ranking_items(question, context)) >= 2
    return True


def check_values(schema: LabelSchema, values: Mapping[str, Any], context: TaskContext) -> dict[str, Any]:
    """Every answer checked against its question; returns the normalised values (absent ones left out).

    Raises InvalidInput naming ``values.<question id>`` (or one of its fields) for an unknown question,
    a missing required one, or a value its type refuses.
    """
    if not isinstance(values, Mapping):
        raise InvalidInput("values: must be an object of question id → value", field="values")
    for question_id in values:
        if schema.question(question_id) is None:
            known = ", ".join(q.id for q in schema.questions)
            raise _refuse(str(question_id), f"no such question in this project's label schema (it has: {known})")
    out: dict[str, Any] = {}
    for question in schema.questions:
        value = values.get(question.id)
        empty = value is None or (isinstance(question, FreeTextQuestion) and value == "" and not question.required)
        if empty:
            if question.required and applies(question, context):
                raise _refuse(question.id, "this question is required")
            continue
        out[question.id] = check_value(question, value, context)
    return out


# ----------------------------------------------------------------------------- comparing values


def comparable(question: Question) -> bool:
    """Questions whose answers two annotators can agree or disagree on (all but free text)."""
    return not isinstance(question, FreeTextQuestion)


def agreement_key(question: Question, value: Any) -> Any:
    """What two labels must share to agree on a question: the value without its rationale; a
    multi-label set as a sorted tuple; a ranking as a tuple. None for no value."""
    if value is None:
        return None
    if isinstance(question, PreferencePairQuestion):
        return value.get("choice") if isinstance(value, Mapping) else value
    if isinstance(question, MultiLabelQuestion | RankingQuestion):
        return tuple(sorted(value)) if isinstance(question, MultiLabelQuestion) else tuple(value)
    if isinstance(question, MathAnswerQuestion):
        return (value.get("kind"), value.get("answer")) if isinstance(value, Mapping) else value
    return value


def label_key(schema: LabelSchema, values: Mapping[str, Any] | None) -> tuple[Any, ...]:
    """A whole label's agreement key over the comparable questions (without a math_answer question:
    the queue sends a task to adjudication when these keys differ)."""
    values = values or {}
    return tuple(agreement_key(q, values.get(q.id)) for q in schema.questions
                 if comparable(q) and not isinstance(q, MathAnswerQuestion))
