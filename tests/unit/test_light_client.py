"""`pip install rewardhub` is the light client: the client and the adapters import no server or torch code.

The import-linter contracts (.importlinter, run by `make lint`) check the static graph; these tests check
what actually happens at run time, in a fresh interpreter where every server and training dependency is
made unimportable, and that the package's base requirements are exactly the light ones.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ["services", "trainer", "torch", "transformers", "celery", "sqlalchemy", "fastapi", "pydantic",
         "typer", "uvicorn", "numpy", "redis", "alembic"]

BLOCKER = textwrap.dedent(f"""
    import importlib.abc, sys
    HEAVY = {HEAVY!r}
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in HEAVY:
                raise ModuleNotFoundError(f"No module named {{name!r}} (blocked: not in the light install)",
                                          name=name)
            return None
    sys.meta_path.insert(0, Block())
""")


def _run_blocked(code: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", BLOCKER + textwrap.dedent(code)], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=60)


def test_client_and_adapters_work_without_any_server_or_training_dependency() -> None:
    result = _run_blocked("""
        import httpx
        from rewardhub.client import RewardClient, make_items
        from rewardhub.adapters.trl import TRLRewardFunction
        from rewardhub.adapters.verl import compute_score

        # A scripted double of the reward API (control flow only): every item scores its length.
        def answer(request: httpx.Request) -> httpx.Response:
            import json
            items = json.loads(request.content)["items"]
            return httpx.Response(200, json={"request_id": "r1", "spec_ref": "math@1", "summary": {}, "results": [
                {"id": item["id"], "status": "ok", "score": float(len(item["completion"]))} for item in items]})

        client = RewardClient("http://rewards.test", api_key="k", transport=httpx.MockTransport(answer))
        batch = client.score(make_items(["c1", "c22"], ground_truths=["1", "2"]), spec="math")
        assert TRLRewardFunction and compute_score  # the adapters import, too
        print(batch.scores)
        print(sorted(m for m in sys.modules if m.split(".")[0] in HEAVY))
    """)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines == ["[2.0, 3.0]", "[]"], result.stdout


def test_the_command_line_without_the_server_extra_says_what_to_install() -> None:
    result = _run_blocked("""
        from rewardhub.entry import main
        main()
    """)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("rewardhub: the command line needs the server and training extras (")
    assert "pip install 'rewardhub[server,train]'" in result.stderr
    assert "Traceback" not in result.stderr


def test_base_requirements_are_only_the_light_client_ones() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = {Requirement(r).name for r in project["dependencies"]}
    assert base == {"httpx", "tenacity"}
    extras = project["optional-dependencies"]
    assert {"torch", "transformers"} <= {Requirement(r).name for r in extras["train"]}
    assert {"fastapi", "sqlalchemy", "celery"} <= {Requirement(r).name for r in extras["server"]}
    assert project["scripts"]["rewardhub"] == "rewardhub.entry:main"
