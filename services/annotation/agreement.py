"""Label quality: chance-corrected agreement between annotators, and each annotator's accuracy.

Answers are nominal. Within a task they are grouped exactly as the queue groups them before it
sends a task to adjudication (``queue.label_clusters``: ambiguous flags together, answers by
math-verify equivalence), so agreement here never contradicts the queue's own verdict. Across
tasks a group is named by the normalised text of its first answer (``equivalence.normalise``),
which is what the chance terms (Krippendorff's expected disagreement, the kappas' chance
agreement) pool over: ``1/2`` in one task and ``0.5`` in another are different values there.

Every figure comes with its counts, and is ``None`` (not 0) where there is nothing to compare or
the coefficient is undefined (for instance when every label in the project is the same answer).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, TypeVar

import krippendorff
import numpy as np
from sqlalchemy import and_, exists, select
from sqlalchemy.orm import Session, aliased

from services.annotation import honeypots
from services.annotation.equivalence import normalise
from services.annotation.label_schema import (
    LabelSchema,
    MathAnswerQuestion,
    Question,
    RankingQuestion,
    RatingQuestion,
    agreement_key,
    comparable,
)
from services.annotation.models import (
    Adjudication,
    Annotation,
    AnnotationProject,
    Annotator,
    AnswerKeyEntry,
    LabelKind,
    Prompt,
    Task,
)
from services.annotation.queue import label_clusters
from services.annotation.schemas import AgreementFigure, AnnotatorQuality, ProjectQuality, QuestionAgreement

# Stored text refuses NUL, so no answer can normalise to this.
AMBIGUOUS = "\x00ambiguous"

Label = tuple[LabelKind, str | None]
V = TypeVar("V", bound=Hashable)
# One unit's (task's) label count per value: only the values it got need be present.
Counts = Mapping[V, int]


@dataclass(frozen=True)
class Rating:
    """One annotator's label on one task, reduced to its nominal value."""

    annotator_id: str
    value: str


# ------------------------------------------------------------------------------ the coefficients


# The krippendorff package builds a dense (units × values × values) array; past this many cells
# (each array 16 MB of float64) the same formula is computed in its sparse form instead.
DENSE_ALPHA_CELLS = 2_000_000


def krippendorff_alpha(units: Sequence[Counts[V]]) -> float | None:
    """Krippendorff's alpha for nominal data, from each unit's label count per value.

    With n_uc the number of labels value c got in unit u and m_u = Σ_c n_uc, only units with
    m_u ≥ 2 count. Coincidences o_ck = Σ_u n_uc (n_uk − [c = k]) / (m_u − 1), n_c = Σ_k o_ck,
    n = Σ_c n_c, and α = 1 − D_o / D_e with D_o = Σ_{c≠k} o_ck / n and
    D_e = Σ_{c≠k} n_c n_k / (n (n − 1)). Computed by the ``krippendorff`` package, or by
    :func:`sparse_nominal_alpha` when its dense array would be too large. None when no unit has
    two labels or only one value occurs (D_e = 0: alpha is undefined).
    """
    pairable = [unit for unit in units if sum(unit.values()) >= 2]
    # First-seen order, so the same data always sums in the same order.
    seen = dict.fromkeys(v for unit in pairable for v, c in unit.items() if c)
    columns = {value: index for index, value in enumerate(seen)}
    if len(columns) < 2:
        return None
    if len(pairable) * len(columns) ** 2 > DENSE_ALPHA_CELLS:
        return sparse_nominal_alpha(pairable)
    counts = np.zeros((len(pairable), len(columns)), dtype=np.float64)
    for row, unit in enumerate(pairable):
        for value, count in unit.items():
            counts[row, columns[value]] += count
    return float(krippendorff.alpha(value_counts=counts, level_of_measurement="nominal"))


def sparse_nominal_alpha(units: Sequence[Counts[V]]) -> float | None:
    """Nominal alpha in O(labels): the same α as :func:`krippendorff_alpha`, rewritten.

    Σ_{c≠k} n_uc n_uk = m_u² − Σ_c n_uc², so Σ_{c≠k} o_ck = Σ_u (m_u² − Σ_c n_uc²) / (m_u − 1), and
    Σ_{c≠k} n_c n_k = n² − Σ_c n_c². Hence α = 1 − (n − 1) Σ_u (m_u² − Σ_c n_uc²) / (m_u − 1) / (n² − Σ_c n_c²),
    over units with m_u ≥ 2; None when there are none or n² = Σ_c n_c² (one value only).
    """
    pairable = [unit for unit in units if sum(unit.values()) >= 2]
    observed = sum((sum(u.values()) ** 2 - sum(c * c for c in u.values())) / (sum(u.values()) - 1) for u in pairable)
    totals: Counter[V] = Counter()
    for unit in pairable:
        totals.update(unit)
    n = sum(totals.values())
    expected = n * n - sum(t * t for t in totals.values())
    if expected == 0:
        return None
    return float(1 - (n - 1) * observed / expected)


def scaled_alpha(units: Sequence[Counts[float]], level: Literal["ordinal", "interval"]) -> float | None:
    """Krippendorff's alpha for ordinal or interval ratings, from each unit's count per point.

    The same coincidences o_ck as the nominal form, with α = 1 − D_o / D_e, D_o = Σ_{c,k} o_ck δ²_ck / n and
    D_e = Σ_{c,k} n_c n_k δ²_ck / (n (n − 1)); interval: δ²_ck = (c − k)²; ordinal:
    δ²_ck = (Σ_{g=c..k} n_g − (n_c + n_k) / 2)². Computed by the ``krippendorff`` package over the
    points that occur. None when no unit has two ratings or only one point occurs.
    """
    pairable = [unit for unit in units if sum(unit.values()) >= 2]
    domain = sorted({float(v) for unit in pairable for v, c in unit.items() if c})
    if len(domain) < 2:
        return None
    columns = {value: index for index, value in enumerate(domain)}
    counts = np.zeros((len(pairable), len(domain)), dtype=np.float64)
    for row, unit in enumerate(pairable):
        for value, count in unit.items():
            counts[row, columns[float(value)]] += count
    return float(krippendorff.alpha(value_counts=counts, value_domain=domain, level_of_measurement=level))


def cohen_kappa(pairs: Sequence[tuple[str, str]]) -> float | None:
    """Cohen's kappa of two raters who both labelled every item: κ = (p_o − p_e) / (1 − p_e).

    p_o is the share of items where the two agree; p_e = Σ_c p_1(c) p_2(c), with p_r(c) the share
    of items rater r gave value c. None for no items, or when p_e = 1 (both gave one value only).
    """
    if not pairs:
        return None
    total = len(pairs)
    observed = sum(first == second for first, second in pairs) / total
    firsts, seconds = Counter(first for first, _ in pairs), Counter(second for _, second in pairs)
    chance = sum(firsts[value] * seconds[value] for value in firsts) / total**2
    if chance == 1.0:
        return None
    return (observed - chance) / (1 - chance)


def fleiss_kappa(units: Sequence[Counts[V]]) -> float | None:
    """Fleiss' kappa for N items each rated by the same number n ≥ 2 of raters (not the same people).

    With n_ij the raters who put item i in category j: p_j = Σ_i n_ij / (N n),
    P_i = (Σ_j n_ij² − n) / (n (n − 1)), P̄ = Σ_i P_i / N, P̄_e = Σ_j p_j², and
    κ = (P̄ − P̄_e) / (1 − P̄_e). None for no items, or when P̄_e = 1 (one category only).
    Raises ValueError when the items do not all have the same n ≥ 2.
    """
    if not units:
        return None
    raters = {sum(unit.values()) for unit in units}
    if len(raters) != 1 or min(raters) < 2:
        raise ValueError(f"Fleiss' kappa needs the same number (≥ 2) of ratings per item, got {sorted(raters)}")
    n, items = raters.pop(), len(units)
    mean_agreement = sum((sum(c * c for c in unit.values()) - n) / (n * (n - 1)) for unit in units) / items
    totals: Counter[V] = Counter()
    for unit in units:
        totals.update(unit)
    chance = sum((total / (items * n)) ** 2 for total in totals.values())
    if chance == 1.0:
        return None
    return (mean_agreement - chance) / (1 - chance)


# --------------------------------------------------------------------------- from labels to values


def item_values(labels: Sequence[Label]) -> list[str]:
    """Each label's nominal value within one task: the queue's clusters, named by their first answer."""
    values = [""] * len(labels)
    for cluster in label_clusters(list(labels)):
        kind, answer = labels[cluster[0]]
        name = AMBIGUOUS if kind is LabelKind.ambiguous else normalise(answer or "")
        for index in cluster:
            values[index] = name
    return values


def same_label(label: Label, reference: Label) -> bool:
    """The queue's equivalence between two labels (both ambiguous, or equivalent answers)."""
    return len(label_clusters([label, reference])) == 1


def value_counts(items: Sequence[Sequence[Rating]]) -> list[Counts[str]]:
    """Per item, how many labels each value got (only the values present: sparse)."""
    return [Counter(rating.value for rating in item) for item in items]


def accuracy(results: Iterable[tuple[str, bool]]) -> dict[str, tuple[int, int]]:
    """Per annotator: (labels judged right, labels judged) from (annotator id, right?) pairs."""
    tally: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for annotator_id, right in results:
        tally[annotator_id][0] += int(right)
        tally[annotator_id][1] += 1
    return {annotator_id: (right, judged) for annotator_id, (right, judged) in tally.items()}


# ---------------------------------------------------------------------------------- the figures


def _figure(value: float | None, items: Sequence[Sequence[Rating]], note: str | None) -> AgreementFigure:
    return AgreementFigure(value=value, items=len(items), labels=sum(len(item) for item in items),
                           note=note if value is None else None)


NO_ITEMS = "no task has two labels yet"
ONE_VALUE = "undefined: every label is the same answer, so chance agreement is total"


def alpha_figure(items: Sequence[Sequence[Rating]]) -> AgreementFigure:
    value = krippendorff_alpha(value_counts(items))
    return _figure(value, items, NO_ITEMS if not items else ONE_VALUE)


def cohen_figure(items: Sequence[Sequence[Rating]]) -> AgreementFigure:
    """Cohen's kappa when the compared tasks were all labelled by the same two annotators."""
    if not items:
        return _figure(None, items, NO_ITEMS)
    raters = sorted({rating.annotator_id for item in items for rating in item})
    if len(raters) != 2:
        return _figure(None, items, f"needs exactly two annotators; {len(raters)} labelled these tasks")
    # One label per annotator per task (the queue's unique assignment), so each item holds both raters.
    pairs = [tuple(r.value for r in sorted(item, key=lambda r: r.annotator_id)) for item in items]
    return _figure(cohen_kappa([(first, second) for first, second in pairs]), items, ONE_VALUE)


def fleiss_figure(items: Sequence[Sequence[Rating]]) -> AgreementFigure:
    """Fleiss' kappa when every compared task has the same number of labels."""
    if not items:
        return _figure(None, items, NO_ITEMS)
    sizes = sorted({len(item) for item in items})
    if len(sizes) != 1:
        return _figure(None, items, f"needs the same number of labels on every task; these have "
                                    f"{sizes[0]} to {sizes[-1]}")
    return _figure(fleiss_kappa(value_counts(items)), items, ONE_VALUE)


# ------------------------------------------------------------------------------ from the database


_GOLD_TASK = aliased(Task)


def _live(annotation_project_id: str):  # type: ignore[no-untyped-def]
    # Labels on honeypots (gold tasks, honeypots.py) are graded apart and never count as agreement.
    return and_(Annotation.annotation_project_id == annotation_project_id, Annotation.undone_at.is_(None),
                Annotation.rejected_at.is_(None),  # a label a reviewer rejected no longer counts
                ~exists().where(_GOLD_TASK.id == Annotation.task_id, _GOLD_TASK.honeypot.is_(True)))


def load_items(session: Session, annotation_project_id: str) -> tuple[list[list[Rating]], Counter[str]]:
    """The project's tasks with two or more live labels, as ratings; and every annotator's label count."""
    rows = session.execute(
        select(Annotation.task_id, Annotation.annotator_id, Annotation.kind, Annotation.answer)
        .where(_live(annotation_project_id)).order_by(Annotation.task_id, Annotation.created_at, Annotation.id)).all()
    by_task: dict[str, list[tuple[str, Label]]] = defaultdict(list)
    for task_id, annotator_id, kind, answer in rows:
        by_task[task_id].append((annotator_id, (kind, answer)))
    items = []
    for labelled in by_task.values():
        if len(labelled) >= 2:
            values = item_values([label for _, label in labelled])
            items.append([Rating(annotator_id, value) for (annotator_id, _), value in zip(labelled, values,
                                                                                         strict=True)])
    return items, Counter(annotator_id for _, annotator_id, _, _ in rows)


def gold_results(session: Session, annotation_project_id: str) -> list[tuple[str, bool]]:
    """(annotator, right?) for every live label on a prompt the hidden answer key covers."""
    rows = session.execute(
        select(Annotation.annotator_id, Annotation.kind, Annotation.answer, AnswerKeyEntry.answer)
        .join(Task, Task.id == Annotation.task_id).join(Prompt, Prompt.id == Task.prompt_id)
        .join(AnswerKeyEntry, and_(AnswerKeyEntry.annotation_project_id == Annotation.annotation_project_id,
                                   AnswerKeyEntry.prompt_external_id == Prompt.external_id))
        .where(_live(annotation_project_id))).all()
    return [(annotator_id, same_label((kind, answer), (LabelKind.answer, gold)))
            for annotator_id, kind, answer, gold in rows]


def adjudication_results(session: Session, annotation_project_id: str,
                         schema: LabelSchema | None = None) -> list[tuple[str, bool]]:
    """(annotator, right?) for every live label on an adjudicated task, against the reviewer's answer.

    A reviewer's own label on a task they settled is left out: it would agree with itself. Without a
    math_answer question (``schema.math`` is None) a label is right when every compared question
    (:func:`question_level` not None) has the adjudication's value, by :func:`agreement_key`.
    """
    rows = session.execute(
        select(Annotation.annotator_id, Annotation.kind, Annotation.answer, Annotation.label_values,
               Adjudication.kind, Adjudication.answer, Adjudication.label_values)
        .join(Adjudication, Adjudication.task_id == Annotation.task_id)
        .where(_live(annotation_project_id), Adjudication.adjudicator_id != Annotation.annotator_id)).all()
    if schema is not None and schema.math is None:
        compared = [q for q in schema.questions if question_level(q) is not None]
        return [(annotator_id, values_agree(compared, values, final_values))
                for annotator_id, _, _, values, _, _, final_values in rows]
    return [(annotator_id, same_label((kind, answer), (final_kind, final_answer)))
            for annotator_id, kind, answer, _, final_kind, final_answer, _ in rows]


def values_agree(questions: Sequence[Question], values: Mapping[str, object] | None,
                 reference: Mapping[str, object] | None) -> bool:
    """Whether two labels give every one of ``questions`` the same value (by :func:`agreement_key`)."""
    return all(agreement_key(q, (values or {}).get(q.id)) == agreement_key(q, (reference or {}).get(q.id))
               for q in questions)


def _share(tally: tuple[int, int] | None) -> float | None:
    return None if tally is None or tally[1] == 0 else tally[0] / tally[1]


NO_MATH = "the label schema has no math_answer question: see each question's figure under `questions`"
NOT_COMPARED = {"free_text": "free text is not compared"}


def question_level(question: Question) -> str | None:
    """The level of measurement agreement uses for a question: ordinal/interval for ratings, ordinal rank
    positions for rankings (:func:`ranking_alpha`), nominal for the other comparable types (a multi-label
    answer is one nominal value: the set), none otherwise."""
    if isinstance(question, RatingQuestion):
        return question.level
    if isinstance(question, RankingQuestion):
        return "ordinal"
    return "nominal" if comparable(question) else None


def question_units(question: Question, labelled: Sequence[Sequence[dict[str, object] | None]]) -> list[Counts[object]]:
    """Per task, how many labels gave each value of this question (labels without a value left out)."""
    units: list[Counts[object]] = []
    for task_labels in labelled:
        keys = [agreement_key(question, (values or {}).get(question.id)) for values in task_labels]
        units.append(Counter(k for k in keys if k is not None))
    return units


def rank_units(tasks: Sequence[Sequence[Sequence[int]]]) -> list[Counts[float]]:
    """Per (task, item): how many rankings put the item at each rank. A ranking lists item indexes best
    first, so item i's rank is its position + 1 (1 = best). Tasks with fewer than two rankings give nothing."""
    units: list[Counts[float]] = []
    for rankings in tasks:
        if len(rankings) < 2:
            continue
        for item in sorted({i for ranking in rankings for i in ranking}):
            units.append(Counter(float(list(r).index(item) + 1) for r in rankings if item in r))
    return units


def ranking_alpha(tasks: Sequence[Sequence[Sequence[int]]]) -> float | None:
    """Krippendorff's alpha for rankings: ordinal alpha over rank positions, one unit per (task, item).

    Each item of a task is a unit whose values are the ranks the annotators gave it (:func:`rank_units`);
    α = 1 − D_o / D_e with the ordinal metric δ²_ck = (Σ_{g=c..k} n_g − (n_c + n_k) / 2)² over the pooled
    rank counts n_g (:func:`scaled_alpha`, the ``krippendorff`` package). Why this and not a Kendall-tau
    distance between whole rankings: the package computes it as is (no custom metric over m! orderings),
    it gives partial credit (swapping two neighbours moves each by one rank), it pools tasks whose item
    counts differ (rank 1 is "best" in every task), and it reduces to the familiar ordinal alpha. What it
    ignores: the ranks within one task are not independent (they are a permutation), so it treats a
    ranking as m separate ordinal ratings. None when no task has two rankings or every rank is the same.
    """
    return scaled_alpha(rank_units(tasks), "ordinal")


def ranking_figure(question: RankingQuestion,
                   labelled: Sequence[Sequence[dict[str, object] | None]]) -> AgreementFigure:
    tasks: list[list[list[int]]] = []
    for task_labels in labelled:
        rankings = [list(v) for v in ((values or {}).get(question.id) for values in task_labels)
                    if isinstance(v, list) and v]
        if len(rankings) >= 2:
            tasks.append(rankings)
    if not tasks:
        return AgreementFigure(value=None, items=0, labels=0, note=NO_ITEMS)
    value = ranking_alpha(tasks)
    return AgreementFigure(value=value, items=len(tasks), labels=sum(len(t) for t in tasks),
                           note=None if value is not None else ONE_VALUE)


def question_figure(question: Question, units: Sequence[Counts[object]]) -> AgreementFigure:
    level = question_level(question)
    compared = [unit for unit in units if sum(unit.values()) >= 2]
    items, labels = len(compared), sum(sum(unit.values()) for unit in compared)
    if level is None:
        return AgreementFigure(value=None, items=items, labels=labels, note=NOT_COMPARED.get(question.type))
    if not compared:
        return AgreementFigure(value=None, items=0, labels=0, note=NO_ITEMS)
    if level == "nominal":
        value = krippendorff_alpha(compared)
    else:
        value = scaled_alpha(compared, "interval" if level == "interval" else "ordinal")  # type: ignore[arg-type]
    return AgreementFigure(value=value, items=items, labels=labels, note=None if value is not None else ONE_VALUE)


def question_agreement(session: Session, annotation_project_id: str, schema: LabelSchema,
                       math_figure: AgreementFigure) -> list[QuestionAgreement]:
    """Krippendorff's alpha per question, over tasks with two or more labels giving it a value. A
    math_answer question's is the project's answer alpha (the queue's equivalence grouping)."""
    rows = session.execute(select(Annotation.task_id, Annotation.label_values).where(_live(annotation_project_id))
                           .order_by(Annotation.task_id, Annotation.created_at, Annotation.id)).all()
    by_task: dict[str, list[dict[str, object] | None]] = defaultdict(list)
    for task_id, values in rows:
        by_task[task_id].append(values)
    labelled = [task_labels for task_labels in by_task.values() if len(task_labels) >= 2]
    out = []
    for question in schema.questions:
        if isinstance(question, MathAnswerQuestion):
            figure = math_figure
        elif isinstance(question, RankingQuestion):
            figure = ranking_figure(question, labelled)
        else:
            figure = question_figure(question, question_units(question, labelled))
        out.append(QuestionAgreement(question_id=question.id, type=question.type, level=question_level(question),
                                     krippendorff_alpha=figure))
    return out


def project_quality(session: Session, annotation_project_id: str) -> ProjectQuality:
    """Krippendorff's alpha, Cohen's and Fleiss' kappa where they apply, and per-annotator accuracy."""
    project = session.get(AnnotationProject, annotation_project_id)
    schema = LabelSchema.model_validate(project.label_schema if project is not None else {})
    items, label_counts = load_items(session, annotation_project_id)
    # The hidden answer key holds math answers: without a math_answer question there is no gold to
    # compare against (None and gold_n 0, never a 0.0 from comparing empty answer columns).
    gold = accuracy(gold_results(session, annotation_project_id)) if schema.math is not None else {}
    adjudicated = accuracy(adjudication_results(session, annotation_project_id, schema))
    gold_tasks = accuracy((annotator_id, right) for _task, annotator_id, right
                          in honeypots.results(session, annotation_project_id, schema))
    # Someone who so far labelled only honeypots is listed too, with 0 real labels.
    counts = {**label_counts, **{a: 0 for a in gold_tasks if a not in label_counts}}
    names = dict(session.execute(select(Annotator.id, Annotator.username)
                                 .where(Annotator.id.in_(list(counts)))).all()) if counts else {}
    annotators = [AnnotatorQuality(
        annotator_id=annotator_id, username=names.get(annotator_id, annotator_id), labels=count,
        gold_accuracy=_share(gold.get(annotator_id)), gold_n=gold.get(annotator_id, (0, 0))[1],
        adjudicated_accuracy=_share(adjudicated.get(annotator_id)),
        adjudicated_n=adjudicated.get(annotator_id, (0, 0))[1],
        honeypot_accuracy=_share(gold_tasks.get(annotator_id)), honeypot_n=gold_tasks.get(annotator_id, (0, 0))[1])
        for annotator_id, count in counts.items()]
    alpha, cohen, fleiss = alpha_figure(items), cohen_figure(items), fleiss_figure(items)
    if schema.math is None:  # no answer to compare: each question has its own figure
        alpha = cohen = fleiss = AgreementFigure(value=None, items=0, labels=0, note=NO_MATH)
    return ProjectQuality(annotation_project_id=annotation_project_id, krippendorff_alpha=alpha,
                          cohen_kappa=cohen, fleiss_kappa=fleiss,
                          annotators=sorted(annotators, key=lambda a: a.username),
                          questions=question_agreement(session, annotation_project_id, schema, alpha),
                          honeypots=honeypots.count(session, annotation_project_id))
