"""STS against real fine-tunes: does the SAE transferability score predict accuracy changes?

A tiny Qwen2 (``trainer.tiny_models``: random weights from a config, a BPE tokenizer trained here on
the generators' text; nothing downloaded) is pretrained on a synthetic mixture of deterministic
task domains with shared and distinct structure: three skills each in two surface forms (``add`` /
``sum``, ``copy`` / ``say``, ``reverse`` / ``back``), a format shared with another operation
(``sub`` is ``add``'s format, ``sort`` the lists'), and ``parity`` (digits in the list format).
Every answer starts with a space and ends with the end token. Pretraining documents pack 1-3
examples of one domain, so a two-demonstration context is in distribution.
Then:

1. the residual stream after block ``--layer`` of the base model on mixture text trains an SAE
   (sae-lens, ``trainer.sts.sae``);
2. per source domain, a fine-tuning set; STS: its examples alone and after two of its
   demonstrations (token-aligned), top-``k`` shifted SAE dimensions, the score of every target
   domain on its probe prompts;
3. per source domain and seed, a REAL fine-tune of the base model on that set (answer tokens
   only; 50 AdamW steps of 64 examples at lr 5e-4 by default, ``--finetune-steps``,
   ``--finetune-lr``), and every target domain's exact-match accuracy (greedy, by teacher forcing
   over answer + end token: identical to greedy decoding's exact match) before and after, on the
   same held-out prompts: Δacc = after − before, averaged over ``--seeds`` fine-tune seeds;
4. Pearson r between score and Δacc over the (source, target) pairs with source ≠ target (the
   in-domain pairs move by construction and would inflate r; r with them is printed as well).

Prints ``sts_pearson=<r>`` (off-diagonal pairs, mean Δacc over seeds), then r against |Δacc|, r
with the in-domain pairs, per-source r, r per fine-tune seed (median and spread), r for other
``k``, a per-pair table, and writes ``sts_scatter.png`` (score vs Δacc) and ``sts_results.json``
under ``--out``. ``--small`` is a seconds-long smoke run (three domains, a few steps) whose figures
mean nothing.

    python benchmarks/sts.py [--out build/sts] [--seeds 2] [--cache build/sts-cache] [--small]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from trainer.sts.activations import collect_residual, in_context_pairs, split_demonstrations
from trainer.sts.sae import encode, train_sae
from trainer.sts.scores import pearson
from trainer.sts.transferability import shifted_dimensions, target_scores
from trainer.tiny_models import BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, build_tiny_causal_lm

SYMBOLS = "bcdfghkmnpqrstvwxz"


def _symbols(rng: random.Random) -> list[str]:
    return rng.sample(SYMBOLS, rng.randint(3, 5))


def _pair(rng: random.Random) -> tuple[int, int]:
    return rng.randint(10, 59), rng.randint(10, 39)


def _add(rng: random.Random) -> tuple[str, str]:
    a, b = _pair(rng)
    return f"{a}+{b}=", f" {a + b}"


def _sum(rng: random.Random) -> tuple[str, str]:  # add's skill in another surface form
    a, b = _pair(rng)
    return f"sum {a} {b} :", f" {a + b}"


def _sub(rng: random.Random) -> tuple[str, str]:  # add's format, another operation
    a = rng.randint(20, 99)
    b = rng.randint(10, a)
    return f"{a}-{b}=", f" {a - b}"


def _copy(rng: random.Random) -> tuple[str, str]:
    s = _symbols(rng)
    return f"copy {' '.join(s)} :", " " + " ".join(s)


def _say(rng: random.Random) -> tuple[str, str]:  # copy's skill in another surface form
    s = _symbols(rng)
    return f"say {' '.join(s)} ?", " " + " ".join(s)


def _reverse(rng: random.Random) -> tuple[str, str]:
    s = _symbols(rng)
    return f"rev {' '.join(s)} :", " " + " ".join(reversed(s))


def _back(rng: random.Random) -> tuple[str, str]:  # reverse's skill in another surface form
    s = _symbols(rng)
    return f"back {' '.join(s)} ?", " " + " ".join(reversed(s))


def _sort(rng: random.Random) -> tuple[str, str]:  # the list format, another operation
    s = _symbols(rng)
    return f"sort {' '.join(s)} :", " " + " ".join(sorted(s))


def _parity(rng: random.Random) -> tuple[str, str]:  # digits in the list format
    d = [rng.randint(0, 1) for _ in range(rng.randint(3, 5))]
    return f"par {' '.join(map(str, d))} :", f" {sum(d) % 2}"


DOMAINS: dict[str, Callable[[random.Random], tuple[str, str]]] = {
    "add": _add, "sum": _sum, "sub": _sub, "copy": _copy, "say": _say, "reverse": _reverse, "back": _back,
    "sort": _sort, "parity": _parity,
}
SMALL_DOMAINS = ("add", "sum", "copy")


@dataclass(frozen=True)
class Example:
    prompt: list[int]
    answer: list[int]  # the answer's tokens and the end token

    @property
    def ids(self) -> list[int]:
        return self.prompt + self.answer


class Tasks:
    """Token-level examples of every domain; each piece is tokenized on its own (no cross-boundary merge)."""

    def __init__(self, tokenizer: Any, domains: Sequence[str]) -> None:
        self.tokenizer = tokenizer
        self.domains = list(domains)
        self.bos = int(tokenizer.convert_tokens_to_ids(BOS_TOKEN))
        self.eos = int(tokenizer.convert_tokens_to_ids(EOS_TOKEN))
        self.pad = int(tokenizer.convert_tokens_to_ids(PAD_TOKEN))

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def sample(self, domain: str, n: int, seed: int) -> list[Example]:
        rng = random.Random(f"{domain}:{seed}")
        texts = [DOMAINS[domain](rng) for _ in range(n)]
        prompts = self.tokenizer([p for p, _ in texts], add_special_tokens=False)["input_ids"]
        answers = self.tokenizer([a for _, a in texts], add_special_tokens=False)["input_ids"]
        return [Example(list(p), [*a, self.eos]) for p, a in zip(prompts, answers, strict=True)]

    def documents(self, n: int, seed: int) -> list[list[int]]:
        """Pretraining documents: BOS then 1-3 examples of one domain (so in-context runs are in distribution)."""
        rng = random.Random(seed)
        pools = {d: iter(self.sample(d, 3 * (n // len(self.domains) + 1), seed)) for d in self.domains}
        docs = []
        for i in range(n):
            pool = pools[self.domains[i % len(self.domains)]]
            doc = [self.bos]
            for _ in range(rng.randint(1, 3)):
                doc += next(pool).ids
            docs.append(doc)
        rng.shuffle(docs)
        return docs


def corpus(domains: Sequence[str]) -> list[str]:
    rng = random.Random(7)
    lines = []
    for domain in domains:
        for _ in range(200):
            prompt, answer = DOMAINS[domain](rng)
            lines.append(prompt + answer)
    return lines


def _batch(rows: Sequence[tuple[list[int], list[int]]], pad: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, (x, y) in enumerate(rows):
        ids[r, :len(x)] = torch.tensor(x)
        labels[r, :len(y)] = torch.tensor(y)
        mask[r, :len(x)] = 1
    return ids, labels, mask


def train(model: Any, rows: Sequence[tuple[list[int], list[int]]], *, steps: int, batch: int, lr: float,
          seed: int, pad: int, log_every: int = 0) -> float:
    """AdamW on the rows ((input ids, labels with -100 where no loss)); returns the last loss."""
    generator = random.Random(seed)
    rows = list(rows)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 10))
    model.train()
    loss = torch.tensor(float("nan"))
    for step in range(steps):
        if log_every and step % log_every == 0 and step:
            print(f"  step {step}/{steps} loss={float(loss.detach()):.3f}", flush=True)
        ids, labels, mask = _batch(generator.sample(rows, min(batch, len(rows))), pad)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    model.eval()
    return float(loss.detach())


def lm_rows(docs: Sequence[list[int]]) -> list[tuple[list[int], list[int]]]:
    return [(d, [-100, *d[1:]]) for d in docs]  # loss on every token but BOS


def answer_rows(tasks: Tasks, examples: Sequence[Example]) -> list[tuple[list[int], list[int]]]:
    return [([tasks.bos, *e.ids], [-100] * (1 + len(e.prompt)) + e.answer) for e in examples]


def accuracy(model: Any, tasks: Tasks, examples: Sequence[Example], batch: int = 128) -> float:
    """Exact match of greedy decoding, by teacher forcing: every answer token (and the end token) is the argmax."""
    correct = 0
    with torch.no_grad():
        for start in range(0, len(examples), batch):
            chunk = examples[start:start + batch]
            ids, labels, mask = _batch(answer_rows(tasks, chunk), tasks.pad)
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
            target = labels[:, 1:]
            hit = (logits.argmax(-1) == target) | (target == -100)
            correct += int(hit.all(dim=1).sum())
    return correct / len(examples)


@dataclass(frozen=True)
class Size:
    domains: tuple[str, ...]
    hidden: int
    layers: int
    pretrain_steps: int
    pretrain_docs: int
    batch: int
    finetune_examples: int
    finetune_steps: int
    finetune_lr: float
    eval_examples: int
    probe_examples: int
    sts_examples: int
    sae_docs: int
    sae_expansion: int
    sae_epochs: float
    top_k: int


DEFAULT = Size(tuple(DOMAINS), hidden=64, layers=4, pretrain_steps=1500, pretrain_docs=6000, batch=64,
               finetune_examples=512, finetune_steps=50, finetune_lr=5e-4, eval_examples=400, probe_examples=64,
               sts_examples=64, sae_docs=600, sae_expansion=8, sae_epochs=30.0, top_k=100)
SMALL = Size(SMALL_DOMAINS, hidden=32, layers=2, pretrain_steps=20, pretrain_docs=60, batch=16,
             finetune_examples=32, finetune_steps=3, finetune_lr=1e-3, eval_examples=24, probe_examples=8,
             sts_examples=8, sae_docs=24, sae_expansion=4, sae_epochs=2.0, top_k=8)


def _fmt(value: float) -> str:
    return "nan" if value != value else f"{value:.3f}"


def scatter(pairs: list[dict[str, Any]], path: Path, r: float) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sources = sorted({p["source"] for p in pairs})
    colours = plt.get_cmap("tab10")
    figure, axis = plt.subplots(figsize=(7, 5), dpi=110)
    for i, source in enumerate(sources):
        for in_domain in (False, True):
            points = [p for p in pairs if p["source"] == source and (p["source"] == p["target"]) == in_domain]
            if points:
                axis.scatter([p["score"] for p in points], [p["delta"] for p in points], color=colours(i % 10),
                             marker="*" if in_domain else "o", s=120 if in_domain else 40,
                             label=None if in_domain else f"source {source}")
    axis.axhline(0.0, color="grey", linewidth=0.8)
    axis.set_xlabel("STS score (mean squared activation on the shifted SAE dimensions)")
    axis.set_ylabel("Δ accuracy after fine-tuning on the source")
    axis.set_title(f"STS vs real fine-tunes: Pearson r = {_fmt(r)} (off-diagonal; ★ = in-domain)")
    axis.grid(alpha=0.3)
    axis.legend(loc="best", fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path


def run(size: Size, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    torch.manual_seed(args.seed)
    cached = args.cache / f"base-{'small' if args.small else 'default'}-seed{args.seed}" if args.cache else None
    if cached is not None and (cached / "config.json").is_file():
        model_dir = cached  # the pretrained base model of an earlier run of the same size and seed
    else:
        model_dir = build_tiny_causal_lm(work / "base", seed=args.seed,
                                         hidden_size=size.hidden, num_layers=size.layers, corpus=corpus(size.domains),
                                         vocab_size=300, max_position_embeddings=256)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    tasks = Tasks(tokenizer, size.domains)
    layer = args.layer if args.layer is not None else max(0, size.layers // 2 - 1)

    if model_dir == cached:
        loss = float("nan")
    else:
        loss = train(base, lm_rows(tasks.documents(size.pretrain_docs, seed=args.seed)), steps=size.pretrain_steps,
                     batch=size.batch, lr=3e-3, seed=args.seed, pad=tasks.pad,
                     log_every=max(1, size.pretrain_steps // 6))
        if cached is not None:
            base.save_pretrained(cached)
            tokenizer.save_pretrained(cached)
    pretrained = {k: v.clone() for k, v in base.state_dict().items()}
    evals = {d: tasks.sample(d, size.eval_examples, seed=10_000 + args.seed) for d in size.domains}
    probes = {d: [[tasks.bos, *e.prompt] for e in tasks.sample(d, size.probe_examples, seed=20_000 + args.seed)]
              for d in size.domains}
    before = {d: accuracy(base, tasks, evals[d]) for d in size.domains}
    print(f"pretrain loss={loss:.3f} " + " ".join(f"acc[{d}]={before[d]:.3f}" for d in size.domains), flush=True)

    acts = torch.cat(collect_residual(base, tasks.documents(size.sae_docs, seed=args.seed + 1), layer, pad_id=tasks.pad))
    sae = train_sae(acts, d_sae=size.sae_expansion * size.hidden, l1_coefficient=args.l1, epochs=size.sae_epochs,
                    seed=args.seed)
    features = encode(sae, acts)
    recon = float((sae.decode(features).detach() - acts).pow(2).sum(1).mean() / (acts - acts.mean(0)).pow(2).sum(1).mean())
    alive = int((features > 0).any(dim=0).sum())
    print(f"sae layer={layer} d_sae={features.shape[1]} tokens={acts.shape[0]} l0={float((features > 0).sum(1).float().mean()):.1f} "
          f"alive={alive} fvu={recon:.3f}", flush=True)

    finetune = {d: tasks.sample(d, size.finetune_examples, seed=30_000 + args.seed) for d in size.domains}
    ks = sorted({k for k in (*args.k_sweep, size.top_k) if k <= features.shape[1]})
    scores: dict[int, dict[tuple[str, str], float]] = {k: {} for k in ks}
    for source in size.domains:
        demos, rest = split_demonstrations([e.ids for e in finetune[source][:size.sts_examples]], 2, seed=args.seed)
        pairs = in_context_pairs(rest, demos, prefix=[tasks.bos])
        shift = shifted_dimensions(base, sae, layer, pairs, top_k=max(ks), pad_id=tasks.pad)
        for k in ks:
            for target, value in target_scores(base, sae, layer, probes, shift.dims[:k], pad_id=tasks.pad).items():
                scores[k][(source, target)] = value

    print(f"finetune steps={args.finetune_steps or size.finetune_steps} lr={args.finetune_lr or size.finetune_lr:g} "
          f"examples={size.finetune_examples} seeds={args.seeds}", flush=True)
    deltas: dict[tuple[str, str], list[float]] = {}
    after_acc: dict[tuple[str, str], list[float]] = {}
    for seed in range(args.seeds):  # seeds in the outer loop: every source sees the same seeds
        for source in size.domains:
            base.load_state_dict(pretrained)
            train(base, answer_rows(tasks, finetune[source]), steps=args.finetune_steps or size.finetune_steps,
                  batch=size.batch, lr=args.finetune_lr or size.finetune_lr, seed=1_000 * seed + 17, pad=tasks.pad)
            for target in size.domains:
                acc = accuracy(base, tasks, evals[target])
                after_acc.setdefault((source, target), []).append(acc)
                deltas.setdefault((source, target), []).append(acc - before[target])
    base.load_state_dict(pretrained)

    keys = list(deltas)
    off = [k for k in keys if k[0] != k[1]]
    mean_delta = {k: statistics.fmean(v) for k, v in deltas.items()}
    main = pearson([scores[size.top_k][k] for k in off], [mean_delta[k] for k in off])
    result: dict[str, Any] = {"size": size.__dict__, "layer": layer, "before": before, "top_k": size.top_k,
                              "finetune_steps": args.finetune_steps or size.finetune_steps,
                              "finetune_lr": args.finetune_lr or size.finetune_lr, "seeds": args.seeds,
                              "sts_pearson": main.r, "p_value": main.p_value, "n_pairs": main.n}
    print(f"sts_pearson={_fmt(main.r)} p={_fmt(main.p_value)} n_pairs={main.n} top_k={size.top_k} "
          f"(off-diagonal pairs, Δacc mean over {args.seeds} fine-tune seed(s))")
    absolute = pearson([scores[size.top_k][k] for k in off], [abs(mean_delta[k]) for k in off])
    with_diag = pearson([scores[size.top_k][k] for k in keys], [mean_delta[k] for k in keys])
    print(f"sts_pearson_abs_delta={_fmt(absolute.r)} sts_pearson_with_in_domain={_fmt(with_diag.r)} n={with_diag.n}")
    per_source = {}
    for source in size.domains:
        mine = [k for k in off if k[0] == source]
        per_source[source] = pearson([scores[size.top_k][k] for k in mine], [mean_delta[k] for k in mine]).r \
            if len(mine) >= 3 else float("nan")
    finite = [r for r in per_source.values() if r == r]
    print("per_source_r " + " ".join(f"{s}={_fmt(r)}" for s, r in per_source.items())
          + (f" median={_fmt(statistics.median(finite))}" if finite else ""))
    if args.seeds > 1:
        per_seed = [pearson([scores[size.top_k][k] for k in off], [deltas[k][s] for k in off]).r
                    for s in range(args.seeds)]
        print(f"per_seed_r median={_fmt(statistics.median(per_seed))} min={_fmt(min(per_seed))} max={_fmt(max(per_seed))}")
        result["per_seed_r"] = per_seed
    sweep = {k: pearson([scores[k][p] for p in off], [mean_delta[p] for p in off]).r for k in ks}
    print("top_k_sweep " + " ".join(f"k={k}:r={_fmt(r)}" for k, r in sweep.items()))
    print(f"{'source':>8} {'target':>8} {'score':>9} {'Δacc':>7} {'±':>6} {'before':>7} {'after':>7}")
    table = []
    for source, target in keys:
        d = deltas[(source, target)]
        spread = statistics.pstdev(d) if len(d) > 1 else 0.0
        row = {"source": source, "target": target, "score": scores[size.top_k][(source, target)],
               "delta": mean_delta[(source, target)], "delta_std": spread, "before": before[target],
               "after": statistics.fmean(after_acc[(source, target)])}
        table.append(row)
        mark = " (in-domain)" if source == target else ""
        print(f"{source:>8} {target:>8} {row['score']:>9.4f} {row['delta']:>+7.3f} {spread:>6.3f} "
              f"{row['before']:>7.3f} {row['after']:>7.3f}{mark}")
    result.update(pairs=table, per_source_r=per_source, top_k_sweep={str(k): r for k, r in sweep.items()},
                  sts_pearson_abs_delta=absolute.r, sts_pearson_with_in_domain=with_diag.r)
    args.out.mkdir(parents=True, exist_ok=True)
    png = scatter(table, args.out / "sts_scatter.png", main.r)
    (args.out / "sts_results.json").write_text(json.dumps(result, indent=2, default=str))
    print(f"wrote {png} and {args.out / 'sts_results.json'} in {time.perf_counter() - started:.0f}s")
    return result


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("build/sts"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, default=2, help="fine-tune seeds per source (Δacc is their mean)")
    parser.add_argument("--layer", type=int, default=None, help="0-based block; default: the middle one")
    parser.add_argument("--l1", type=float, default=1.0, help="SAE L1 coefficient")
    parser.add_argument("--k-sweep", type=int, nargs="*", default=[10, 25, 50, 200])
    parser.add_argument("--finetune-steps", type=int, default=0, help="override the size's fine-tune steps")
    parser.add_argument("--finetune-lr", type=float, default=0.0, help="override the size's fine-tune learning rate")
    parser.add_argument("--cache", type=Path, default=None,
                        help="keep the pretrained base model here and reuse it on later runs of the same size and seed")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--small", action="store_true", help="a seconds-long smoke run; its figures mean nothing")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error("--seeds: must be at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="sts-bench-") as work:
        return run(SMALL if args.small else DEFAULT, args, Path(work))


if __name__ == "__main__":
    main()
