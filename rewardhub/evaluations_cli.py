"""`rewardhub evaluations`: start, watch, cancel and resume evaluation jobs on the trainer service.

The jobs run on the service's workers (``POST /v1/evaluations``); this command only talks to its
API: ``--url`` (default ``$REWARDHUB_TRAINER_URL``, else ``$REWARDHUB_URL`` + ``/services/trainer``,
the embedded default's mount, else http://127.0.0.1:8000/services/trainer) with the key in
``$REWARDHUB_API_KEY``. ``status --watch`` shows a progress bar (done/total items and the stage)
until the job ends.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

evaluations_app = typer.Typer(help="Evaluation jobs on the trainer service: model (avg@k/pass@k), dining, sts.",
                              no_args_is_help=True)
console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)
ENDED = ("succeeded", "failed", "cancelled")

UrlOption = Annotated[str | None, typer.Option("--url", help="The trainer service's URL (default: "
                                               "$REWARDHUB_TRAINER_URL, or $REWARDHUB_URL/services/trainer).")]


def trainer_url(url: str | None) -> str:
    if url:
        return url.rstrip("/")
    if os.environ.get("REWARDHUB_TRAINER_URL"):
        return os.environ["REWARDHUB_TRAINER_URL"].rstrip("/")
    return os.environ.get("REWARDHUB_URL", "http://127.0.0.1:8000").rstrip("/") + "/services/trainer"


def _client(url: str | None) -> httpx.Client:
    key = os.environ.get("REWARDHUB_API_KEY", "")
    if not key:
        raise typer.BadParameter("set REWARDHUB_API_KEY to a trainer or admin key", param_hint="REWARDHUB_API_KEY")
    return httpx.Client(base_url=trainer_url(url), headers={"Authorization": f"Bearer {key}"}, timeout=30)


def _answer(response: httpx.Response) -> Any:
    """The JSON body, or exit 1 printing the API's error (its field and message)."""
    if response.status_code >= 400:
        try:
            error = response.json().get("error", {})
            message = f"{error.get('field') or ''}: {error.get('message') or response.text}".lstrip(": ")
        except ValueError:
            message = response.text
        console.print(f"[red]{response.status_code}[/] {message}")
        raise typer.Exit(1)
    return response.json()


def progress_line(job: dict[str, Any]) -> str:
    """``<id> <kind> <status> <stage> done/total (resumed n)`` — one line per job."""
    p = job["progress"]
    resumed = f" (resumed {p['resumed']})" if p["resumed"] else ""
    return f"{job['id']}  {job['kind']:<6} {job['status']:<9} {p['stage']:<10} {p['done']}/{p['total']}{resumed}"


@evaluations_app.command("start")
def start(
    kind: Annotated[str, typer.Argument(help="model, dining or sts.")],
    config: Annotated[Path, typer.Option("--config", exists=True, dir_okay=False,
                                         help="The kind's config, JSON (or YAML).")],
    name: Annotated[str, typer.Option("--name")] = "",
    project_id: Annotated[str | None, typer.Option("--project-id")] = None,
    watch: Annotated[bool, typer.Option("--watch", help="Show progress until the job ends.")] = False,
    url: UrlOption = None,
) -> None:
    """Start an evaluation job; prints its id (and, with --watch, its progress)."""
    text = config.read_text(encoding="utf-8")
    if config.suffix in (".yaml", ".yml"):
        import yaml

        body_config = yaml.safe_load(text)
    else:
        body_config = json.loads(text)
    body: dict[str, Any] = {"kind": kind, "name": name, "config": body_config}
    if project_id:
        body["project_id"] = project_id
    with _client(url) as client:
        job = _answer(client.post("/v1/evaluations", json=body))
        typer.echo(job["id"])
        if watch:
            _watch(client, job["id"])


@evaluations_app.command("status")
def status(
    evaluation_id: Annotated[str, typer.Argument(help="The job's id.")],
    watch: Annotated[bool, typer.Option("--watch", help="Show a progress bar until the job ends.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the job as JSON.")] = False,
    url: UrlOption = None,
) -> None:
    """A job's status and progress: stage, done/total items, items resumed from an earlier attempt."""
    with _client(url) as client:
        if watch:
            _watch(client, evaluation_id)
        job = _answer(client.get(f"/v1/evaluations/{evaluation_id}"))
    if as_json:
        out.print_json(json.dumps(job))
        return
    typer.echo(progress_line(job))
    if job.get("error"):
        typer.echo(f"error: {job['error']}")


def _watch(client: httpx.Client, evaluation_id: str, interval_s: float = 1.0) -> None:
    with Progress(TextColumn("[bold]{task.fields[kind]}"), TextColumn("{task.fields[stage]}"), MofNCompleteColumn(),
                  BarColumn(), TimeElapsedColumn(), console=console) as bar:
        task = bar.add_task("evaluation", total=None, kind="", stage="")
        while True:
            job = _answer(client.get(f"/v1/evaluations/{evaluation_id}"))
            p = job["progress"]
            bar.update(task, total=p["total"] or None, completed=p["done"], kind=job["kind"], stage=p["stage"])
            if job["status"] in ENDED:
                return
            time.sleep(interval_s)


@evaluations_app.command("list")
def list_jobs(url: UrlOption = None) -> None:
    """The evaluation jobs of the key's projects, one line each."""
    with _client(url) as client:
        cursor = None
        while True:
            page = _answer(client.get("/v1/evaluations", params={"cursor": cursor} if cursor else None))
            for job in page["data"]:
                typer.echo(progress_line(job))
            cursor = page.get("next_cursor")
            if not cursor:
                return


@evaluations_app.command("cancel")
def cancel(evaluation_id: Annotated[str, typer.Argument()], url: UrlOption = None) -> None:
    """Ask the job to stop after the items in flight (finished items stay for a resume)."""
    with _client(url) as client:
        typer.echo(progress_line(_answer(client.post(f"/v1/evaluations/{evaluation_id}/cancel"))))


@evaluations_app.command("resume")
def resume(evaluation_id: Annotated[str, typer.Argument()], url: UrlOption = None) -> None:
    """Continue a cancelled or failed job; finished items are not redone."""
    with _client(url) as client:
        typer.echo(progress_line(_answer(client.post(f"/v1/evaluations/{evaluation_id}/resume"))))


@evaluations_app.command("results")
def results(
    evaluation_id: Annotated[str, typer.Argument()],
    samples: Annotated[Path | None, typer.Option("--samples", help="Also save the per-sample JSONL here.")] = None,
    url: UrlOption = None,
) -> None:
    """Print a finished job's report (JSON); with --samples, download its per-sample JSONL."""
    with _client(url) as client:
        report = _answer(client.get(f"/v1/evaluations/{evaluation_id}/results"))
        out.print_json(json.dumps(report["metrics"], ensure_ascii=False))
        if samples is not None:
            response = client.get(f"/v1/evaluations/{evaluation_id}/samples")
            if response.status_code >= 400:
                _answer(response)
            samples.write_bytes(response.content)
            console.print(f"samples: {samples} ({len(response.content.splitlines())} lines)")
