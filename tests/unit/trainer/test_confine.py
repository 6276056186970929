"""Confinement of service runs: paths stay in the project's area, rewards go to the platform or the allowlist,
no config field that arrives over the API can name an environment variable."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from services.common.errors import InvalidInput
from services.common.settings import Settings
from services.trainer import confine
from services.trainer.schemas import RunCreate
from trainer.config import ConfigError, LocalRunConfig, RunConfig, parse_config
from trainer.rewards import HttpRewards

PROJECT = "a" * 32
OTHER = "b" * 32


def settings(tmp_path: Path, **values: Any) -> Settings:
    return Settings(data_dir=tmp_path / "data", **values)


def config(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"model": {"tiny": {}}, "dataset": "digits",
                            "reward": {"spec": {"type": "regex", "pattern": "7"}},
                            "group_size": 2, "prompts_per_step": 1}
    data.update(overrides)
    return data


def field_of(excinfo: pytest.ExceptionInfo[InvalidInput]) -> str | None:
    return excinfo.value.field


@pytest.fixture
def area(tmp_path: Path) -> Settings:
    """Project PROJECT with datasets/digits.jsonl; project OTHER with datasets/theirs.jsonl."""
    s = settings(tmp_path)
    for project, name in ((PROJECT, "digits.jsonl"), (OTHER, "theirs.jsonl")):
        folder = confine.datasets_dir(project, s)
        folder.mkdir(parents=True)
        (folder / name).write_text('{"prompt": "x", "reward_model": {"ground_truth": "7"}}\n')
    return s


# ----------------------------------------------------------------------------- paths

@pytest.mark.parametrize("value", ["digits.jsonl", "datasets/digits.jsonl", "./digits.jsonl"])
def test_a_dataset_inside_the_area_resolves(area: Settings, value: str) -> None:
    path = confine.dataset_path(PROJECT, value, settings=area)
    assert path == (confine.datasets_dir(PROJECT, area) / "digits.jsonl").resolve()


def test_a_registered_name_resolves_to_its_file(area: Settings) -> None:
    path = confine.dataset_path(PROJECT, "digits", registered={"digits": "digits.jsonl"}, settings=area)
    assert path.name == "digits.jsonl"


@pytest.mark.parametrize("value", [
    "/etc/passwd", "../digits.jsonl", "../../" + OTHER + "/datasets/theirs.jsonl", "sub/../../x.jsonl", "..",
    "", "a\x00.jsonl", "..\\digits.jsonl", "theirs.jsonl", "theirs", "digits.txt",
])
def test_dataset_paths_outside_the_area_are_refused(area: Settings, value: str) -> None:
    with pytest.raises(InvalidInput) as excinfo:
        confine.dataset_path(PROJECT, value, settings=area)
    assert field_of(excinfo) == "config.dataset"


def test_an_absolute_path_to_another_projects_dataset_is_refused(area: Settings) -> None:
    theirs = confine.datasets_dir(OTHER, area) / "theirs.jsonl"
    with pytest.raises(InvalidInput, match="absolute"):
        confine.dataset_path(PROJECT, str(theirs), settings=area)


def test_a_symlink_leading_out_of_the_area_is_refused(area: Settings) -> None:
    theirs = confine.datasets_dir(OTHER, area) / "theirs.jsonl"
    (confine.datasets_dir(PROJECT, area) / "link.jsonl").symlink_to(theirs)
    (confine.datasets_dir(PROJECT, area) / "dir").symlink_to(confine.datasets_dir(OTHER, area))
    for value in ("link.jsonl", "dir/theirs.jsonl"):
        with pytest.raises(InvalidInput, match="leads out") as excinfo:
            confine.dataset_path(PROJECT, value, settings=area)
        assert field_of(excinfo) == "config.dataset"


def test_a_symlink_within_the_area_is_followed(area: Settings) -> None:
    folder = confine.datasets_dir(PROJECT, area)
    (folder / "alias.jsonl").symlink_to(folder / "digits.jsonl")
    assert confine.dataset_path(PROJECT, "alias.jsonl", settings=area) == (folder / "digits.jsonl").resolve()


def test_a_registered_name_cannot_smuggle_a_path(area: Settings) -> None:
    with pytest.raises(InvalidInput):
        confine.dataset_path(PROJECT, "x", registered={"x": "../../" + OTHER + "/datasets/theirs.jsonl"},
                             settings=area)


def test_runs_write_to_the_projects_runs_folder(tmp_path: Path) -> None:
    s = settings(tmp_path)
    assert confine.run_dir(PROJECT, "r1", s) == tmp_path / "data" / "projects" / PROJECT / "runs" / "r1"


def test_model_paths_stay_in_the_area_or_the_operators_model_folders(tmp_path: Path) -> None:
    shared = tmp_path / "models"
    (shared / "qwen").mkdir(parents=True)
    s = settings(tmp_path, trainer_model_dirs=f"{shared}")
    assert confine.model_path(PROJECT, str(shared / "qwen"), s) == (shared / "qwen").resolve()
    assert confine.model_path(PROJECT, "runs/r1/checkpoints/step-000001", s).is_relative_to(
        confine.project_area(PROJECT, s).resolve())
    for value in ("/etc", str(shared / ".." / "elsewhere"), "../" + OTHER + "/runs/r1"):
        with pytest.raises(InvalidInput) as excinfo:
            confine.model_path(PROJECT, value, s)
        assert field_of(excinfo) == "config.model.path"


# ----------------------------------------------------------------------------- reward URL

@pytest.mark.parametrize(("allowlist", "gateway", "url", "allowed"), [
    ("", "", None, True),                                             # the platform, in-process
    ("", "", "http://127.0.0.1:8000", False),                         # embedded: nothing else
    ("", "http://gateway:8000", "http://gateway:8000", True),
    ("", "http://gateway:8000", "http://gateway:8000/", True),
    ("", "http://gateway:8000", "http://gateway:8001", False),
    ("", "http://gateway:8000", "https://gateway:8000", False),
    ("https://rm.example.com/v1", "", "https://rm.example.com/v1", True),
    ("https://rm.example.com/v1", "", "https://rm.example.com/v1/tenant", True),
    ("https://rm.example.com/v1", "", "https://rm.example.com/v10", False),
    ("https://rm.example.com/v1", "", "https://rm.example.com/v1/../admin", False),
    ("https://rm.example.com/v1", "", "https://rm.example.com:443/v1", True),
    ("https://rm.example.com/v1", "", "http://rm.example.com/v1", False),
    ("rm.example.com", "", "http://RM.example.com", True),
    ("rm.example.com", "", "https://rm.example.com:9000/x", True),
    ("rm.example.com", "", "https://rm.example.com.evil.org", False),
    ("rm.example.com", "", "https://evil.org/rm.example.com", False),
    ("rm.example.com", "", "https://rm.example.com@evil.org", False),
    ("rm.example.com", "", "https://user:pw@rm.example.com", False),
    ("rm.example.com", "", "https://rm.example.com/?x=1", False),
    ("rm.example.com:8443", "", "https://rm.example.com:8443", True),
    ("rm.example.com:8443", "", "https://rm.example.com", False),
    ("a.example.com, b.example.com", "", "http://b.example.com", True),
    ("rm.example.com", "", "ftp://rm.example.com", False),
    ("rm.example.com", "", "rm.example.com", False),
])
def test_reward_urls_need_the_platform_or_the_allowlist(tmp_path: Path, allowlist: str, gateway: str,
                                                        url: str | None, allowed: bool) -> None:
    s = settings(tmp_path, trainer_reward_url_allowlist=allowlist, gateway_url=gateway)
    if allowed:
        confine.check_reward_url(url, s)
        return
    with pytest.raises(InvalidInput) as excinfo:
        confine.check_reward_url(url, s)
    assert field_of(excinfo) == "config.reward.url"


# ----------------------------------------------------------------------------- the whole config

@pytest.mark.parametrize(("change", "field"), [
    ({"output_dir": "runs/x"}, "config.output_dir"),
    ({"reward": None}, "config.reward"),
    ({"reward": {"spec": {"type": "exact"}, "project_id": OTHER}}, "config.reward.project_id"),
    ({"reward": {"spec": {"type": "exact"}, "url": "http://evil.example.com"}}, "config.reward.url"),
    ({"model": {"path": "/srv/models/x"}}, "config.model.path"),
    ({"deepspeed": {"overrides": {"wandb": {"enabled": True}}}}, "config.deepspeed.overrides.wandb"),
    ({"deepspeed": {"overrides": {"zero_optimization": {"nvme_path": "/x"}}}},
     "config.deepspeed.overrides.zero_optimization.nvme_path"),
])
def test_api_configs_are_confined(tmp_path: Path, change: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInput) as excinfo:
        confine.check_api_config(parse_config(config(**change)), PROJECT, settings(tmp_path))
    assert field_of(excinfo) == field


def test_a_plain_api_config_passes(tmp_path: Path) -> None:
    plain = config(deepspeed={"overrides": {"zero_optimization": {"reduce_bucket_size": 1000}}})
    confine.check_api_config(parse_config(plain), PROJECT, settings(tmp_path))
    confine.check_api_config(parse_config(config(reward={"spec": {"type": "exact"}, "project_id": PROJECT})),
                             PROJECT, settings(tmp_path))


# ----------------------------------------------------------------------------- env vars and keys

@pytest.mark.parametrize("secret", ["api_key_env", "api_key", "token", "bearer_token_env", "headers"])
def test_a_field_naming_a_secret_is_refused_at_its_path(secret: str) -> None:
    body = {"config": config(reward={"spec": {"type": "exact"}, secret: "REWARDHUB_SECRET_KEY"})}
    with pytest.raises(ValidationError) as excinfo:
        RunCreate.model_validate(body)
    [error] = excinfo.value.errors()
    assert error["loc"] == ("config", "reward", secret)
    assert "minted" in error["msg"]


def test_other_unknown_fields_keep_their_usual_error() -> None:
    with pytest.raises(ValidationError) as excinfo:
        RunCreate.model_validate({"config": config(surprise=True)})
    assert excinfo.value.errors()[0]["type"] == "extra_forbidden"


def test_the_service_config_has_no_env_var_field_but_a_local_one_does() -> None:
    with pytest.raises(ConfigError, match=r"reward\.api_key_env"):
        parse_config(config(reward={"spec": {"type": "exact"}, "api_key_env": "DATABASE_URL"}))
    local = parse_config(config(reward={"spec": {"type": "exact"}, "api_key_env": "MY_KEY"}), local=True)
    assert isinstance(local, LocalRunConfig)
    with pytest.raises(ConfigError, match=r"reward\.api_key_env"):
        parse_config(local)  # a local config does not pass as a service one
    assert isinstance(parse_config(config(), local=True), LocalRunConfig)
    assert type(parse_config(parse_config(config(), local=True))) is RunConfig


def test_http_rewards_key_explicit_then_local_env_then_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REWARDHUB_API_KEY", "rh_default")
    monkeypatch.setenv("MY_KEY", "rh_mine")
    service = parse_config(config())
    local = parse_config(config(reward={"spec": {"type": "exact"}, "api_key_env": "MY_KEY"}), local=True)
    cases = [(service.reward, "rh_minted", "rh_minted"), (service.reward, None, "rh_default"),
             (local.reward, None, "rh_mine"), (local.reward, "rh_minted", "rh_minted")]
    for reward, given, expected in cases:
        rewards = HttpRewards(reward, api_key=given)
        try:
            assert rewards.api_key == expected
        finally:
            rewards.close()
    assert os.environ["REWARDHUB_API_KEY"] == "rh_default"
