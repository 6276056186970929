"""`rewardhub eval rm`: evaluate the CDRRM rubric reward model on RewardBench, RM-Bench or RMB rows.

The judge runs the whole CDRRM path per comparison (a rubric for the pair, then both-order
judgment) on the chosen backend: an OpenAI-compatible server (vLLM), a local transformers model
directory, or ``scripted`` — ScriptedLLMServer, a TEST DOUBLE that replays canned replies from a
file (for demos and tests; it is not a model). Metrics come from services.rubric_rm.evaluation.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from services.common.llm.types import ChatBackend

eval_app = typer.Typer(help="Evaluate reward models on preference benchmarks.", no_args_is_help=True)
console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)


def _scripted_backend(script: Path | None) -> ChatBackend:
    from services.common.llm.client import OpenAIChatClient
    from services.common.llm.scripted import ScriptedLLMServer

    if script is None:
        raise typer.BadParameter("--backend scripted needs --script FILE (one canned reply per line)",
                                 param_hint="--script")
    replies: list[str] = []
    for number, line in enumerate(script.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            value = line
        if isinstance(value, dict):
            value = value.get("text")
        if not isinstance(value, str):
            raise typer.BadParameter(f"{script}:{number}: expected a string or {{\"text\": ...}}", param_hint="--script")
        replies.append(value)
    server = ScriptedLLMServer(replies)
    return OpenAIChatClient("http://scripted.local/v1", "scripted-test-double", transport=server.transport(),
                            max_retries=0, max_concurrency=1)


def make_backend(kind: str, *, script: Path | None, model_path: Path | None, base_url: str | None,
                 model: str | None, api_key: str | None, timeout_s: float | None, max_new_tokens: int) -> ChatBackend:
    """The judge backend named on the command line (unset options fall back to settings)."""
    if kind == "scripted":
        return _scripted_backend(script)
    if kind == "local":
        from services.common.llm.local import LocalTransformersBackend

        try:
            return LocalTransformersBackend(model_path, max_new_tokens=max_new_tokens, timeout_s=timeout_s)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--model-path") from None
    from services.common.llm.client import OpenAIChatClient

    client = OpenAIChatClient(base_url, model, api_key, timeout_s=timeout_s)
    if not client.base_url:
        raise typer.BadParameter("--backend openai needs --base-url (or REWARDHUB_LLM_BASE_URL)",
                                 param_hint="--base-url")
    return client


def comparisons(fmt: str, rows: list[dict[str, Any]]) -> int:
    """How many judge calls a run makes: one per pair, nine per RM-Bench item (3 × 3 styles)."""
    return len(rows) * 9 if fmt == "rmbench" else len(rows)


def check_rows(fmt: str, rows: list[dict[str, Any]]) -> None:
    """Fail fast (before any LLM call) on a row the harness cannot read."""
    from services.rubric_rm.evaluation import PairItem, RMBenchItem

    reader = RMBenchItem.from_row if fmt == "rmbench" else PairItem.from_row
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ValueError(f"item {index}: expected a JSON object")
        reader(row, index)


async def run_eval(fmt: str, rows: list[dict[str, Any]], backend: ChatBackend, *, swap: bool, seed: int,
                   method: str, concurrency: int, on_done: Any = None) -> dict[str, Any]:
    """The harness report for ``rows``; ``on_done()`` is called after every comparison."""
    from services.rubric_rm.evaluation import JudgeDecision, evaluate, make_cdrrm_judge

    inner = make_cdrrm_judge(backend, generator=backend if method == "generator" else None, seed=seed)

    async def judge(prompt: str, response_a: str, response_b: str) -> JudgeDecision:
        try:
            return await inner(prompt, response_a, response_b)
        finally:
            if on_done is not None:
                on_done()

    try:
        return await evaluate(fmt, rows, judge, swap=swap, seed=seed, max_concurrency=concurrency)  # type: ignore[arg-type]
    finally:
        if hasattr(backend, "aclose"):
            await backend.aclose()


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else "—" if value is None else str(value)


def print_report(report: dict[str, Any]) -> None:
    """Overall metrics, the benchmark's own scores, and the length (verbosity) split, as tables."""
    overall = Table(title=f"{report['format']}  (swap={report['swap']}, seed={report['seed']})")
    for name in ("n", "n_parseable", "n_correct", "acc_all", "acc_parseable", "parse_rate"):
        overall.add_column(name)
    overall.add_row(*(_fmt(report["overall"][name]) for name in
                      ("n", "n_parseable", "n_correct", "acc_all", "acc_parseable", "parse_rate")))
    out.print(overall)
    fmt = report["format"]
    scores = Table(title=f"{fmt} scores")
    scores.add_column("metric")
    scores.add_column("value")
    bench = report[fmt]
    if fmt == "rmbench":
        for name in ("hard", "normal", "easy", "avg"):
            scores.add_row(name, _fmt(bench[name]))
        for domain, values in bench["domains"].items():
            scores.add_row(f"{domain} avg", _fmt(values["avg"]))
    elif fmt == "rewardbench":
        for section, value in bench["sections"].items():
            scores.add_row(section, _fmt(value))
        scores.add_row("score", _fmt(bench["score"]))
    else:
        for category, value in bench["categories"].items():
            scores.add_row(category, _fmt(value))
        scores.add_row("weighted", _fmt(bench["weighted"]))
        scores.add_row("macro", _fmt(bench["macro"]))
    length = report["length"]
    scores.add_row("acc (chosen longer)", _fmt(length["chosen_longer"]["acc_all"]))
    scores.add_row("acc (chosen shorter)", _fmt(length["chosen_shorter"]["acc_all"]))
    scores.add_row("length-balanced acc", _fmt(length["length_balanced_acc"]))
    scores.add_row("verbosity gap", _fmt(length["verbosity_gap"]))
    out.print(scores)


@eval_app.command("rm")
def eval_rm(
    file: Annotated[Path, typer.Argument(help="Benchmark rows, one JSON object per line.", exists=True,
                                         dir_okay=False, readable=True)],
    fmt: Annotated[str, typer.Option("--format", help="rewardbench | rmbench | rmb")] = "rewardbench",
    swap: Annotated[bool, typer.Option("--swap", help="Show the chosen answer as A or B by a seeded coin.")] = False,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the swap and of rubric synthesis.")] = 0,
    backend: Annotated[str, typer.Option("--backend", help="openai | local | scripted (a test double)")] = "openai",
    method: Annotated[str, typer.Option("--method", help="diagnose_synthesise | generator")] = "diagnose_synthesise",
    base_url: Annotated[str | None, typer.Option("--base-url", help="OpenAI-compatible URL, e.g. http://vllm:8000/v1")] = None,
    model: Annotated[str | None, typer.Option("--model", help="Model name on that server.")] = None,
    api_key: Annotated[str | None, typer.Option("--api-key", envvar="REWARDHUB_LLM_API_KEY")] = None,
    model_path: Annotated[Path | None, typer.Option("--model-path", help="Local model directory (--backend local).")] = None,
    script: Annotated[Path | None, typer.Option("--script", help="Canned replies, one per line (--backend scripted).")] = None,
    timeout_s: Annotated[float | None, typer.Option("--timeout", help="Seconds per LLM call.")] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1, help="Local backend only.")] = 512,
    concurrency: Annotated[int, typer.Option("--concurrency", min=1)] = 8,
    as_json: Annotated[bool, typer.Option("--json", help="Print the full report as JSON instead of tables.")] = False,
    output: Annotated[Path | None, typer.Option("--output", help="Also write the full report (JSON) here.")] = None,
) -> None:
    """Evaluate the CDRRM rubric reward model: acc_all, acc_parseable, parse_rate and the benchmark's scores."""
    from services.rubric_rm.evaluation import load_jsonl

    if fmt not in ("rewardbench", "rmbench", "rmb"):
        raise typer.BadParameter(f"{fmt!r}: expected rewardbench, rmbench or rmb", param_hint="--format")
    if backend not in ("openai", "local", "scripted"):
        raise typer.BadParameter(f"{backend!r}: expected openai, local or scripted", param_hint="--backend")
    if method not in ("diagnose_synthesise", "generator"):
        raise typer.BadParameter(f"{method!r}: expected diagnose_synthesise or generator", param_hint="--method")
    try:
        rows = load_jsonl(file)
        check_rows(fmt, rows)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="FILE") from None
    if not rows:
        raise typer.BadParameter(f"{file} holds no rows", param_hint="FILE")
    llm = make_backend(backend, script=script, model_path=model_path, base_url=base_url, model=model,
                       api_key=api_key, timeout_s=timeout_s, max_new_tokens=max_new_tokens)
    if backend == "scripted":
        concurrency = 1  # canned replies are consumed in order; one call at a time keeps them aligned
    with Progress(TextColumn("[bold]judging"), MofNCompleteColumn(), BarColumn(), TimeElapsedColumn(),
                  console=console) as progress:
        task = progress.add_task("judge", total=comparisons(fmt, rows))
        report = asyncio.run(run_eval(fmt, rows, llm, swap=swap, seed=seed, method=method, concurrency=concurrency,
                                      on_done=lambda: progress.advance(task)))
    if output is not None:
        output.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    if as_json:
        out.print_json(json.dumps(report))
    else:
        print_report(report)
