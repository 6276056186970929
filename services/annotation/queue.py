"""The annotator queue: leases, overlap, agreement, adjudication, skip, undo, idempotent submit.

Plain functions on a session; the caller commits (the JSON API and the web UI both call them).
Every function takes ``now`` so tests drive the clock instead of sleeping.

Concurrency. On PostgreSQL ``next_task`` picks with ``SELECT … FOR UPDATE SKIP LOCKED``: each
annotator locks a different open task, so fifty annotators never queue behind one row. Every
change to a task's assignments happens while its row is locked and bumps ``Task.version``, and
after locking, the slot count is read again in a fresh statement (READ COMMITTED gives each
statement a new snapshot), so a pick that raced a commit is caught and the next task is tried.
SQLite has no row locks: there each operation first writes the project row, which takes the
database's single write lock for the rest of the transaction, so operations run one at a time.

A lease is an ``active`` assignment until ``expires_at``. An expired lease holds no slot: the
task is simply counted as free again, so nothing has to sweep expired leases, and a late submit
on it is refused. One assignment row per (task, annotator) means nobody gets a task twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, exists, func, literal, or_, select, tuple_
from sqlalchemy.orm import Session

from services.annotation import honeypots, idempotency
from services.annotation.accounts import require_adjudicator
from services.annotation.equivalence import answers_equivalent
from services.annotation.label_schema import (
    LabelSchema,
    PreferencePairQuestion,
    RankingQuestion,
    TaskContext,
    check_values,
    label_key,
    preference_responses,
)
from services.annotation.labels import deliver_label, retract_label
from services.annotation.locking import lock_task, serialise_on_sqlite
from services.annotation.models import (
    Adjudication,
    Annotation,
    AnnotationProject,
    Annotator,
    Assignment,
    AssignmentState,
    LabelKind,
    Prompt,
    PseudoLabel,
    Purchase,
    PurchaseStatus,
    Review,
    RolloutGroup,
    Task,
    TaskStatus,
)
from services.annotation.projects import budget_of, get_project
from services.annotation.schemas import (
    AdjudicationOut,
    AdjudicationView,
    AnnotationOut,
    AnnotationSummary,
    AnnotatorThroughput,
    CandidateOut,
    Decision,
    PairOut,
    QueueStats,
    SkipOut,
    Submission,
    TaskView,
    UndoOut,
)
from services.common import idempotency as shared
from services.common.db import session_factory, utcnow
from services.common.errors import Conflict, Forbidden, InvalidInput, NotFound
from services.common.locks import for_update
from services.common.metrics import ANNOTATION_LEASES_EXPIRED
from services.common.pagination import Page, decode_cursor, encode_cursor

MAX_PICK_ATTEMPTS = 50


def slot_holders(now: datetime):  # type: ignore[no-untyped-def]
    """Assignments that hold one of a task's k slots: submitted ones and unexpired leases."""
    return or_(Assignment.state == AssignmentState.submitted,
               and_(Assignment.state == AssignmentState.active, Assignment.expires_at > now))


def blocks_annotator(annotator_id: str, now: datetime):  # type: ignore[no-untyped-def]
    """The annotator already answered (even if a reviewer rejected it), skipped or holds a live lease on the task."""
    return and_(Assignment.annotator_id == annotator_id,
                or_(Assignment.state.in_([AssignmentState.submitted, AssignmentState.skipped,
                                          AssignmentState.rejected]),
                    Assignment.expires_at > now))


def _require_annotator(session: Session, annotator_id: str) -> Annotator:
    annotator = session.get(Annotator, annotator_id)
    if annotator is None or annotator.disabled_at is not None:
        raise Forbidden("this annotator account does not exist or is disabled")
    return annotator


def _fresh(session: Session, obj: object) -> None:
    # Re-read after taking a lock: under READ COMMITTED this sees everything committed before it.
    session.refresh(obj)


# ----------------------------------------------------------------------------------------- views


def _candidates_from(clusters: list[dict[str, Any]]) -> list[CandidateOut]:
    return [CandidateOut(index=i, answer=c["answer"], count=len(c["members"])) for i, c in enumerate(clusters)]


def candidates(session: Session, rollout_group_id: str) -> list[CandidateOut]:
    """The rollouts' answer clusters, largest first: what ``candidate`` indexes."""
    clusters = session.scalar(select(PseudoLabel.clusters).where(PseudoLabel.rollout_group_id == rollout_group_id))
    return _candidates_from(clusters or [])


def task_view(session: Session, assignment: Assignment, *, resumed: bool) -> TaskView:
    # One round trip: the task with its prompt, rollout group, clusters and the project's schema.
    row = session.execute(
        select(Task, Prompt, RolloutGroup, PseudoLabel.clusters, AnnotationProject.label_schema)
        .join(Prompt, Prompt.id == Task.prompt_id).join(RolloutGroup, RolloutGroup.id == Task.rollout_group_id)
        .join(AnnotationProject, AnnotationProject.id == Task.annotation_project_id)
        .outerjoin(PseudoLabel, PseudoLabel.rollout_group_id == Task.rollout_group_id)
        .where(Task.id == assignment.task_id)).one()
    task, prompt, group, clusters, schema = row
    parsed = LabelSchema.model_validate(schema)
    pairs = {question_id: PairOut(a=pair[0], b=pair[1])
             for question_id, pair in _pairs(parsed, group.completions, clusters or []).items() if pair is not None}
    return TaskView(
        assignment_id=assignment.id, task_id=task.id, annotation_project_id=task.annotation_project_id,
        prompt_id=prompt.external_id, prompt_text=prompt.text, step=group.step, n=group.n,
        unparseable=sum(1 for a in group.answers if a is None or not a.strip()),
        candidates=_candidates_from(clusters or []), completions=group.completions,
        label_schema=parsed, pairs=pairs, priority=task.priority,
        overlap_k=task.overlap_k, leased_at=assignment.leased_at, lease_expires_at=assignment.expires_at,
        resumed=resumed)


def get_assignment(session: Session, annotation_project_id: str, annotator_id: str,
                   assignment_id: str) -> Assignment:
    assignment = session.get(Assignment, assignment_id)
    if (assignment is None or assignment.annotator_id != annotator_id
            or assignment.annotation_project_id != annotation_project_id):
        raise NotFound(f"assignment {assignment_id!r} not found", field="assignment_id")
    return assignment


def current_task(session: Session, annotation_project_id: str, annotator_id: str, *,
                 now: datetime | None = None) -> TaskView | None:
    """The annotator's live lease in the project, if any (reload, or after an undo)."""
    now = now or utcnow()
    assignment = session.scalar(
        select(Assignment).where(Assignment.annotation_project_id == annotation_project_id,
                                 Assignment.annotator_id == annotator_id,
                                 Assignment.state == AssignmentState.active, Assignment.expires_at > now)
        .order_by(Assignment.leased_at.desc(), Assignment.id).limit(1))
    return task_view(session, assignment, resumed=True) if assignment is not None else None


# ------------------------------------------------------------------------------------ next task


def _pickable(annotation_project_id: str, annotator_id: str, now: datetime, exclude: set[str], *,
              deferred_too: bool = False) -> Select[Task]:
    """The next real (not honeypot) open task with a free slot this annotator has not had; no lock."""
    taken = (select(func.count(Assignment.id)).where(Assignment.task_id == Task.id, slot_holders(now))
             .correlate(Task).scalar_subquery())
    blocks = blocks_annotator(annotator_id, now)
    if not deferred_too:  # first pass: the tasks this annotator put off come after every other one
        blocks = or_(blocks, and_(Assignment.annotator_id == annotator_id, Assignment.deferred_at.is_not(None)))
    mine = exists().where(Assignment.task_id == Task.id, blocks)
    query = (select(Task)
             .where(Task.annotation_project_id == annotation_project_id, Task.status == TaskStatus.open,
                    Task.honeypot.is_(False), taken < Task.overlap_k, ~mine)
             .order_by(Task.priority.desc(), Task.created_at, Task.id).limit(1))
    if exclude:
        query = query.where(Task.id.not_in(exclude))
    return query


def _pick_query(session: Session, annotation_project_id: str, annotator_id: str, now: datetime,
                exclude: set[str], *, deferred_too: bool = False) -> Select[Task]:
    query = _pickable(annotation_project_id, annotator_id, now, exclude, deferred_too=deferred_too)
    # SKIP LOCKED: each annotator locks a different open task instead of queueing behind one row.
    return for_update(session, query, skip_locked=True, of=Task)


def _lease_honeypot(session: Session, project: AnnotationProject, annotator_id: str,
                    now: datetime) -> TaskView | None:
    """On a honeypot turn (honeypots.honeypot_turn), lease the oldest honeypot this annotator has not had,
    but only while a real task is waiting for them too; None: serve a real task (or nothing) instead."""
    k = honeypots.lease_number(session, project.id, annotator_id)
    if not honeypots.honeypot_turn(honeypots.seed_of(project), annotator_id, k, project.honeypot_rate):
        return None
    if session.scalar(_pickable(project.id, annotator_id, now, set(), deferred_too=True)) is None:
        return None  # nothing real left: a honeypot alone would give itself away
    # Not SKIP LOCKED: a honeypot has no slot limit, so annotators may lease it at the same time; the
    # row lock only orders one annotator's concurrent calls (one assignment per task and annotator).
    task = session.scalar(for_update(session, honeypots.unseen_honeypots(project.id, annotator_id), of=Task)
                          .execution_options(populate_existing=True))
    if task is None:
        return None
    assignment = Assignment(task_id=task.id, annotation_project_id=project.id, annotator_id=annotator_id,
                            leased_at=now, expires_at=now + timedelta(seconds=project.lease_seconds))
    session.add(assignment)
    task.version += 1
    session.flush()
    return task_view(session, assignment, resumed=False)


def next_task(session: Session, annotation_project_id: str, annotator_id: str, *,
              now: datetime | None = None) -> TaskView | None:
    """Lease the highest-priority open task this annotator has not had, or resume their live lease.

    Returns None when nothing is available to this annotator.
    """
    _require_annotator(session, annotator_id)
    serialise_on_sqlite(session, annotation_project_id)
    project = get_project(session, annotation_project_id)
    now = now or utcnow()
    resumed = current_task(session, annotation_project_id, annotator_id, now=now)
    if resumed is not None:
        return resumed
    if project.honeypot_rate > 0:
        gold = _lease_honeypot(session, project, annotator_id, now)
        if gold is not None:
            return gold
    exclude: set[str] = set()
    deferred_too = False
    for _ in range(MAX_PICK_ATTEMPTS):
        task = session.scalar(_pick_query(session, annotation_project_id, annotator_id, now, exclude,
                                          deferred_too=deferred_too)
                              .execution_options(populate_existing=True))
        if task is None and not deferred_too:
            deferred_too = True  # nothing new left: offer the ones put off with "come back later"
            continue
        if task is None:
            return None
        # The row is ours now (Postgres: locked); count its slots again in a fresh statement.
        held = list(session.scalars(select(Assignment).where(Assignment.task_id == task.id)
                                    .execution_options(populate_existing=True)))
        mine = next((a for a in held if a.annotator_id == annotator_id), None)
        taken = sum(1 for a in held if a.state is AssignmentState.submitted
                    or (a.state is AssignmentState.active and a.expires_at > now))
        if (task.status is not TaskStatus.open or taken >= task.overlap_k
                or (mine is not None and not (mine.state is AssignmentState.active and mine.expires_at <= now))):
            exclude.add(task.id)
            continue
        expires = now + timedelta(seconds=project.lease_seconds)
        if mine is None:
            mine = Assignment(task_id=task.id, annotation_project_id=annotation_project_id,
                              annotator_id=annotator_id, leased_at=now, expires_at=expires)
            session.add(mine)
        else:  # the annotator's own lease had expired; take it up again
            if mine.deferred_at is None:
                ANNOTATION_LEASES_EXPIRED.labels("re_lease").inc()
            mine.leased_at, mine.expires_at, mine.deferred_at = now, expires, None
        task.version += 1
        session.flush()
        return task_view(session, mine, resumed=False)
    return None


def renew_lease(session: Session, annotation_project_id: str, annotator_id: str, assignment_id: str, *,
                now: datetime | None = None) -> TaskView:
    """Extend a live lease by the project's lease length (a heartbeat while the annotator works)."""
    serialise_on_sqlite(session, annotation_project_id)
    assignment = get_assignment(session, annotation_project_id, annotator_id, assignment_id)
    lock_task(session, assignment.task_id)
    _fresh(session, assignment)
    now = now or utcnow()
    _require_live(assignment, now)
    assignment.expires_at = now + timedelta(seconds=get_project(session, annotation_project_id).lease_seconds)
    session.flush()
    return task_view(session, assignment, resumed=True)


def _require_live(assignment: Assignment, now: datetime) -> None:
    if assignment.state is not AssignmentState.active:
        raise Conflict(f"this assignment was already {assignment.state.value}", field="assignment_id",
                       code="lease_not_active")
    if assignment.expires_at <= now:
        ANNOTATION_LEASES_EXPIRED.labels("late_action").inc()
        raise Conflict(f"the lease expired at {assignment.expires_at.isoformat()}; the task went back to the "
                       "queue. Ask for the next task.", field="assignment_id", code="lease_expired")


# --------------------------------------------------------------------------------------- submit


def _pairs(schema: LabelSchema, completions: list[str] | None,
           clusters: list[dict[str, Any]]) -> dict[str, tuple[str, str] | None]:
    return {q.id: preference_responses(completions, clusters, q.source)
            for q in schema.questions if isinstance(q, PreferencePairQuestion)}


def task_context(session: Session, schema: LabelSchema, rollout_group_id: str, *,
                 candidates_needed: bool) -> TaskContext:
    """What the task offers the schema's questions; read only when some question needs it."""
    pair_needed = any(isinstance(q, PreferencePairQuestion) for q in schema.questions)
    items_needed = any(isinstance(q, RankingQuestion) and q.items is None for q in schema.questions)
    if not (candidates_needed or pair_needed or items_needed):
        return TaskContext()
    row = session.execute(select(PseudoLabel.clusters, RolloutGroup.completions)
                          .join(RolloutGroup, RolloutGroup.id == PseudoLabel.rollout_group_id)
                          .where(PseudoLabel.rollout_group_id == rollout_group_id)).first()
    clusters, completions = (row[0] or [], row[1]) if row is not None else ([], None)
    return TaskContext(candidates=[str(c["answer"]) for c in clusters], pairs=_pairs(schema, completions, clusters))


@dataclass(frozen=True)
class Resolved:
    """A label checked against the schema: the math answer's columns and every question's value."""

    kind: LabelKind
    answer: str | None
    candidate: int | None
    rationale: str | None
    values: dict[str, Any]


# A top-level (pre-0014) math answer's problems name the top-level fields, as they always did.
TOP_LEVEL_FIELDS = {"answer": "answer", "candidate": "candidate", "ambiguous": "kind", "kind": "kind",
                    "rationale": "rationale"}


def resolve_label(session: Session, schema: LabelSchema, rollout_group_id: str,
                  body: Submission | Decision) -> Resolved:
    """Check a submission (or a reviewer's decision) against the label schema: ``values`` by question
    id, and a math_answer question possibly answered by the top-level kind/answer/candidate/rationale."""
    values = dict(body.values or {})
    math = schema.math
    top_level = body.has_top_level
    if top_level or body.rationale is not None:
        if math is None:
            name = "rationale" if not top_level else ("candidate" if body.candidate is not None else
                                                      "kind" if body.kind is LabelKind.ambiguous else "answer")
            raise InvalidInput("this project's label schema has no math_answer question: send the answers in "
                               "`values`", field=name)
        if not top_level:  # a top-level rationale for a math answer given in values
            given = values.get(math.id)
            if not isinstance(given, dict) or given.get("rationale") is not None:
                raise InvalidInput("the top-level rationale belongs to a top-level math answer", field="rationale")
            values[math.id] = {**given, "rationale": body.rationale}
        elif math.id in values:
            raise InvalidInput(f"the math answer is given both at the top level and in values.{math.id}",
                               field=f"values.{math.id}")
        else:
            values[math.id] = {"kind": body.kind.value, "answer": body.answer, "candidate": body.candidate,
                               "rationale": body.rationale}
    math_value = values.get(math.id) if math is not None else None
    candidates_needed = isinstance(math_value, dict) and math_value.get("candidate") is not None
    context = task_context(session, schema, rollout_group_id, candidates_needed=candidates_needed)
    try:
        checked = check_values(schema, values, context)
    except InvalidInput as exc:
        prefix = f"values.{math.id}" if math is not None else None
        if top_level and prefix is not None and exc.field is not None and exc.field.startswith(prefix):
            rest = exc.field[len(prefix):].lstrip(".")
            exc.field = TOP_LEVEL_FIELDS.get(rest, "answer")
            exc.message = exc.message.split(": ", 1)[-1]
        raise
    if math is None:
        return Resolved(LabelKind.answer, None, None, None, checked)
    answer = checked[math.id]
    return Resolved(LabelKind(answer["kind"]), answer["answer"], answer["candidate"], answer["rationale"], checked)


def _annotation_out(session: Session, annotation: Annotation, *, replayed: bool,
                    task: Task | None = None) -> AnnotationOut:
    task = task or session.get(Task, annotation.task_id)
    return AnnotationOut(
        id=annotation.id, task_id=annotation.task_id, assignment_id=annotation.assignment_id,
        submission_id=annotation.submission_id, kind=annotation.kind, answer=annotation.answer,
        candidate_index=annotation.candidate_index, rationale=annotation.rationale,
        values=annotation.label_values, created_at=annotation.created_at, undone=annotation.undone_at is not None,
        task_status=task.status.value if task is not None else "unknown", replayed=replayed)


def _existing_submission(session: Session, annotator_id: str, submission_id: str,
                         assignment_id: str) -> Annotation | None:
    # Annotations stored before submits kept idempotency records: their retries are found here.
    existing = session.scalar(select(Annotation).where(Annotation.annotator_id == annotator_id,
                                                       Annotation.submission_id == submission_id))
    if existing is not None and existing.assignment_id != assignment_id:
        raise Conflict("this idempotency key was already used for another assignment", field="submission_id",
                       code="submission_id_reused")
    return existing


def submit(session: Session, annotation_project_id: str, annotator_id: str, assignment_id: str,
           submission: Submission, *, now: datetime | None = None) -> AnnotationOut:
    """Record the annotator's answer on their live lease; the same idempotency key again is a no-op.

    ``submission.submission_id`` carries the key (the route puts the ``Idempotency-Key`` header there).
    """
    key = submission.submission_id
    if key is None:
        raise InvalidInput("a submission needs an idempotency key: send the Idempotency-Key header",
                           field="Idempotency-Key")
    serialise_on_sqlite(session, annotation_project_id)
    assignment = get_assignment(session, annotation_project_id, annotator_id, assignment_id)
    task = lock_task(session, assignment.task_id)
    # The answer is checked before the key is claimed: a refused body claims nothing.
    project = get_project(session, annotation_project_id)
    schema = LabelSchema.model_validate(project.label_schema)
    label = resolve_label(session, schema, task.rollout_group_id, submission)
    # Checked under the task lock, so a concurrent retry of this submission finds the first one.
    endpoint, request_hash = f"submit:{annotator_id}", _submission_hash(assignment_id)
    stored = idempotency.replay(session, annotation_project_id, endpoint, key, request_hash)
    if stored is not None:
        return AnnotationOut.model_validate_json(stored).model_copy(update={"replayed": True})
    existing = _existing_submission(session, annotator_id, key, assignment_id)
    if existing is not None:
        return _annotation_out(session, existing, replayed=True)
    _fresh(session, assignment)
    now = now or utcnow()
    _require_live(assignment, now)
    annotation = Annotation(task_id=task.id, assignment_id=assignment.id, annotation_project_id=annotation_project_id,
                            annotator_id=annotator_id, submission_id=key, kind=label.kind,
                            answer=label.answer, candidate_index=label.candidate, rationale=label.rationale,
                            label_values=label.values, duration_s=(now - assignment.leased_at).total_seconds(), created_at=now)
    session.add(annotation)
    assignment.state, assignment.finished_at = AssignmentState.submitted, now
    task.version += 1
    session.flush()
    _complete_if_ready(session, task, now, schema, just_added=annotation)
    session.flush()
    out = _annotation_out(session, annotation, replayed=False, task=task)
    idempotency.remember(session, annotation_project_id, endpoint, key, request_hash, 201, out.model_dump_json())
    return out


def _submission_hash(assignment_id: str) -> str:
    # A key names the one answer to one assignment: sent again on it (a double click, even with the form
    # changed meanwhile) it replays that answer; on another assignment it is refused.
    return shared.fingerprint({"assignment_id": assignment_id})


def label_clusters(labels: list[tuple[LabelKind, str | None]]) -> list[list[int]]:
    """Group labels that agree: ambiguous flags together, answers by equivalence; largest first."""
    clusters: list[list[int]] = []
    for index, (kind, answer) in enumerate(labels):
        for cluster in clusters:
            first_kind, first_answer = labels[cluster[0]]
            same = (kind is first_kind is LabelKind.ambiguous
                    or (kind is first_kind is LabelKind.answer and answers_equivalent(first_answer, answer)))
            if same:
                cluster.append(index)
                break
        else:
            clusters.append([index])
    return sorted(clusters, key=lambda members: (-len(members), members[0]))


def _live_annotations(session: Session, task_id: str) -> list[Annotation]:
    """The task's labels that count: neither undone nor rejected by a reviewer."""
    return list(session.scalars(select(Annotation).where(Annotation.task_id == task_id,
                                                         Annotation.undone_at.is_(None),
                                                         Annotation.rejected_at.is_(None))
                                .order_by(Annotation.created_at, Annotation.id)))


def value_clusters(schema: LabelSchema, labels: list[dict[str, Any] | None]) -> list[list[int]]:
    """Without a math_answer question: labels agree when every comparable question's value does
    (``label_schema.label_key``; free text never counts); largest first, ties by first label."""
    groups: dict[tuple[Any, ...], list[int]] = {}
    for index, values in enumerate(labels):
        groups.setdefault(label_key(schema, values), []).append(index)
    return sorted(groups.values(), key=lambda members: (-len(members), members[0]))


def _complete_if_ready(session: Session, task: Task, now: datetime, schema: LabelSchema,
                       just_added: Annotation | None = None) -> None:
    """With k answers in: unanimous (by equivalence) → the label is final; otherwise → adjudication.
    With a math_answer question only its answer decides (as before 0014); without one, every
    comparable question's value (``value_clusters``)."""
    if task.honeypot:  # a gold task is graded against its hidden answer, never completed or adjudicated
        return
    # With overlap 1 the new annotation is the only live one (the slot count guarantees it).
    annotations = [just_added] if just_added is not None and task.overlap_k == 1 else \
        _live_annotations(session, task.id)
    if len(annotations) < task.overlap_k:
        return
    if schema.math is not None:
        clusters = label_clusters([(a.kind, a.answer) for a in annotations])
    else:
        clusters = value_clusters(schema, [a.label_values for a in annotations])
    task.agreement = len(clusters[0]) / len(annotations)
    if len(clusters) > 1:
        task.status = TaskStatus.adjudication
        return
    first = annotations[0]
    _finalise(session, task, first.kind, first.answer, [a.annotator_id for a in annotations], None, now,
              first.label_values)


def _finalise(session: Session, task: Task, kind: LabelKind, answer: str | None, labelled_by: list[str],
              adjudicator_id: str | None, now: datetime, values: dict[str, Any] | None = None) -> None:
    task.status, task.final_kind, task.final_answer, task.completed_at = TaskStatus.done, kind, answer, now
    purchase = session.get(Purchase, task.purchase_id)
    assert purchase is not None
    deliver_label(session, purchase, kind=kind, answer=answer, labelled_by=labelled_by,
                  adjudicator_id=adjudicator_id, now=now, values=values)


# ------------------------------------------------------------------------------------ skip, undo


def skip(session: Session, annotation_project_id: str, annotator_id: str, assignment_id: str, *,
         now: datetime | None = None) -> SkipOut:
    """Give the task back; the annotator will not be offered it again. Skipping twice is a no-op."""
    serialise_on_sqlite(session, annotation_project_id)
    assignment = get_assignment(session, annotation_project_id, annotator_id, assignment_id)
    task = lock_task(session, assignment.task_id)
    _fresh(session, assignment)
    if assignment.state is AssignmentState.submitted:
        raise Conflict("this assignment was already submitted; use undo to take the answer back",
                       field="assignment_id", code="lease_not_active")
    if assignment.state is AssignmentState.active:
        assignment.state, assignment.finished_at = AssignmentState.skipped, now or utcnow()
        task.version += 1
        session.flush()
    return SkipOut(assignment_id=assignment.id, task_id=task.id, state=assignment.state.value)


def come_back_later(session: Session, annotation_project_id: str, annotator_id: str, assignment_id: str, *,
                    now: datetime | None = None) -> SkipOut:
    """Hand the lease back for now: the slot is free for others at once, and this annotator is offered
    the task again only when no other task is left for them (then it is leased like any other).
    Not a skip: it is not counted as skipped and can be asked twice (a no-op)."""
    serialise_on_sqlite(session, annotation_project_id)
    assignment = get_assignment(session, annotation_project_id, annotator_id, assignment_id)
    task = lock_task(session, assignment.task_id)
    _fresh(session, assignment)
    if assignment.state is not AssignmentState.active:
        raise Conflict(f"this assignment was already {assignment.state.value}", field="assignment_id",
                       code="lease_not_active")
    now = now or utcnow()
    if assignment.deferred_at is None:
        assignment.deferred_at = now
        assignment.expires_at = min(assignment.expires_at, now)
        task.version += 1
        session.flush()
    return SkipOut(assignment_id=assignment.id, task_id=task.id, state="deferred")


def has_undoable(session: Session, annotation_project_id: str, annotator_id: str) -> bool:
    """The annotator has a submission in the project that undo could take back (the UI hides Undo otherwise)."""
    return session.scalar(select(Annotation.id).where(
        Annotation.annotation_project_id == annotation_project_id, Annotation.annotator_id == annotator_id,
        Annotation.undone_at.is_(None), Annotation.rejected_at.is_(None)).limit(1)) is not None


def undo_last(session: Session, annotation_project_id: str, annotator_id: str, *,
              now: datetime | None = None) -> UndoOut:
    """Take back the annotator's last submission in the project and lease its task to them again.

    If that submission had made the label final, the label is retracted: the purchase goes back to
    pending and the label feed carries a ``retracted`` event. A label settled by adjudication
    cannot be undone by an annotator, nor one a reviewer accepted or rejected.
    """
    _require_annotator(session, annotator_id)
    serialise_on_sqlite(session, annotation_project_id)
    last = session.scalar(select(Annotation).where(Annotation.annotation_project_id == annotation_project_id,
                                                   Annotation.annotator_id == annotator_id,
                                                   Annotation.undone_at.is_(None),
                                                   Annotation.rejected_at.is_(None))
                          .order_by(Annotation.created_at.desc(), Annotation.id.desc()).limit(1))
    if last is None:
        raise Conflict("there is no submission to undo", field="annotation", code="nothing_to_undo")
    task = lock_task(session, last.task_id)
    _fresh(session, last)
    if last.undone_at is not None:
        raise Conflict("that submission was already undone", field="annotation", code="nothing_to_undo")
    if session.scalar(select(Adjudication.id).where(Adjudication.task_id == task.id)) is not None:
        raise Conflict("this task's label was settled by adjudication and cannot be undone",
                       field="annotation", code="adjudicated")
    if session.scalar(select(Review.id).where(Review.annotation_id == last.id)) is not None:
        raise Conflict("a reviewer already accepted or rejected your last answer; it cannot be undone",
                       field="annotation", code="reviewed")
    now = now or utcnow()
    retracted = False
    if task.status is TaskStatus.done:
        purchase = session.get(Purchase, task.purchase_id)
        assert purchase is not None
        retract_label(session, purchase, now=now)
        retracted = True
    task.status, task.final_kind, task.final_answer, task.completed_at = TaskStatus.open, None, None, None
    task.agreement = None
    task.version += 1
    last.undone_at = now
    assignment = session.get(Assignment, last.assignment_id)
    assert assignment is not None
    assignment.state, assignment.finished_at = AssignmentState.active, None
    assignment.leased_at = now
    assignment.expires_at = now + timedelta(seconds=get_project(session, annotation_project_id).lease_seconds)
    session.flush()
    return UndoOut(undone=_annotation_out(session, last, replayed=False),
                   task=task_view(session, assignment, resumed=True), label_retracted=retracted)


def undo_once(session: Session, annotation_project_id: str, annotator_id: str, key: str | None, *,
              now: datetime | None = None) -> UndoOut:
    """``undo_last``, done once per idempotency key: a retried undo does not also undo the submission
    before it, it gets the first undo's answer back."""
    endpoint = f"undo:{annotator_id}"
    if key is not None:
        stored = idempotency.replay(session, annotation_project_id, endpoint, key, "-")
        if stored is not None:
            return UndoOut.model_validate_json(stored)
    out = undo_last(session, annotation_project_id, annotator_id, now=now)
    if key is not None:
        idempotency.remember(session, annotation_project_id, endpoint, key, "-", 200, out.model_dump_json())
    return out


# ---------------------------------------------------------------------------------- adjudication


def _after_in_review_order(cursor: str) -> ColumnElement[bool]:
    """Tasks after ``cursor`` in review order: highest priority first, then oldest."""
    priority, created_at, task_id = decode_cursor(cursor, 3)
    if (not isinstance(priority, int | float) or isinstance(priority, bool) or not isinstance(created_at, datetime)
            or not isinstance(task_id, str)):
        raise InvalidInput("cursor: not a cursor this list issued; pass back `next_cursor` as it came",
                           field="cursor")
    later = tuple_(Task.created_at, Task.id) > tuple_(literal(created_at, Task.created_at.type), literal(task_id))
    return or_(Task.priority < priority, and_(Task.priority == priority, later))


def adjudication_queue(session: Session, annotation_project_id: str, *, cursor: str | None = None,
                       limit: int = 50) -> Page[AdjudicationView]:
    """Tasks whose annotations disagree, highest priority first, with what each annotator said."""
    query = select(Task).where(Task.annotation_project_id == annotation_project_id,
                               Task.status == TaskStatus.adjudication)
    if cursor:
        query = query.where(_after_in_review_order(cursor))
    tasks = list(session.scalars(query.order_by(Task.priority.desc(), Task.created_at, Task.id).limit(limit + 1)))
    page = tasks[:limit]
    last = page[-1] if len(tasks) > limit else None
    return Page(data=[_adjudication_view(session, task) for task in page],
                next_cursor=None if last is None else encode_cursor([last.priority, last.created_at, last.id]))


def adjudication_view(session: Session, annotation_project_id: str, task_id: str) -> AdjudicationView:
    """One disputed task with what each annotator said (the reviewer screen's page of it)."""
    task = session.get(Task, task_id)
    if task is None or task.annotation_project_id != annotation_project_id:
        raise NotFound(f"task {task_id!r} not found", field="task_id")
    if task.status is not TaskStatus.adjudication:
        raise Conflict(f"task is {task.status.value}, not awaiting adjudication", field="task_id",
                       code="not_in_adjudication")
    return _adjudication_view(session, task)


def _adjudication_view(session: Session, task: Task) -> AdjudicationView:
    prompt = session.get(Prompt, task.prompt_id)
    assert prompt is not None
    rows = session.execute(select(Annotation, Annotator.username)
                           .join(Annotator, Annotator.id == Annotation.annotator_id)
                           .where(Annotation.task_id == task.id, Annotation.undone_at.is_(None),
                                  Annotation.rejected_at.is_(None))
                           .order_by(Annotation.created_at, Annotation.id)).all()
    project = get_project(session, task.annotation_project_id)
    schema = LabelSchema.model_validate(project.label_schema)
    context = task_context(session, schema, task.rollout_group_id, candidates_needed=False)
    return AdjudicationView(
        task_id=task.id, prompt_id=prompt.external_id, prompt_text=prompt.text,
        candidates=candidates(session, task.rollout_group_id), agreement=task.agreement,
        pairs={qid: PairOut(a=pair[0], b=pair[1]) for qid, pair in context.pairs.items() if pair is not None},
        annotations=[AnnotationSummary(annotator_id=a.annotator_id, username=name, kind=a.kind, answer=a.answer,
                                       rationale=a.rationale, values=a.label_values) for a, name in rows])


def adjudicate(session: Session, annotation_project_id: str, adjudicator_id: str, task_id: str,
               decision: Decision, *, now: datetime | None = None) -> AdjudicationOut:
    """Settle a disputed task with the reviewer's answer; that answer becomes the label."""
    adjudicator = _require_annotator(session, adjudicator_id)
    require_adjudicator(adjudicator)
    serialise_on_sqlite(session, annotation_project_id)
    task = lock_task(session, task_id)
    if task.annotation_project_id != annotation_project_id:
        raise NotFound(f"task {task_id!r} not found", field="task_id")
    if task.status is not TaskStatus.adjudication:
        raise Conflict(f"task is {task.status.value}, not awaiting adjudication", field="task_id",
                       code="not_in_adjudication")
    project = get_project(session, annotation_project_id)
    label = resolve_label(session, LabelSchema.model_validate(project.label_schema), task.rollout_group_id,
                          decision)
    now = now or utcnow()
    record = Adjudication(task_id=task.id, adjudicator_id=adjudicator_id, kind=label.kind, answer=label.answer,
                          candidate_index=label.candidate, rationale=label.rationale, label_values=label.values,
                          created_at=now)
    session.add(record)
    labelled_by = [a.annotator_id for a in _live_annotations(session, task.id)]
    _finalise(session, task, label.kind, label.answer, labelled_by, adjudicator_id, now, label.values)
    task.version += 1
    session.flush()
    return AdjudicationOut(id=record.id, task_id=task.id, adjudicator_id=adjudicator_id, kind=label.kind,
                           answer=label.answer, values=label.values, created_at=now)


# ---------------------------------------------------------------------------------------- stats


def _count(session: Session, query) -> int:  # type: ignore[no-untyped-def]
    return int(session.scalar(query) or 0)


def project_stats(session: Session, annotation_project_id: str, *, now: datetime | None = None) -> QueueStats:
    """Queue depth, leases, adjudication backlog, agreement, pseudo-label accuracy, throughput."""
    now = now or utcnow()
    project = get_project(session, annotation_project_id)
    in_project = and_(Task.annotation_project_id == annotation_project_id, Task.honeypot.is_(False))
    by_status = dict(session.execute(select(Task.status, func.count(Task.id)).where(in_project)
                                     .group_by(Task.status)).all())
    leases = _count(session, select(func.count(Assignment.id)).where(
        Assignment.annotation_project_id == annotation_project_id, Assignment.state == AssignmentState.active,
        Assignment.expires_at > now))
    agreement = session.scalar(select(func.avg(Task.agreement)).where(
        in_project, Task.status == TaskStatus.done, Task.overlap_k >= 2, Task.agreement.is_not(None)))
    labelled = session.execute(
        select(Purchase.label_kind, Purchase.label, PseudoLabel.answer)
        .join(PseudoLabel, PseudoLabel.rollout_group_id == Purchase.rollout_group_id)
        .where(Purchase.annotation_project_id == annotation_project_id,
               Purchase.status == PurchaseStatus.labelled)).all()
    answered = [(label, pseudo) for kind, label, pseudo in labelled if kind is LabelKind.answer]
    accuracy = (sum(answers_equivalent(label, pseudo) for label, pseudo in answered) / len(answered)
                if answered else None)
    pending = _count(session, select(func.count(Purchase.id)).where(
        Purchase.annotation_project_id == annotation_project_id, Purchase.status == PurchaseStatus.pending))
    return QueueStats(
        budget=budget_of(project), tasks_open=int(by_status.get(TaskStatus.open, 0)), leases_active=leases,
        tasks_in_adjudication=int(by_status.get(TaskStatus.adjudication, 0)),
        tasks_done=int(by_status.get(TaskStatus.done, 0)), labels_pending=pending, labels_delivered=len(labelled),
        mean_agreement=float(agreement) if agreement is not None else None, pseudo_label_accuracy=accuracy,
        annotators=_throughput(session, annotation_project_id, now))


def _throughput(session: Session, annotation_project_id: str, now: datetime) -> list[AnnotatorThroughput]:
    hour_ago = now - timedelta(hours=1)
    live = Annotation.undone_at.is_(None)
    rows = session.execute(
        select(Annotator.id, Annotator.username, func.count(Annotation.id), func.avg(Annotation.duration_s),
               func.count(Annotation.id).filter(Annotation.created_at > hour_ago))
        .join(Annotation, Annotation.annotator_id == Annotator.id)
        .where(Annotation.annotation_project_id == annotation_project_id, live)
        .group_by(Annotator.id, Annotator.username).order_by(Annotator.username)).all()
    skipped = dict(session.execute(
        select(Assignment.annotator_id, func.count(Assignment.id))
        .where(Assignment.annotation_project_id == annotation_project_id,
               Assignment.state == AssignmentState.skipped).group_by(Assignment.annotator_id)).all())
    return [AnnotatorThroughput(annotator_id=aid, username=name, submitted=int(count), skipped=int(skipped.get(aid, 0)),
                                last_hour=int(recent), mean_seconds=float(mean) if mean is not None else None)
            for aid, name, count, mean, recent in rows]


def depth_by_state(now: datetime) -> dict[tuple[str, ...], float]:
    """Tasks by status and leases by state (live or expired, not yet taken up), over every project."""
    with session_factory()() as session:
        tasks = session.execute(select(Task.status, func.count(Task.id)).group_by(Task.status)).all()
        leases = session.execute(
            select(Assignment.expires_at > now, func.count(Assignment.id))
            .where(Assignment.state == AssignmentState.active).group_by(Assignment.expires_at > now)).all()
    depth: dict[tuple[str, ...], float] = {("task", status.value): 0.0 for status in TaskStatus}
    depth.update({("task", TaskStatus(status).value): float(count) for status, count in tasks})
    depth.update({("lease", "live" if live else "expired"): float(count) for live, count in leases})
    return depth
