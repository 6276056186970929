"""`rewardhub eval rm`: evaluate the CDRRM rubric reward model on RewardBench, RM-Bench or RMB rows.

The judge runs the whole CDRRM path per comparison (a rubric for the pair, then the judge in both
orders; the report gives both-orders and single-order figures) on the chosen backend: an OpenAI-compatible server (vLLM), a local transformers model
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
    """How many comparisons a run judges (each in both orders, so twice as many judge calls): one per
    pair, nine per RM-Bench item (3 × 3 styles), one per loser of an RMB best-of-N item."""
    from services.rubric_rm.evaluation import is_bon_row

    if fmt == "rmbench":
        return len(rows) * 9
    return sum(len(row.get("loser_list") or []) if fmt == "rmb" and is_bon_row(row) else 1 for row in rows)


def check_rows(fmt: str, rows: list[dict[str, Any]]) -> None:
    """Fail fast (before any LLM call) on a row the harness cannot read."""
    from services.rubric_rm.evaluation import BoNItem, PairItem, RMBenchItem, is_bon_row

    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ValueError(f"item {index}: expected a JSON object")
        if fmt == "rmbench":
            RMBenchItem.from_row(row, index)
        elif fmt == "rmb" and is_bon_row(row):
            BoNItem.from_row(row, index)
        else:
            PairItem.from_row(row, index)


async def run_eval(fmt: str, rows: list[dict[str, Any]], backend: ChatBackend, *, swap: bool, seed: int,
                   method: str, concurrency: int, on_done: Any = None) -> dict[str, Any]:
    """The harness report for ``rows``; ``on_done()`` is called after every judge call (two per comparison)."""
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


# ---------------------------------------------------------------- `rewardhub eval model`


def _reward_spec(text: str) -> Any:
    """``--spec``: inline JSON, a JSON or YAML file, or a stored spec's ``name@version`` (kept as text)."""
    import yaml

    if text.lstrip().startswith("{"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"--spec: not valid JSON: {exc.msg}") from None
    path = Path(text)
    if path.suffix in (".json", ".yaml", ".yml"):
        if not path.is_file():
            raise ValueError(f"--spec: file {path} does not exist")
        try:
            return yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ValueError(f"--spec: {path} is not valid JSON or YAML: {exc}") from None
    return text


def _reward_config(spec: str, url: str | None, project_id: str | None) -> Any:
    """The ``reward`` section ``rewardhub train`` would read from these options (key: $REWARDHUB_API_KEY)."""
    from pydantic import ValidationError

    from trainer.config import LocalRewardConfig

    try:
        return LocalRewardConfig(spec=_reward_spec(spec), url=url, project_id=project_id)
    except ValidationError as exc:
        problems = "; ".join(f"--{'-'.join(str(p) for p in e['loc'][:1]).replace('_', '-')}: "
                             f"{str(e['msg']).removeprefix('Value error, ')}" for e in exc.errors())
        raise ValueError(problems) from None


def _pass_ks(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"--ks: {text!r} is not a comma-separated list of integers") from None


def print_model_report(report: dict[str, Any]) -> None:
    """One row per data source (then ``all``): avg@k, pass@k', token length, truncation, non-ok count."""
    k, ks = report["k"], report["ks"]
    table = Table(title=f"k={k}  temperature={report['temperature']}  seed={report['seed']}")
    columns = ["source", "prompts", f"avg@{k}", *(f"pass@{kk}" for kk in ks), "mean tokens", "truncated", "non-ok"]
    for column in columns:
        table.add_column(column)
    for source, stats in report["sources"].items():
        table.add_row(source, str(stats["prompts"]), _fmt(stats[f"avg@{k}"]),
                      *(f"{_fmt(stats[f'pass@{kk}'])} ({stats[f'pass@{kk}_prompts']})" for kk in ks),
                      _fmt(stats["mean_tokens"]), _fmt(stats["truncation_rate"]), str(stats["non_ok_count"]))
    out.print(table)


@eval_app.command("model")
def eval_model(
    checkpoint: Annotated[Path, typer.Argument(help="A model folder, a training checkpoint (…/checkpoints/step-N) "
                                                    "or a run's output folder (its latest checkpoint).")],
    data: Annotated[Path | None, typer.Option("--data", help="Prompts: JSONL or Parquet in the veRL schema.")] = None,
    spec: Annotated[str | None, typer.Option("--spec", help="Reward spec: inline JSON, a .json/.yaml file, or a "
                                                          "stored spec's name@version.")] = None,
    k: Annotated[int, typer.Option("-k", "--k", help="Samples per prompt.")] = 16,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Folder for report.json and samples.jsonl "
                                                              "(default: <checkpoint>/eval).")] = None,
    temperature: Annotated[float, typer.Option("--temperature", help="Sampling temperature (> 0).")] = 1.0,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the sampling.")] = 0,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="Completion length limit.")] = 256,
    max_prompts: Annotated[int | None, typer.Option("--max-prompts", help="Only the first N rows.")] = None,
    ks: Annotated[str | None, typer.Option("--ks", help="pass@k' at these k', e.g. 1,4,16 (default: the powers "
                                                        "of two up to k, and k).")] = None,
    pass_threshold: Annotated[float, typer.Option("--pass-threshold", help="A sample passes when its score is "
                                                                            "at least this.")] = 1.0,
    url: Annotated[str | None, typer.Option("--url", help="rewardhub URL (default: $REWARDHUB_URL or "
                                                          "http://127.0.0.1:8000); key: $REWARDHUB_API_KEY.")] = None,
    project_id: Annotated[str | None, typer.Option("--project-id", help="Project the rewards are scored in.")] = None,
    device: Annotated[str, typer.Option("--device", help="cpu or cuda.")] = "cpu",
    as_json: Annotated[bool, typer.Option("--json", help="Print the full report as JSON instead of a table.")] = False,
) -> None:
    """Evaluate a checkpoint: k samples per prompt graded through /v1/rewards; avg@k and pass@k per data source."""
    from rewardhub.train_cli import config_error
    from trainer.data import DatasetError, load_rows
    from trainer.evaluate import (
        EvalSettings,
        evaluate,
        load_for_eval,
        model_folder,
        resolve_model,
        write_outputs,
    )
    from trainer.rewards import HttpRewards, RewardServiceError
    from trainer.rollout import TransformersEngine

    # Every input checked before anything is created or loaded.
    try:
        if data is None:
            raise ValueError("--data: give the prompts file (JSONL or Parquet in the veRL schema)")
        if spec is None:
            raise ValueError("--spec: give the reward spec (inline JSON, a .json/.yaml file, or name@version)")
        settings = EvalSettings(k=k, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
                                ks=_pass_ks(ks), pass_threshold=pass_threshold, max_prompts=max_prompts)
        reward = _reward_config(spec, url, project_id)
        rows = load_rows(data)
        found = resolve_model(checkpoint)
    except DatasetError as exc:
        raise config_error("eval model", f"--data: {exc}") from None
    except (ValueError, FileNotFoundError) as exc:
        raise config_error("eval model", str(exc)) from None
    rewards = HttpRewards(reward)
    try:
        with model_folder(found) as folder:
            model, tokenizer = load_for_eval(folder, device=device)
            engine = TransformersEngine(model, tokenizer, device=device)
            with console.status(f"sampling {k} completions for each of "
                                f"{min(len(rows), max_prompts or len(rows))} prompts"):
                result = evaluate(engine, tokenizer, rows, rewards, settings,
                                  describe={"model": str(found), "data": str(data), "spec": reward.spec})
    except RewardServiceError as exc:
        console.print(f"[red]evaluation stopped:[/] {exc}")
        raise typer.Exit(1) from None
    finally:
        rewards.close()
    report_path, samples_path = write_outputs(out_dir or found / "eval", result)
    if as_json:
        out.print_json(json.dumps(result.report))
    else:
        print_model_report(result.report)
    console.print(f"report: {report_path}\nsamples: {samples_path}")


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else "—" if value is None else str(value)


def _score_rows(fmt: str, part: dict[str, Any]) -> list[tuple[str, Any]]:
    """(metric, value) rows of one protocol's part of the report: the benchmark's scores, then length."""
    bench = part[fmt]
    rows: list[tuple[str, Any]] = []
    if fmt == "rmbench":
        rows += [(name, bench[name]) for name in ("hard", "normal", "easy", "avg")]
        rows += [(f"{domain} avg", values["avg"]) for domain, values in bench["domains"].items()]
    elif fmt == "rewardbench":
        rows += [*bench["sections"].items(), ("score", bench["score"])]
        rows += [*((f"{s} (plain)", v) for s, v in bench["sections_plain"].items()), ("score (plain)",
                                                                                      bench["score_plain"])]
        rows += [(f"unmapped: {name}", value) for name, value in bench["unmapped"].items()]
    else:
        rows += [*bench["categories"].items(), ("weighted", bench["weighted"]), ("macro", bench["macro"])]
        rows += [(f"goal {goal}", value) for goal, value in bench["goals"].items()]
        if bench["bon"] is not None:
            rows += [(f"BoN {c}", v) for c, v in bench["bon"]["categories"].items()]
            rows += [("BoN weighted", bench["bon"]["weighted"]), ("BoN macro", bench["bon"]["macro"])]
    length = part["length"]
    rows += [("acc (chosen longer)", length["chosen_longer"]["acc_all"]),
             ("acc (chosen shorter)", length["chosen_shorter"]["acc_all"]),
             ("length-balanced acc", length["length_balanced_acc"]), ("verbosity gap", length["verbosity_gap"])]
    return rows


def print_report(report: dict[str, Any]) -> None:
    """Overall metrics, the benchmark's own scores and the length (verbosity) split, as tables, each
    both-orders (ours: a disagreement is a tie) beside single-order (the CDRRM authors' protocol)."""
    names = ("n", "n_parseable", "n_correct", "acc_all", "acc_parseable", "parse_rate")
    overall = Table(title=f"{report['format']}  (swap={report['swap']}, seed={report['seed']})")
    for column in ("metric", "both-orders", "single-order"):
        overall.add_column(column)
    for name in names:
        overall.add_row(name, _fmt(report["overall"][name]), _fmt(report["single_order"]["overall"][name]))
    out.print(overall)
    fmt = report["format"]
    scores = Table(title=f"{fmt} scores")
    for column in ("metric", "both-orders", "single-order"):
        scores.add_column(column)
    single = dict(_score_rows(fmt, report["single_order"]))
    for metric, value in _score_rows(fmt, report):
        scores.add_row(metric, _fmt(value), _fmt(single.get(metric)))
    out.print(scores)


@eval_app.command("rm")
def eval_rm(
    file: Annotated[Path, typer.Argument(help="Benchmark rows: JSONL, a JSON array, or a directory of them "
                                              "(e.g. RMB's RMB_dataset/Pairwise_set).", exists=True,
                                         readable=True)],
    fmt: Annotated[str, typer.Option("--format", help="rewardbench | rmbench | rmb")] = "rewardbench",
    swap: Annotated[bool, typer.Option("--swap", help="Show the chosen answer first as A or B by a seeded coin "
                                                      "(single-order accuracy counts that first order).")] = False,
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
    """Evaluate the CDRRM rubric reward model: acc_all, acc_parseable, parse_rate and the benchmark's scores,
    both-orders (a disagreement is a tie) beside single-order (the CDRRM authors' protocol)."""
    from services.rubric_rm.evaluation import load_rows

    if fmt not in ("rewardbench", "rmbench", "rmb"):
        raise typer.BadParameter(f"{fmt!r}: expected rewardbench, rmbench or rmb", param_hint="--format")
    if backend not in ("openai", "local", "scripted"):
        raise typer.BadParameter(f"{backend!r}: expected openai, local or scripted", param_hint="--backend")
    if method not in ("diagnose_synthesise", "generator"):
        raise typer.BadParameter(f"{method!r}: expected diagnose_synthesise or generator", param_hint="--method")
    try:
        rows = load_rows(file)
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
        task = progress.add_task("judge", total=2 * comparisons(fmt, rows))  # each comparison in both orders
        report = asyncio.run(run_eval(fmt, rows, llm, swap=swap, seed=seed, method=method, concurrency=concurrency,
                                      on_done=lambda: progress.advance(task)))
    if output is not None:
        output.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    if as_json:
        out.print_json(json.dumps(report))
    else:
        print_report(report)


# ------------------------------------------------------------------------------- rewardhub eval rec

async def run_rec_eval(rows: list[Any], *, config: Any, threshold: float, behaviour: Any, embedder: Any,
                       llm: ChatBackend | None = None) -> dict[str, Any]:
    """Score labelled RecRM records (services.rec_rm.evaluation) with each record's own items as the
    catalog and the verifier's graders in-process as the format checker (the same checks as over HTTP)."""
    from pydantic import TypeAdapter

    from rewardhub.reward_specs import RewardSpec
    from services.rec_rm.evaluation import parse_record, report
    from services.rec_rm.hybrid import DimensionResult
    from services.rec_rm.scoring import Scorer, requested_dimensions
    from services.verifier.graders.registry import grade

    specs: TypeAdapter[Any] = TypeAdapter(RewardSpec)

    async def check(planned: list[tuple[str, dict[str, Any], str]]) -> dict[str, DimensionResult]:
        out_: dict[str, DimensionResult] = {}
        for item_id, spec, response in planned:
            result = grade(specs.validate_python(spec), response, None)
            out_[item_id] = DimensionResult(result.status, result.score if result.status == "ok" else None,
                                            {"checks": dict(result.sub_scores), **result.details})
        return out_

    records = [parse_record(row, index) for index, row in enumerate(rows)]
    overall = requested_dimensions(config, None)
    notes = []
    if behaviour is None and "behaviour" in overall:
        overall = [d for d in overall if d != "behaviour"]
        notes.append("no behaviour model (pass --catalog and --logs to train one): the hybrid leaves behaviour out")
    scored: dict[str, Any] = {}
    for dimension in sorted({r.dimension for r in records}):
        dims = overall if dimension == "overall" else [dimension]
        scorer = Scorer(config, dims, lookup=None, catalog_key=None, format_checker=check, behaviour=behaviour,
                        llm=llm, embedder=embedder)
        batch = [r.request for r in records if r.dimension == dimension]
        scored.update({s.id: s for s in await scorer.score(batch)})
    result = report(records, scored, threshold)
    result["notes"] = notes
    return result


def _read_upload(path: Path, kind: str) -> Any:
    from services.common.errors import InvalidInput
    from services.rec_rm import items as item_io

    try:
        fmt = item_io.detect_format(path.name, None)
        data = path.read_bytes()
        return item_io.parse_items(data, fmt) if kind == "catalog" else item_io.parse_events(data, fmt)
    except InvalidInput as exc:
        raise typer.BadParameter(f"{path}: {exc.message}", param_hint=f"--{kind}") from None


@eval_app.command("rec")
def eval_rec(
    file: Annotated[Path, typer.Argument(help="Labelled records, JSONL: {id, dimension, user, query, context{items}, "
                                              "response, label}.", exists=True, readable=True, dir_okay=False)],
    threshold: Annotated[float, typer.Option("--threshold", min=0, max=1, help="score >= it predicts label 1.")] = 0.5,
    config_file: Annotated[Path | None, typer.Option("--config", help="A rec_rm reward configuration (JSON).")] = None,
    catalog: Annotated[Path | None, typer.Option("--catalog", help="Items (JSONL/CSV/Parquet) to train the "
                                                                    "behaviour model with --logs.")] = None,
    logs: Annotated[Path | None, typer.Option("--logs", help="Interaction logs (JSONL/CSV/Parquet).")] = None,
    embedder: Annotated[str, typer.Option("--embedder", help="minilm | hashing | a local model directory")] = "minilm",
    as_json: Annotated[bool, typer.Option("--json", help="Print the full report as JSON instead of tables.")] = False,
    output: Annotated[Path | None, typer.Option("--output", help="Also write the full report (JSON) here.")] = None,
) -> None:
    """Evaluate RecRM on labelled records: accuracy per dimension, confusion matrices and the hybrid's
    agreement with `overall` labels (each record's context items are its catalog; no server needed)."""
    from pydantic import ValidationError

    from services.rec_rm import behaviour as behaviour_model
    from services.rec_rm.config import RecConfig
    from services.rec_rm.relevance import get_embedder
    from services.rubric_rm.evaluation import load_rows

    try:
        config = RecConfig.model_validate_json(config_file.read_text(encoding="utf-8")) if config_file else RecConfig()
    except ValidationError as exc:
        raise typer.BadParameter(str(exc.errors()[0]["msg"]), param_hint="--config") from None
    if (catalog is None) != (logs is None):
        raise typer.BadParameter("give both --catalog and --logs to train a behaviour model", param_hint="--logs")
    model = None
    if catalog is not None and logs is not None:
        items = _read_upload(catalog, "catalog")
        try:
            model = behaviour_model.train(_read_upload(logs, "logs"), {i.item_id: i.attributes for i in items})
        except behaviour_model.TrainingError as exc:
            raise typer.BadParameter(str(exc), param_hint="--logs") from None
        console.print(f"behaviour model: auc={model.metrics['auc']:.3f} log_loss={model.metrics['log_loss']:.3f} "
                      f"popularity_auc={model.metrics['popularity_auc']:.3f}")
    try:
        rows = load_rows(file)
        report = asyncio.run(run_rec_eval(rows, config=config, threshold=threshold, behaviour=model,
                                          embedder=get_embedder(embedder)))
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="FILE") from None
    if output is not None:
        output.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    if as_json:
        out.print_json(json.dumps(report))
        return
    table = Table(title=f"RecRM on {file.name} (threshold {threshold:g})")
    for column in ("dimension", "n", "accuracy", "accuracy (decided)", "tp", "fp", "tn", "fn", "undecided"):
        table.add_column(column)
    for dimension, entry in report["dimensions"].items():
        cell = entry["confusion"]
        table.add_row(dimension, str(entry["n"]), _fmt(entry["accuracy"]), _fmt(entry["accuracy_decided"]),
                      *(str(cell[k]) for k in ("tp", "fp", "tn", "fn", "undecided")))
    out.print(table)
    if "hybrid_agreement" in report:
        out.print(f"hybrid agreement with overall labels: {_fmt(report['hybrid_agreement'])}")
    for note in report["notes"]:
        console.print(f"note: {note}")


# ---------------------------------------------------------------------------- rewardhub eval dining

def _image_indices(text: str) -> tuple[int, ...]:
    try:
        indices = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise typer.BadParameter(f"{text!r}: expected comma-separated indices, e.g. 0 or 0,1,2",
                                 param_hint="--images") from None
    if not indices or min(indices) < 0:
        raise typer.BadParameter(f"{text!r}: give at least one index, each >= 0", param_hint="--images")
    return indices


def print_dining_report(report: dict[str, Any]) -> None:
    """One table per task present in the report, then the counts."""
    tasks = report["tasks"]
    if "classification" in tasks:
        cls = tasks["classification"]
        table = Table(title="classification")
        for column in ("n", "accuracy", "unreadable share"):
            table.add_column(column)
        table.add_row(str(cls["n"]), _fmt(cls["accuracy"]), _fmt(cls["unreadable_share"]))
        out.print(table)
    if "nutrition" in tasks:
        nut = tasks["nutrition"]
        table = Table(title=f"nutrition (n={nut['n']}, parse failures {_fmt(nut['parse_failure_share'])}, "
                            f"rule: {report['nutrition_rule']})")
        for column in ("nutrient", "n", "missing", "MAE", "RMSE", "MAPE %"):
            table.add_column(column)
        for name, values in nut["nutrients"].items():
            table.add_row(name, str(values["n"]), str(values["missing"]), _fmt(values["mae"]), _fmt(values["rmse"]),
                          _fmt(values["mape"]))
        out.print(table)
    if "vqa" in tasks:
        vqa = tasks["vqa"]
        table = Table(title=f"vqa (n={vqa['n']})")
        for column in ("metric", "p", "r", "f"):
            table.add_column(column)
        for name in ("rouge1", "rouge2", "rougeL"):
            values = vqa[name] or {}
            table.add_row(name, _fmt(values.get("p")), _fmt(values.get("r")), _fmt(values.get("f")))
        out.print(table)
        if vqa["judge"]:
            out.print(f"judge accuracy: {_fmt(vqa['judge_accuracy'])} ({vqa['judge_yes']}/{vqa['judged']}, "
                      f"unparsed {vqa['judge_unparsed']})")
    counts = report["counts"]
    out.print("records: " + ", ".join(f"{k} {v}" for k, v in counts.items()))


@eval_app.command("dining")
def eval_dining(
    data: Annotated[Path, typer.Argument(help="DiningBench records, JSONL: {id, task, prompt, ground_truth, "
                                              "standard_image, user_images[]} (docs/dining_bench.md).",
                                         exists=True, readable=True, dir_okay=False)],
    base_url: Annotated[str | None, typer.Option("--base-url", help="OpenAI-compatible VLM server, e.g. "
                                                                    "http://vllm:8000/v1.")] = None,
    model: Annotated[str | None, typer.Option("--model", help="Model name on that server.")] = None,
    api_key: Annotated[str | None, typer.Option("--api-key", envvar="REWARDHUB_LLM_API_KEY")] = None,
    task: Annotated[str | None, typer.Option("--task", help="classification | nutrition | vqa, for records "
                                                            "without a task field.")] = None,
    images: Annotated[str, typer.Option("--images", help="Image indices: 0 = standard image, 1.. = user images "
                                                         "(e.g. 0,1,2).")] = "0",
    concurrency: Annotated[int, typer.Option("--concurrency", min=1, help="Records in flight.")] = 8,
    rpm: Annotated[float, typer.Option("--rpm", min=0, help="Requests per minute to the server (0: no limit).")] = 0,
    max_retries: Annotated[int, typer.Option("--max-retries", min=0, help="Retries of 429/5xx/timeouts, "
                                                                          "with exponential backoff.")] = 4,
    timeout_s: Annotated[float | None, typer.Option("--timeout", help="Seconds per attempt.")] = None,
    max_tokens: Annotated[int | None, typer.Option("--max-tokens", min=1, help="Completion length limit.")] = None,
    judge_model: Annotated[str | None, typer.Option("--judge-model", help="VQA: an LLM judge (yes/no) on this "
                                                                          "model; none: ROUGE only.")] = None,
    judge_base_url: Annotated[str | None, typer.Option("--judge-base-url", help="The judge's server "
                                                                                "(default: --base-url).")] = None,
    judge_api_key: Annotated[str | None, typer.Option("--judge-api-key")] = None,
    judge_rpm: Annotated[float, typer.Option("--judge-rpm", min=0, help="The judge's requests per minute.")] = 0,
    judge_max_tokens: Annotated[int, typer.Option("--judge-max-tokens", min=1, help="The judge's reply limit.")] = 100,
    nutrition_per_value: Annotated[bool, typer.Option("--nutrition-per-value", help="Keep the nutrients a "
                                                      "prediction gives when others are missing (default: the "
                                                      "authors' rule, all four missing).")] = False,
    results: Annotated[Path | None, typer.Option("--out", help="Results JSONL, appended as records finish; a "
                                                               "rerun skips finished ids (default: "
                                                               "<data>.results.jsonl in this folder).")] = None,
    report_path: Annotated[Path | None, typer.Option("--report", help="The JSON report (default: the results "
                                                                      "path with .report.json).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON instead of tables.")] = False,
) -> None:
    """DiningBench: ask a VLM every record (images as base64 data URLs), resumably, then report accuracy and
    unreadable share, nutrition MAE/RMSE/MAPE and VQA ROUGE (jieba) plus the judge's accuracy."""
    import importlib.util

    from services.common.llm.client import OpenAIChatClient
    from trainer.dining.records import RecordError, load_records

    lacking = [name for name in ("rouge_score", "jieba") if importlib.util.find_spec(name) is None]
    if lacking:
        console.print(f"[red]eval dining needs {', '.join(lacking)}:[/] pip install 'rewardhub[server,train]'")
        raise typer.Exit(1)
    from trainer.dining.report import build_report
    from trainer.dining.runner import read_results, run_bench

    try:
        records = load_records(data, task=task, image_indices=_image_indices(images))
    except RecordError as exc:
        raise typer.BadParameter(str(exc), param_hint="DATA") from None
    backend = OpenAIChatClient(base_url, model, api_key, timeout_s=timeout_s, max_concurrency=concurrency,
                               requests_per_s=rpm / 60, max_retries=max_retries, max_tokens=max_tokens)
    if not backend.base_url:
        raise typer.BadParameter("give the VLM server (or set REWARDHUB_LLM_BASE_URL)", param_hint="--base-url")
    if not backend.model:
        raise typer.BadParameter("give the model name (or set REWARDHUB_LLM_MODEL)", param_hint="--model")
    judge = None
    if judge_model is not None:
        judge = OpenAIChatClient(judge_base_url or backend.base_url, judge_model,
                                 judge_api_key if judge_api_key is not None else api_key, timeout_s=timeout_s,
                                 max_concurrency=concurrency, requests_per_s=judge_rpm / 60,
                                 max_retries=max_retries, max_tokens=judge_max_tokens)
    results = results or Path(f"{data.stem}.results.jsonl")
    report_path = report_path or results.with_name(results.name.removesuffix(".jsonl") + ".report.json")

    async def run(advance: Any) -> Any:
        try:
            return await run_bench(records, backend, results, concurrency=concurrency, judge=judge,
                                   on_result=lambda _line: advance())
        finally:
            await backend.aclose()
            if judge is not None:
                await judge.aclose()

    with Progress(TextColumn("[bold]dining"), MofNCompleteColumn(), BarColumn(), TimeElapsedColumn(),
                  console=console) as progress:
        bar = progress.add_task("records", total=len(records))
        summary = asyncio.run(run(lambda: progress.advance(bar)))
    report = build_report(records, read_results(results), per_value=nutrition_per_value, judge=judge is not None)
    report["run"] = {"data": str(data), "model": backend.model, "results": str(results), "skipped": summary.skipped,
                     "answered": summary.ok, "failed": summary.failed, "judge_model": judge_model}
    report_path.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    if as_json:
        out.print_json(json.dumps(report, ensure_ascii=False))
    else:
        print_dining_report(report)
    console.print(f"results: {results}\nreport: {report_path}")
    if summary.failed:
        console.print(f"[yellow]{summary.failed} record(s) failed; rerun the same command to retry them[/]")
