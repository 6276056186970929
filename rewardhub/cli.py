"""The `rewardhub` command line."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from rewardhub.eval_cli import eval_app
from rewardhub.evaluations_cli import evaluations_app
from rewardhub.train_cli import config_error, demo, train
from services.common.models import Role

if TYPE_CHECKING:
    from pydantic import ValidationError

    from services.common.settings import Settings

KEEP_ALIVE_S = 75

# Tracebacks without local variables: they would print settings and URLs with their passwords.
app = typer.Typer(help="rewardhub: rewards, labels and GRPO-family training for RLVR.", no_args_is_help=True,
                  pretty_exceptions_show_locals=False)
keys_app = typer.Typer(help="Manage API keys.", no_args_is_help=True)
projects_app = typer.Typer(help="Manage projects.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(projects_app, name="projects")
app.add_typer(eval_app, name="eval")
app.add_typer(evaluations_app, name="evaluations")
app.command()(train)
app.command()(demo)
console = Console(stderr=True, soft_wrap=True)


def _settings(command: str) -> Settings:
    """The settings from the environment; a bad variable is one line naming it (no traceback)."""
    from pydantic import ValidationError

    from services.common.settings import get_settings

    try:
        return get_settings()
    except ValidationError as exc:
        raise config_error(command, f"configuration error: {settings_problems(exc)}") from None


def settings_problems(exc: ValidationError) -> str:
    """A settings ``ValidationError`` as ``VARIABLE: problem`` pairs (never the values: they may be secrets)."""
    from services.common.settings import Settings

    problems = []
    for error in exc.errors():
        field = str(error["loc"][0]) if error["loc"] else ""
        info = Settings.model_fields.get(field)
        choices = getattr(getattr(info, "validation_alias", None), "choices", None)
        variable = str(choices[0]) if choices else f"REWARDHUB_{field.upper()}"
        problems.append(f"{variable}: {error['msg']}")
    return "; ".join(problems)


SUPPORTED_DATABASES = ("sqlite", "postgresql")


def database_problem(url: str) -> str | None:
    """Why ``url`` cannot serve as the database, checked before anything is created; None if it can.

    A SQLite file is created by the first start, so only its URL is checked; a server is connected to.
    """
    from sqlalchemy import create_engine, make_url, text
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError
    from sqlalchemy.pool import NullPool

    try:
        parsed = make_url(url)
        parsed.get_dialect()
    except (ArgumentError, NoSuchModuleError, ValueError) as exc:
        return f"not a usable database URL ({exc})"
    backend = parsed.get_backend_name()
    if backend not in SUPPORTED_DATABASES:
        return f"rewardhub runs on SQLite or PostgreSQL (postgresql+psycopg://user:password@host:5432/db), not {backend}"
    if backend == "sqlite":
        return None
    try:
        engine = create_engine(parsed, poolclass=NullPool)
    except ImportError as exc:
        return f"its database driver is not installed ({exc})"
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except OperationalError as exc:
        return f"cannot connect ({str(exc.orig or exc).splitlines()[0]})"
    finally:
        engine.dispose()
    return None


@app.command("export-hf")
def export_hf(
    checkpoint: Annotated[str, typer.Argument(help="A training checkpoint folder (…/checkpoints/step-N).")],
    out: Annotated[str, typer.Argument(help="Where to write the Hugging Face model folder.")],
    base_model: Annotated[str | None, typer.Option(help="Model folder giving the architecture and tokenizer "
                                                        "(default: the one the checkpoint records).")] = None,
) -> None:
    """Export a training checkpoint as a Hugging Face model folder (from_pretrained and vLLM load it)."""
    from pathlib import Path

    from trainer.export import export_from_checkpoint

    try:
        written = export_from_checkpoint(Path(checkpoint), Path(out),
                                         base_model=Path(base_model) if base_model else None)
    except FileNotFoundError as exc:
        raise config_error("export-hf", str(exc)) from None
    console.print(f"exported {checkpoint} to {written}")


@app.command()
def up(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
) -> None:
    """Run every service in one process on the embedded default (SQLite, in-process tasks)."""
    import uvicorn

    from rewardhub.embedded import bootstrap, build_embedded_app
    from services.common.logging import configure_logging, logging_config, mask_url

    settings = _settings("up")
    problem = database_problem(settings.effective_database_url)
    if problem is not None:
        raise config_error("up", f"database {mask_url(settings.effective_database_url)}: {problem}")
    configure_logging("embedded", settings.log_level, json_logs=False)
    boot = bootstrap(settings)
    application = build_embedded_app()
    if not settings.redis_url:
        from services.common.tasks import start_embedded_sweeping

        start_embedded_sweeping()
    # Mounted apps get no lifespan of their own: watch the training runs' heartbeats from here.
    from services.trainer.supervisor import Watcher

    run_watcher = Watcher()
    run_watcher.start()
    url = f"http://{host}:{port}"
    console.print(f"[bold green]rewardhub[/] is up at [link={url}]{url}[/]")
    for label, path in (("web UI", application.state.ui_path), ("API docs", "/docs  (links every service's docs)"),
                        ("metrics", "/metrics")):
        console.print(f"  {label + ':':<10}{url}{path}")
    console.print(f"database: {mask_url(settings.effective_database_url)}")
    if boot.admin_key and boot.newly_created:
        console.print(f"first admin key (shown once, also saved to {boot.admin_key_file}):")
        console.print(f"  [bold]{boot.admin_key}[/]")
    elif boot.admin_key:
        # Shown once: later starts only say where it is (terminal scrollback and CI logs keep secrets).
        console.print(f"admin key: saved in {boot.admin_key_file} (shown once, on the first start)")
    else:
        console.print("an admin key exists already; make another with `rewardhub keys create --role admin`")
    console.print(f"default project id: {boot.project_id}")
    console.print("Press Ctrl-C to stop.")
    # Trainers hold connections open between steps; outlive their idle gaps (uvicorn's default is 5 s).
    # uvicorn applies rewardhub's logging config, not its own: its lines get the same format and filters.
    uvicorn.run(application, host=host, port=port, log_level=log_level, lifespan="on",
                timeout_keep_alive=KEEP_ALIVE_S,
                log_config=logging_config("embedded", settings.log_level, json_logs=False))
    run_watcher.stop()
    if not settings.redis_url:
        from services.common.tasks import stop_embedded_sweeping

        stop_embedded_sweeping()
    console.print("rewardhub stopped.")


@app.command()
def serve(
    service: Annotated[str, typer.Argument(help="Service to run (gateway, verifier, ...).")],
    host: Annotated[str, typer.Option()] = "0.0.0.0",
    port: Annotated[int, typer.Option()] = 8000,
    workers: Annotated[int, typer.Option(help="uvicorn worker processes.")] = 1,
) -> None:
    """Run one service on its own (the command each container runs in docker-compose and Helm)."""
    import uvicorn

    from rewardhub.service_map import SERVICES
    from services.common.logging import configure_logging, logging_config, mask_url

    if service not in SERVICES:
        raise typer.BadParameter(f"unknown service {service!r}; known: {', '.join(sorted(SERVICES))}",
                                 param_hint="SERVICE")
    settings = _settings("serve")
    configure_logging(service, settings.log_level, settings.log_json)
    logging.getLogger("rewardhub.cli").info(
        "serving %s on %s:%d; database %s; broker %s", service, host, port,
        mask_url(settings.effective_database_url), mask_url(settings.redis_url) if settings.redis_url else "in-process")
    os.environ["REWARDHUB_SERVICE"] = service
    module, _, factory = SERVICES[service].partition(":")
    # rewardhub's logging config as uvicorn's own (applied in each of its worker processes too): its
    # error and access lines are JSON, with the request id, through the secret-masking filter.
    uvicorn.run(f"{module}:{factory}", factory=True, host=host, port=port, workers=workers,
                log_level=settings.log_level.lower(), access_log=True, timeout_keep_alive=KEEP_ALIVE_S,
                log_config=logging_config(service, settings.log_level, settings.log_json))


@app.command()
def worker(
    queues: Annotated[str, typer.Option(help="Comma-separated Celery queues (one per job kind: celery, "
                                              "annotation, rec_rm, rubric_rm); empty: all of them.")] = "",
    concurrency: Annotated[int, typer.Option(help="Worker processes.")] = 2,
    pool: Annotated[str, typer.Option(help="Celery pool: prefork, solo, threads.")] = "prefork",
) -> None:
    """Run a Celery worker against REDIS_URL."""
    from services.common.logging import configure_logging
    from services.common.tasks import celery_app

    settings = _settings("worker")
    if not settings.redis_url:
        raise typer.BadParameter("REDIS_URL is not set: a worker needs a broker (the embedded default "
                                 "runs tasks in-process)", param_hint="REDIS_URL")
    # Celery's setup_logging signal (services/common/tasks.py) applies the same again in the worker,
    # so Celery installs none of its own handlers.
    configure_logging("worker", settings.log_level, settings.log_json)
    # With JSON logs, no start-up banner (celery's --quiet): every line the worker writes is JSON.
    quiet = ["--quiet"] if settings.log_json else []
    chosen = [f"--queues={queues}"] if queues.strip() else []
    celery_app.worker_main([*quiet, "worker", *chosen, f"--concurrency={concurrency}",
                            f"--pool={pool}", f"--loglevel={settings.log_level}"])


@app.command()
def migrate(
    revision: Annotated[str, typer.Option(help="Target revision for upgrade.")] = "head",
    downgrade_to: Annotated[str | None, typer.Option("--downgrade", help="Downgrade to this revision.")] = None,
) -> None:
    """Apply database migrations (production: run once before starting the services)."""
    from services.common import migrate as migrations
    from services.common.logging import mask_url

    settings = _settings("migrate")
    shown = mask_url(settings.effective_database_url)
    if downgrade_to is not None:
        migrations.downgrade(revision=downgrade_to)
        console.print(f"downgraded {shown} to {downgrade_to}")
    else:
        migrations.upgrade(revision=revision)
        console.print(f"migrated {shown} to {revision}")


@projects_app.command("create")
def projects_create(name: str, description: str = "") -> None:
    """Create a project and print its id."""
    from sqlalchemy import select

    from services.common.db import session_scope
    from services.common.models import Project

    with session_scope() as session:
        if session.scalar(select(Project.id).where(Project.name == name)):
            raise typer.BadParameter(f"a project named {name!r} already exists", param_hint="NAME")
        project = Project(name=name, description=description)
        session.add(project)
        session.flush()
        typer.echo(project.id)


@keys_app.command("create")
def keys_create(
    role: Annotated[Role, typer.Option(help="admin, trainer, annotator, or reward (scoring only: safe in a URL).")],
    project: Annotated[list[str] | None, typer.Option(help="Project name or id (repeatable).")] = None,
    name: Annotated[str, typer.Option(help="A label for the key.")] = "",
    all_projects: Annotated[bool, typer.Option(help="Admin only: the key sees every project.")] = False,
) -> None:
    """Create an API key and print it (shown once; only its hash is stored)."""
    from sqlalchemy import or_, select

    from services.common.auth import create_api_key
    from services.common.db import session_scope
    from services.common.models import Project

    if all_projects and role != Role.admin:
        raise typer.BadParameter("--all-projects is for admin keys only", param_hint="--all-projects")
    if not project and not all_projects:
        raise typer.BadParameter("name at least one --project (or --all-projects for an admin key)",
                                 param_hint="--project")
    with session_scope() as session:
        found = []
        for ref in project or []:
            match = session.scalar(select(Project).where(or_(Project.id == ref, Project.name == ref)))
            if match is None:
                raise typer.BadParameter(f"no project named or with id {ref!r}", param_hint="--project")
            found.append(match)
        _, clear = create_api_key(session, role=role, projects=found, name=name, all_projects=all_projects)
    typer.echo(clear)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
