"""Verifier throughput and robustness, each figure against an anchor measured in the same run.

(a) 4,096 math completions through `/v1/rewards` vs the in-process serial loop of math-verify
    parse+verify per item (what veRL's naive manager and TRL do); also vs a bare process pool
    over the same cores (the ceiling).
(b) the same batch with 2% pathological items: p50/p99 of the normal items and the batch time
    against its deadline.
(c) 2,000 concurrent single-item requests: errors and throughput.

Run: `python benchmarks/verifier_bench.py [--n 4096] [--concurrent 2000]`.
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


def bare_pool(pairs: list[tuple[str, str]], workers: int) -> list[bool]:
    size = max(1, len(pairs) // (workers * 8))
    chunks = [pairs[i:i + size] for i in range(0, len(pairs), size)]
    with ProcessPoolExecutor(workers) as pool:
        return [v for part in pool.map(_chunk_verify, chunks) for v in part]


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

    def rewards(self, items: list[dict], deadline_s: float | None = None, timeout: float = 600,
                spec: dict | None = None) -> dict:
        body = {"project_id": self.project_id, "spec": spec or {"type": "math"}, "items": items}
        if deadline_s:
            body["deadline_s"] = deadline_s
        response = httpx.post(self.url + "/v1/rewards", json=body, headers=self.headers, timeout=timeout)
        response.raise_for_status()
        return response.json()

    def close(self) -> None:
        os.killpg(self.process.pid, signal.SIGINT)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.tmp.cleanup()


def bench_throughput(server: Server, n: int) -> None:
    batch = math_batch(n, seed=1)
    pairs = [(c, g) for c, g, _ in batch]
    items = [{"id": str(i), "completion": c, "ground_truth": g} for i, (c, g, _) in enumerate(batch)]
    server.rewards(items[:64])  # warm the worker pool

    t0 = time.perf_counter()
    serial = serial_math_verify(pairs)
    serial_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    bare = bare_pool(pairs, os.cpu_count() or 1)
    bare_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    result = server.rewards(items)
    service_s = time.perf_counter() - t0

    ours = [r["score"] == 1.0 for r in result["results"]]
    agree = sum(a == b for a, b in zip(ours, serial, strict=True)) / n
    statuses = result["summary"]["by_status"]
    print(f"(a) {n} math items on {os.cpu_count()} cores")
    print(f"    serial math-verify loop : {serial_s:8.2f} s  ({n / serial_s:7.0f} items/s)  [anchor]")
    print(f"    bare process pool       : {bare_s:8.2f} s  ({n / bare_s:7.0f} items/s)")
    print(f"    rewardhub /v1/rewards   : {service_s:8.2f} s  ({n / service_s:7.0f} items/s)")
    print(f"    speed-up vs serial      : {serial_s / service_s:.2f}x   (goal >= 1.8x)")
    print(f"    share of bare-pool speed: {bare_s / service_s:.2f}x   (1.0 = the ceiling)")
    print(f"    verdict agreement with serial math-verify: {agree:.4f}; statuses {statuses}; "
          f"bare pool agrees with serial: {sum(a == b for a, b in zip(bare, serial, strict=True)) / n:.4f}")


def bench_pathological(server: Server, n: int, deadline_s: float) -> None:
    batch = math_batch(n, seed=2)
    n_bad = max(1, n // 50)
    bad = pathological_completions(n_bad, seed=3)
    items = [{"id": f"ok{i}", "completion": c, "ground_truth": g} for i, (c, g, _) in enumerate(batch[: n - n_bad])]
    items += [{"id": f"bad{i}", "completion": c, "ground_truth": "1"} for i, c in enumerate(bad)]
    import random

    random.Random(4).shuffle(items)
    print(f"(b) {n} items with {n_bad} pathological ({100 * n_bad / n:.0f}%), deadline {deadline_s:.0f} s")
    # The spec's own time budget (math-verify's parse/verify timeouts) decides what a straggler costs.
    for spec in ({"type": "math"}, {"type": "math", "timeout_s": 1}):
        t0 = time.perf_counter()
        result = server.rewards(items, deadline_s=deadline_s, spec=spec)
        batch_s = time.perf_counter() - t0
        normal = [r["elapsed_ms"] for r in result["results"] if r["id"].startswith("ok")]
        statuses: dict[str, dict[str, int]] = {"ok": {}, "bad": {}}
        for r in result["results"]:
            kind = statuses["ok" if r["id"].startswith("ok") else "bad"]
            kind[r["status"]] = kind.get(r["status"], 0) + 1
        quantiles = statistics.quantiles(normal, n=100)
        print(f"    spec {spec}:")
        print(f"      normal items: p50 {quantiles[49]:.1f} ms, p99 {quantiles[98]:.1f} ms (grading time per item); "
              f"statuses {statuses['ok']} (a timeout here was still queued at the deadline)")
        print(f"      pathological statuses: {statuses['bad']}")
        print(f"      batch time {batch_s:.2f} s = {batch_s / deadline_s:.2f}x of its deadline")


async def _concurrent(server: Server, n: int, concurrency: int) -> tuple[int, float, dict[str, int]]:
    """Single-item requests through the rewardhub client, as a trainer sends them (it retries transport errors)."""
    errors: dict[str, int] = {}
    batch = math_batch(n, seed=5)
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


def bench_concurrent(server: Server, n: int) -> None:
    pairs = [(c, g) for c, g, _ in math_batch(n, seed=5)]
    t0 = time.perf_counter()
    serial_math_verify(pairs[:200])
    serial_rate = 200 / (time.perf_counter() - t0)
    n_errors, elapsed, errors = asyncio.run(_concurrent(server, n, concurrency=256))
    print(f"(c) {n} concurrent single-item requests (256 in flight)")
    print(f"    errors: {n_errors} {errors or ''} (goal 0)")
    print(f"    throughput {n / elapsed:.0f} req/s; {n / elapsed / serial_rate:.2f}x the serial in-process "
          f"math-verify rate ({serial_rate:.0f} items/s) [anchor]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--concurrent", type=int, default=2000)
    parser.add_argument("--deadline", type=float, default=60.0)
    args = parser.parse_args()
    server = Server()
    try:
        bench_throughput(server, args.n)
        bench_pathological(server, args.n, args.deadline)
        bench_concurrent(server, args.concurrent)
    finally:
        server.close()


if __name__ == "__main__":
    main()
