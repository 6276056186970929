"""The Helm chart, rendered and linted by Helm's own Go engine (helm-python-sdk, no helm binary).

The rendered manifests are checked against the code they run: one Deployment and Service per
entry of `rewardhub.service_map.SERVICES`, commands the CLI accepts, probes on the health routes.
"""

from __future__ import annotations

import itertools
import re
from typing import Any

import helm_python as helm
import pytest
import typer
import yaml

from rewardhub.cli import app as cli_app
from rewardhub.service_map import SERVICES
from tests.conftest import REPO_ROOT
from tests.unit.deploy.readme_commands import argv, bash_commands, section

CHART = REPO_ROOT / "helm" / "rewardhub"
RELEASE = "rh"
SECRETS = {"secrets": {"databaseUrl": "postgresql+psycopg://rewardhub:pw@db:5432/rewardhub",
                       "redisUrl": "redis://cache:6379/0", "secretKey": "k" * 32}}
HOOK_INSTALL_UPGRADE = "pre-install,pre-upgrade"


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def render(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every object the chart renders for ``values`` (layered over working secrets)."""
    with helm.Chart.load(CHART) as chart:
        manifests = chart.render(merge(SECRETS, values or {}), name=RELEASE, namespace="rewardhub")
    docs = []
    for path, text in manifests.items():
        if path.endswith(".yaml"):
            docs.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return docs


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == kind}


def component(name: str) -> str:
    return f"{RELEASE}-rewardhub-{name.replace('_', '-')}"


def cli_params(args: list[str]) -> dict[str, Any]:
    """Parse ``args`` as the `rewardhub` CLI would; an unknown command or option raises."""
    commands = typer.main.get_command(cli_app).commands  # type: ignore[attr-defined]
    with commands[args[0]].make_context(args[0], list(args[1:])) as ctx:
        return dict(ctx.params)


@pytest.fixture(scope="module")
def values() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
    return data


@pytest.fixture(scope="module")
def docs() -> list[dict[str, Any]]:
    return render()


def test_chart_passes_strict_lint() -> None:
    report = helm.lint(CHART, SECRETS, strict=True, kube_version="v1.30.0")
    assert report["errors"] == []
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert problems == []


def test_values_list_exactly_the_services_in_the_service_map(values: dict[str, Any]) -> None:
    assert set(values["services"]) == set(SERVICES)


def test_one_deployment_and_service_per_service_plus_the_worker(docs: list[dict[str, Any]]) -> None:
    deployments, services = by_kind(docs, "Deployment"), by_kind(docs, "Service")
    assert set(deployments) == {component(name) for name in SERVICES} | {component("worker")}
    assert set(services) == {component(name) for name in SERVICES}


def test_each_service_deployment_serves_its_service_with_health_probes(
        docs: list[dict[str, Any]], values: dict[str, Any]) -> None:
    deployments, services = by_kind(docs, "Deployment"), by_kind(docs, "Service")
    for name in SERVICES:
        spec = values["services"][name]
        deployment = deployments[component(name)]
        assert deployment["spec"]["replicas"] == spec["replicas"]
        pod = deployment["spec"]["template"]
        (container,) = pod["spec"]["containers"]
        params = cli_params(container["args"])
        assert params["service"] == name and params["port"] == spec["port"] and params["host"] == "0.0.0.0"
        assert container["ports"] == [{"name": "http", "containerPort": spec["port"]}]
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
        assert container["resources"] == spec["resources"]
        assert set(container["resources"]) == {"requests", "limits"}
        service = services[component(name)]
        assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
        assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
        assert service["spec"]["ports"][0]["port"] == spec["port"]
        assert service["spec"]["ports"][0]["targetPort"] == "http"


def test_selectors_do_not_overlap_between_components(docs: list[dict[str, Any]]) -> None:
    selectors = [tuple(sorted(d["spec"]["selector"]["matchLabels"].items()))
                 for d in by_kind(docs, "Deployment").values()]
    assert len(selectors) == len(set(selectors))


def test_every_container_reads_the_configmap_and_secret(docs: list[dict[str, Any]]) -> None:
    (configmap,) = by_kind(docs, "ConfigMap")
    (secret,) = by_kind(docs, "Secret")
    pods = [d["spec"]["template"] for d in docs if d["kind"] in ("Deployment", "Job")]
    assert len(pods) == len(SERVICES) + 2
    for pod in pods:
        for container in pod["spec"]["containers"]:
            expected = [{"configMapRef": {"name": configmap}}]
            if container["name"] != "sandbox":  # runs untrusted code: never the Secret
                expected.append({"secretRef": {"name": secret}})
            assert container["envFrom"] == expected
            assert container["image"] == "rewardhub:0.1.0"


def test_the_sandbox_has_no_credentials_no_egress_and_a_locked_down_pod(docs: list[dict[str, Any]]) -> None:
    sandbox = by_kind(docs, "Deployment")[component("sandbox")]["spec"]["template"]
    (container,) = sandbox["spec"]["containers"]
    assert all("secretRef" not in source for source in container["envFrom"])
    assert sandbox["spec"]["automountServiceAccountToken"] is False
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    assert security["seccompProfile"] == {"type": "RuntimeDefault"} and security["capabilities"]["drop"] == ["ALL"]
    assert sandbox["spec"]["securityContext"]["runAsNonRoot"] is True
    policy = by_kind(docs, "NetworkPolicy")[component("sandbox")]
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"] and policy["spec"]["egress"] == []
    sources = {peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
               for rule in policy["spec"]["ingress"] for peer in rule["from"]}
    assert sources == {"verifier", "trainer"}
    assert policy["spec"]["podSelector"]["matchLabels"] == \
        by_kind(docs, "Deployment")[component("sandbox")]["spec"]["selector"]["matchLabels"]


def test_secret_holds_the_connection_strings_and_key(docs: list[dict[str, Any]]) -> None:
    (secret,) = by_kind(docs, "Secret").values()
    assert secret["stringData"] == {"DATABASE_URL": SECRETS["secrets"]["databaseUrl"],
                                    "REDIS_URL": SECRETS["secrets"]["redisUrl"],
                                    "REWARDHUB_SECRET_KEY": SECRETS["secrets"]["secretKey"]}


def test_configmap_points_each_service_url_at_its_kubernetes_service(
        docs: list[dict[str, Any]], values: dict[str, Any]) -> None:
    (configmap,) = by_kind(docs, "ConfigMap").values()
    services = by_kind(docs, "Service")
    urls = {k: v for k, v in configmap["data"].items() if re.fullmatch(r"REWARDHUB_[A-Z_]+_URL", k)}
    assert set(urls) == {f"REWARDHUB_{name.upper()}_URL" for name in SERVICES}
    for name in SERVICES:
        host_port = urls[f"REWARDHUB_{name.upper()}_URL"].removeprefix("http://")
        host, port = host_port.split(":")
        assert host in services and int(port) == services[host]["spec"]["ports"][0]["port"]
    assert configmap["data"]["REWARDHUB_LOG_JSON"] == "true"


def test_migrate_job_runs_before_install_and_upgrade_after_its_config(docs: list[dict[str, Any]]) -> None:
    (job,) = by_kind(docs, "Job").values()
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == HOOK_INSTALL_UPGRADE
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["migrate"]
    cli_params(container["args"])
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    # The Job is a hook, so what it reads must exist before it: hooks of lower weight.
    for kind in ("ConfigMap", "Secret"):
        (config,) = by_kind(docs, kind).values()
        assert config["metadata"]["annotations"]["helm.sh/hook"] == HOOK_INSTALL_UPGRADE
        assert int(config["metadata"]["annotations"]["helm.sh/hook-weight"]) < int(annotations["helm.sh/hook-weight"])


def test_worker_runs_the_celery_worker_command(docs: list[dict[str, Any]], values: dict[str, Any]) -> None:
    worker = by_kind(docs, "Deployment")[component("worker")]
    (container,) = worker["spec"]["template"]["spec"]["containers"]
    params = cli_params(container["args"])
    assert params == {"queues": values["worker"]["queues"], "concurrency": values["worker"]["concurrency"],
                      "pool": values["worker"]["pool"]}
    probe = container["livenessProbe"]["exec"]["command"]
    compile(probe[2], "<worker probe>", "exec")


def test_pods_run_as_the_image_user_without_privilege_escalation(docs: list[dict[str, Any]]) -> None:
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    uid = int(re.search(r"useradd .*--uid (\d+)", dockerfile).group(1))  # type: ignore[union-attr]
    for doc in docs:
        if doc["kind"] not in ("Deployment", "Job"):
            continue
        pod = doc["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == uid
        for container in pod["containers"]:
            assert container["securityContext"]["allowPrivilegeEscalation"] is False


def test_no_autoscalers_by_default(docs: list[dict[str, Any]]) -> None:
    assert by_kind(docs, "HorizontalPodAutoscaler") == {}


def test_autoscaling_gateway_and_verifier(values: dict[str, Any]) -> None:
    scaled = {name: {"autoscaling": {"enabled": True, "minReplicas": 3, "maxReplicas": 9}}
              for name in ("gateway", "verifier")}
    docs = render({"services": scaled})
    hpas = by_kind(docs, "HorizontalPodAutoscaler")
    assert set(hpas) == {component("gateway"), component("verifier")}
    deployments = by_kind(docs, "Deployment")
    for name, hpa in hpas.items():
        assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
        assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 9)
        assert "replicas" not in deployments[name]["spec"], "the HPA owns the replica count"


def test_existing_secret_is_referenced_not_created() -> None:
    docs = render({"secrets": {"existingSecret": "prod-rewardhub", "databaseUrl": "", "redisUrl": "",
                               "secretKey": ""}})
    assert by_kind(docs, "Secret") == {}
    for name, deployment in by_kind(docs, "Deployment").items():
        env_from = deployment["spec"]["template"]["spec"]["containers"][0]["envFrom"]
        has_secret = {"secretRef": {"name": "prod-rewardhub"}} in env_from
        assert has_secret is (name != component("sandbox")), name


def test_missing_secrets_fail_the_render_naming_the_value() -> None:
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmRenderError, match=r"secrets\.databaseUrl is required"):
        chart.render({}, name=RELEASE, namespace="rewardhub")


# --- the README's `helm install`, as written ------------------------------------------------------

def readme_helm_install() -> list[str]:
    commands = [c for c in bash_commands(section("Docker Compose and Kubernetes")) if c.startswith("helm install")]
    assert len(commands) == 1, commands
    return argv(commands[0])


def set_values(args: list[str]) -> dict[str, Any]:
    """The values of a helm command's ``--set a.b=c`` options, as the nested mapping helm builds."""
    values: dict[str, Any] = {}
    for flag, assignment in itertools.pairwise(args):
        if flag != "--set":
            continue
        path, _, value = assignment.partition("=")
        *parents, leaf = path.split(".")
        node = values
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return values


def test_the_readmes_helm_install_works_on_the_charts_defaults() -> None:
    args = readme_helm_install()
    assert args[:4] == ["helm", "install", "rewardhub", "helm/rewardhub"]
    values = set_values(args)
    assert set(values["secrets"]) == {"databaseUrl", "redisUrl", "secretKey"}
    assert len(values["secrets"]["secretKey"]) >= 32
    report = helm.lint(CHART, values, strict=True, kube_version="v1.30.0")
    assert report["errors"] == []
    with helm.Chart.load(CHART) as chart:
        manifests = chart.render(values, name=args[2], namespace="rewardhub")
    (secret,) = (doc for path, text in manifests.items() if path.endswith(".yaml")
                 for doc in yaml.safe_load_all(text) if doc and doc["kind"] == "Secret")
    assert secret["stringData"]["DATABASE_URL"] == values["secrets"]["databaseUrl"]


def test_the_readme_says_what_a_bare_helm_install_needs() -> None:
    # Without the --set values the chart stops naming the first missing one; the README says which.
    text = section("Docker Compose and Kubernetes")
    assert "secrets.databaseUrl is required" in text and "secrets.existingSecret" in text
    assert "bundles neither" in text
