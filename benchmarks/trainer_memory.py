"""Peak memory of the old + reference log-prob pass vs the rollout batch size: ours vs one-shot.

Ours (``trainer.logprobs.completion_logprobs``) runs the no-grad forwards ``--micro`` rollouts at
a time with a chunked log-softmax; the anchor is the unchunked one-shot pass the trainer used
before (the whole batch in one forward, then ``log_softmax(logits.float() / τ).gather``), measured
in the same run. Each measurement is a fresh subprocess (so one's high-water mark cannot hide
another's; ``--jobs`` of them at once, as memory is per process), ours and the anchor alternate
over ``--rounds``, and the median is printed:

    trainer_memory B=64 peak_mb=... anchor_peak_mb=... ratio=...

Peak memory is the rise over the set-up (model and batch built): on CUDA
``torch.cuda.max_memory_allocated``, on CPU the rise of ``ru_maxrss``. The model is a random
Qwen2 (2 layers, hidden 64) with a ``--vocab`` vocabulary, so the B x T x V logits dominate.

    python benchmarks/trainer_memory.py [--vocab 16384] [--length 64] [--micro 8] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BATCH_SIZES = (8, 16, 32, 64)
PROMPT_LENGTH = 16


def _model(vocab: int, device: str) -> Any:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    torch.manual_seed(0)
    return Qwen2ForCausalLM(config).to(device).eval()  # type: ignore[arg-type]


def _batch(rows: int, length: int, vocab: int) -> Any:
    import torch

    from trainer.grpo import collate
    from trainer.rollout import Rollout

    generator = torch.Generator().manual_seed(rows)
    rollouts = []
    for i in range(rows):
        completion = int(torch.randint(length // 2, length + 1, (1,), generator=generator))
        ids = torch.randint(1, vocab, (PROMPT_LENGTH + completion,), generator=generator).tolist()
        rollouts.append(Rollout(i, ids[:PROMPT_LENGTH], ids[PROMPT_LENGTH:], "", False))
    return collate(rollouts, pad_id=0)


def _one_shot(model: Any, batch: Any, temperature: float, device: str) -> Any:
    """The anchor: the trainer's former pass, the whole batch at once with a full float32 log-softmax."""
    import torch

    t_max = batch.completion_ids.shape[1]
    logits = model(input_ids=batch.input_ids.to(device), attention_mask=batch.attention_mask.to(device),
                   position_ids=batch.position_ids.to(device), logits_to_keep=t_max + 1).logits
    logits = logits[:, :-1].float() / temperature
    log_probs = torch.log_softmax(logits, dim=-1)
    return log_probs.gather(-1, batch.completion_ids.to(device).unsqueeze(-1)).squeeze(-1)


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def measure(mode: str, rows: int, args: argparse.Namespace) -> float:
    """In this process (a fresh one): the peak memory (MiB) of the old + reference pass over ``rows``."""
    import torch

    from trainer.logprobs import completion_logprobs

    torch.set_num_threads(args.threads)
    policy, reference = _model(args.vocab, args.device), _model(args.vocab, args.device)
    batch = _batch(rows, args.length, args.vocab)
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated() / 2**20
    else:
        before = _rss_mb()
    with torch.no_grad():
        for model in (policy, reference):
            if mode == "ours":
                logp = completion_logprobs(model, batch, 1.0, device=args.device, micro_batch_size=args.micro)[0]
            else:
                logp = _one_shot(model, batch, 1.0, args.device)
            assert logp.shape == batch.completion_ids.shape
            del logp
    if cuda:
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 2**20 - before
    return max(0.0, _rss_mb() - before)


def _spawn(mode: str, rows: int, args: argparse.Namespace) -> float:
    command = [sys.executable, __file__, "--child", mode, "--rows", str(rows), "--vocab", str(args.vocab),
               "--length", str(args.length), "--micro", str(args.micro), "--device", args.device,
               "--threads", str(args.threads)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    done = subprocess.run(command, check=True, capture_output=True, text=True, env=env)
    return float(json.loads(done.stdout.strip().splitlines()[-1])["peak_mb"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", type=int, default=16384)
    parser.add_argument("--length", type=int, default=64, help="Longest completion (T).")
    parser.add_argument("--micro", type=int, default=8, help="logprob_micro_batch_size.")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=2, help="Measurements running at once.")
    parser.add_argument("--sizes", default=",".join(map(str, BATCH_SIZES)))
    parser.add_argument("--child", choices=["ours", "anchor"], help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps({"peak_mb": measure(args.child, args.rows, args)}))
        return
    sizes = [int(size) for size in args.sizes.split(",")]
    # Alternate which side goes first in each round, so drift on a shared machine favours neither.
    tasks = [(mode, rows) for round_ in range(args.rounds) for rows in sizes
             for mode in (("ours", "anchor") if round_ % 2 == 0 else ("anchor", "ours"))]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(lambda task: _spawn(task[0], task[1], args), tasks))
    peaks: dict[tuple[str, int], list[float]] = {}
    for task, peak in zip(tasks, results, strict=True):
        peaks.setdefault(task, []).append(peak)
    ours = []
    for rows in sizes:
        peak = statistics.median(peaks[("ours", rows)])
        anchor = statistics.median(peaks[("anchor", rows)])
        ours.append(peak)
        print(f"trainer_memory B={rows} peak_mb={peak:.1f} anchor_peak_mb={anchor:.1f} "
              f"ratio={peak / anchor if anchor > 0 else float('nan'):.3f}")
    print(f"trainer_memory flat_in_B: ours {min(ours):.1f}..{max(ours):.1f} MiB over B={sizes[0]}..{sizes[-1]} "
          f"(micro={args.micro}, T={args.length}, V={args.vocab}, device={args.device}, rounds={args.rounds})")


if __name__ == "__main__":
    main()
