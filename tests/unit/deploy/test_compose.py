"""docker-compose.yml: checked by docker-compose itself and, structurally, against the code it runs.

There is no Docker engine on the test machines; `docker-compose config` validates the file
against the Compose schema without one. The structural checks tie the file to
`rewardhub.service_map.SERVICES`, the CLI's commands and the settings class.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from typing import Any

import pytest
import typer
import yaml

from rewardhub.cli import app as cli_app
from rewardhub.service_map import SERVICES
from services.common.settings import Settings
from tests.conftest import REPO_ROOT, unavailable
from tests.unit.deploy.readme_commands import argv, bash_commands, section

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
GPU_SERVICES = {"trainer", "vllm"}
INFRASTRUCTURE = {"postgres", "redis"}
ONE_SHOT = {"migrate"}
# Runs untrusted code: none of the shared environment (credentials), no database, no broker.
CREDENTIAL_FREE = {"sandbox"}
# Which Dockerfile target each Python service runs (tests/unit/deploy/test_dockerfile.py checks that
# the light ones start without torch, and that these torch ones need it at start).
IMAGE_TARGETS = {"gateway": "light", "verifier": "light", "sandbox": "light", "rubric_rm": "light",
                 "retrieval": "light", "migrate": "light", "annotation": "trainer", "rec_rm": "trainer",
                 "teacher": "trainer", "worker": "trainer", "trainer": "gpu"}
IMAGE_VARIABLES = {"light": "REWARDHUB_LIGHT_IMAGE", "trainer": "REWARDHUB_IMAGE", "gpu": "REWARDHUB_GPU_IMAGE"}
REQUIRED = {"REWARDHUB_SECRET_KEY", "POSTGRES_PASSWORD", "REDIS_PASSWORD"}
# Services the compose file runs ahead of their entry in SERVICES (the trainer lands later);
# once a name is in SERVICES, the strict check covers it and it should leave this set.
AHEAD_OF_SERVICE_MAP = {"trainer"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose["services"]
    return found


def python_services(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The services built from our Dockerfile (they run the `rewardhub` CLI)."""
    return {name: svc for name, svc in services.items() if "build" in svc}


def served_name(svc: dict[str, Any]) -> str | None:
    command = svc.get("command") or []
    return command[1] if len(command) > 1 and command[0] == "serve" else None


def option(command: list[str], name: str) -> str | None:
    return command[command.index(name) + 1] if name in command else None


def with_defaults(value: str) -> str:
    """``value`` as Compose interpolates it when no variable is set: ``${NAME:-default}`` -> ``default``."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value)


def compose_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("REWARDHUB_", "COMPOSE_")) and k not in REQUIRED | {"VLLM_IMAGE"}}
    env.update(REWARDHUB_SECRET_KEY="test-secret-key", POSTGRES_PASSWORD="pg0a1b", REDIS_PASSWORD="rd2c3d")
    return env


def resolved(*profile_args: str, env: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """The services as docker-compose itself resolves them (anchors merged, variables substituted)."""
    result = subprocess.run([docker_compose(), "-f", str(COMPOSE_FILE), *profile_args, "config"],
                            env=env or compose_env(), capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr
    found: dict[str, dict[str, Any]] = yaml.safe_load(result.stdout)["services"]
    return found


# --- docker-compose's own validation ---------------------------------------------------------

def docker_compose() -> str:
    path = shutil.which("docker-compose")
    if path is None:
        unavailable("docker-compose (Debian package docker-compose)", "not installed")
    return str(path)


@pytest.mark.parametrize("profile_args", [[], ["--profile", "gpu"]], ids=["default", "gpu"])
def test_docker_compose_accepts_the_file(profile_args: list[str]) -> None:
    result = subprocess.run([docker_compose(), "-f", str(COMPOSE_FILE), *profile_args, "config", "-q"],
                            env=compose_env(), capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr


def test_docker_compose_resolves_the_shared_environment_and_gpu_profile() -> None:
    result = subprocess.run([docker_compose(), "-f", str(COMPOSE_FILE), "--profile", "gpu", "config"],
                            env=compose_env(), capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)["services"]
    assert set(resolved) >= {"postgres", "redis", "migrate", "gateway", "verifier", "worker", "trainer", "vllm"}
    for name in ("migrate", "gateway", "verifier", "worker", "trainer"):
        assert resolved[name]["environment"]["REWARDHUB_SECRET_KEY"] == "test-secret-key", name
        assert resolved[name]["environment"]["DATABASE_URL"].startswith("postgresql+psycopg://"), name


@pytest.mark.parametrize("variable", sorted(REQUIRED))
def test_docker_compose_refuses_to_run_without_a_required_secret(variable: str) -> None:
    env = compose_env()
    del env[variable]
    result = subprocess.run([docker_compose(), "-f", str(COMPOSE_FILE), "config", "-q"],
                            env=env, capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)
    assert result.returncode != 0
    assert variable in result.stderr


def test_the_passwords_reach_postgres_redis_and_every_client() -> None:
    services = resolved("--profile", "gpu")
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"] == "pg0a1b"
    command = services["redis"]["command"]
    assert command[command.index("--requirepass") + 1] == "rd2c3d"
    # The healthcheck's redis-cli authenticates from the environment, not its command line.
    assert services["redis"]["environment"]["REDISCLI_AUTH"] == "rd2c3d"
    assert services["redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    for name, svc in services.items():
        env = svc.get("environment", {})
        if "DATABASE_URL" in env:
            assert env["DATABASE_URL"] == "postgresql+psycopg://rewardhub:pg0a1b@postgres:5432/rewardhub", name
            assert env["REDIS_URL"] == "redis://:rd2c3d@redis:6379/0", name


def test_published_ports_bind_to_loopback_unless_told_otherwise() -> None:
    published = {name: svc["ports"] for name, svc in resolved().items() if svc.get("ports")}
    assert published == {"gateway": ["127.0.0.1:8000:8000/tcp"], "annotation": ["127.0.0.1:8001:8000/tcp"]}
    env = compose_env() | {"REWARDHUB_BIND": "0.0.0.0", "REWARDHUB_PORT": "9000"}
    assert resolved(env=env)["gateway"]["ports"] == ["0.0.0.0:9000:8000/tcp"]


# --- structure ---------------------------------------------------------------------------------

def test_every_service_in_the_service_map_has_a_compose_service_and_vice_versa(
        services: dict[str, dict[str, Any]]) -> None:
    served = {name: served_name(svc) for name, svc in services.items() if served_name(svc)}
    for compose_name, service in served.items():
        assert compose_name == service, f"compose service {compose_name!r} runs `serve {service}`"
    assert set(SERVICES) <= set(served.values()), f"no compose service serves {set(SERVICES) - set(served.values())}"
    unknown = set(served.values()) - set(SERVICES) - AHEAD_OF_SERVICE_MAP
    assert not unknown, f"compose serves {unknown}, which rewardhub.service_map.SERVICES does not know"


def test_gpu_profile_holds_exactly_the_trainer_and_vllm(services: dict[str, dict[str, Any]]) -> None:
    in_gpu = {name for name, svc in services.items() if "gpu" in svc.get("profiles", [])}
    assert in_gpu == GPU_SERVICES
    for name, svc in services.items():
        if name not in GPU_SERVICES:
            assert "profiles" not in svc, f"{name} must start with a plain `docker compose up`"
            assert "deploy" not in svc, f"{name} must not reserve devices"
            continue
        devices = svc["deploy"]["resources"]["reservations"]["devices"]
        assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices), name


def test_every_long_running_service_has_a_healthcheck(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        if name in ONE_SHOT:
            assert "healthcheck" not in svc and svc.get("restart") == "no", name
            continue
        test = svc.get("healthcheck", {}).get("test")
        assert isinstance(test, list) and test[0] == "CMD" and len(test) > 1, f"{name} has no exec healthcheck"


def test_http_healthchecks_probe_the_port_the_service_listens_on(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in python_services(services).items():
        if served_name(svc) is None:
            continue
        probe = " ".join(svc["healthcheck"]["test"])
        port = option(svc["command"], "--port")
        assert re.search(rf"http://127\.0\.0\.1:{port}/(readyz|healthz)\b", probe), f"{name}: {probe}"
        assert option(svc["command"], "--host") == "0.0.0.0", f"{name} must listen beyond loopback"
    assert re.search(r"http://127\.0\.0\.1:8000/health\b", " ".join(services["vllm"]["healthcheck"]["test"]))
    assert services["postgres"]["healthcheck"]["test"][1] == "pg_isready"
    assert services["redis"]["healthcheck"]["test"][1:] == ["redis-cli", "ping"]


def test_healthcheck_python_one_liners_compile(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        test = svc.get("healthcheck", {}).get("test", [])
        if len(test) > 3 and test[1] in ("python", "python3") and test[2] == "-c":
            compile(test[3], f"<{name} healthcheck>", "exec")


def test_depends_on_names_existing_services_with_satisfiable_conditions(
        services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        for target, spec in svc.get("depends_on", {}).items():
            assert target in services, f"{name} depends on unknown service {target!r}"
            condition = spec["condition"]
            if condition == "service_healthy":
                assert "healthcheck" in services[target], f"{name} waits for {target}'s health, which has none"
            elif condition == "service_completed_successfully":
                assert target in ONE_SHOT, f"{name} waits for long-running {target!r} to exit"
            else:
                raise AssertionError(f"{name} -> {target}: unexpected condition {condition!r}")
            # A CPU service waiting on a GPU-profile one would never start without --profile gpu.
            if name not in GPU_SERVICES:
                assert target not in GPU_SERVICES, f"{name} depends on gpu-profile {target!r}"


def test_python_services_wait_for_migrations_and_infrastructure(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in python_services(services).items():
        if name in CREDENTIAL_FREE:
            assert "depends_on" not in svc, f"{name} needs neither the database nor the broker"
            continue
        deps = svc["depends_on"]
        assert deps["postgres"]["condition"] == "service_healthy", name
        if name in ONE_SHOT:
            continue
        assert deps["migrate"]["condition"] == "service_completed_successfully", name
        assert deps["redis"]["condition"] == "service_healthy", name


def test_each_python_service_runs_its_dockerfile_target(services: dict[str, dict[str, Any]]) -> None:
    version = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]
    stages = re.findall(r"^FROM \S+ AS (\w+)$", (REPO_ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert set(python_services(services)) == set(IMAGE_TARGETS)
    images: dict[str, set[str]] = {}
    for name, svc in python_services(services).items():
        target = svc["build"]["target"]
        assert target == IMAGE_TARGETS[name] and target in stages, f"{name} builds target {target!r}"
        # Our own images are tagged with the project's version (never :latest), overridable per target.
        repository = "rewardhub" if target == "trainer" else f"rewardhub-{target}"
        assert svc["image"] == f"${{{IMAGE_VARIABLES[target]}:-{repository}:{version}}}", name
        images.setdefault(target, set()).add(svc["image"])
    assert all(len(names) == 1 for names in images.values()), images


def test_tini_from_the_image_is_pid_1_so_no_service_adds_an_init(services: dict[str, dict[str, Any]]) -> None:
    # A second init (compose's `init: true`) in front of tini would only add a process.
    assert '["/usr/bin/tini", "--", "rewardhub"]' in (REPO_ROOT / "Dockerfile").read_text()
    for name, svc in python_services(services).items():
        assert "init" not in svc, name


def test_python_services_run_cli_commands(services: dict[str, dict[str, Any]]) -> None:
    commands = typer.main.get_command(cli_app).commands  # type: ignore[attr-defined]
    cpu = {name for name in python_services(services) if name not in GPU_SERVICES}
    assert cpu == {"migrate", "worker", *(set(SERVICES) - GPU_SERVICES)}
    for name, svc in python_services(services).items():
        assert svc["build"]["dockerfile"] == "Dockerfile" and svc["build"]["context"] == ".", name
        assert "entrypoint" not in svc, f"{name} must keep the image's `rewardhub` entrypoint"
        command = svc["command"]
        assert command[0] in commands, f"{name}: `rewardhub {command[0]}` is not a CLI command"
        if served_name(svc) in AHEAD_OF_SERVICE_MAP and served_name(svc) not in SERVICES:
            continue
        # Parse the arguments as the CLI would: an unknown option or a bad value fails here.
        with commands[command[0]].make_context(command[0], list(command[1:])) as ctx:
            assert ctx.params is not None
    assert services["migrate"]["command"] == ["migrate"]
    assert services["worker"]["command"][0] == "worker"


def test_worker_healthcheck_pings_its_own_celery_node(services: dict[str, dict[str, Any]]) -> None:
    probe = services["worker"]["healthcheck"]["test"][3]
    assert "celery_app.control.ping" in probe and "socket.gethostname()" in probe


def test_shared_environment_carries_the_infrastructure_and_known_settings(
        services: dict[str, dict[str, Any]]) -> None:
    settings_vars = {f"REWARDHUB_{field.upper()}" for field in Settings.model_fields} | {"DATABASE_URL", "REDIS_URL"}
    for name, svc in python_services(services).items():
        env = svc["environment"]
        unknown = {k for k in env if k.startswith("REWARDHUB_")} - settings_vars
        assert not unknown, f"{name} sets variables the settings class does not read: {unknown}"
        if name in CREDENTIAL_FREE:
            continue
        for required in ("DATABASE_URL", "REDIS_URL", "REWARDHUB_SECRET_KEY"):
            assert required in env, f"{name} lacks {required}"
        assert env["DATABASE_URL"].startswith("postgresql+psycopg://") and "@postgres:5432/" in env["DATABASE_URL"]
        assert env["REDIS_URL"] == "redis://:${REDIS_PASSWORD}@redis:6379/0"
        assert ":${POSTGRES_PASSWORD}@" in env["DATABASE_URL"]
        unknown = {k for k in env if k.startswith("REWARDHUB_")} - settings_vars
        assert not unknown, f"{name} sets variables the settings class does not read: {unknown}"


def test_service_urls_point_at_the_compose_services(services: dict[str, dict[str, Any]]) -> None:
    env = services["gateway"]["environment"]
    urls = {k: v for k, v in env.items() if re.fullmatch(r"REWARDHUB_[A-Z_]+_URL", k) and k != "REWARDHUB_LLM_BASE_URL"}
    for key, url in urls.items():
        name = key.removeprefix("REWARDHUB_").removesuffix("_URL").lower()
        assert name in services, f"{key} names no compose service"
        assert url == f"http://{name}:{option(services[name]['command'], '--port')}", key
    for name in SERVICES:
        assert f"REWARDHUB_{name.upper()}_URL" in urls, f"no REWARDHUB_{name.upper()}_URL for {name}"
    assert with_defaults(env["REWARDHUB_LLM_BASE_URL"]) == "http://vllm:8000/v1"


def test_only_the_gateway_and_the_annotation_ui_are_published(services: dict[str, dict[str, Any]]) -> None:
    published = {name for name, svc in services.items() if svc.get("ports")}
    assert published == {"gateway", "annotation"}
    for name in published:
        (port,) = services[name]["ports"]
        assert port.startswith("${REWARDHUB_BIND:-127.0.0.1}:") and port.endswith(":8000"), name


def test_infrastructure_images(services: dict[str, dict[str, Any]]) -> None:
    # Exact releases: a floating tag (postgres:16, redis:7, :latest) changes under a running stack.
    assert re.fullmatch(r"postgres:16\.\d+", services["postgres"]["image"])
    assert re.fullmatch(r"redis:7\.\d+\.\d+(-alpine)?", services["redis"]["image"])
    assert re.fullmatch(r"\$\{VLLM_IMAGE:-vllm/vllm-openai:v\d+\.\d+\.\d+\}", services["vllm"]["image"])
    for name, svc in services.items():
        assert "latest" not in with_defaults(svc["image"]), name
    assert set(services) >= INFRASTRUCTURE
    for name in INFRASTRUCTURE:
        assert any(":" in volume for volume in services[name]["volumes"]), f"{name} keeps its data in a volume"


def test_vllm_serves_a_mounted_local_model_offline(services: dict[str, dict[str, Any]]) -> None:
    vllm = services["vllm"]
    assert with_defaults(vllm["image"]).split(":")[0] == "vllm/vllm-openai"
    assert vllm["environment"]["HF_HUB_OFFLINE"] == "1"
    mounts = [with_defaults(volume).split(":") for volume in vllm["volumes"]]
    model = with_defaults(option(vllm["command"], "--model") or "")
    assert any(model.startswith(target + "/") and mode == "ro" for *_, target, mode in mounts), \
        f"--model {model} is not under a read-only mount"
    trainer = services["trainer"]
    assert trainer["command"][:2] == ["serve", "trainer"]
    assert trainer["environment"]["HF_HUB_OFFLINE"] == "1"


def test_the_shared_settings_are_one_anchor() -> None:
    text = COMPOSE_FILE.read_text()
    assert re.search(r"^x-common-env: &common-env$", text, re.MULTILINE)
    assert re.search(r"^x-common: &common$", text, re.MULTILINE)
    # Every Python service merges the shared block (and its image's) rather than repeating them.
    services = python_services(yaml.safe_load(text)["services"])
    merges = re.findall(r"^    <<: (\*common|\[\*common, \*[\w-]+\]|\*light-image)$", text, re.MULTILINE)
    assert len([m for m in merges if "common" in m]) == len(set(services) - CREDENTIAL_FREE)
    assert "*light-image" in merges, "the sandbox takes the light image without the shared environment"


def test_the_sandbox_holds_no_credentials_and_is_locked_down(services: dict[str, dict[str, Any]]) -> None:
    sandbox = services["sandbox"]
    secrets = {"DATABASE_URL", "REDIS_URL", "REWARDHUB_DATABASE_URL", "REWARDHUB_REDIS_URL", "REWARDHUB_SECRET_KEY",
               "REWARDHUB_LLM_API_KEY", "POSTGRES_PASSWORD"}
    assert not secrets & set(sandbox["environment"]), "the sandbox must not receive credentials"
    assert not any("postgres" in str(value) or "redis://" in str(value) for value in sandbox["environment"].values())
    assert sandbox["read_only"] is True and sandbox["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in sandbox["security_opt"]
    assert not sandbox.get("ports"), "nothing outside the compose network reaches the sandbox"
    assert services["verifier"]["depends_on"]["sandbox"]["condition"] == "service_healthy"
    assert services["verifier"]["environment"]["REWARDHUB_SANDBOX_URL"] == "http://sandbox:8000"


# --- the README's compose commands, as written -------------------------------------------------------

def readme_compose_commands() -> list[str]:
    return [c for c in bash_commands(section("Docker Compose and Kubernetes"))
            if c.startswith(("export ", "docker compose"))]


def readme_environment(commands: list[str]) -> dict[str, str]:
    """The variables the README's ``export`` lines set, with their substitutions run."""
    exported = {}
    for command in commands:
        if command.startswith("export "):
            name, _, value = argv(command)[1].partition("=")
            exported[name] = value
    return exported


def test_the_readme_exports_exactly_what_compose_requires() -> None:
    # Every ${VAR:?message} in the file is a variable compose refuses to start without.
    required = set(re.findall(r"\$\{(\w+):\?", COMPOSE_FILE.read_text()))
    exported = readme_environment(readme_compose_commands())
    assert set(exported) == required == REQUIRED
    assert len(exported["REWARDHUB_SECRET_KEY"]) >= 32
    # The passwords go into URLs unescaped: the README's are hex.
    for name in ("POSTGRES_PASSWORD", "REDIS_PASSWORD"):
        assert re.fullmatch(r"[0-9a-f]{32}", exported[name]), name


def test_docker_compose_accepts_the_readmes_commands_as_written() -> None:
    commands = readme_compose_commands()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("REWARDHUB_", "COMPOSE_")) and k not in REQUIRED}
    env.update(readme_environment(commands))
    ups = [argv(c) for c in commands if c.startswith("docker compose") and " up" in c]
    assert ups, "the README shows no `docker compose up`"
    for args in ups:
        profile_args = args[2:args.index("up")]  # e.g. --profile gpu
        result = subprocess.run([docker_compose(), "-f", str(COMPOSE_FILE), *profile_args, "config", "-q"],
                                env=env, capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)
        assert result.returncode == 0, f"{' '.join(args)}: {result.stderr}"
