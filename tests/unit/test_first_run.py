"""A newcomer's first run: the root URL, offline API docs for every service, and configuration mistakes
reported in one line before anything is created."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from rewardhub.cli import app as cli_app
from rewardhub.embedded import build_embedded_app, mount_path
from rewardhub.service_map import SERVICES
from services.common.settings import reset_settings_cache
from tests.conftest import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text()
# Asset and link attributes of a docs page: every one must be served by us (no CDN, no web fonts).
ASSET_URL = re.compile(r"""(?:src|href|spec-url)="([^"]+)"|url: '([^']+)'""")


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    patch = pytest.MonkeyPatch()
    patch.setenv("REWARDHUB_DATA_DIR", str(tmp_path_factory.mktemp("first-run") / "data"))
    for name in ("DATABASE_URL", "REDIS_URL"):
        patch.delenv(name, raising=False)
    reset_settings_cache()
    with TestClient(build_embedded_app()) as test_client:
        yield test_client
    patch.undo()
    reset_settings_cache()


def test_the_root_url_opens_the_web_ui(client: TestClient) -> None:
    response = client.get("/", follow_redirects=False)
    assert response.status_code == 307
    ui = response.headers["location"]
    assert ui == client.app.state.ui_path == "/services/annotation/ui/"  # type: ignore[attr-defined]
    page = client.get("/", follow_redirects=True)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "/services/annotation/ui/" in README


@pytest.mark.parametrize("service", list(SERVICES))
@pytest.mark.parametrize("page", ["docs", "redoc"])
def test_every_services_docs_work_offline(client: TestClient, service: str, page: str) -> None:
    prefix = mount_path(service)
    response = client.get(f"{prefix}/{page}")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    urls = [a or b for a, b in ASSET_URL.findall(response.text)]
    assert urls, response.text
    for url in urls:
        assert url.startswith(f"{prefix}/"), f"{url} is not served by {service} itself"
        fetched = client.get(url)
        assert fetched.status_code == 200, url
    assert f"{prefix}/openapi.json" in urls
    scripts = [u for u in urls if u.endswith(".js")]
    assert scripts and all(client.get(u).headers["content-type"].startswith("text/javascript") for u in scripts)


def test_the_gateway_docs_link_every_services_docs(client: TestClient) -> None:
    description = client.get("/openapi.json").json()["info"]["description"]
    links = re.findall(r"\]\((/[^)]*)\)", description)
    for service in SERVICES:
        assert f"{mount_path(service)}/docs" in links, service
    for link in links:
        assert client.get(link).status_code == 200, link


# --- configuration mistakes: one line, nothing created ----------------------------------------------------

def one_line_error(output: str, command: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert lines[0].startswith(f"rewardhub {command}: ") and "Traceback" not in output
    return lines[0]


def test_up_names_a_bad_setting_in_one_line_and_creates_nothing(isolated_env: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REWARDHUB_MAX_REQUEST_BYTES", "lots")
    result = CliRunner().invoke(cli_app, ["up", "--port", "1"])
    assert result.exit_code == 2
    line = one_line_error(result.output, "up")
    assert "REWARDHUB_MAX_REQUEST_BYTES" in line and "lots" not in line  # values may be secrets: never echoed
    assert not (isolated_env / "data").exists()


@pytest.mark.parametrize(("url", "problem"), [
    ("postgresql+psycopg://rewardhub:pw@127.0.0.1:1/rewardhub", "cannot connect"),
    ("mysql://rewardhub:pw@127.0.0.1/rewardhub", "SQLite or PostgreSQL"),
    ("not a url", "not a usable database URL"),
])
def test_up_names_an_unusable_database_in_one_line_and_creates_nothing(
        isolated_env: Path, monkeypatch: pytest.MonkeyPatch, url: str, problem: str) -> None:
    monkeypatch.setenv("DATABASE_URL", url)
    result = CliRunner().invoke(cli_app, ["up", "--port", "1"])
    assert result.exit_code == 2
    line = one_line_error(result.output, "up")
    assert problem in line and ":pw@" not in line  # the password is masked
    assert not (isolated_env / "data").exists()


def write_run_config(tmp_path: Path, **overrides: object) -> Path:
    config = {"model": {"tiny": {"seed": 0}}, "dataset": "prompts.jsonl", "output_dir": "run",
              "reward": {"spec": {"type": "math"}, "url": "http://127.0.0.1:1"}, **overrides}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize(("dataset_lines", "overrides", "named"), [
    (None, {}, "dataset: dataset file"),
    (['{"prompt": "Say 7"}'], {}, "reward_model.ground_truth"),
    (['{"prompt": "Say 7", "reward_model": {"ground_truth": "7"}}'], {"model": {"path": "no-such-model"}},
     "model.path"),
    (['{"prompt": "Say 7", "reward_model": {"ground_truth": "7"}}'], {"group_size": 1}, "group_size"),
    (['{"prompt": "Say 7", "reward_model": {"ground_truth": "7"}}'], {"eval": {"data": "held-out.jsonl"}},
     "eval.data: dataset file"),
])
def test_train_names_a_config_error_in_one_line_before_creating_output_dir(
        tmp_path: Path, dataset_lines: list[str] | None, overrides: dict[str, object], named: str) -> None:
    if dataset_lines is not None:
        (tmp_path / "prompts.jsonl").write_text("\n".join(dataset_lines) + "\n")
    result = CliRunner().invoke(cli_app, ["train", str(write_run_config(tmp_path, **overrides))])
    assert result.exit_code == 2
    assert named in one_line_error(result.output, "train")
    assert not (tmp_path / "run").exists()


# --- measured timings, said the same everywhere -----------------------------------------------------------

def test_the_demo_takes_as_long_in_the_readme_as_in_its_help() -> None:
    help_text = CliRunner().invoke(cli_app, ["demo", "--help"], env={"COLUMNS": "300"}).output
    figure = re.search(r"about (\d+ (?:s|min)) on 2 cores", " ".join(help_text.split()))
    assert figure, help_text
    assert f"about {figure.group(1)} on 2 cores" in README  # the command-line table
    assert re.search(rf"On 2 CPU cores it takes about {figure.group(1)}\b", " ".join(README.split()))
    assert "~20 s" not in README
