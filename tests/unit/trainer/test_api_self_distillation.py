"""self_distillation: in run configs that arrive over the trainer service's API (issue 17 follow-up).

Accepted safely: the teacher is the platform's teacher service (URL unset, resolved by the worker) or
an allowlisted URL, with the run's minted key (the section has no ``api_key_env``), or ``in_process``
(a copy of the run's own policy: no path to load). Refusals name the field. Local configs keep
``teacher.api_key_env`` and any URL; the cross-field checks are one set both kinds apply.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from services.common.errors import InvalidInput
from services.common.settings import Settings
from services.trainer import confine, targets
from services.trainer.schemas import RunCreate
from trainer.config import ConfigError, LocalRunConfig, RunConfig, parse_config
from trainer.self_distillation.config import (
    SelfDistillationConfig,
    ServiceSelfDistillationConfig,
    ServiceTeacherConfig,
    TeacherConfig,
)
from trainer.self_distillation.teacher import HttpTeacher

PROJECT = "a" * 32
OTHER = "b" * 32
AMR: dict[str, Any] = {"method": "amr_sd", "teacher": {"model": "student-ema"}, "amr_sd": {"context": "reference"}}


def config(sd: dict[str, Any] | None = None, **overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"model": {"tiny": {}}, "dataset": "digits",
                            "reward": {"spec": {"type": "regex", "pattern": "7"}},
                            "group_size": 2, "prompts_per_step": 1, "self_distillation": sd or AMR}
    data.update(overrides)
    return data


def with_teacher(**teacher: Any) -> dict[str, Any]:
    return {**AMR, "teacher": {**AMR["teacher"], **teacher}}


def settings(tmp_path: Path, **values: Any) -> Settings:
    return Settings(data_dir=tmp_path / "data", **values)


# ----------------------------------------------------------------------------- accepted in API bodies

def test_an_api_config_takes_the_service_kind_of_the_section() -> None:
    parsed = parse_config(config())
    assert type(parsed) is RunConfig
    sd = parsed.self_distillation
    assert type(sd) is ServiceSelfDistillationConfig and type(sd.teacher) is ServiceTeacherConfig
    assert (sd.method, sd.teacher.backend, sd.teacher.url, sd.amr.context) == ("amr_sd", "http", None, "reference")
    assert not hasattr(sd.teacher, "api_key_env"), "a service run's teacher key is the run's minted one"


def test_pi_play_and_the_in_process_teacher_are_accepted() -> None:
    parsed = parse_config(config({"method": "pi_play", "teacher": {"backend": "in_process", "tau": 0.1},
                                  "pi_play": {"steps_per_round": 1, "top_k": 5}}))
    assert parsed.self_distillation is not None
    assert parsed.self_distillation.teacher.backend == "in_process" and parsed.self_distillation.pi.top_k == 5


def test_a_local_config_keeps_the_key_variable() -> None:
    parsed = parse_config(config(with_teacher(api_key_env="MY_TEACHER_KEY", url="http://teacher:1")), local=True)
    assert isinstance(parsed, LocalRunConfig)
    sd = parsed.self_distillation
    assert type(sd) is SelfDistillationConfig and type(sd.teacher) is TeacherConfig
    assert sd.teacher.api_key_env == "MY_TEACHER_KEY"


# ----------------------------------------------------------------------------- refused, naming the field

@pytest.mark.parametrize(("teacher", "field"), [
    ({"api_key_env": "REWARDHUB_SECRET_KEY"}, "self_distillation.teacher.api_key_env"),
    ({"api_key_env": "DATABASE_URL"}, "self_distillation.teacher.api_key_env"),
    ({"path": "/etc"}, "self_distillation.teacher.path"),
    ({"model_path": "../../other/models/x"}, "self_distillation.teacher.model_path"),
    ({"backend": "local"}, "self_distillation.teacher.backend"),
    ({"headers": {"Authorization": "Bearer x"}}, "self_distillation.teacher.headers"),
])
def test_api_teacher_refusals_name_the_field(teacher: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        parse_config(config(with_teacher(**teacher)))
    assert str(excinfo.value).startswith(field + ":"), str(excinfo.value)


def test_the_key_variable_is_refused_as_a_secret_field_in_a_request_body() -> None:
    body = {"config": config(with_teacher(api_key_env="REWARDHUB_SECRET_KEY"))}
    with pytest.raises(ValidationError) as excinfo:
        RunCreate.model_validate(body)
    [error] = excinfo.value.errors()
    assert error["loc"] == ("config", "self_distillation", "teacher", "api_key_env")
    assert "minted" in error["msg"]


def test_a_local_config_with_a_key_variable_does_not_pass_as_an_api_one() -> None:
    local = parse_config(config(with_teacher(api_key_env="MY_TEACHER_KEY")), local=True)
    with pytest.raises(ConfigError, match=r"self_distillation\.teacher\.api_key_env"):
        parse_config(local)


@pytest.mark.parametrize("local", [False, True])
@pytest.mark.parametrize(("change", "needle"), [
    ({"rlavr": {"annotation_project_id": "ap1"}}, "not supported with rlavr"),
    ({"multi_turn": {}}, "not supported with multi_turn"),
    ({"kl_in_reward": True, "beta": 0.1}, "kl_in_reward"),
    ({"self_distillation": {"method": "amr_sd", "teacher": {}}}, "teacher.model"),
    ({"self_distillation": {"method": "amr_sd", "teacher": {"model": "m"}, "pi_play": {}}}, "pi_play"),
])
def test_cross_field_checks_apply_to_api_and_local_configs_alike(local: bool, change: dict[str, Any],
                                                                 needle: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        parse_config(config(**change), local=local)
    message = str(excinfo.value)
    assert message.startswith("self_distillation"), message
    assert needle in message, message


def test_the_cross_field_check_is_declared_once() -> None:
    assert "_self_distillation_supported" in vars(RunConfig)
    assert "_self_distillation_supported" not in vars(LocalRunConfig)


# ----------------------------------------------------------------------------- the teacher URL in the service

@pytest.mark.parametrize(("values", "url", "allowed"), [
    ({}, "http://evil.example.com/services/teacher", False),
    ({"gateway_url": "http://gateway:8000"}, "http://gateway:8000/services/teacher", True),
    ({"gateway_url": "http://gateway:8000"}, "http://gateway:8000/services/teacherx", False),
    ({"gateway_url": "http://gateway:8000"}, "http://gateway:8000/services/annotation", False),
    ({"gateway_url": "http://gateway:8000"}, "http://gateway:8001/services/teacher", False),
    ({"gateway_url": "http://gateway:8000"}, "http://gateway:8000/services/teacher/../../x", False),
    ({"teacher_url": "http://teacher:8000"}, "http://teacher:8000", True),
    ({"teacher_url": "http://teacher:8000"}, "http://teacher.evil:8000", False),
    ({"teacher_url": "http://teacher:8000"}, "http://user:pw@teacher:8000", False),
    ({"teacher_url": "http://teacher:8000"}, "http://teacher:8000?x=1", False),
    ({"teacher_url": "http://teacher:8000"}, "http://169.254.169.254/latest", False),
    ({"annotation_url": "http://annotation:8000"}, "http://annotation:8000", False),
    ({"trainer_reward_url_allowlist": "https://teach.example.com/v1"}, "https://teach.example.com/v1", True),
    ({}, "file:///etc/passwd", False),
])
def test_teacher_urls_need_the_platforms_teacher_service_or_the_allowlist(
        tmp_path: Path, values: dict[str, str], url: str, allowed: bool) -> None:
    s = settings(tmp_path, **values)
    parsed = parse_config(config(with_teacher(url=url)))
    if allowed:
        confine.check_api_config(parsed, PROJECT, s)
        return
    with pytest.raises(InvalidInput) as excinfo:
        confine.check_api_config(parsed, PROJECT, s)
    assert excinfo.value.field == "config.self_distillation.teacher.url"


def test_an_unset_teacher_url_is_the_platforms(tmp_path: Path) -> None:
    confine.check_api_config(parse_config(config()), PROJECT, settings(tmp_path))


def test_teacher_models_are_the_runs_own_projects(tmp_path: Path) -> None:
    s = settings(tmp_path)
    confine.check_api_config(parse_config(config(with_teacher(project_id=PROJECT))), PROJECT, s)
    with pytest.raises(InvalidInput) as excinfo:
        confine.check_api_config(parse_config(config(with_teacher(project_id=OTHER))), PROJECT, s)
    assert excinfo.value.field == "config.self_distillation.teacher.project_id"


# ----------------------------------------------------------------------------- where the worker sends it

def test_the_teacher_target_is_the_config_url_then_the_service_then_the_gateway_mount(tmp_path: Path) -> None:
    assert targets.teacher_target("http://t:1/", settings(tmp_path)) == ("http://t:1", None)
    own = settings(tmp_path, teacher_url="http://teacher:8000/", gateway_url="http://gateway:8000")
    assert targets.teacher_target(None, own) == ("http://teacher:8000", None)
    mounted = settings(tmp_path, gateway_url="http://gateway:8000/")
    assert targets.teacher_target(None, mounted) == ("http://gateway:8000/services/teacher", None)


def test_the_service_teacher_sends_the_runs_key_and_never_reads_an_environment_variable(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REWARDHUB_API_KEY", "rh_not_the_runs_key")
    parsed = parse_config(config())
    assert parsed.self_distillation is not None
    service_teacher = parsed.self_distillation.teacher
    unkeyed = HttpTeacher(service_teacher, base_url="http://teacher.invalid")
    try:
        assert unkeyed.api_key == "", "a service config names no key variable: nothing is read from the environment"
    finally:
        unkeyed.close()
    teacher = targets.http_teacher(service_teacher, "rh_the_runs_key", "run123",
                                   settings(tmp_path, teacher_url="http://teacher:8000"))
    try:
        assert (teacher.base_url, teacher.api_key, teacher.run_id) == ("http://teacher:8000", "rh_the_runs_key",
                                                                       "run123")
    finally:
        teacher.close()
    local = parse_config(config(with_teacher(api_key_env="MY_TEACHER_KEY")), local=True)
    monkeypatch.setenv("MY_TEACHER_KEY", "rh_owner_key")
    assert local.self_distillation is not None
    owned = HttpTeacher(local.self_distillation.teacher, base_url="http://teacher.invalid")
    try:
        assert owned.api_key == "rh_owner_key", "a local config reads the variable its owner named"
    finally:
        owned.close()


def test_an_in_process_teacher_has_no_service_target(tmp_path: Path) -> None:
    parsed = parse_config(config({"method": "pi_play", "teacher": {"backend": "in_process"}}))
    assert parsed.self_distillation is not None
    with pytest.raises(ValueError, match=r"config\.self_distillation\.teacher\.backend"):
        targets.http_teacher(parsed.self_distillation.teacher, "k", "r", settings(tmp_path))
