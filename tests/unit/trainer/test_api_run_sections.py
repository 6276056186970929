"""eval:, rlavr: and multi_turn: in run configs that arrive over the trainer service's API.

The sections are accepted in API bodies, safely: eval.data is confined like dataset, rlavr.url like
reward.url (platform or allowlist), multi_turn names only registered environments and the sandbox
backend, with no sandbox URL or token variable of its own. Local configs keep their freedoms, and
the cross-field checks are one set that both kinds apply.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from services.common.errors import InvalidInput
from services.common.settings import Settings
from services.trainer import confine, targets
from services.trainer.schemas import RunCreate
from trainer.config import (
    REGISTERED_ENVIRONMENTS,
    ConfigError,
    LocalMultiTurnConfig,
    LocalToolsConfig,
    MultiTurnConfig,
    RunConfig,
    ToolsConfig,
    parse_config,
)

PROJECT = "a" * 32
OTHER = "b" * 32


def config(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"model": {"tiny": {}}, "dataset": "digits",
                            "reward": {"spec": {"type": "regex", "pattern": "7"}},
                            "group_size": 2, "prompts_per_step": 1}
    data.update(overrides)
    return data


def settings(tmp_path: Path, **values: Any) -> Settings:
    return Settings(data_dir=tmp_path / "data", **values)


# ----------------------------------------------------------------------------- accepted in API bodies

def test_the_three_sections_are_accepted_in_an_api_config() -> None:
    parsed = parse_config(config(eval={"data": "heldout", "every_n_steps": 1, "k": 2},
                                 rlavr={"annotation_project_id": "ap1"}))
    assert type(parsed) is RunConfig
    assert parsed.eval is not None and parsed.eval.data == "heldout" and parsed.eval.k == 2
    assert parsed.rlavr is not None and parsed.rlavr.url is None
    multi = parse_config(config(multi_turn={"execution": "immediate", "max_turns": 3,
                                            "tools": {"timeout_s": 2, "ttl_s": 60}}))
    assert type(multi.multi_turn) is MultiTurnConfig and type(multi.multi_turn.tools) is ToolsConfig
    assert multi.multi_turn.tools.backend == "sandbox" and multi.multi_turn.environment_target == "code"
    assert not hasattr(multi.multi_turn.tools, "api_key_env") and not hasattr(multi.multi_turn.tools, "url")


def test_a_registered_environment_and_a_ziprl_section_are_accepted() -> None:
    parsed = parse_config(config(multi_turn={"environment": "multihop", "stop_markers": ["\n"],
                                             "ziprl": {"memory": "graded", "budget_tokens": 64}}))
    assert parsed.multi_turn is not None
    assert parsed.multi_turn.environment_target == REGISTERED_ENVIRONMENTS["multihop"]
    assert parsed.multi_turn.ziprl_config is not None


# ----------------------------------------------------------------------------- refused, naming the field

@pytest.mark.parametrize(("section", "field"), [
    ({"environment": "os:system"}, "multi_turn.environment"),
    ({"environment": "tests.unit.trainer.test_agent:make_env"}, "multi_turn.environment"),
    ({"environment": "not_registered"}, "multi_turn.environment"),
    ({"tools": {"backend": "local"}}, "multi_turn.tools.backend"),
    ({"tools": {"backend": "subprocess"}}, "multi_turn.tools.backend"),
    ({"tools": {"url": "http://10.0.0.1:9000"}}, "multi_turn.tools.url"),
    ({"tools": {"api_key_env": "REWARDHUB_SECRET_KEY"}}, "multi_turn.tools.api_key_env"),
    ({"ziprl": {"surprise": 1}}, "multi_turn.ziprl"),
])
def test_api_multi_turn_refusals_name_the_field(section: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        parse_config(config(multi_turn=section))
    assert str(excinfo.value).startswith(field + ":"), str(excinfo.value)


def test_a_module_factory_refusal_says_why() -> None:
    with pytest.raises(ConfigError, match="cannot name module:factory"):
        parse_config(config(multi_turn={"environment": "os:system"}))
    with pytest.raises(ConfigError, match="local runs code in the trainer's own process"):
        parse_config(config(multi_turn={"tools": {"backend": "local"}}))


def test_the_sandbox_token_variable_is_refused_as_a_secret_field_in_a_request_body() -> None:
    body = {"config": config(multi_turn={"tools": {"api_key_env": "REWARDHUB_SECRET_KEY"}})}
    with pytest.raises(ValidationError) as excinfo:
        RunCreate.model_validate(body)
    [error] = excinfo.value.errors()
    assert error["loc"] == ("config", "multi_turn", "tools", "api_key_env")
    assert "minted" in error["msg"]


def test_a_local_config_with_local_only_fields_does_not_pass_as_an_api_one() -> None:
    local = parse_config(config(multi_turn={"environment": "os:system", "tools": {"backend": "local"}}), local=True)
    with pytest.raises(ConfigError, match=r"multi_turn\.environment"):
        parse_config(local)
    with_env = parse_config(config(multi_turn={"tools": {"api_key_env": "MY_TOKEN"}}), local=True)
    with pytest.raises(ConfigError, match=r"multi_turn\.tools\.api_key_env"):
        parse_config(with_env)


# ----------------------------------------------------------------------------- local configs keep their freedoms

def test_local_configs_keep_module_factory_the_local_backend_and_the_token_variable() -> None:
    parsed = parse_config(config(multi_turn={"environment": "my_pkg.envs:make_env",
                                             "tools": {"backend": "local", "url": "http://sandbox:1",
                                                       "api_key_env": "MY_TOKEN"}}), local=True)
    multi = parsed.multi_turn
    assert isinstance(multi, LocalMultiTurnConfig) and isinstance(multi.tools, LocalToolsConfig)
    assert multi.environment_target == "my_pkg.envs:make_env"
    assert (multi.tools.backend, multi.tools.url, multi.tools.api_key_env) == ("local", "http://sandbox:1", "MY_TOKEN")
    assert parse_config(config(multi_turn={"environment": "multihop"}), local=True).multi_turn is not None
    with pytest.raises(ConfigError, match=r"multi_turn\.environment: 'no colon here'"):
        parse_config(config(multi_turn={"environment": "no colon here"}), local=True)


# ----------------------------------------------------------------------------- one set of cross-field checks

@pytest.mark.parametrize("local", [False, True])
@pytest.mark.parametrize(("change", "field"), [
    ({"multi_turn": {}, "rlavr": {"annotation_project_id": "ap1"}}, "multi_turn"),
    ({"multi_turn": {}, "eval": {"data": "heldout"}}, "eval"),
    ({"rlavr": {"annotation_project_id": "ap1"}, "dynamic_sampling": True}, "dynamic_sampling"),
    ({"rlavr": {"annotation_project_id": "ap1"}, "overlong": {"enabled": True, "cache_length": 1},
      "max_completion_length": 8}, "overlong.enabled"),
    ({"rlavr": {"annotation_project_id": "ap1"}, "scale_rewards": "opo"}, "scale_rewards"),
    ({"multi_turn": {"ziprl": {}}, "kl_in_reward": True, "beta": 0.1}, "multi_turn.ziprl"),
])
def test_cross_field_checks_apply_to_api_and_local_configs_alike(local: bool, change: dict[str, Any],
                                                                 field: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        parse_config(config(**change), local=local)
    assert str(excinfo.value).startswith(field + ":"), str(excinfo.value)


def test_the_cross_field_check_is_declared_once() -> None:
    from trainer.config import LocalRunConfig

    assert "_rlavr_consistent" in vars(RunConfig) and "_rlavr_consistent" not in vars(LocalRunConfig)


# ----------------------------------------------------------------------------- confinement in the service

@pytest.fixture
def area(tmp_path: Path) -> Settings:
    s = settings(tmp_path)
    for project, name in ((PROJECT, "heldout.jsonl"), (OTHER, "theirs.jsonl")):
        folder = confine.datasets_dir(project, s)
        folder.mkdir(parents=True)
        (folder / name).write_text('{"prompt": "x", "reward_model": {"ground_truth": "7"}}\n')
    return s


@pytest.mark.parametrize("value", ["/etc/passwd", "../heldout.jsonl", f"../../{OTHER}/datasets/theirs.jsonl",
                                   "sub/../../heldout.jsonl", "missing.jsonl", "heldout.txt", ""])
def test_eval_data_outside_the_projects_datasets_is_refused_naming_eval_data(area: Settings, value: str) -> None:
    with pytest.raises(InvalidInput) as excinfo:
        confine.dataset_path(PROJECT, value, settings=area, field="config.eval.data")
    assert excinfo.value.field == "config.eval.data"


def test_eval_data_inside_the_area_resolves(area: Settings) -> None:
    path = confine.dataset_path(PROJECT, "heldout", registered={"heldout": "heldout.jsonl"}, settings=area,
                                field="config.eval.data")
    assert path == (confine.datasets_dir(PROJECT, area) / "heldout.jsonl").resolve()


@pytest.mark.parametrize(("values", "url", "allowed"), [
    ({}, "http://evil.example.com/services/annotation", False),
    ({"gateway_url": "http://gateway:8000"}, "http://gateway:8000/services/annotation", True),
    ({"gateway_url": "http://gateway:8000"}, "http://gateway:8000/services/annotationx", False),
    ({"gateway_url": "http://gateway:8000"}, "http://gateway:8001/services/annotation", False),
    ({"annotation_url": "http://annotation:8000"}, "http://annotation:8000", True),
    ({"annotation_url": "http://annotation:8000"}, "http://annotation.evil:8000", False),
    ({"annotation_url": "http://annotation:8000"}, "http://user:pw@annotation:8000", False),
    ({"annotation_url": "http://annotation:8000"}, "http://169.254.169.254/latest", False),
    ({"trainer_reward_url_allowlist": "https://labels.example.com/v1"}, "https://labels.example.com/v1", True),
    ({}, "file:///etc/passwd", False),
])
def test_rlavr_urls_need_the_platforms_annotation_service_or_the_allowlist(
        tmp_path: Path, values: dict[str, str], url: str, allowed: bool) -> None:
    s = settings(tmp_path, **values)
    parsed = parse_config(config(rlavr={"annotation_project_id": "ap1", "url": url}))
    if allowed:
        confine.check_api_config(parsed, PROJECT, s)
        return
    with pytest.raises(InvalidInput) as excinfo:
        confine.check_api_config(parsed, PROJECT, s)
    assert excinfo.value.field == "config.rlavr.url"


def test_an_unset_rlavr_url_is_the_platforms(tmp_path: Path) -> None:
    confine.check_api_config(parse_config(config(rlavr={"annotation_project_id": "ap1"})), PROJECT,
                             settings(tmp_path))


def test_tool_sessions_count_against_the_runs_own_project(tmp_path: Path) -> None:
    s = settings(tmp_path)
    confine.check_api_config(parse_config(config(multi_turn={"tools": {"project": PROJECT}})), PROJECT, s)
    with pytest.raises(InvalidInput) as excinfo:
        confine.check_api_config(parse_config(config(multi_turn={"tools": {"project": OTHER}})), PROJECT, s)
    assert excinfo.value.field == "config.multi_turn.tools.project"


# ----------------------------------------------------------------------------- where the worker sends them

def test_the_annotation_target_is_the_config_url_then_the_service_then_the_gateway_mount(tmp_path: Path) -> None:
    assert targets.annotation_target("http://a:1/", settings(tmp_path)) == ("http://a:1", None)
    own = settings(tmp_path, annotation_url="http://annotation:8000/", gateway_url="http://gateway:8000")
    assert targets.annotation_target(None, own) == ("http://annotation:8000", None)
    mounted = settings(tmp_path, gateway_url="http://gateway:8000/")
    assert targets.annotation_target(None, mounted) == ("http://gateway:8000/services/annotation", None)


def test_the_sandbox_tool_takes_url_and_token_from_the_settings_and_the_runs_project(tmp_path: Path) -> None:
    parsed = parse_config(config(multi_turn={"tools": {"timeout_s": 3, "ttl_s": 30}}))
    assert parsed.multi_turn is not None
    s = settings(tmp_path, sandbox_url="http://sandbox:8000", sandbox_token="shared-sandbox-token")
    tool = targets.sandbox_tool(parsed.multi_turn.tools, PROJECT, s)
    try:
        assert str(tool.client.base_url) == "http://sandbox:8000"
        assert tool.client.headers["authorization"] == "Bearer shared-sandbox-token"
        assert tool.client.headers["x-rewardhub-project"] == PROJECT
        assert (tool.timeout_s, tool.ttl_s) == (3, 30)
    finally:
        tool.close()
    bare = targets.sandbox_tool(parsed.multi_turn.tools, PROJECT, settings(tmp_path, gateway_url="http://gw:1"))
    try:
        assert str(bare.client.base_url) == "http://gw:1/services/sandbox/"
        assert "authorization" not in bare.client.headers  # the embedded default needs no token
    finally:
        bare.close()


def test_the_sync_asgi_transport_round_trips_a_request_and_keeps_one_loop() -> None:
    app = FastAPI()
    loops: list[int] = []

    @app.post("/echo/{name}")
    async def echo(name: str, request: Request) -> JSONResponse:
        import asyncio

        loops.append(id(asyncio.get_running_loop()))
        body = await request.json()
        return JSONResponse({"name": name, "sum": body["a"] + body["b"], "auth": request.headers.get("authorization")},
                            status_code=201)

    transport = targets.SyncASGITransport(app)
    try:
        with httpx.Client(base_url="http://in.process", transport=transport,
                          headers={"Authorization": "Bearer k"}) as client:
            first = client.post("/echo/x", json={"a": 2, "b": 3})
        # A client per request (as trainer.rlavr opens one per step) closes the transport each time.
        with httpx.Client(base_url="http://in.process", transport=transport) as client:
            second = client.post("/echo/y", json={"a": 10, "b": -4})
        assert first.status_code == 201 and first.json() == {"name": "x", "sum": 5, "auth": "Bearer k"}
        assert second.json() == {"name": "y", "sum": 6, "auth": None}
        assert len(loops) == 2 and loops[0] == loops[1]  # one event loop for the transport's life
    finally:
        transport.shutdown()
    with pytest.raises(httpx.ConnectError), httpx.Client(base_url="http://in.process", transport=transport) as client:
        client.get("/echo/z")  # after shutdown: an error, never a hang
