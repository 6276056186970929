"""The security suite's runtime itself: services really run unprivileged, with only the env given."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO_ROOT, bearer, require
from tests.security.nonroot import (
    BASE_ENV_KEYS,
    NonrootRuntime,
    ServiceDatabase,
    ServiceFactory,
    bootstrap_tenant,
    build_runtime,
    cleanup_runtime,
    project_site_packages,
    service_env,
    sqlite_database,
    start_service,
)

pytestmark = [pytest.mark.security]

MATH_ITEMS = [{"id": "right", "completion": "so the answer is \\boxed{1/2}", "ground_truth": "0.5"},
              {"id": "wrong", "completion": "\\boxed{3}", "ground_truth": "4"}]


def test_runtime_is_unprivileged_and_imports_the_services(nonroot_runtime: NonrootRuntime) -> None:
    runtime = nonroot_runtime
    assert runtime.account.uid != 0
    assert runtime.probe["uid"] == runtime.probe["euid"] == runtime.account.uid
    assert runtime.probe["failed"] == {}
    # The compiled extensions load on the runtime's interpreter (Debian's 3.11.2 when the tests are root).
    assert {"pydantic_core._pydantic_core", "uvloop.loop", "httptools.parser.parser"} <= set(
        runtime.probe["extensions"]), runtime.probe["extensions"]
    assert runtime.probe["psycopg_impl"] in ("binary", "c")  # a compiled libpq binding, not pure Python
    if runtime.tests_are_root:
        assert runtime.mode in ("site", "copy")
        assert runtime.run(["id", "-u"]).stdout.strip() == str(runtime.account.uid)
        assert runtime.run(["id", "-u"], as_root=True).stdout.strip() == "0"
        # Nothing of the runtime is writable by the account (it cannot alter the code it runs).
        for path in (runtime.root, runtime.root / "venv", runtime.site_dir or runtime.root):
            assert path.stat().st_uid == 0 and not path.stat().st_mode & 0o022


@pytest.mark.parametrize("service_database", ["sqlite", "postgres"], indirect=True)
def test_gateway_and_verifier_serve_a_reward_as_the_unprivileged_user(
        nonroot_runtime: NonrootRuntime, start_nonroot_service: ServiceFactory,
        service_database: ServiceDatabase, service_tenant) -> None:
    env = service_env(service_database)
    verifier = start_nonroot_service("verifier", env)
    gateway = start_nonroot_service("gateway", {**env, "REWARDHUB_VERIFIER_URL": verifier.url})

    for service in (verifier, gateway):
        uids, gids = service.proc_ids("Uid"), service.proc_ids("Gid")
        assert uids[0] != 0, f"{service.name} runs as root"
        assert uids == [nonroot_runtime.account.uid] * 4, uids  # real, effective, saved, filesystem
        if nonroot_runtime.tests_are_root:
            assert gids == [nonroot_runtime.account.gid] * 4, gids
            groups = next(line for line in Path(f"/proc/{service.pid}/status").read_text().splitlines()
                          if line.startswith("Groups:"))
            assert groups.split()[1:] == [], f"{service.name} kept supplementary groups: {groups}"
        assert service.data_dir.stat().st_uid == nonroot_runtime.account.uid
        assert httpx.get(service.url + "/healthz", timeout=10).status_code == 200

    body = {"project_id": service_tenant.project_a, "spec": {"type": "math"}, "items": MATH_ITEMS}
    response = httpx.post(gateway.url + "/v1/rewards", json=body, headers=bearer(service_tenant.keys["trainer"]),
                          timeout=120)
    assert response.status_code == 200, f"{response.status_code} {response.text}\n{gateway.tail()}\n{verifier.tail()}"
    results = {r["id"]: r for r in response.json()["results"]}
    assert results["right"]["score"] == 1.0 and results["right"]["status"] == "ok", results
    assert results["wrong"]["score"] == 0.0, results

    # Only the env it was given (plus PATH/LANG/HOME and the data dir): nothing inherited from the tests.
    for service in (verifier, gateway):
        environ = service.proc_environ()
        assert environ == service.env
        given = {**env, **({"REWARDHUB_VERIFIER_URL": verifier.url} if service is gateway else {})}
        assert set(environ) == set(given) | {*BASE_ENV_KEYS, "REWARDHUB_DATA_DIR"}
        leaked = {k for k in environ if k in os.environ and k not in given and k not in BASE_ENV_KEYS}
        assert not leaked, leaked


def test_the_same_service_runs_as_either_user(nonroot_runtime: NonrootRuntime, service_user: str,
                                              start_service_as: ServiceFactory,
                                              service_database: ServiceDatabase, service_tenant) -> None:
    gateway = start_service_as("gateway", service_env(service_database))
    expected = 0 if service_user == "root" else nonroot_runtime.account.uid
    assert gateway.proc_ids("Uid") == [expected] * 4
    assert service_database.data_dir.stat().st_uid == expected
    response = httpx.get(gateway.url + "/readyz", timeout=30)
    assert response.status_code == 200, f"{response.text}\n{gateway.tail()}"
    # The tenant made as that uid authenticates against the service.
    projects = httpx.get(gateway.url + "/v1/projects", headers=bearer(service_tenant.keys["root"]), timeout=30)
    assert projects.status_code == 200, f"{projects.text}\n{gateway.tail()}"


def test_a_stopped_service_leaves_no_process_behind(start_nonroot_service: ServiceFactory,
                                                    service_database: ServiceDatabase) -> None:
    verifier = start_nonroot_service("verifier", service_env(service_database))
    verifier.stop()
    assert verifier.proc.returncode is not None
    with pytest.raises(ProcessLookupError):
        os.killpg(verifier.pid, 0)


@pytest.fixture(scope="module")
def copy_runtime(nonroot_runtime: NonrootRuntime):
    """The runtime CI gets when the clone is not traversable (under /root): everything linked or copied."""
    if nonroot_runtime.mode == "copy" or not nonroot_runtime.tests_are_root:
        yield nonroot_runtime
        return
    runtime = build_runtime("copy")
    yield runtime
    cleanup_runtime(runtime)


@pytest.mark.slow
def test_copy_mode_serves_without_touching_the_project_paths(copy_runtime: NonrootRuntime) -> None:
    require(copy_runtime.mode == "copy", "copy mode is for tests running as root")
    project_paths = [str(REPO_ROOT) + "/", *(str(site) + "/" for site in project_site_packages())]
    require(not copy_runtime.root.is_relative_to(REPO_ROOT), "the runtime lives inside the repo")

    def from_project(path: str) -> bool:
        return any(path.startswith(prefix) for prefix in project_paths)

    assert not [f for f in copy_runtime.probe["module_files"] if from_project(f)]
    database = sqlite_database(copy_runtime)
    tenant = bootstrap_tenant(copy_runtime, database)
    env = service_env(database)
    verifier = gateway = None
    try:
        verifier = start_service(copy_runtime, "verifier", env)
        gateway = start_service(copy_runtime, "gateway", {**env, "REWARDHUB_VERIFIER_URL": verifier.url})
        body = {"project_id": tenant.project_a, "spec": {"type": "math"}, "items": MATH_ITEMS[:1]}
        response = httpx.post(gateway.url + "/v1/rewards", json=body, headers=bearer(tenant.keys["trainer"]),
                              timeout=120)
        assert response.status_code == 200, f"{response.text}\n{gateway.tail()}\n{verifier.tail()}"
        assert response.json()["results"][0]["score"] == 1.0
        for service in (verifier, gateway):
            assert service.proc_ids("Uid")[0] == copy_runtime.account.uid
            mapped = {line.split(maxsplit=5)[5] for line in Path(f"/proc/{service.pid}/maps").read_text().splitlines()
                      if len(line.split(maxsplit=5)) == 6}
            assert not [m for m in mapped if from_project(m)], f"{service.name} maps files of the project venv"
            assert any(m.startswith(str(copy_runtime.root)) for m in mapped)
    finally:
        for service in (gateway, verifier):
            if service is not None:
                service.stop()
