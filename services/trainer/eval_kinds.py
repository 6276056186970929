"""The three kinds of evaluation job: their configs, what each may reach, and how each runs resumably.

* ``model``: a checkpoint's avg@k / pass@k on one of the project's datasets, graded through
  ``/v1/rewards`` (``trainer.evaluate``). Per-prompt results go to ``samples.jsonl`` batch by batch;
  a resumed attempt skips the prompts whose k samples are on file.
* ``dining``: DiningBench against the operator's VLM server (``trainer.dining``). Per-record results
  go to ``results.jsonl``; a resumed attempt skips the records with an ``ok`` line.
* ``sts``: the STS transferability score (``trainer.sts``) in stages: the SAE (given, or trained
  and saved in the job's folder), the shifted dimensions (``shift.pt``), one score per target domain
  (``scores.jsonl``), the validation. A resumed attempt reuses every stage whose output is on file.

Confinement follows the training runs' (services/trainer/confine.py): every path is a name inside
the project's area (or, for models, an operator's shared model folder); the reward URL is the
platform's or an allowlisted one. A dining job reaches only the VLM server the operator configured
(``REWARDHUB_LLM_BASE_URL``, with its key ``REWARDHUB_LLM_API_KEY``): a job may name that URL (or a
path below it) but no other host, so a tenant cannot point the worker at an internal address.
Every refusal is an :class:`InvalidInput` naming the field as the request spells it (``config.k``).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from services.common.errors import InvalidInput
from services.common.settings import Settings, get_settings
from services.trainer import confine
from trainer.config import RewardConfig

KINDS = ("model", "dining", "sts")
MODEL_SAMPLES = "samples.jsonl"
DINING_RESULTS = "results.jsonl"
STS_SCORES = "scores.jsonl"
REPORT = "report.json"
# The per-sample JSONL each kind keeps (what GET .../samples serves).
SAMPLES_FILE = {"model": MODEL_SAMPLES, "dining": DINING_RESULTS, "sts": STS_SCORES}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelEvalConfig(_Strict):
    checkpoint: str = Field(description="A model folder, a training checkpoint or a run folder inside the "
                            "project's area (e.g. runs/<run id>: its latest checkpoint), or an absolute path "
                            "inside REWARDHUB_TRAINER_MODEL_DIRS.")
    dataset: str = Field(description="One of the project's datasets (veRL schema), as a run config names it.")
    reward: RewardConfig = Field(description="The reward spec; url unset: the platform's own gateway.")
    k: int = Field(default=8, ge=1, le=1024, description="Samples per prompt.")
    ks: list[int] | None = Field(default=None, description="pass@k' at these k' (default: powers of two up to k).")
    max_new_tokens: int = Field(default=64, ge=1, le=32768)
    max_prompt_length: int = Field(default=1024, ge=1, le=131072)
    temperature: float = Field(default=1.0, gt=0, le=10)
    seed: int = 0
    pass_threshold: float = 1.0
    max_prompts: int | None = Field(default=None, ge=1)
    prompts_per_batch: int = Field(default=4, ge=1, le=1024, description="Prompts generated and graded per "
                                   "batch; a batch is the unit a resumed job may redo.")
    device: Literal["cpu", "cuda"] = "cpu"

    @model_validator(mode="after")
    def _ks_within_k(self) -> ModelEvalConfig:
        if self.ks is not None and (not self.ks or any(not 1 <= v <= self.k for v in self.ks)):
            raise ValueError(f"ks: each pass@k' needs 1 <= k' <= k ({self.k}); got {self.ks}")
        return self


class DiningEvalConfig(_Strict):
    records: str = Field(description="DiningBench records (JSONL) inside the project's area; their images "
                         "must be inside it too.")
    base_url: str | None = Field(default=None, description="The VLM server: the operator's configured one "
                                 "(REWARDHUB_LLM_BASE_URL) or a path below it; unset: that one.")
    model: str | None = Field(default=None, min_length=1, max_length=200, description="Unset: REWARDHUB_LLM_MODEL.")
    task: Literal["classification", "nutrition", "vqa"] | None = None
    image_indices: list[int] = Field(default=[0], min_length=1, max_length=16)
    concurrency: int = Field(default=4, ge=1, le=64)
    rpm: float = Field(default=0.0, ge=0, description="Requests per minute (0: no limit).")
    max_retries: int = Field(default=4, ge=0, le=10)
    timeout_s: float | None = Field(default=None, gt=0, le=3600)
    max_tokens: int | None = Field(default=None, ge=1, le=32768)
    judge_model: str | None = Field(default=None, min_length=1, max_length=200, description="VQA: an LLM judge "
                                    "(yes/no) on the same server; unset: ROUGE only.")
    judge_max_tokens: int = Field(default=100, ge=1, le=4096)
    nutrition_per_value: bool = False


class StsEvalConfig(_Strict):
    model: str = Field(description="The base model folder (inside the project's area or a shared model folder).")
    layer: int = Field(ge=0, description="Residual stream after this decoder block (0-based).")
    fine_tuning: str = Field(description="The fine-tuning set: JSONL of {\"text\": ...} inside the project's area.")
    targets: dict[str, str] = Field(min_length=1, max_length=256, description="Target domain -> JSONL of "
                                    "{\"text\": ...} inside the project's area.")
    deltas: dict[str, float] | None = Field(default=None, description="Measured accuracy change per target "
                                            "domain: validated with Pearson's r.")
    sae: str | None = Field(default=None, description="A saved SAE folder inside the project's area; unset: one "
                            "is trained on the activations and kept in the job's folder.")
    n_demonstrations: int = Field(default=2, ge=1, le=16)
    top_k: int = Field(default=100, ge=1)
    d_sae: int = Field(default=256, ge=1, le=1 << 20)
    sae_epochs: float = Field(default=10.0, gt=0, le=1000)
    l1_coefficient: float = Field(default=1.0, ge=0)
    batch_size: int = Field(default=16, ge=1, le=4096)
    max_examples: int = Field(default=512, ge=3, le=100_000, description="Texts read per file, at most.")
    seed: int = 0

    @model_validator(mode="after")
    def _deltas_name_targets(self) -> StsEvalConfig:
        if self.deltas is not None and set(self.deltas) != set(self.targets):
            raise ValueError("deltas: must name exactly the target domains "
                             f"({', '.join(sorted(self.targets))})")
        return self


CONFIGS: dict[str, type[_Strict]] = {"model": ModelEvalConfig, "dining": DiningEvalConfig, "sts": StsEvalConfig}


def parse_config(kind: str, raw: Any) -> _Strict:
    """The kind's config, or an :class:`InvalidInput` naming the first bad field as ``config.<path>``."""
    if kind not in CONFIGS:
        raise InvalidInput(f"kind: expected one of {', '.join(KINDS)}, got {kind!r}", field="kind")
    try:
        return CONFIGS[kind].model_validate(raw)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in ("config", *error["loc"]))
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "not a field of a " + kind + " evaluation (an evaluation job authenticates with a key " \
                      "minted for it: no field may name a secret)"
        raise InvalidInput(f"{where}: {message}", field=where) from None


# --------------------------------------------------------------------------- confinement


def _project_file(project_id: str, value: str, field: str, *, suffix: str | None = ".jsonl",
                  settings: Settings | None = None) -> Path:
    path = confine.inside(confine.project_area(project_id, settings), value, field=field)
    if suffix is not None and path.suffix != suffix:
        raise InvalidInput(f"{field}: {value!r} is not a {suffix} file", field=field)
    if not path.is_file():
        raise InvalidInput(f"{field}: project {project_id} has no file {value!r} in its area", field=field)
    return path


def _model_folder(project_id: str, value: str, field: str, settings: Settings | None = None) -> Path:
    from trainer.evaluate import resolve_model

    path = confine.model_path(project_id, value, settings, field=field)
    try:
        return resolve_model(path)
    except FileNotFoundError:
        raise InvalidInput(f"{field}: {value!r} is neither a model folder, a checkpoint nor a run folder with "
                           "checkpoints", field=field) from None


def vlm_base_url(value: str | None, settings: Settings | None = None, field: str = "config.base_url") -> str:
    """The VLM server a dining job may reach: the operator's ``llm_base_url``, or ``value`` when it is
    that URL or a path below it (same scheme, host and port); anything else is refused."""
    settings = settings or get_settings()
    configured = settings.llm_base_url.rstrip("/")
    if not configured:
        raise InvalidInput(f"{field}: no VLM server is configured for evaluation jobs (the operator sets "
                           "REWARDHUB_LLM_BASE_URL)", field=field)
    if value is None:
        return configured
    parts = urlsplit(value)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput(f"{field}: {value!r} is not an http(s) URL with a host", field=field)
    if parts.username is not None or parts.password is not None or parts.query or parts.fragment:
        raise InvalidInput(f"{field}: must be a plain base URL (no credentials, query or fragment)", field=field)
    path = parts.path.rstrip("/")
    if any(segment in (".", "..") for segment in unquote(path).split("/")):
        raise InvalidInput(f"{field}: '.' and '..' path segments are not accepted", field=field)
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError:
        raise InvalidInput(f"{field}: {value!r} has an invalid port", field=field) from None
    if not confine.UrlRule.parse(configured).matches(scheme, parts.hostname.lower(), port, path):
        raise InvalidInput(f"{field}: {value!r} is not the VLM server configured for evaluation jobs "
                           "(REWARDHUB_LLM_BASE_URL) nor a path below it; leave it unset to use that one",
                           field=field)
    return value.rstrip("/")


def _dining_records(project_id: str, config: DiningEvalConfig, settings: Settings | None = None) -> list[Any]:
    from trainer.dining.records import RecordError, load_records

    path = _project_file(project_id, config.records, "config.records", settings=settings)
    try:
        records = load_records(path, task=config.task, image_indices=config.image_indices)
    except RecordError as exc:
        raise InvalidInput(f"config.records: {exc}", field="config.records") from None
    except (UnicodeDecodeError, OSError, ValueError) as exc:
        raise InvalidInput(f"config.records: not a readable JSONL file: {type(exc).__name__}",
                           field="config.records") from None
    area = confine.project_area(project_id, settings).resolve()
    for record in records:
        for image in record.images:
            if not Path(image).resolve().is_relative_to(area):
                raise InvalidInput(f"config.records: record {record.id!r} names an image outside the project's "
                                   "area", field="config.records")
    return records


def _check_reward(reward: RewardConfig, project_id: str, settings: Settings | None) -> None:
    if reward.project_id not in (None, project_id):
        raise InvalidInput("config.reward.project_id: an evaluation scores its rewards in its own project "
                           f"({project_id}); leave it unset", field="config.reward.project_id")
    confine.check_reward_url(reward.url, settings)


def check(kind: str, config: _Strict, project_id: str, registered: Mapping[str, str],
          settings: Settings | None = None) -> None:
    """Every confinement check of a parsed config (run at creation, at resume and in the worker)."""
    if isinstance(config, ModelEvalConfig):
        _model_folder(project_id, config.checkpoint, "config.checkpoint", settings)
        confine.dataset_path(project_id, config.dataset, registered=registered, settings=settings)
        _check_reward(config.reward, project_id, settings)
    elif isinstance(config, DiningEvalConfig):
        vlm_base_url(config.base_url, settings)
        if not (config.model or (settings or get_settings()).llm_model):
            raise InvalidInput("config.model: name the model (no REWARDHUB_LLM_MODEL is configured)",
                               field="config.model")
        _dining_records(project_id, config, settings)
    elif isinstance(config, StsEvalConfig):
        _model_folder(project_id, config.model, "config.model", settings)
        _project_file(project_id, config.fine_tuning, "config.fine_tuning", settings=settings)
        for name, value in config.targets.items():
            _project_file(project_id, value, f"config.targets.{name}", settings=settings)
        if config.sae is not None:
            folder = confine.inside(confine.project_area(project_id, settings), config.sae, field="config.sae")
            if not (folder / "cfg.json").is_file():
                raise InvalidInput(f"config.sae: {config.sae!r} is not a saved SAE folder (cfg.json)",
                                   field="config.sae")
    else:  # pragma: no cover - parse_config returns one of the three
        raise InvalidInput(f"kind: {kind!r} is not an evaluation kind", field="kind")


def count_items(kind: str, config: _Strict, project_id: str, registered: Mapping[str, str]) -> int:
    """The job's total items before it starts: prompts, records, or STS stages (2 + one per target)."""
    if isinstance(config, ModelEvalConfig):
        from trainer.data import load_rows

        rows = len(load_rows(confine.dataset_path(project_id, config.dataset, registered=registered)))
        return min(rows, config.max_prompts or rows)
    if isinstance(config, DiningEvalConfig):
        return len(_dining_records(project_id, config))
    assert isinstance(config, StsEvalConfig)
    return 2 + len(config.targets)


# --------------------------------------------------------------------------- running


class Stopped(Exception):
    """The job was asked to stop (cancel) between items; what is on file stays for a resume."""


@dataclass
class JobContext:
    """What an executor gets from its worker: where to write, how to report, when to stop."""

    project_id: str
    out_dir: Path
    api_key: str
    registered: Mapping[str, str]
    progress: Callable[..., None]  # progress(stage=..., done=..., total=..., resumed=...)
    should_stop: Callable[[], bool]
    reward_target: Callable[[str | None], tuple[str | None, Any]]


def execute(kind: str, config: _Strict, ctx: JobContext) -> dict[str, Any]:
    """Run the job (resuming from what its folder holds); the report, also written to ``report.json``."""
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    if isinstance(config, ModelEvalConfig):
        report = _run_model(config, ctx)
    elif isinstance(config, DiningEvalConfig):
        report = _run_dining(config, ctx)
    else:
        assert isinstance(config, StsEvalConfig)
        report = _run_sts(config, ctx)
    _write_json(ctx.out_dir / REPORT, report)
    return report


def _write_json(path: Path, value: Any) -> None:
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text(json.dumps(value, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(temp, path)


def _run_model(config: ModelEvalConfig, ctx: JobContext) -> dict[str, Any]:
    from trainer.data import load_rows
    from trainer.evaluate import EvalProgress, EvalSettings, evaluate_resumable, load_for_eval, model_folder
    from trainer.rewards import HttpRewards
    from trainer.rollout import TransformersEngine

    ctx.progress(stage="loading")
    found = _model_folder(ctx.project_id, config.checkpoint, "config.checkpoint")
    rows = load_rows(confine.dataset_path(ctx.project_id, config.dataset, registered=ctx.registered))
    settings = EvalSettings(k=config.k, max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                            seed=config.seed, max_prompt_length=config.max_prompt_length,
                            ks=tuple(config.ks) if config.ks else None, pass_threshold=config.pass_threshold,
                            max_prompts=config.max_prompts, prompts_per_batch=config.prompts_per_batch)
    reward = config.reward.model_copy(update={"project_id": ctx.project_id})
    base_url, transport = ctx.reward_target(reward.url)
    rewards = HttpRewards(reward, api_key=ctx.api_key, base_url=base_url, transport=transport)

    def progress(p: EvalProgress) -> None:
        ctx.progress(stage="sampling", done=p.done, total=p.total, resumed=p.resumed)

    try:
        with model_folder(found) as folder:
            model, tokenizer = load_for_eval(folder, device=config.device)
            engine = TransformersEngine(model, tokenizer, device=config.device)
            result = evaluate_resumable(engine, tokenizer, rows, rewards, settings, ctx.out_dir / MODEL_SAMPLES,
                                        describe={"model": config.checkpoint, "data": config.dataset,
                                                  "spec": reward.spec},
                                        on_progress=progress, should_stop=ctx.should_stop)
    finally:
        rewards.close()
    if result is None:
        raise Stopped()
    return result.report


def _run_dining(config: DiningEvalConfig, ctx: JobContext) -> dict[str, Any]:
    from services.common.llm.client import OpenAIChatClient
    from trainer.dining.report import build_report
    from trainer.dining.runner import finished_ids, read_results, run_bench

    ctx.progress(stage="loading")
    records = _dining_records(ctx.project_id, config)
    settings = get_settings()
    base_url = vlm_base_url(config.base_url, settings)
    key = settings.llm_api_key or None
    backend = OpenAIChatClient(base_url, config.model or settings.llm_model, key, timeout_s=config.timeout_s,
                               max_concurrency=config.concurrency, requests_per_s=config.rpm / 60,
                               max_retries=config.max_retries, max_tokens=config.max_tokens)
    judge = None
    if config.judge_model is not None:
        judge = OpenAIChatClient(base_url, config.judge_model, key, timeout_s=config.timeout_s,
                                 max_concurrency=config.concurrency, requests_per_s=config.rpm / 60,
                                 max_retries=config.max_retries, max_tokens=config.judge_max_tokens)
    results_path = ctx.out_dir / DINING_RESULTS
    wanted = {r.id for r in records}
    resumed = len(finished_ids(results_path) & wanted)
    done = {"n": resumed}
    ctx.progress(stage="inference", done=resumed, total=len(records), resumed=resumed)
    pending = [r for r in records if r.id not in finished_ids(results_path)]

    def on_result(line: dict[str, Any]) -> None:
        if line.get("status") == "ok":
            done["n"] += 1
        ctx.progress(done=done["n"])

    async def run() -> Any:
        try:
            # Batches of ``concurrency`` records: cancel is honoured between them.
            for start in range(0, len(pending), config.concurrency):
                if ctx.should_stop():
                    raise Stopped()
                await run_bench(pending[start:start + config.concurrency], backend, results_path,
                                concurrency=config.concurrency, judge=judge, on_result=on_result)
        finally:
            await backend.aclose()
            if judge is not None:
                await judge.aclose()

    asyncio.run(run())
    ctx.progress(stage="report")
    report = build_report(records, read_results(results_path), per_value=config.nutrition_per_value,
                          judge=judge is not None)
    report["run"] = {"records": config.records, "model": backend.model, "resumed_records": resumed,
                     "judge_model": config.judge_model}
    return report


def read_texts(path: Path, limit: int) -> list[str]:
    """The texts of a JSONL file: ``{"text": ...}`` objects or bare JSON strings, at most ``limit``."""
    texts: list[str] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            raise ValueError(f"{path.name}:{number}: not valid JSON") from None
        text = value.get("text") if isinstance(value, dict) else value
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{path.name}:{number}: text: expected a non-empty string")
        texts.append(text)
        if len(texts) >= limit:
            break
    return texts


def _done_scores(path: Path) -> dict[str, float]:
    scores: dict[str, float] = {}
    if not path.exists():
        return scores
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
            scores[str(row["domain"])] = float(row["score"])
        except (ValueError, KeyError, TypeError):
            continue  # a line torn by a crash
    return scores


def _run_sts(config: StsEvalConfig, ctx: JobContext) -> dict[str, Any]:
    import torch

    from trainer.dining.runner import _Appender
    from trainer.evaluate import load_for_eval, model_folder
    from trainer.sts import activations as acts
    from trainer.sts import sae as sae_lib
    from trainer.sts.transferability import shifted_dimensions, target_scores, validate

    total = 2 + len(config.targets)
    ctx.progress(stage="loading", total=total)
    resumed: list[str] = []
    area = confine.project_area(ctx.project_id)
    found = _model_folder(ctx.project_id, config.model, "config.model")
    with model_folder(found) as folder:
        model, tokenizer = load_for_eval(folder)
        pad = int(tokenizer.pad_token_id or 0)
        prefix = [int(tokenizer.bos_token_id)] if tokenizer.bos_token_id is not None else []

        def encode(texts: Sequence[str]) -> list[list[int]]:
            return [list(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]

        tuning = encode(read_texts(confine.inside(area, config.fine_tuning, field="config.fine_tuning"),
                                   config.max_examples))
        domains = {name: [prefix + ids for ids in encode(read_texts(
            confine.inside(area, value, field=f"config.targets.{name}"), config.max_examples))]
            for name, value in config.targets.items()}
        # Stage 1: the SAE (given, on file from an earlier attempt, or trained now and kept).
        ctx.progress(stage="sae", done=0)
        sae_dir = (confine.inside(area, config.sae, field="config.sae") if config.sae is not None
                   else ctx.out_dir / "sae")
        if (sae_dir / "cfg.json").is_file():
            sae = sae_lib.load_sae(sae_dir)
            if config.sae is None:
                resumed.append("sae")
        else:
            sequences = [prefix + ids for ids in tuning] + [s for seqs in domains.values() for s in seqs]
            rows = torch.cat(acts.collect_residual(model, sequences, config.layer, batch_size=config.batch_size,
                                                   pad_id=pad))
            sae = sae_lib.train_sae(rows, d_sae=config.d_sae, l1_coefficient=config.l1_coefficient,
                                    epochs=config.sae_epochs, seed=config.seed)
            scratch = ctx.out_dir / ".sae.tmp"
            shutil.rmtree(scratch, ignore_errors=True)
            sae_lib.save_sae(sae, scratch)
            os.replace(scratch, sae_dir)  # whole or not at all: a resumed attempt never loads half an SAE
        if ctx.should_stop():
            raise Stopped()
        # Stage 2: the shifted dimensions.
        ctx.progress(stage="shift", done=1)
        shift_path = ctx.out_dir / "shift.pt"
        if shift_path.is_file():
            saved = torch.load(shift_path, weights_only=True)
            dims, shift, tokens = saved["dims"], saved["shift"], int(saved["tokens"])
            resumed.append("shift")
        else:
            demos, rest = acts.split_demonstrations(tuning, config.n_demonstrations, seed=config.seed)
            pairs = acts.in_context_pairs(rest, demos, prefix=prefix)
            found_dims = shifted_dimensions(model, sae, config.layer, pairs, top_k=config.top_k,
                                            batch_size=config.batch_size, pad_id=pad)
            dims, shift, tokens = found_dims.dims, found_dims.shift, found_dims.tokens
            temp = ctx.out_dir / ".shift.pt.tmp"
            torch.save({"dims": dims, "shift": shift, "tokens": tokens}, temp)
            os.replace(temp, shift_path)
        if ctx.should_stop():
            raise Stopped()
        # Stage 3: one score per target domain, appended as each finishes.
        scores_path = ctx.out_dir / STS_SCORES
        scores = {name: value for name, value in _done_scores(scores_path).items() if name in config.targets}
        resumed += [f"scores:{name}" for name in scores]
        ctx.progress(stage="scores", done=2 + len(scores), resumed=len(resumed))
        appender = _Appender(scores_path)
        try:
            for name, sequences in domains.items():
                if name in scores:
                    continue
                if ctx.should_stop():
                    raise Stopped()
                value = target_scores(model, sae, config.layer, {name: sequences}, dims,
                                      batch_size=config.batch_size, pad_id=pad)[name]
                scores[name] = value
                appender.write({"domain": name, "score": value, "inputs": len(sequences)})
                ctx.progress(done=2 + len(scores))
        finally:
            appender.close()
    ctx.progress(stage="validate")
    report: dict[str, Any] = {"model": config.model, "layer": config.layer, "top_k": int(dims.numel()),
                              "shift_tokens": tokens, "dims": [int(d) for d in dims.tolist()],
                              "scores": {name: scores[name] for name in config.targets}, "resumed_stages": resumed,
                              "sae": config.sae or "trained (job folder: sae/)"}
    if config.deltas is not None:
        corr = validate(report["scores"], config.deltas)
        report["validation"] = {"pearson_r": corr.r, "p_value": corr.p_value, "n": corr.n}
    return report
