"""RecRM on a synthetic but realistic restaurant world: per-dimension accuracy, the behaviour model
against a popularity baseline, and throughput of the `rec` grader through `/v1/rewards`.

The world (seeded): a catalog of ``--items`` restaurants (cuisine, price, rating, distance_km, hours,
neighbourhood, tags; prices follow each cuisine's price level), ``--users`` users with latent
preferences (two favourite cuisines, a preferred price, a distance tolerance), and interaction logs
sampled from them (impressions drawn by popularity, a click with probability
sigmoid(2.2·likes_cuisine − 1.5·|price − preferred| / preferred − 0.15·distance + 0.8·quality − 1.2)).
Agent replies are generated with planted errors of each kind, labelled by construction:

* instruction: a valid JSON reply with the requested number of items (1) vs free text, the wrong
  number of items, or entries with no ``item_id`` (0);
* factual: claims copied from the catalog (1) vs a price off by 30–60 %, a wrong cuisine or rating,
  or an item that does not exist (0);
* relevance: items of the cuisine asked for (1) vs items of an unrelated cuisine (0);
* behaviour: held-out logged (user, item) events, label = the user clicked (the reply recommends
  that item).

Everything goes through the service, as a trainer would use it: the catalog and logs are uploaded,
the behaviour model trained by its job (AUC and log-loss on the held-out time split, next to the
popularity baseline's AUC on the same split), and every reply scored by `/v1/rewards` with a `rec`
spec on a real uvicorn server (the embedded default, SQLite). Throughput: ``--rounds`` rounds of a
``--batch``-item request, median and spread of items/s, p50/p99 of request latency (and of
single-item requests, alternated with the batches).

Run: `python benchmarks/rec_rm.py [--items 3000] [--users 300] [--events 20000] [--per-dimension 200]`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CUISINES = {"japanese": 30, "mexican": 14, "italian": 24, "indian": 18, "thai": 16, "french": 45,
            "chinese": 15, "korean": 22, "greek": 20, "vietnamese": 13, "american": 17, "ethiopian": 16}
NEIGHBOURHOODS = ["old town", "harbour", "university", "station", "riverside", "market", "hillside", "docks"]
TAGS = ["quiet", "family friendly", "late night", "outdoor seating", "vegan options", "date night", "quick bite"]
HOURS = ["11:00-22:00", "12:00-23:00", "17:00-23:30", "08:00-16:00", "11:30-21:30"]
WORDS = ["Golden", "Little", "Blue", "Red", "Lucky", "Green", "Silver", "Happy", "Royal", "Urban", "Corner", "Garden"]
NOUNS = ["Lantern", "Table", "Spoon", "Kitchen", "House", "Garden", "Fork", "Bowl", "Oven", "Grill", "Terrace"]


def make_world(n_items: int, n_users: int, n_events: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    items: list[dict[str, Any]] = []
    for k in range(n_items):
        cuisine = rng.choice(list(CUISINES))
        base = CUISINES[cuisine]
        items.append({"item_id": f"i{k:05d}",
                      "title": f"{rng.choice(WORDS)} {rng.choice(NOUNS)} {cuisine.title()} {k}",
                      "attributes": {"cuisine": cuisine, "price": round(base * rng.uniform(0.6, 1.6), 2),
                                     "rating": round(rng.uniform(3.0, 5.0), 1),
                                     "distance_km": round(rng.uniform(0.2, 12.0), 1), "hours": rng.choice(HOURS),
                                     "neighbourhood": rng.choice(NEIGHBOURHOODS),
                                     "tags": rng.sample(TAGS, 2)}})
    quality = {it["item_id"]: rng.gauss(0, 1) for it in items}
    weights = [math.exp(0.6 * quality[it["item_id"]]) for it in items]  # popular items are shown more
    users: dict[str, dict[str, Any]] = {}
    for u in range(n_users):
        likes = rng.sample(list(CUISINES), 2)
        users[f"u{u:04d}"] = {"likes": likes, "price": CUISINES[likes[0]] * rng.uniform(0.7, 1.3),
                              "distance": rng.uniform(0.5, 1.5)}
    events = []
    t0 = 1_760_000_000
    user_ids = list(users)
    for e in range(n_events):
        user_id = rng.choice(user_ids)
        user = users[user_id]
        item = rng.choices(items, weights=weights)[0]
        a = item["attributes"]
        z = (2.2 * (a["cuisine"] in user["likes"]) - 1.5 * abs(a["price"] - user["price"]) / user["price"]
             - 0.15 * a["distance_km"] * user["distance"] + 0.8 * quality[item["item_id"]] - 1.2)
        clicked = rng.random() < 1 / (1 + math.exp(-z))
        events.append({"user_id": user_id, "item_id": item["item_id"], "event": "click" if clicked else "impression",
                       "timestamp": t0 + 30 * e})
    return {"items": items, "users": users, "events": events}


def _entry(item: dict[str, Any], claims: tuple[str, ...] = ("price", "cuisine", "rating")) -> dict[str, Any]:
    return {"item_id": item["item_id"], **{k: item["attributes"][k] for k in claims}}


def labelled(world: dict[str, Any], per_dimension: int, seed: int) -> dict[str, list[tuple[dict[str, Any], int]]]:
    """(reward item, label) per dimension, half good and half with a planted error."""
    rng = random.Random(seed + 1)
    items = world["items"]
    by_cuisine: dict[str, list[dict[str, Any]]] = {}
    for item in items:
        by_cuisine.setdefault(item["attributes"]["cuisine"], []).append(item)
    user_ids = list(world["users"])
    out: dict[str, list[tuple[dict[str, Any], int]]] = {"instruction": [], "factual": [], "relevance": []}
    for k in range(per_dimension):
        good = k % 2 == 0
        user = rng.choice(user_ids)
        cuisine = rng.choice(world["users"][user]["likes"])
        query = f"a {cuisine} place for dinner tonight, not too far"
        picks = rng.sample(by_cuisine[cuisine], 3)
        # instruction
        reply: Any = {"recommendations": [_entry(p) for p in picks]}
        if not good:
            error = k % 6
            if error == 1:
                reply = "You could try " + ", ".join(p["title"] for p in picks) + "."
            elif error == 3:
                reply = {"recommendations": [_entry(p) for p in picks[:2]]}
            else:
                reply = {"recommendations": [{"title": p["title"], "why": "tasty"} for p in picks]}
        text = reply if isinstance(reply, str) else json.dumps(reply)
        out["instruction"].append(({"id": f"ins{k}", "prompt": query, "completion": text,
                                    "ground_truth": {"user_id": user, "n_items": 3}}, int(good)))
        # factual
        entries = [_entry(p) for p in picks]
        if not good:
            error = (k // 2) % 4
            victim = entries[rng.randrange(3)]
            if error == 0:
                victim["price"] = round(victim["price"] * rng.choice([0.5, 0.6, 1.4, 1.6]), 2)
            elif error == 1:
                victim["cuisine"] = rng.choice([c for c in CUISINES if c != victim["cuisine"]])
            elif error == 2:
                victim["rating"] = round(min(5.0, victim["rating"] + 0.9) if victim["rating"] < 4 else victim["rating"] - 0.9, 1)
            else:
                entries[0] = {"title": f"{rng.choice(WORDS)} Imaginary {cuisine.title()} Bistro", "price": 20}
        out["factual"].append(({"id": f"fac{k}", "prompt": query, "completion": json.dumps({"recommendations": entries}),
                                "ground_truth": {"user_id": user}}, int(good)))
        # relevance
        if good:
            chosen = picks
        else:
            other = rng.choice([c for c in CUISINES if c not in world["users"][user]["likes"] and c != cuisine])
            chosen = rng.sample(by_cuisine[other], 3)
        out["relevance"].append(({"id": f"rel{k}", "prompt": query,
                                  "completion": json.dumps({"recommendations": [_entry(p) for p in chosen]}),
                                  "ground_truth": {"user_id": user}}, int(good)))
    return out


def behaviour_records(world: dict[str, Any], split_at: float, n: int, seed: int) -> list[tuple[dict[str, Any], int]]:
    rng = random.Random(seed + 2)
    held_out = [e for e in world["events"] if e["timestamp"] >= split_at]
    rng.shuffle(held_out)
    by_id = {it["item_id"]: it for it in world["items"]}
    out = []
    for k, event in enumerate(held_out[:n]):
        reply = json.dumps({"recommendations": [_entry(by_id[event["item_id"]])]})
        out.append(({"id": f"beh{k}", "prompt": "somewhere to eat", "completion": reply,
                     "ground_truth": {"user_id": event["user_id"]}}, int(event["event"] == "click")))
    return out


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(data_dir: Path) -> tuple[str, str, str, Any]:
    os.environ["REWARDHUB_DATA_DIR"] = str(data_dir)
    import uvicorn

    from rewardhub.embedded import build_embedded_app
    from services.common.auth import create_api_key
    from services.common.db import session_scope
    from services.common.migrate import upgrade
    from services.common.models import Project, Role

    upgrade()
    with session_scope() as session:
        project = Project(name="rec-bench")
        session.add(project)
        session.flush()
        key = create_api_key(session, role=Role.trainer, projects=[project])[1]
        project_id = project.id
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(build_embedded_app(), host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="off"))
    threading.Thread(target=server.run, daemon=True).start()
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    return url, key, project_id, server


def rewards(client: httpx.Client, items: list[dict[str, Any]], spec: dict[str, Any]) -> tuple[list[dict[str, Any]], float]:
    started = time.perf_counter()
    response = client.post("/v1/rewards", json={"spec": spec, "items": items})
    elapsed = time.perf_counter() - started
    response.raise_for_status()
    return response.json()["results"], elapsed


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=3000)
    parser.add_argument("--users", type=int, default=300)
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--per-dimension", type=int, default=200)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--embedder", default="minilm", help="minilm | hashing")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.environ["REWARDHUB_REC_RM_EMBEDDING_MODEL"] = args.embedder
    world = make_world(args.items, args.users, args.events, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        url, key, project_id, server = start_server(Path(tmp) / "data")
        client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=600)
        base = f"/services/rec_rm/v1/projects/{project_id}"
        catalog = "".join(json.dumps(i) + "\n" for i in world["items"])
        logs = "".join(json.dumps(e) + "\n" for e in world["events"])
        client.post(base + "/catalogs", files={"file": ("items.jsonl", catalog)}).raise_for_status()
        client.post(base + "/interactions", files={"file": ("logs.jsonl", logs)}).raise_for_status()
        started = time.perf_counter()
        job = client.post(base + "/behaviour-models", json={}).json()
        while True:
            model = client.get(base + f"/behaviour-models/{job['id']}").json()
            if model["state"] in ("succeeded", "failed"):
                break
            time.sleep(0.2)
        if model["state"] != "succeeded":
            raise SystemExit(f"training failed: {model['error']}")
        metrics = model["metrics"]
        print(f"world items={args.items} users={args.users} events={args.events} train_s={time.perf_counter() - started:.1f} "
              f"n_train={metrics['n_train']} n_test={metrics['n_test']} positive_rate_test={metrics['positive_rate_test']:.3f}")

        sets = labelled(world, args.per_dimension, args.seed)
        sets["behaviour"] = behaviour_records(world, metrics["split_at"], args.per_dimension, args.seed)
        for dimension, records in sets.items():
            spec = {"type": "rec", "dimensions": [dimension]}
            results, _ = rewards(client, [r for r, _ in records], spec)
            correct = undecided = 0
            for result, (_, label) in zip(results, records, strict=True):
                score = result["sub_scores"].get(dimension)
                if result["details"].get("dimensions", {}).get(dimension, {}).get("status") != "ok" or score is None:
                    undecided += 1
                    continue
                correct += int((score >= 0.5) == bool(label))
            print(f"dimension={dimension} acc={correct / len(records):.3f} n={len(records)} undecided={undecided}")
        print(f"behaviour_auc={metrics['auc']:.3f} popularity_auc={metrics['popularity_auc']:.3f} "
              f"log_loss={metrics['log_loss']:.3f} (same held-out time split)")

        pool = [r for records in sets.values() for r, _ in records]
        spec = {"type": "rec"}
        rewards(client, pool[:args.batch], spec)  # warm: model loaded, pools started
        rng = random.Random(args.seed + 3)
        rates, batch_ms, single_ms = [], [], []
        for _ in range(args.rounds):
            batch = [{**r, "id": f"{r['id']}-{rng.random()}"} for r in rng.sample(pool, args.batch)]
            results, elapsed = rewards(client, batch, spec)
            rates.append(len(batch) / elapsed)
            batch_ms.append(elapsed * 1000)
            for item in rng.sample(pool, 4):  # alternated with the batches
                _, one = rewards(client, [item], spec)
                single_ms.append(one * 1000)
        print(f"rec_items_per_s={statistics.median(rates):.1f} (min {min(rates):.1f}, max {max(rates):.1f}; "
              f"batch={args.batch}, rounds={args.rounds}, embedder={args.embedder})")
        print(f"rec_batch_latency_ms p50={pct(batch_ms, 0.5):.0f} p99={pct(batch_ms, 0.99):.0f}; "
              f"rec_single_item_latency_ms p50={pct(single_ms, 0.5):.0f} p99={pct(single_ms, 0.99):.0f}")
        server.should_exit = True


if __name__ == "__main__":
    main()
