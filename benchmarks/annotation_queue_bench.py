"""Annotator-queue throughput on real PostgreSQL: SKIP LOCKED against a naive SELECT-then-UPDATE.

N annotator threads, each with its own session (and connection), pull and submit T tasks with
overlap 1 until the queue is empty. The same run measures the anchor: a naive pick that reads the
top open task without a lock and claims it with a compare-and-set UPDATE (retrying when another
annotator got there first), so every annotator contends for the same row. Both are checked for
0 double assignments, 0 lost submissions and each task done exactly once.

The two sides alternate over ``--rounds`` rounds (each round on fresh queues, the side that goes
first rotating), and the ratio is printed as the median over the rounds with its spread [min-max].

``--http`` measures the same SKIP LOCKED queue through the HTTP API as deployed: the annotation
service in its own processes (``rewardhub serve annotation --workers W``) and one async SDK client
(``rewardhub.client.AsyncAnnotationClient``) per annotator, each with its own API key; the anchor is
the in-process run of the same size, alternated with it round by round.

Run: `python benchmarks/annotation_queue_bench.py [--annotators 50] [--tasks 2000] [--rounds 3] [--http]`
(needs PostgreSQL at REWARDHUB_TEST_POSTGRES_URL, default postgresql://postgres@127.0.0.1:5432/test;
without it the benchmark exits with status 2: a required service is missing, nothing was measured).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from sqlalchemy import Engine, create_engine, exists, func, select, update
from sqlalchemy.orm import Session, sessionmaker

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from services.annotation import accounts, ingestion, projects, purchases, queue
from services.annotation.models import (
    Annotation,
    AnnotationProject,
    Annotator,
    Assignment,
    Policy,
    Task,
    TaskStatus,
)
from services.annotation.schemas import RolloutGroupIn, StepIn, Submission, TaskView
from services.common.db import utcnow
from services.common.models import Project

NextTask = Callable[[Session, str, str], TaskView | None]


def queue_engine(url: str, annotators: int) -> Engine:
    """One pooled connection per annotator thread, so threads wait on rows, not on the pool."""
    return create_engine(url, pool_size=annotators + 2, max_overflow=4)


def seed_queue(factory: sessionmaker[Session], tenancy_project_id: str, *, tasks: int, annotators: int,
               name: str) -> tuple[str, list[str]]:
    """An annotation project with ``tasks`` bought prompts (overlap 1) and ``annotators`` accounts."""
    with factory() as session, session.begin():
        project = AnnotationProject(
            project_id=tenancy_project_id, name=name, label_budget=tasks,
            label_schema={"free_form": True, "candidates": True, "ambiguous": True, "rationale": "optional"},
            overlap_k=1, lease_seconds=3600, rollouts_per_prompt=4, policy=Policy.random, care_params={},
            webhook_secret=projects.new_webhook_secret())
        session.add(project)
        session.flush()
        now = utcnow()
        body = StepIn(step=0, groups=[RolloutGroupIn(prompt_id=f"p{i}", prompt_text=f"Compute {i} + {i}.",
                                                     answers=["2", "2", "3", None]) for i in range(tasks)])
        stored = ingestion.store_step(session, project, body, now)
        bought = []
        for index, (prompt, group) in enumerate(zip(stored.prompts, stored.groups, strict=True)):
            score = float((index * 7919) % 1000) / 1000.0  # a spread of priorities
            bought.append((purchases.record_purchase(session, project, group, prompt, policy="random", score=score,
                                                     now=now), score))
        session.flush()
        for purchase, score in bought:
            purchases.fulfil(session, project, purchase, priority=score, key_answer=None, now=now)
        # Key-linked accounts skip argon2 (hashing 50 passwords would dominate a short run).
        people = [Annotator(username=f"{accounts.KEY_USERNAME_PREFIX}{name}-{i}") for i in range(annotators)]
        session.add_all(people)
        session.flush()
        return project.id, [p.id for p in people]


def naive_next_task(session: Session, annotation_project_id: str, annotator_id: str) -> TaskView | None:
    """The anchor: read the top open task without a lock, then claim it with a compare-and-set on
    its version; if someone else changed it in between, read again."""
    project = session.get(AnnotationProject, annotation_project_id)
    assert project is not None
    while True:
        now = utcnow()
        taken = (select(func.count(Assignment.id)).where(Assignment.task_id == Task.id, queue.slot_holders(now))
                 .correlate(Task).scalar_subquery())
        mine = exists().where(Assignment.task_id == Task.id, queue.blocks_annotator(annotator_id, now))
        row = session.execute(
            select(Task.id, Task.version)
            .where(Task.annotation_project_id == annotation_project_id, Task.status == TaskStatus.open,
                   taken < Task.overlap_k, ~mine)
            .order_by(Task.priority.desc(), Task.created_at, Task.id).limit(1)).first()
        if row is None:
            return None
        claimed = session.execute(update(Task).where(Task.id == row.id, Task.version == row.version)
                                  .values(version=Task.version + 1)
                                  .execution_options(synchronize_session=False))
        if claimed.rowcount == 1:  # type: ignore[attr-defined]
            assignment = Assignment(task_id=row.id, annotation_project_id=annotation_project_id,
                                    annotator_id=annotator_id, leased_at=now,
                                    expires_at=now + timedelta(seconds=project.lease_seconds))
            session.add(assignment)
            session.flush()
            return queue.task_view(session, assignment, resumed=False)


def skip_locked_next_task(session: Session, annotation_project_id: str, annotator_id: str) -> TaskView | None:
    return queue.next_task(session, annotation_project_id, annotator_id)


@dataclass
class LoadResult:
    mode: str
    annotators: int
    tasks: int
    seconds: float
    ops: int
    acknowledged: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    double_assignments: int = 0
    lost_submissions: int = 0
    tasks_done: int = 0
    tasks_done_exactly_once: int = 0

    @property
    def ops_per_s(self) -> float:
        return self.ops / self.seconds if self.seconds else 0.0

    @property
    def correct(self) -> bool:
        return (not self.errors and self.double_assignments == 0 and self.lost_submissions == 0
                and self.tasks_done == self.tasks == self.tasks_done_exactly_once)


def run_load(factory: sessionmaker[Session], annotation_project_id: str, annotator_ids: list[str], tasks: int, *,
             mode: str = "skip_locked") -> LoadResult:
    """Every annotator pulls and submits until nothing is left; ops = pulls + submits."""
    pick: NextTask = skip_locked_next_task if mode == "skip_locked" else naive_next_task
    acknowledged: list[str] = []
    errors: list[str] = []
    ops = [0]
    lock = threading.Lock()
    start = threading.Barrier(len(annotator_ids) + 1)

    def annotate(annotator_id: str) -> None:
        mine: list[str] = []
        count = 0
        start.wait()
        try:
            while True:
                with factory() as session, session.begin():
                    view = pick(session, annotation_project_id, annotator_id)
                count += 1
                if view is None:
                    break
                with factory() as session, session.begin():
                    out = queue.submit(session, annotation_project_id, annotator_id, view.assignment_id,
                                       Submission(submission_id=uuid.uuid4().hex, answer="2"))
                count += 1
                mine.append(out.id)
        except Exception as exc:  # reported in the result, never swallowed
            with lock:
                errors.append(f"{type(exc).__name__}: {exc}")
        with lock:
            acknowledged.extend(mine)
            ops[0] += count

    threads = [threading.Thread(target=annotate, args=(a,)) for a in annotator_ids]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - began
    result = LoadResult(mode=mode, annotators=len(annotator_ids), tasks=tasks, seconds=seconds, ops=ops[0],
                        acknowledged=acknowledged, errors=errors)
    audit(factory, annotation_project_id, result)
    return result


def audit(factory: sessionmaker[Session], annotation_project_id: str, result: LoadResult) -> None:
    """Count double assignments, acknowledged-but-missing submissions and tasks done exactly once."""
    with factory() as session:
        per_task = (select(Assignment.task_id, func.count(Assignment.id).label("n"))
                    .where(Assignment.annotation_project_id == annotation_project_id)
                    .group_by(Assignment.task_id).subquery())
        result.double_assignments = int(session.scalar(select(func.count()).select_from(per_task)
                                                       .where(per_task.c.n > 1)) or 0)
        stored = set(session.scalars(select(Annotation.id).where(
            Annotation.annotation_project_id == annotation_project_id)))
        result.lost_submissions = len(set(result.acknowledged) - stored)
        result.tasks_done = int(session.scalar(select(func.count(Task.id)).where(
            Task.annotation_project_id == annotation_project_id, Task.status == TaskStatus.done)) or 0)
        per_task_annotations = (select(Annotation.task_id, func.count(Annotation.id).label("n"))
                                .where(Annotation.annotation_project_id == annotation_project_id)
                                .group_by(Annotation.task_id).subquery())
        result.tasks_done_exactly_once = int(session.scalar(select(func.count()).select_from(per_task_annotations)
                                                            .where(per_task_annotations.c.n == 1)) or 0)


def describe(result: LoadResult) -> str:
    return (f"{result.mode:>11}: {result.annotators} annotators, {result.tasks} tasks, {result.ops} ops in "
            f"{result.seconds:.2f} s → {result.ops_per_s:,.0f} ops/s ({result.tasks / result.seconds:,.0f} tasks/s); "
            f"double assignments {result.double_assignments}, lost submissions {result.lost_submissions}, "
            f"done exactly once {result.tasks_done_exactly_once}/{result.tasks}, errors {len(result.errors)}")


def seed_key_annotators(factory: sessionmaker[Session], tenancy_project_id: str, annotators: int) -> list[str]:
    """One annotator API key per client on the tenancy project (its account is made on first use)."""
    from services.common.auth import create_api_key
    from services.common.models import Role

    with factory() as session, session.begin():
        tenancy = session.get(Project, tenancy_project_id)
        assert tenancy is not None
        return [create_api_key(session, role=Role.annotator, projects=[tenancy], name=f"bench-{i}")[1]
                for i in range(annotators)]


@contextlib.contextmanager
def annotation_service(database_url: str, workers: int) -> Iterator[str]:
    """``rewardhub serve annotation`` on a loopback port, in processes of its own, until the block ends."""
    import socket
    import subprocess
    import tempfile

    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    data_dir = tempfile.mkdtemp(prefix="queue-bench-")
    env = {**os.environ, "DATABASE_URL": database_url, "REWARDHUB_DATA_DIR": data_dir,
           "REWARDHUB_DB_POOL_SIZE": "10", "REWARDHUB_DB_MAX_OVERFLOW": "10", "REWARDHUB_LOG_LEVEL": "WARNING"}
    env.pop("REDIS_URL", None)
    rewardhub = str(Path(sys.executable).with_name("rewardhub"))
    server = subprocess.Popen([rewardhub, "serve", "annotation", "--host", "127.0.0.1", "--port", str(port),
                               "--workers", str(workers)], env=env, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"rewardhub serve annotation exited with {server.returncode}")
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("rewardhub serve annotation did not become ready in 120 s")
            time.sleep(0.2)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def run_http_load(factory: sessionmaker[Session], url: str, annotation_project_id: str, keys: list[str],
                  tasks: int) -> LoadResult:
    """Every client pulls and submits through the API until nothing is left; ops = pulls + submits."""
    import asyncio

    from rewardhub.client import AsyncAnnotationClient

    acknowledged: list[str] = []
    errors: list[str] = []
    ops = [0]

    async def annotate(client: AsyncAnnotationClient, start: asyncio.Event) -> None:
        await start.wait()
        try:
            while True:
                task = await client.next_task(annotation_project_id)
                ops[0] += 1
                if task is None:
                    return
                out = await client.submit(annotation_project_id, task["assignment_id"], answer="2",
                                          idempotency_key=uuid.uuid4().hex)
                ops[0] += 1
                acknowledged.append(out["id"])
        except Exception as exc:  # reported in the result, never swallowed
            errors.append(f"{type(exc).__name__}: {exc}")

    async def everyone() -> float:
        clients = [AsyncAnnotationClient(url, key, annotation_url=url, timeout_s=120) for key in keys]
        try:
            # Each key's first call makes its account: done before the clock starts, as in-process.
            await asyncio.gather(*(client.current_task(annotation_project_id) for client in clients))
            start = asyncio.Event()
            runners = [asyncio.create_task(annotate(client, start)) for client in clients]
            began = time.perf_counter()
            start.set()
            await asyncio.gather(*runners)
            return time.perf_counter() - began
        finally:
            await asyncio.gather(*(client.aclose() for client in clients))

    seconds = asyncio.run(everyone())
    result = LoadResult(mode="http", annotators=len(keys), tasks=tasks, seconds=seconds, ops=ops[0],
                        acknowledged=acknowledged, errors=errors)
    audit(factory, annotation_project_id, result)
    return result


def _temporary_database(admin_url: str) -> tuple[str, Callable[[], None]]:
    import psycopg
    from psycopg import sql

    name = f"rewardhub_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    base = admin_url.rpartition("/")[0]
    url = f"{base}/{name}".replace("postgresql://", "postgresql+psycopg://", 1)

    def drop() -> None:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    return url, drop


EXIT_SERVICE_MISSING = 2


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--annotators", type=int, default=50)
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--http", action="store_true", help="Measure through the HTTP API against in-process.")
    parser.add_argument("--workers", type=int, default=2, help="--http: uvicorn worker processes of the service.")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds: must be at least 1")
    admin_url = os.environ.get("REWARDHUB_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
    try:
        url, drop = _temporary_database(admin_url)
    except Exception as exc:
        print(f"error: PostgreSQL at {admin_url} is not reachable ({type(exc).__name__}: {str(exc).splitlines()[0]}); this benchmark "
              "needs it (set REWARDHUB_TEST_POSTGRES_URL)", file=sys.stderr)
        return EXIT_SERVICE_MISSING
    if args.http:
        return _main_http(args, url, drop)
    modes = ["naive", "skip_locked"]
    results: dict[str, list[LoadResult]] = {mode: [] for mode in modes}
    try:
        engine, factory, tenancy_id = _bench_database(url, args.annotators)
        for r in range(args.rounds):
            for mode in modes[r % 2:] + modes[:r % 2]:  # the side that goes first alternates
                project_id, people = seed_queue(factory, tenancy_id, tasks=args.tasks, annotators=args.annotators,
                                                name=f"bench-{mode}-{r}")
                results[mode].append(run_load(factory, project_id, people, args.tasks, mode=mode))
                print(f"round {r + 1} " + describe(results[mode][-1]))
        engine.dispose()
    finally:
        drop()
    ratios = [s.ops_per_s / n.ops_per_s for s, n in zip(results["skip_locked"], results["naive"], strict=True)]
    print(f"SKIP LOCKED / naive SELECT-then-UPDATE throughput over {args.rounds} rounds: "
          f"median {statistics.median(ratios):.2f}x [{min(ratios):.2f}-{max(ratios):.2f}]")
    return 0 if all(r.correct for side in results.values() for r in side) else 1


def _bench_database(url: str, annotators: int) -> tuple[Engine, sessionmaker[Session], str]:
    """The migrated database, an engine with a connection per annotator, and the tenancy project."""
    from services.common.migrate import upgrade

    upgrade(url)
    engine = queue_engine(url, annotators)
    factory = sessionmaker(bind=engine, expire_on_commit=False)
    with factory() as session, session.begin():
        tenancy = Project(name="queue-bench")
        session.add(tenancy)
        session.flush()
        return engine, factory, tenancy.id


def _main_http(args: argparse.Namespace, url: str, drop: Callable[[], None]) -> int:
    modes = ["skip_locked", "http"]
    results: dict[str, list[LoadResult]] = {mode: [] for mode in modes}
    try:
        engine, factory, tenancy_id = _bench_database(url, args.annotators)
        keys = seed_key_annotators(factory, tenancy_id, args.annotators)
        with annotation_service(url, args.workers) as service_url:
            for r in range(args.rounds):
                for mode in modes[r % 2:] + modes[:r % 2]:  # the side that goes first alternates
                    project_id, people = seed_queue(factory, tenancy_id, tasks=args.tasks,
                                                    annotators=0 if mode == "http" else args.annotators,
                                                    name=f"bench-{mode}-{r}")
                    if mode == "http":
                        result = run_http_load(factory, service_url, project_id, keys, args.tasks)
                    else:
                        result = run_load(factory, project_id, people, args.tasks, mode=mode)
                    results[mode].append(result)
                    print(f"round {r + 1} " + describe(result))
        engine.dispose()
    finally:
        drop()
    ratios = [h.ops_per_s / s.ops_per_s for h, s in zip(results["http"], results["skip_locked"], strict=True)]
    for mode in modes:
        rates = [r.ops_per_s for r in results[mode]]
        print(f"{mode}: median {statistics.median(rates):,.0f} ops/s [{min(rates):,.0f}-{max(rates):,.0f}]")
    print(f"HTTP API ({args.workers} service processes) / in-process throughput over {args.rounds} rounds: "
          f"median {statistics.median(ratios):.2f}x [{min(ratios):.2f}-{max(ratios):.2f}]")
    return 0 if all(r.correct for side in results.values() for r in side) else 1


if __name__ == "__main__":
    raise SystemExit(main())

