"""RLAVR with real RL on CPU: full GT, TTRL and four 20%-budget acquisition policies, one line per arm.

Every arm runs the same trainer (``trainer.grpo.GRPOTrainer`` in ``rlavr:`` mode) against a real
annotation project of the embedded platform (uvicorn in a thread, SQLite): each step the trainer
posts its groups (answers, hidden-state features, lengths, token probabilities) to
``POST /v1/annotation/projects/{id}/steps`` and trains with the pseudo-labels, purchases and weights
the service returns. Purchases are answered at once by the project's hidden answer key (the oracle
annotator, ``answer_source: answer_key``), through the same purchase path as a human label.

Arms (service policy, share bought per step, label budget):

======================  =====================================================================
``full_gt``             ``random``, top_p 1.0: every prompt bought (the upper bound)
``ttrl``                ``random``, label budget 0, ``mask_non_gt: false``: pseudo-labels only
``random``              ``random``, top_p 0.2, ``mask_non_gt`` on (trains on what it bought)
``low_consensus``       ``low_consensus``, top_p 0.2, ``mask_non_gt`` on
``care``                ``care``, top_p 0.2 (bought + reliable prompts train; probes learn online)
``oracle_cag``          ``oracle_cag``, top_p 0.2, ``mask_non_gt`` on (exact CAG from the key)
======================  =====================================================================

(``--arms`` also takes ``entropy`` and ``low_token_prob``, the service's other baselines.) Every 20%
arm has a label budget of ⌈0.2·N⌉ per step over the run, and every training prompt is fresh (the
stream has steps × N rows, each used once), so a label bought once never trains twice.

Task (distractor-prone arithmetic). Prompts ``a OP b =`` over single digits (a > b ≥ 1) in six
surface formats; the answer is the digits. The policy is a tiny Qwen2 (``trainer.tiny_models``)
warmed up by supervised training on answers drawn, per format, from a biased mixture: the right
operation with the format's probability p (``FORMATS``), the other operation (the distractor: a − b for a
sum, a + b for a difference) or a ±1 slip otherwise. Three formats start with the distractor as the
most likely answer, so majority vote is wrong on them from the start and TTRL reinforces it; RL with
the right labels flips a format's operation. Each prompt carries a three-letter tag, so no two texts
are equal (the trainer's RLAVR session finds a group's row by its prompt tokens).

Per seed: one warm-up model; the arms then run in a rotated order (seed s starts at arm s mod k), each
from a copy of it, with the same stream, the same ``--steps`` and the same sampling seeds.
Held-out accuracy = mean over the held-out prompts (every format × digit pair, under tags RL never
sees; ``--held-out-pairs`` also keeps a third of the pairs out of RL, a transfer test on which full
GT moved little in short trials: the tiny model memorises its table) of the share of ``--eval-samples`` samples at temperature 1 whose
answer is right; measured at step 0 and every
``--eval-every`` steps. gt_share = the service's per-step share of prompts that trained on a bought
label (``rlavr/gt_share``); pseudo_acc = share of the arm's prompts whose majority vote equals the key.

Printed, one line per arm, then the ratios::

    arm=<name> heldout_acc=<mean±sd over seeds> gt_share=<x> pseudo_acc=<y>
    care_vs_random=<care / random held-out accuracy>
    care_vs_ttrl=<care / ttrl>

plus ``#`` lines (per-seed results, curves, trained share, label accuracy of what trained); writes
``<out>/rlavr_curves.png`` and ``<out>/rlavr_results.json``.

Run: ``python -m benchmarks.rlavr`` (a few minutes on two cores); larger: ``--seeds 5 --steps 60 --prompts 20``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHARE = 0.2  # the budget of every acquisition arm: ⌈0.2 · N⌉ labels per step

# name -> (template, operation, probability the warm-up answer uses the right operation)
FORMATS: dict[str, tuple[str, str, float]] = {
    "sym_plus": ("{a} + {b} =", "+", 0.85),
    "sym_minus": ("{a} - {b} =", "-", 0.85),
    "word_plus": ("{a} plus {b} =", "+", 0.65),
    "word_minus": ("{a} minus {b} =", "-", 0.35),
    "sum_of": ("sum of {a} and {b} =", "+", 0.3),
    "less": ("{a} less {b} =", "-", 0.35),
}
SLIP = 0.1  # warm-up answers off by one (a carry slip), whatever the format
HELD_OUT_EVERY = 3  # every third digit pair (in a fixed order) is held out of RL

# arm -> (service policy, top_p, budget rule, care_params overrides besides seed/lr/warm-up)
ARMS: dict[str, tuple[str, float, str, dict[str, Any]]] = {
    "full_gt": ("random", 1.0, "all", {}),
    "ttrl": ("random", SHARE, "none", {"mask_non_gt": False}),
    "random": ("random", SHARE, "share", {}),
    "low_consensus": ("low_consensus", SHARE, "share", {}),
    "care": ("care", SHARE, "share", {}),
    "oracle_cag": ("oracle_cag", SHARE, "share", {}),
    "entropy": ("entropy", SHARE, "share", {}),
    "low_token_prob": ("low_token_prob", SHARE, "share", {}),
}
DEFAULT_ARMS = "full_gt,ttrl,random,low_consensus,care,oracle_cag"


# ---------------------------------------------------------------- the task (pure functions)


TAG_LETTERS = "bcdfghjklmnpqrstvwxz"


def tag_of(number: int) -> str:
    """A three-letter tag (20³ = 8000 of them) that makes each prompt's text unique: the trainer's
    RLAVR session finds a group's dataset row by its prompt tokens, so two rows with one text would
    be posted under one prompt id."""
    n = number % len(TAG_LETTERS) ** 3
    return "".join(TAG_LETTERS[(n // len(TAG_LETTERS) ** k) % len(TAG_LETTERS)] for k in (2, 1, 0))


@dataclass(frozen=True)
class Problem:
    prompt_id: str
    fmt: str
    a: int
    b: int
    tag: str = "bbb"

    @property
    def text(self) -> str:
        return f"{self.tag}: " + FORMATS[self.fmt][0].format(a=self.a, b=self.b)

    @property
    def answer(self) -> str:
        return str(apply_op(FORMATS[self.fmt][1], self.a, self.b))


def apply_op(op: str, a: int, b: int) -> int:
    """a + b for ``+``, a − b for ``-``."""
    return a + b if op == "+" else a - b


def digit_pairs() -> list[tuple[int, int]]:
    """(a, b) with 9 ≥ a > b ≥ 1: 36 pairs, so a − b ≥ 1 and a + b ≠ a − b."""
    return [(a, b) for a in range(2, 10) for b in range(1, a)]


def split_pairs(held_out_pairs: bool = False) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(RL training pairs, held-out pairs). Default: every pair in both (the held-out prompts are other
    texts, with tags never trained on); ``held_out_pairs``: a fixed shuffle, every HELD_OUT_EVERY-th
    pair kept out of RL (a transfer test: a tiny model's memorised table does not carry RL over to it)."""
    pairs = digit_pairs()
    if not held_out_pairs:
        return pairs, list(pairs)
    random.Random(20_251_202).shuffle(pairs)
    held = [p for i, p in enumerate(pairs) if i % HELD_OUT_EVERY == 0]
    return [p for i, p in enumerate(pairs) if i % HELD_OUT_EVERY], held


def warmup_answer(rng: random.Random, fmt: str, a: int, b: int) -> int:
    """A warm-up target: the right value with probability p = P_CORRECT[fmt], a ±1 slip with SLIP,
    otherwise the distractor operation's value (a − b for a sum, a + b for a difference)."""
    _template, op, p = FORMATS[fmt]
    right = apply_op(op, a, b)
    draw = rng.random()
    if draw < p:
        return right
    if draw < p + SLIP:
        return max(0, right + rng.choice((-1, 1)))
    return apply_op("-" if op == "+" else "+", a, b)


def majority_wrong_share(fmt: str) -> float:
    """P(the format's most likely warm-up answer is wrong): 1 when the distractor's share
    1 − p − SLIP exceeds p, else 0 (the design's intent; the sampled majority varies around it)."""
    p = FORMATS[fmt][2]
    return 1.0 if 1.0 - p - SLIP > p else 0.0


def train_stream(seed: int, rows: int, held_out_pairs: bool = False) -> list[Problem]:
    """``rows`` fresh training problems (uniform over formats × training pairs), ids unique per seed."""
    if rows > 6_000:
        raise ValueError(f"{rows} training rows: at most 6000 have distinct tags")
    rng = random.Random(1_000 + seed)
    train, _held = split_pairs(held_out_pairs)
    tags = rng.sample(range(6_000), rows)  # tags 6000.. are the held-out prompts'
    out = []
    for i in range(rows):
        a, b = rng.choice(train)
        out.append(Problem(f"s{seed}-t{i}", rng.choice(list(FORMATS)), a, b, tag_of(tags[i])))
    return out


def held_out_problems(held_out_pairs: bool = False) -> list[Problem]:
    _train, held = split_pairs(held_out_pairs)
    return [Problem(f"h-{fmt}-{a}-{b}", fmt, a, b, tag_of(6_000 + i))
            for i, (fmt, (a, b)) in enumerate((f, p) for f in FORMATS for p in held)]


def answer_of_text(text: str) -> str:
    """What the ``text`` extractor compares: the completion without any whitespace."""
    return "".join(text.split())


def budget_for(rule: str, steps: int, prompts: int) -> int:
    """Label budget of an arm: every prompt (``all``), none (``none``), or ⌈SHARE · N⌉ per step (``share``)."""
    if rule == "all":
        return steps * prompts
    if rule == "none":
        return 0
    return steps * math.ceil(SHARE * prompts - 1e-9)


def rotated(names: list[str], seed: int) -> list[str]:
    """The arms' order for ``seed``: rotated by seed mod k, so each arm runs early and late alike."""
    k = seed % len(names) if names else 0
    return names[k:] + names[:k]


def mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3f}±{sd:.3f}"


# ---------------------------------------------------------------- the policy


def corpus() -> list[str]:
    lines = [" ".join(TAG_LETTERS)]
    for fmt in FORMATS:
        for a, b in digit_pairs():
            text = Problem("c", fmt, a, b, tag_of(a * 97 + b * 13 + len(fmt))).text
            lines.append(f"{text}{a + b} {text}{a - b}")
    return lines


def build_base(out: Path, seed: int, args: argparse.Namespace) -> dict[str, float]:
    """A tiny Qwen2 warmed up (next-token cross-entropy on the answer and EOS) on the biased mixture,
    over every format × pair (held-out pairs included). Returns the last loss."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.tiny_models import build_tiny_causal_lm

    build_tiny_causal_lm(out, seed=seed, hidden_size=args.hidden, num_layers=args.layers, corpus=corpus(),
                         vocab_size=320, max_position_embeddings=64)
    tokenizer = AutoTokenizer.from_pretrained(str(out), local_files_only=True)
    eos = int(tokenizer.eos_token_id)
    pool = [(fmt, a, b) for fmt in FORMATS for a, b in digit_pairs()]
    rng = random.Random(seed)
    loss_value = math.nan
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_pretrained(str(out), local_files_only=True)
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=args.sft_lr)
        for _ in range(args.sft_steps):
            rows = []
            for fmt, a, b in (rng.choice(pool) for _ in range(args.sft_batch)):
                tag = tag_of(rng.randrange(len(TAG_LETTERS) ** 3))
                prompt = tokenizer(Problem("w", fmt, a, b, tag).text, add_special_tokens=False)["input_ids"]
                target = tokenizer(str(warmup_answer(rng, fmt, a, b)), add_special_tokens=False)["input_ids"] + [eos]
                rows.append((list(prompt), list(target)))
            width = max(len(p) + len(t) for p, t in rows)
            ids = torch.full((len(rows), width), int(tokenizer.pad_token_id))
            weights = torch.zeros((len(rows), width))
            attention = torch.zeros((len(rows), width), dtype=torch.long)
            for row, (prompt, target) in enumerate(rows):
                sequence = prompt + target
                ids[row, :len(sequence)] = torch.tensor(sequence)
                weights[row, len(prompt):len(sequence)] = 1.0
                attention[row, :len(sequence)] = 1
            logits = model(input_ids=ids, attention_mask=attention).logits[:, :-1]
            nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                                                    reduction="none").view(len(rows), width - 1)
            loss = (nll * weights[:, 1:]).sum() / weights[:, 1:].sum()
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            loss_value = float(loss.detach())
    model.save_pretrained(out)
    return {"sft_loss": loss_value}


def evaluate(engine: Any, tokenizer: Any, problems: list[Problem], samples: int, max_new_tokens: int,
             seed: int = 4_242) -> dict[str, float]:
    """Held-out accuracy: the mean share of right answers over ``samples`` samples per prompt at
    temperature 1 (the same sampling seed at every evaluation), overall and per format."""
    from trainer.rollout import SamplingSettings

    prompts = [list(tokenizer(p.text, add_special_tokens=False)["input_ids"]) for p in problems]
    rollouts = engine.generate(prompts, SamplingSettings(group_size=samples, max_new_tokens=max_new_tokens,
                                                         temperature=1.0), seed=seed)
    right: dict[str, list[float]] = {}
    overall = []
    for rollout in rollouts:
        problem = problems[rollout.prompt_index]
        hit = float(answer_of_text(rollout.text) == problem.answer)
        overall.append(hit)
        right.setdefault(problem.fmt, []).append(hit)
    return {"acc": statistics.fmean(overall), **{f"acc/{f}": statistics.fmean(v) for f, v in right.items()}}


# ---------------------------------------------------------------- the platform


@dataclass
class Platform:
    url: str  # the annotation service's base URL (embedded prefix included)
    admin_key: str
    trainer_key: str
    project_id: str


@contextmanager
def embedded_platform(data_dir: Path) -> Iterator[Platform]:
    """The embedded default (every service in one app, SQLite in ``data_dir``) on a loopback port in a
    background thread, with an admin and a trainer key scoped to its default project."""
    import httpx
    import uvicorn

    os.environ["REWARDHUB_DATA_DIR"] = str(data_dir)
    os.environ.pop("DATABASE_URL", None)  # SQLite in data_dir, whatever this shell points at
    from services.common.settings import get_settings

    get_settings.cache_clear()
    from rewardhub.embedded import bootstrap, build_embedded_app
    from services.common.auth import create_api_key
    from services.common.db import session_scope
    from services.common.models import Project, Role
    from trainer.distributed import free_port

    boot = bootstrap(get_settings())
    with session_scope() as session:
        project = session.get_one(Project, boot.project_id)
        _, admin_key = create_api_key(session, role=Role.admin, projects=[project], name="rlavr bench admin")
        _, trainer_key = create_api_key(session, role=Role.trainer, projects=[project], name="rlavr bench trainer")
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(build_embedded_app(), host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, name="rlavr-bench-server", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the embedded rewardhub server did not start")
        time.sleep(0.05)
    try:
        yield Platform(url=url + "/services/annotation", admin_key=admin_key, trainer_key=trainer_key,
                       project_id=boot.project_id)
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def create_annotation_project(platform: Platform, arm: str, seed: int, args: argparse.Namespace,
                              stream: list[Problem]) -> str:
    """The arm's annotation project (answer-key annotator, n = group size) with the stream's key."""
    import httpx

    policy, top_p, rule, extra = ARMS[arm]
    params: dict[str, Any] = {"top_p": top_p, "seed": seed, **extra}
    if policy == "care":
        params |= {"warmup_steps": args.care_warmup, "lr": args.care_lr}
    headers = {"Authorization": f"Bearer {platform.admin_key}"}
    base = f"{platform.url}/v1/annotation/projects"
    created = httpx.post(base, headers=headers, timeout=60, json={
        "project_id": platform.project_id, "name": f"rlavr-bench-{arm}-{seed}",
        "label_budget": budget_for(rule, args.steps, args.prompts), "rollouts_per_prompt": args.group,
        "policy": policy, "answer_source": "answer_key", "care_params": params})
    if created.status_code not in (200, 201):
        raise RuntimeError(f"creating the {arm} project: HTTP {created.status_code}: {created.text[:300]}")
    project_id = str(created.json()["id"])
    key = httpx.put(f"{base}/{project_id}/answer-key", headers=headers, timeout=60,
                    json={"entries": [{"prompt_id": p.prompt_id, "answer": p.answer} for p in stream]})
    if key.status_code != 200:
        raise RuntimeError(f"the {arm} answer key: HTTP {key.status_code}: {key.text[:300]}")
    return project_id


# ---------------------------------------------------------------- one arm


def gt_reward(completion: str, truth: Any, _item: Any = None) -> float:
    """The run's own reward source: 1 when the answer is the key's. In rlavr mode it is only logged
    (``reward_mean`` = the rollouts' true accuracy); the training rewards come from the service."""
    return float(answer_of_text(completion) == str(truth))


def run_arm(arm: str, seed: int, args: argparse.Namespace, work: Path, base: Path, platform: Platform,
            stream: list[Problem], held_out: list[Problem], start_acc: float) -> dict[str, Any]:
    from trainer.config import parse_config
    from trainer.grpo import GRPOTrainer
    from trainer.rewards import CallableRewards
    from trainer.rlavr import RlavrSession, normalise

    folder = work / f"seed{seed}" / arm
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(base, folder / "model")
    dataset = work / f"seed{seed}" / "train.jsonl"
    if not dataset.exists():
        dataset.write_text("".join(json.dumps({"data_source": "rlavr-arith", "prompt": p.text,
                                               "reward_model": {"ground_truth": p.answer},
                                               "extra_info": {"prompt_id": p.prompt_id}}) + "\n" for p in stream))
    project_id = create_annotation_project(platform, arm, seed, args, stream)
    config = parse_config({
        "model": {"path": str(folder / "model")}, "dataset": str(dataset), "seed": seed, "group_size": args.group,
        "prompts_per_step": args.prompts, "max_steps": args.steps, "learning_rate": args.lr,
        "max_completion_length": args.max_new_tokens, "temperature": 1.0, "loss_type": "dapo",
        "output_dir": str(folder / "run"), "export_hf": "none",
        "rlavr": {"annotation_project_id": project_id, "url": platform.url, "extractor": "text",
                  "run_id": f"bench-{arm}-{seed}"}}, local=True)
    trainer = GRPOTrainer(config, rewards=CallableRewards(gt_reward))
    trainer.rlavr = RlavrSession(config, trainer.output_dir, api_key=platform.trainer_key)
    truth = {p.prompt_id: p.answer for p in stream}
    curve = [(0, start_acc)]
    gt_share, trained_share, pseudo_right, pseudo_n = [], [], 0, 0
    label_weight, label_right_weight, true_acc = 0.0, 0.0, []
    started = time.perf_counter()
    for step in range(1, args.steps + 1):
        metrics = trainer.train_step()
        last = trainer.rlavr.last
        assert last is not None
        if args.verbose:
            print(f"#   {arm} step={step} " + " ".join(f"{k}={metrics[k]:.3g}" for k in (
                "reward_mean", "rlavr/reward_mean", "rlavr/gt_share", "rlavr/trained_share", "loss", "grad_norm",
                "informative_group_share") if isinstance(metrics.get(k), float)), flush=True)
        gt_share.append(float(metrics["rlavr/gt_share"]))
        trained_share.append(float(metrics["rlavr/trained_share"]))
        true_acc.append(float(metrics["reward_mean"]))
        for decision, weight in zip(last.decisions, last.weights, strict=True):
            key = truth[decision.prompt_id]
            pseudo_ok = decision.pseudo_label is not None and normalise(decision.pseudo_label) == key
            pseudo_right += pseudo_ok
            pseudo_n += 1
            target = decision.label if decision.label_status == "labelled" else decision.pseudo_label
            label_weight += weight
            label_right_weight += weight * float(target is not None and normalise(target) == key)
        if step % args.eval_every == 0 and step < args.steps:
            curve.append((step, evaluate(trainer.engine, trainer.tokenizer, held_out, args.eval_samples,
                                         args.max_new_tokens)["acc"]))
    wall = time.perf_counter() - started
    final = evaluate(trainer.engine, trainer.tokenizer, held_out, args.eval_samples, args.max_new_tokens)
    curve.append((args.steps, final["acc"]))
    return {"arm": arm, "seed": seed, "policy": ARMS[arm][0], "heldout_acc": final["acc"],
            "heldout_by_format": {k.removeprefix("acc/"): v for k, v in final.items() if k.startswith("acc/")},
            "curve": curve, "gt_share": gt_share, "trained_share": trained_share,
            "pseudo_acc": pseudo_right / max(1, pseudo_n),
            "train_label_acc": label_right_weight / label_weight if label_weight > 0 else math.nan,
            "train_true_acc": true_acc, "wall_s": wall}


# ---------------------------------------------------------------- report


def summary(results: list[dict[str, Any]], arms: list[str]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for arm in arms:
        mine = [r for r in results if r["arm"] == arm]
        if not mine:
            continue
        accs = [r["heldout_acc"] for r in mine]
        label_accs = [r["train_label_acc"] for r in mine if not math.isnan(r["train_label_acc"])]
        out[arm] = {"mean": statistics.fmean(accs), "sd": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                    "gt_share": statistics.fmean(s for r in mine for s in r["gt_share"]),
                    "gt_share_max": max(s for r in mine for s in r["gt_share"]),
                    "trained_share": statistics.fmean(s for r in mine for s in r["trained_share"]),
                    "pseudo_acc": statistics.fmean(r["pseudo_acc"] for r in mine),
                    "train_label_acc": statistics.fmean(label_accs) if label_accs else math.nan}
    return out


def ratio(table: dict[str, dict[str, float]], a: str, b: str) -> str:
    if a not in table or b not in table or table[b]["mean"] <= 0:
        return "nan"
    return f"{table[a]['mean'] / table[b]['mean']:.3f}"


def report(results: list[dict[str, Any]], arms: list[str], start: dict[int, float]) -> dict[str, dict[str, float]]:
    table = summary(results, arms)
    print(f"# start heldout_acc (after the warm-up, every arm) = {mean_sd(list(start.values()))}")
    for arm, row in table.items():
        mine = [r for r in results if r["arm"] == arm]
        steps = sorted({s for r in mine for s, _ in r["curve"]})
        curve = ",".join(f"{s}:{statistics.fmean(dict(r['curve'])[s] for r in mine if s in dict(r['curve'])):.3f}"
                         for s in steps)
        per_step = [statistics.fmean(r["gt_share"][i] for r in mine) for i in range(len(mine[0]["gt_share"]))]
        formats = " ".join(f"{f}={statistics.fmean(r['heldout_by_format'].get(f, 0.0) for r in mine):.2f}"
                           for f in FORMATS)
        print(f"# arm={arm} policy={ARMS[arm][0]} trained_share={row['trained_share']:.3f} "
              f"train_label_acc={row['train_label_acc']:.3f} gt_share_max={row['gt_share_max']:.3f} "
              f"heldout_by_step={curve}")
        print(f"# arm={arm} gt_share_per_step={','.join(f'{v:.2f}' for v in per_step)} by_format: {formats}")
    for arm, row in table.items():
        print(f"arm={arm} heldout_acc={row['mean']:.3f}±{row['sd']:.3f} gt_share={row['gt_share']:.3f} "
              f"pseudo_acc={row['pseudo_acc']:.3f}")
    print(f"care_vs_random={ratio(table, 'care', 'random')}")
    print(f"care_vs_ttrl={ratio(table, 'care', 'ttrl')}")
    if {"care", "ttrl", "full_gt"} <= table.keys() and table["full_gt"]["mean"] != table["ttrl"]["mean"]:
        closed = (table["care"]["mean"] - table["ttrl"]["mean"]) / (table["full_gt"]["mean"] - table["ttrl"]["mean"])
        print(f"# care_gap_closed={closed:.3f} ((care - ttrl) / (full_gt - ttrl))")
    return table


def plot(results: list[dict[str, Any]], arms: list[str], path: Path) -> bool:
    try:
        import matplotlib
    except ImportError:
        print("# matplotlib is not installed: no PNG written")
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4), dpi=110)
    for n, arm in enumerate(arms):
        mine = [r for r in results if r["arm"] == arm]
        if not mine:
            continue
        steps = [s for s, _ in mine[0]["curve"]]
        left.plot(steps, [statistics.fmean(dict(r["curve"])[s] for r in mine) for s in steps], color=f"C{n}",
                  marker="o", label=arm)
        per_step = [statistics.fmean(r["gt_share"][i] for r in mine) for i in range(len(mine[0]["gt_share"]))]
        right.plot(range(1, len(per_step) + 1), per_step, color=f"C{n}", label=arm)
    left.set_xlabel("GRPO step")
    left.set_ylabel("held-out accuracy")
    left.set_title(f"held-out accuracy (mean of {len({r['seed'] for r in results})} seeds)")
    right.set_xlabel("GRPO step")
    right.set_ylabel("GT share of the step's prompts that trained")
    right.set_title("GT share used per step")
    for axis in (left, right):
        axis.grid(alpha=0.3)
    left.legend(loc="best", fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return True


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=30, help="GRPO steps per arm (the same for every arm)")
    parser.add_argument("--prompts", type=int, default=10, help="prompts per step, N (a multiple of 5 keeps "
                        "⌈0.2·N⌉ / N at 0.2 exactly)")
    parser.add_argument("--group", type=int, default=8, help="rollouts per prompt, n")
    parser.add_argument("--lr", type=float, default=1e-3, help="policy learning rate")
    parser.add_argument("--sft-steps", type=int, default=1000)
    parser.add_argument("--sft-batch", type=int, default=32)
    parser.add_argument("--sft-lr", type=float, default=3e-3)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=4)
    parser.add_argument("--eval-samples", type=int, default=4)
    parser.add_argument("--eval-every", type=int, default=5)
    parser.add_argument("--care-warmup", type=int, default=None, help="CARE's warm-up steps before the reliability "
                        "gate opens (spec: 20); default steps // 3, so a short run sees the gate")
    parser.add_argument("--care-lr", type=float, default=1e-3, help="CARE probes' lr (spec: 1e-4, for runs of "
                        "hundreds of steps; a short run's probes barely move at it)")
    parser.add_argument("--arms", default=DEFAULT_ARMS, help="comma-separated, of: " + ", ".join(ARMS))
    parser.add_argument("--out", type=Path, default=Path("runs/bench-rlavr"))
    parser.add_argument("--held-out-pairs", action="store_true", help="keep every third digit pair out of "
                        "RL (default: held-out prompts are unseen texts over every pair)")
    parser.add_argument("--verbose", action="store_true", help="print every step's metrics")
    args = parser.parse_args(argv)
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        parser.error(f"--arms: unknown {', '.join(unknown)} (choose from {', '.join(ARMS)})")
    for name in ("seeds", "steps", "prompts", "group", "eval_samples", "eval_every"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')}: must be at least 1")
    if args.care_warmup is None:
        args.care_warmup = max(1, args.steps // 3)
    import torch

    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    held_out = held_out_problems(args.held_out_pairs)
    print(f"# N={args.prompts} n={args.group} steps={args.steps} seeds={args.seeds} budget={SHARE:.0%} "
          f"(⌈{SHARE}·N⌉={math.ceil(SHARE * args.prompts - 1e-9)} per step) lr={args.lr} care warm-up="
          f"{args.care_warmup} care lr={args.care_lr} held-out prompts={len(held_out)}; formats whose warm-up "
          f"majority is wrong: {', '.join(f for f in FORMATS if majority_wrong_share(f))}", flush=True)
    results: list[dict[str, Any]] = []
    start: dict[int, float] = {}
    with tempfile.TemporaryDirectory(prefix="rlavr-bench-") as folder:
        work = Path(folder)
        with embedded_platform(work / "platform") as platform:
            for seed in range(args.seeds):
                from transformers import AutoModelForCausalLM, AutoTokenizer

                from trainer.rollout import TransformersEngine

                base = work / f"seed{seed}" / "base"
                sft = build_base(base, seed, args)
                tokenizer = AutoTokenizer.from_pretrained(str(base), local_files_only=True)
                model = AutoModelForCausalLM.from_pretrained(str(base), local_files_only=True)
                first = evaluate(TransformersEngine(model, tokenizer), tokenizer, held_out, args.eval_samples,
                                 args.max_new_tokens)
                start[seed] = first["acc"]
                print(f"# seed={seed} warm-up loss={sft['sft_loss']:.3f} heldout_acc={first['acc']:.3f} by format: "
                      + " ".join(f"{f}={first[f'acc/{f}']:.2f}" for f in FORMATS), flush=True)
                stream = train_stream(seed, args.steps * args.prompts, args.held_out_pairs)
                for arm in rotated(arms, seed):
                    result = run_arm(arm, seed, args, work, base, platform, stream, held_out, first["acc"])
                    results.append(result)
                    print(f"# seed={seed} arm={arm} heldout_acc={result['heldout_acc']:.3f} "
                          f"gt_share={statistics.fmean(result['gt_share']):.3f} pseudo_acc={result['pseudo_acc']:.3f} "
                          f"train_acc_first={result['train_true_acc'][0]:.3f} "
                          f"last={result['train_true_acc'][-1]:.3f} wall_s={result['wall_s']:.1f}", flush=True)
    table = report(results, arms, start)
    if plot(results, arms, args.out / "rlavr_curves.png"):
        print(f"# wrote {args.out / 'rlavr_curves.png'}")
    (args.out / "rlavr_results.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                             "start": start, "results": results, "summary": table},
                                                            indent=1))
    return table


if __name__ == "__main__":
    main()
