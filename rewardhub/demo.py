"""`rewardhub demo`: a tiny model learns a verifiable task through the real reward API.

The task: reply with a number that contains the digit 7. The reward is a `multi` spec of three
regex graders (a digit, the ground truth's digit, nothing but digits), each worth a third, so a
random model starts near 0 and a model that has learned the task scores 1. Everything runs on
the embedded default: the rewardhub server in a background thread, SQLite, no Docker.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.config import RunConfig, parse_config
from trainer.distributed import free_port

DEMO_SPEC: dict[str, Any] = {
    "type": "multi",
    "graders": {
        "has_digit": {"type": "regex", "pattern": r"\d"},
        "has_target_digit": {"type": "regex"},  # no pattern: the ground truth is the pattern
        "digits_only": {"type": "regex", "pattern": r"\s*\d+\s*", "full_match": True},
    },
}


def write_demo_dataset(path: Path, rows: int = 32) -> Path:
    """veRL-schema JSONL: chat prompts whose ground truth is the digit the answer must contain."""
    lines = [json.dumps({"data_source": "rewardhub-demo", "reward_model": {"ground_truth": "7"},
                         "prompt": [{"role": "user", "content": f"Reply with a number that has a 7 in it. ({i})"}]})
             for i in range(rows)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def demo_config(work_dir: Path, *, url: str, project_id: str, steps: int = 60, seed: int = 0) -> RunConfig:
    return parse_config({
        "model": {"tiny": {"seed": seed}},
        "dataset": str(write_demo_dataset(work_dir / "demo.jsonl")),
        "reward": {"spec": DEMO_SPEC, "url": url, "project_id": project_id, "api_key_env": "REWARDHUB_DEMO_KEY"},
        "group_size": 8, "prompts_per_step": 4, "max_steps": steps, "learning_rate": 3e-3,
        "max_completion_length": 8, "loss_type": "dapo", "seed": seed, "output_dir": str(work_dir / "run"),
    }, local=True)  # the demo's own key, in this process's environment


@dataclass
class LocalServer:
    url: str
    trainer_key: str
    project_id: str


@contextmanager
def embedded_server() -> Iterator[LocalServer]:
    """`rewardhub up` in a background thread on a free loopback port, with a trainer key for the demo."""
    import uvicorn

    from rewardhub.embedded import bootstrap, build_embedded_app
    from services.common.auth import create_api_key
    from services.common.db import session_scope
    from services.common.models import Project, Role
    from services.common.settings import get_settings

    boot = bootstrap(get_settings())
    with session_scope() as session:
        project = session.get_one(Project, boot.project_id)
        _, trainer_key = create_api_key(session, role=Role.trainer, projects=[project], name="demo trainer")
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(build_embedded_app(), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="rewardhub-demo-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the embedded rewardhub server did not start")
        time.sleep(0.05)
    try:
        yield LocalServer(url=f"http://127.0.0.1:{port}", trainer_key=trainer_key, project_id=boot.project_id)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
