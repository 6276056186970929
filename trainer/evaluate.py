"""Checkpoint evaluation: sample k completions per prompt, grade them, report avg@k and pass@k per data source.

A model folder (``config.json``), a training checkpoint (its ``hf/`` folder, or its ``model.pt``
exported on the fly) or a run's output folder (its latest checkpoint) is sampled with the
trainer's own rollout engine (:class:`~trainer.rollout.TransformersEngine`: the full softmax at
``temperature``, seeded) and graded by a reward source: the rewardhub API
(:class:`~trainer.rewards.HttpRewards`) or an in-process function
(:class:`~trainer.rewards.CallableRewards`).

A sample whose reward status is not ``ok`` has no score: it is never counted as 0. It is left
out of avg@k and pass@k, counted (``non_ok_count`` and one count per status), and every pass@k
says over how many prompts it was computed (a prompt with fewer than k' scored samples has no
unbiased pass@k' and is left out of it).

Outputs (:func:`write_outputs`): ``report.json`` and ``samples.jsonl``, one line per sample.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from trainer import checkpoint
from trainer.data import PromptRow
from trainer.export import CONSOLIDATED, HF_DIR, export_from_checkpoint
from trainer.rewards import STATUSES, RewardOutcome, RewardSource
from trainer.rollout import Rollout, RolloutEngine, SamplingSettings

REPORT_FILE = "report.json"
SAMPLES_FILE = "samples.jsonl"
ALL_SOURCES = "all"  # the report's entry over every data source
NO_SOURCE = "default"  # the name of rows without a data_source


# ---------------------------------------------------------------- the estimators


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one prompt with ``n`` scored samples of which ``c`` pass (Chen et al. 2021):

        pass@k = 1 - C(n - c, k) / C(n, k)

    the probability that k samples drawn without replacement from the n include a passing one.
    Computed as the product ``C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (1 - k / i)`` so that no
    binomial coefficient is ever formed (they overflow floats for n in the hundreds); when
    ``n - c < k`` every draw of k holds a passing sample and pass@k is 1.
    """
    if not 0 <= c <= n:
        raise ValueError(f"pass_at_k: need 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"pass_at_k: need 1 <= k <= n, got n={n}, k={k}")
    if n - c < k:
        return 1.0
    miss = 1.0
    for i in range(n - c + 1, n + 1):
        miss *= 1.0 - k / i
    return 1.0 - miss


def avg_at_k(scores: Sequence[float]) -> float:
    """avg@k of one prompt: the mean score of its scored samples, ``(1/n) sum_i s_i``.

    Over a data source, avg@k is the mean of the prompts' avg@k (each prompt weighs the same,
    whether or not some of its samples had no score)."""
    if not scores:
        raise ValueError("avg_at_k: needs at least one scored sample")
    return sum(scores) / len(scores)


def default_ks(k: int) -> list[int]:
    """The k' that pass@k' is reported at: the powers of two up to ``k``, and ``k`` itself."""
    if k < 1:
        raise ValueError(f"k: must be at least 1, got {k}")
    ks = [2 ** e for e in range(k.bit_length()) if 2 ** e <= k]
    return ks if ks[-1] == k else [*ks, k]


def check_ks(ks: Sequence[int], k: int) -> list[int]:
    """``ks`` sorted without repeats; each must lie in 1..k (pass@k' needs k' of the k samples)."""
    bad = [value for value in ks if not 1 <= value <= k]
    if bad or not ks:
        raise ValueError(f"ks: each pass@k' needs 1 <= k' <= k ({k}); got {list(ks)}")
    return sorted(set(ks))


# ---------------------------------------------------------------- samples and their summary


@dataclass(frozen=True)
class EvalSample:
    """One graded completion; ``score`` is None unless ``status`` is ``ok``."""

    prompt_index: int  # the row's index in the dataset
    sample_index: int  # 0..k-1 within its prompt
    data_source: str
    completion: str
    tokens: int  # completion tokens, the end-of-sequence token included when there is one
    truncated: bool  # cut at max_new_tokens without an end-of-sequence token
    score: float | None
    status: str


def _passes(score: float, threshold: float) -> bool:
    return score >= threshold


def source_stats(prompts: Sequence[Sequence[EvalSample]], *, k: int, ks: Sequence[int],
                 pass_threshold: float) -> dict[str, float | int | None]:
    """avg@k, pass@k' (each with the number of prompts it is over), token length, truncation rate and
    reward-status counts of one data source's prompts (each a list of its samples).

    A sample passes when it is scored and ``score >= pass_threshold``. A value over no prompt is None."""
    samples = [sample for group in prompts for sample in group]
    stats: dict[str, float | int | None] = {"prompts": len(prompts), "samples": len(samples)}
    scored = [[s.score for s in group if s.score is not None] for group in prompts]
    means = [avg_at_k(scores) for scores in scored if scores]
    stats[f"avg@{k}"] = sum(means) / len(means) if means else None
    stats[f"avg@{k}_prompts"] = len(means)
    for kk in ks:
        values = [pass_at_k(len(scores), sum(_passes(s, pass_threshold) for s in scores), kk)
                  for scores in scored if len(scores) >= kk]
        stats[f"pass@{kk}"] = sum(values) / len(values) if values else None
        stats[f"pass@{kk}_prompts"] = len(values)
    stats["mean_tokens"] = sum(s.tokens for s in samples) / len(samples) if samples else None
    stats["truncation_rate"] = sum(s.truncated for s in samples) / len(samples) if samples else None
    statuses = [s.status if s.status in STATUSES else "error" for s in samples]
    stats["non_ok_count"] = sum(status != "ok" for status in statuses)
    for status in STATUSES:
        stats[f"status_{status}"] = statuses.count(status)
    return stats


def summarize(samples: Sequence[EvalSample], *, k: int, ks: Sequence[int],
              pass_threshold: float) -> dict[str, dict[str, float | int | None]]:
    """:func:`source_stats` per data source (sorted by name), then over all of them (``all``)."""
    by_prompt: dict[int, list[EvalSample]] = {}
    for sample in samples:
        by_prompt.setdefault(sample.prompt_index, []).append(sample)
    by_source: dict[str, list[list[EvalSample]]] = {}
    for group in by_prompt.values():
        by_source.setdefault(group[0].data_source or NO_SOURCE, []).append(group)
    report = {source: source_stats(groups, k=k, ks=ks, pass_threshold=pass_threshold)
              for source, groups in sorted(by_source.items())}
    report[ALL_SOURCES] = source_stats(list(by_prompt.values()), k=k, ks=ks, pass_threshold=pass_threshold)
    return report


def metrics_of(sources: dict[str, dict[str, float | int | None]], prefix: str = "eval") -> dict[str, float]:
    """``eval/<source>/<name>`` for every value of a summary that is not None (the run's metrics)."""
    return {f"{prefix}/{source}/{name}": float(value) for source, stats in sources.items()
            for name, value in stats.items() if value is not None}


# ---------------------------------------------------------------- sampling and grading


@dataclass(frozen=True)
class EvalSettings:
    k: int
    max_new_tokens: int
    temperature: float = 1.0
    seed: int = 0
    max_prompt_length: int = 1024
    ks: tuple[int, ...] | None = None  # None: default_ks(k)
    pass_threshold: float = 1.0
    max_prompts: int | None = None  # the dataset's first N rows; None: all
    prompts_per_batch: int = 8  # prompts per generate call (each with k samples)

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"k: must be at least 1, got {self.k}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens: must be at least 1, got {self.max_new_tokens}")
        if not self.temperature > 0:
            raise ValueError(f"temperature: must be > 0 (sampling), got {self.temperature}")
        if self.max_prompts is not None and self.max_prompts < 1:
            raise ValueError(f"max_prompts: must be at least 1, got {self.max_prompts}")
        if self.prompts_per_batch < 1:
            raise ValueError(f"prompts_per_batch: must be at least 1, got {self.prompts_per_batch}")
        if self.ks is not None:
            check_ks(self.ks, self.k)

    @property
    def pass_ks(self) -> list[int]:
        return check_ks(self.ks, self.k) if self.ks is not None else default_ks(self.k)


@dataclass
class EvalResult:
    report: dict[str, Any]
    samples: list[EvalSample]

    def metrics(self, prefix: str = "eval") -> dict[str, float]:
        return metrics_of(self.report["sources"], prefix)


def encode_prompt(tokenizer: Any, prompt: str | list[dict[str, Any]], max_length: int) -> list[int]:
    """The prompt's token ids as the trainer encodes them: chat messages through the chat template with
    the generation prompt, text as it is; an over-long prompt keeps its end (the question comes last)."""
    if isinstance(prompt, list):
        ids: Any = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True)
        ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    else:
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    return list(ids)[-max_length:]


def _graded(rows: Sequence[PromptRow], rollouts: Sequence[Rollout],
            outcomes: Sequence[RewardOutcome], k: int) -> list[EvalSample]:
    return [EvalSample(prompt_index=rows[r.prompt_index].index, sample_index=n % k,
                       data_source=rows[r.prompt_index].data_source, completion=r.text,
                       tokens=len(r.completion_ids), truncated=r.truncated, score=o.score, status=o.status)
            for n, (r, o) in enumerate(zip(rollouts, outcomes, strict=True))]


def evaluate(engine: RolloutEngine, tokenizer: Any, rows: Sequence[PromptRow], rewards: RewardSource,
             settings: EvalSettings, *, describe: dict[str, Any] | None = None) -> EvalResult:
    """Sample ``settings.k`` completions for each row, grade them with ``rewards``, summarize.

    Prompts go to the engine ``prompts_per_batch`` at a time, each batch seeded from
    (``seed``, its offset), and each batch is sent to be graded while the next one generates.
    ``describe`` (model, data, spec...) is copied into the report as it is."""
    rows = list(rows[: settings.max_prompts] if settings.max_prompts is not None else rows)
    if not rows:
        raise ValueError("evaluate: the dataset has no rows")
    sampling = SamplingSettings(group_size=settings.k, max_new_tokens=settings.max_new_tokens,
                                temperature=settings.temperature)
    rollouts: list[Rollout] = []
    pending = []
    for offset in range(0, len(rows), settings.prompts_per_batch):
        batch = rows[offset: offset + settings.prompts_per_batch]
        prompts = [encode_prompt(tokenizer, row.prompt, settings.max_prompt_length) for row in batch]
        generated = engine.generate(prompts, sampling, seed=checkpoint.derive_seed(settings.seed, offset))
        for rollout in generated:
            rollout.prompt_index += offset  # indexes ``rows``, as the reward source reads it
        pending.append(rewards.submit(rows, generated))
        rollouts.extend(generated)
    outcomes = [outcome for future in pending for outcome in future.result()]
    samples = _graded(rows, rollouts, outcomes, settings.k)
    ks = settings.pass_ks
    report: dict[str, Any] = {
        **(describe or {}), "k": settings.k, "ks": ks, "temperature": settings.temperature, "seed": settings.seed,
        "max_new_tokens": settings.max_new_tokens, "pass_threshold": settings.pass_threshold,
        "prompts": len(rows),
        "sources": summarize(samples, k=settings.k, ks=ks, pass_threshold=settings.pass_threshold),
    }
    return EvalResult(report, samples)


def write_outputs(out_dir: Path, result: EvalResult) -> tuple[Path, Path]:
    """``report.json`` and ``samples.jsonl`` (one line per sample) in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    report = out_dir / REPORT_FILE
    report.write_text(json.dumps(result.report, indent=1) + "\n", encoding="utf-8")
    samples = out_dir / SAMPLES_FILE
    with samples.open("w", encoding="utf-8") as handle:
        for sample in result.samples:
            handle.write(json.dumps(asdict(sample), ensure_ascii=False) + "\n")
    return report, samples


# ---------------------------------------------------------------- models


def resolve_model(path: Path) -> Path:
    """The checkpoint or model folder ``path`` names: a model folder (``config.json``) as it is; a run's
    output folder or its ``checkpoints/`` folder: the latest checkpoint; a checkpoint: itself.
    Raises :class:`FileNotFoundError` naming what is missing."""
    path = Path(path)
    if (path / "config.json").is_file():
        return path
    latest = checkpoint.latest(path / "checkpoints") or checkpoint.latest(path)
    found = latest or path
    if (found / HF_DIR / "config.json").is_file() or (found / CONSOLIDATED).is_file():
        return found
    raise FileNotFoundError(f"{path} is neither a model folder (config.json) nor a training checkpoint "
                            f"({HF_DIR}/ or {CONSOLIDATED}) nor a run folder with checkpoints")


@contextmanager
def model_folder(path: Path) -> Iterator[Path]:
    """A Hugging Face folder for :func:`resolve_model`'s answer: the folder itself, the checkpoint's
    ``hf/``, or (a checkpoint written without one) its ``model.pt`` exported into a temporary folder."""
    found = resolve_model(path)
    if (found / "config.json").is_file():
        yield found
    elif (found / HF_DIR / "config.json").is_file():
        yield found / HF_DIR
    else:
        with tempfile.TemporaryDirectory(prefix="rewardhub-eval-") as scratch:
            yield export_from_checkpoint(found, Path(scratch) / HF_DIR)


def load_for_eval(folder: Path, *, device: str = "cpu") -> tuple[Any, Any]:
    """The model (in eval mode, on ``device``) and tokenizer of a Hugging Face folder; nothing downloaded."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True).to(device)  # type: ignore[arg-type]
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


# ---------------------------------------------------------------- resumable evaluation (evaluation jobs)


def read_samples(path: Path) -> dict[tuple[int, int], EvalSample]:
    """The samples a results file holds, by (prompt index, sample index): the last line of each wins
    (a batch redone after a crash appends lines again). Lines that do not parse (a write torn by a
    crash) are skipped."""
    found: dict[tuple[int, int], EvalSample] = {}
    if not path.exists():
        return found
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            sample = EvalSample(**json.loads(line))
        except (ValueError, TypeError):
            continue
        found[(sample.prompt_index, sample.sample_index)] = sample
    return found


def finished_prompts(samples: dict[tuple[int, int], EvalSample], k: int) -> set[int]:
    """The prompt indices with all ``k`` samples (0..k-1) on file."""
    counts: dict[int, int] = {}
    for prompt, index in samples:
        if 0 <= index < k:
            counts[prompt] = counts.get(prompt, 0) + 1
    return {prompt for prompt, count in counts.items() if count == k}


def _append_lines(path: Path, samples: Sequence[EvalSample]) -> None:
    """One write of the batch's lines, flushed and fsync'ed; a torn previous last line is closed first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torn = path.exists() and path.stat().st_size > 0 and path.read_bytes()[-1:] != b"\n"
    text = ("\n" if torn else "") + "".join(json.dumps(asdict(s), ensure_ascii=False) + "\n" for s in samples)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


@dataclass(frozen=True)
class EvalProgress:
    done: int  # prompts with all k samples graded and on file
    total: int
    resumed: int  # of ``done``, the prompts found on file from an earlier attempt (not redone)


def evaluate_resumable(engine: RolloutEngine, tokenizer: Any, rows: Sequence[PromptRow], rewards: RewardSource,
                       settings: EvalSettings, samples_path: Path, *, describe: dict[str, Any] | None = None,
                       on_progress: Callable[[EvalProgress], None] | None = None,
                       should_stop: Callable[[], bool] | None = None) -> EvalResult | None:
    """:func:`evaluate`, resumable: each batch's graded samples are appended to ``samples_path`` (one
    write, fsync'ed) before the next batch starts, and a batch whose prompts all have their ``k``
    samples on file is not generated nor graded again. Batches and their seeds are those of
    :func:`evaluate` (``prompts_per_batch`` prompts, seed ``derive_seed(seed, offset)``), so a resumed
    evaluation samples what an uninterrupted one would. ``should_stop`` is asked between batches; None
    is returned when it said stop (what is on file stays for a later resume)."""
    rows = list(rows[: settings.max_prompts] if settings.max_prompts is not None else rows)
    if not rows:
        raise ValueError("evaluate: the dataset has no rows")
    sampling = SamplingSettings(group_size=settings.k, max_new_tokens=settings.max_new_tokens,
                                temperature=settings.temperature)
    done = finished_prompts(read_samples(samples_path), settings.k)
    wanted = {row.index for row in rows}
    resumed = len(done & wanted)
    finished = resumed
    if on_progress is not None:
        on_progress(EvalProgress(finished, len(rows), resumed))
    for offset in range(0, len(rows), settings.prompts_per_batch):
        batch = rows[offset: offset + settings.prompts_per_batch]
        if all(row.index in done for row in batch):
            continue
        if should_stop is not None and should_stop():
            return None
        prompts = [encode_prompt(tokenizer, row.prompt, settings.max_prompt_length) for row in batch]
        generated = engine.generate(prompts, sampling, seed=checkpoint.derive_seed(settings.seed, offset))
        outcomes = rewards.submit(batch, generated).result()
        _append_lines(samples_path, _graded(batch, generated, outcomes, settings.k))
        finished += sum(row.index not in done for row in batch)
        done.update(row.index for row in batch)
        if on_progress is not None:
            on_progress(EvalProgress(finished, len(rows), resumed))
    on_file = read_samples(samples_path)
    samples = [on_file[key] for key in sorted(on_file) if key[0] in wanted and key[1] < settings.k]
    ks = settings.pass_ks
    report: dict[str, Any] = {
        **(describe or {}), "k": settings.k, "ks": ks, "temperature": settings.temperature, "seed": settings.seed,
        "max_new_tokens": settings.max_new_tokens, "pass_threshold": settings.pass_threshold,
        "prompts": len(rows), "resumed_prompts": resumed,
        "sources": summarize(samples, k=settings.k, ks=ks, pass_threshold=settings.pass_threshold),
    }
    return EvalResult(report, samples)
