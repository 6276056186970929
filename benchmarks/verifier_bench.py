"""Verifier throughput and robustness, each figure against an anchor measured in the same run.

Like for like: every side is warm before it is timed (math-verify imported and run once in this
process, the bare pool's workers started and warmed, the service's pool warmed), each round grades
a fresh batch (no side profits from another's caches), the order of the sides rotates from round
to round, and every figure is the median over ``--rounds`` with its spread (min-max).

(a) n math completions through `/v1/rewards` vs the in-process serial loop of math-verify
    parse+verify per item (what veRL's naive manager and TRL do); also vs a bare process pool
    over the same cores (the ceiling).
(b) the same batch with 2% pathological items against its anchor, the same batch without them
    (measured alternately in the same run): batch time and p50/p99 of the normal items, as ratios.
(c) concurrent single-item requests: errors and throughput against the warm serial rate.

Run: `python benchmarks/verifier_bench.py [--n 4096] [--concurrent 2000] [--rounds 5]`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.math_corpus import math_batch, pathological_completions
from rewardhub.client import AsyncRewardClient, RewardHubError


def serial_math_verify(pairs: list[tuple[str, str]]) -> list[bool]:
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    out = []
    for completion, gold in pairs:
        try:
            gold_parsed = parse(f"\\boxed{{{gold}}}", extraction_config=[LatexExtractionConfig()])
            pred = parse(completion, extraction_config=[LatexExtractionConfig(), ExprExtractionConfig()])
            out.append(bool(verify(gold_parsed, pred)))
        except Exception:
            out.append(False)
    return out


def _chunk_verify(chunk: list[tuple[str, str]]) -> list[bool]:
    return serial_math_verify(chunk)


class BarePool:
    """A process pool over the same cores, started and warmed once, then reused by every round."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.pool = ProcessPoolExecutor(workers)
        warm = math_batch(workers * 4, seed=999)
        list(self.pool.map(_chunk_verify, [[(c, g)] for c, g, _ in warm]))  # every worker imports math-verify

    def verify(self, pairs: list[tuple[str, str]]) -> list[bool]:
        size = max(1, len(pairs) // (self.workers * 8))
        chunks = [pairs[i:i + size] for i in range(0, len(pairs), size)]
        return [v for part in self.pool.map(_chunk_verify, chunks) for v in part]

    def close(self) -> None:
        self.pool.shutdown()


def median_spread(values: list[float], unit: str = " s", digits: int = 2) -> str:
    """``median unit [min-max]`` of one side's rounds (``unit`` "x" for a ratio, "" for a share)."""
    return f"{statistics.median(values):.{digits}f}{unit} [{min(values):.{digits}f}-{max(values):.{digits}f}]"


def rotated(sides: list[str], round_index: int) -> list[str]:
    """The sides in this round's order: each round starts one later, so no side always goes first."""
    k = round_index % len(sides)
    return sides[k:] + sides[:k]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """`rewardhub up` in its own process, as a user runs it."""

    def __init__(self) -> None:
        self.tmp = tempfile.TemporaryDirectory()
        self.port = _free_port()
        env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
        env.update(REWARDHUB_DATA_DIR=self.tmp.name, REWARDHUB_LOG_LEVEL="WARNING",
                   REWARDHUB_VERIFIER_ITEM_TIMEOUT_S="3")
        cli = Path(sys.executable).with_name("rewardhub")
        self.process = subprocess.Popen([str(cli), "up", "--port", str(self.port), "--log-level", "warning"],
                                        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        start_new_session=True)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        self.key = (Path(self.tmp.name) / "admin-key.txt").read_text().strip()
        self.headers = {"Authorization": f"Bearer {self.key}"}
        self.project_id = httpx.get(self.url + "/v1/projects", headers=self.headers).json()["data"][0]["id"]

    def rewards(self, items: list[dict[str, Any]], deadline_s: float | None = None, timeout: float = 600,
                spec: dict[str, Any] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"project_id": self.project_id, "spec": spec or {"type": "math"}, "items": items}
        if deadline_s:
            body["deadline_s"] = deadline_s
        response = httpx.post(self.url + "/v1/rewards", json=body, headers=self.headers, timeout=timeout)
        response.raise_for_status()
        answer: dict[str, Any] = response.json()
        return answer

    def close(self) -> None:
        os.killpg(self.process.pid, signal.SIGINT)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.tmp.cleanup()


def bench_throughput(server: Server, n: int, rounds: int, bare: BarePool) -> None:
    times: dict[str, list[float]] = {"serial": [], "bare": [], "service": []}
    agree: list[float] = []
    for r in range(rounds):
        batch = math_batch(n, seed=100 + r)  # a fresh batch each round, the same for every side
        pairs = [(c, g) for c, g, _ in batch]
        items = [{"id": str(i), "completion": c, "ground_truth": g} for i, (c, g, _) in enumerate(batch)]
        verdicts: dict[str, list[bool]] = {}
        for side in rotated(list(times), r):
            t0 = time.perf_counter()
            if side == "serial":
                verdicts[side] = serial_math_verify(pairs)
            elif side == "bare":
                verdicts[side] = bare.verify(pairs)
            else:
                verdicts[side] = [res["score"] == 1.0 for res in server.rewards(items)["results"]]
            times[side].append(time.perf_counter() - t0)
        agree.append(sum(a == b for a, b in zip(verdicts["service"], verdicts["serial"], strict=True)) / n)
    speedup = [s / v for s, v in zip(times["serial"], times["service"], strict=True)]
    ceiling = [b / v for b, v in zip(times["bare"], times["service"], strict=True)]
    print(f"(a) {n} math items on {os.cpu_count()} cores, {rounds} rounds (median [min-max]), all sides warm")
    print(f"    serial math-verify loop : {median_spread(times['serial'])}  [anchor]")
    print(f"    bare process pool       : {median_spread(times['bare'])}")
    print(f"    rewardhub /v1/rewards   : {median_spread(times['service'])}")
    print(f"    speed-up vs serial      : {median_spread(speedup, 'x')}   (goal >= 1.8x)")
    print(f"    share of bare-pool speed: {median_spread(ceiling, 'x')}   (1.0 = the ceiling)")
    print(f"    verdict agreement with serial math-verify: {median_spread(agree, unit='', digits=4)}")


def _normal_quantiles(result: dict[str, Any]) -> tuple[float, float]:
    normal = [r["elapsed_ms"] for r in result["results"] if r["id"].startswith("ok")]
    quantiles = statistics.quantiles(normal, n=100)
    return quantiles[49], quantiles[98]


def bench_pathological(server: Server, n: int, deadline_s: float, rounds: int) -> None:
    import random

    n_bad = max(1, n // 50)
    print(f"(b) {n} items with {n_bad} pathological ({100 * n_bad / n:.0f}%), deadline {deadline_s:.0f} s; "
          f"anchor: the same {n - n_bad} normal items alone, measured alternately ({rounds} rounds)")
    # The spec's own time budget (math-verify's parse/verify timeouts) decides what a straggler costs.
    for spec in ({"type": "math"}, {"type": "math", "timeout_s": 1}):
        batch_s: dict[str, list[float]] = {"clean": [], "mixed": []}
        p50: dict[str, list[float]] = {"clean": [], "mixed": []}
        p99: dict[str, list[float]] = {"clean": [], "mixed": []}
        bad_statuses: dict[str, int] = {}
        for r in range(rounds):
            batch = math_batch(n - n_bad, seed=200 + r)
            clean = [{"id": f"ok{i}", "completion": c, "ground_truth": g} for i, (c, g, _) in enumerate(batch)]
            mixed = clean + [{"id": f"bad{i}", "completion": c, "ground_truth": "1"}
                             for i, c in enumerate(pathological_completions(n_bad, seed=300 + r))]
            random.Random(4 + r).shuffle(mixed)
            for side in rotated(["clean", "mixed"], r):
                t0 = time.perf_counter()
                result = server.rewards(clean if side == "clean" else mixed, deadline_s=deadline_s, spec=spec)
                batch_s[side].append(time.perf_counter() - t0)
                q50, q99 = _normal_quantiles(result)
                p50[side].append(q50)
                p99[side].append(q99)
                if side == "mixed":
                    for res in result["results"]:
                        if res["id"].startswith("bad"):
                            bad_statuses[res["status"]] = bad_statuses.get(res["status"], 0) + 1
        ratio = [m / c for m, c in zip(batch_s["mixed"], batch_s["clean"], strict=True)]
        print(f"    spec {spec}:")
        print(f"      batch time: clean {median_spread(batch_s['clean'])} [anchor], "
              f"with pathological {median_spread(batch_s['mixed'])} = {median_spread(ratio, 'x')} the anchor")
        print(f"      normal items p50: clean {median_spread(p50['clean'], ' ms', 1)}, "
              f"with pathological {median_spread(p50['mixed'], ' ms', 1)}")
        print(f"      normal items p99: clean {median_spread(p99['clean'], ' ms', 1)}, "
              f"with pathological {median_spread(p99['mixed'], ' ms', 1)}")
        print(f"      pathological statuses over all rounds: {bad_statuses}; "
              f"mixed batch vs its deadline: {statistics.median(batch_s['mixed']) / deadline_s:.2f}x")


async def _concurrent(server: Server, n: int, concurrency: int, seed: int) -> tuple[int, float, dict[str, int]]:
    """Single-item requests through the rewardhub client, as a trainer sends them (it retries transport errors)."""
    errors: dict[str, int] = {}
    batch = math_batch(n, seed=seed)
    sem = asyncio.Semaphore(concurrency)
    async with AsyncRewardClient(server.url, server.key, timeout_s=120) as client:
        async def one(i: int) -> None:
            completion, gold, _ = batch[i]
            async with sem:
                try:
                    result = await client.score([{"id": str(i), "completion": completion, "ground_truth": gold}],
                                                {"type": "math"}, project_id=server.project_id)
                    if result.results[0].status != "ok":
                        errors[result.results[0].status] = errors.get(result.results[0].status, 0) + 1
                except (httpx.HTTPError, RewardHubError) as exc:
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1

        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        elapsed = time.perf_counter() - t0
    return sum(errors.values()), elapsed, errors


def bench_concurrent(server: Server, n: int, rounds: int) -> None:
    rates: list[float] = []
    ratios: list[float] = []
    all_errors: dict[str, int] = {}
    for r in range(rounds):
        pairs = [(c, g) for c, g, _ in math_batch(200, seed=400 + r)]
        t0 = time.perf_counter()
        serial_math_verify(pairs)  # the anchor, warm (math-verify was imported and run in (a))
        serial_rate = len(pairs) / (time.perf_counter() - t0)
        _, elapsed, errors = asyncio.run(_concurrent(server, n, concurrency=256, seed=500 + r))
        for name, count in errors.items():
            all_errors[name] = all_errors.get(name, 0) + count
        rates.append(n / elapsed)
        ratios.append(n / elapsed / serial_rate)
    print(f"(c) {n} concurrent single-item requests (256 in flight), {rounds} rounds")
    print(f"    errors over all rounds: {sum(all_errors.values())} {all_errors or ''} (goal 0)")
    print(f"    throughput {median_spread(rates, ' req/s', 0)}; {median_spread(ratios, 'x')} the warm serial "
          "in-process math-verify rate, measured before each round [anchor]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--concurrent", type=int, default=2000)
    parser.add_argument("--deadline", type=float, default=60.0)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds: must be at least 1")
    server = Server()
    bare = BarePool(os.cpu_count() or 1)
    try:
        warm = math_batch(64, seed=998)
        server.rewards([{"id": str(i), "completion": c, "ground_truth": g} for i, (c, g, _) in enumerate(warm)])
        serial_math_verify([(c, g) for c, g, _ in warm])  # this process imports and runs math-verify once too
        bench_throughput(server, args.n, args.rounds, bare)
        bench_pathological(server, args.n, args.deadline, args.rounds)
        bench_concurrent(server, args.concurrent, args.rounds)
    finally:
        bare.close()
        server.close()


if __name__ == "__main__":
    main()
