"""The Helm chart, rendered and linted by Helm's own Go engine (helm-python-sdk, no helm binary).

The rendered manifests are checked against the code they run: one Deployment and Service per
entry of `rewardhub.service_map.SERVICES`, commands the CLI accepts, probes on the health routes.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterator
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
# What each component reads of the Secret, checked in the code: every service but the sandbox looks
# API keys up in the database (the verifier too: it authenticates /v1/grade callers); only the
# annotation service signs sessions (services/annotation/ui_session.py, login_throttle.py); Redis is
# used by those that submit Celery tasks (rubric jobs, webhook kicks, behaviour-model training) and the
# worker; the sandbox token by the sandbox and its two callers: the verifier (services/verifier/
# run_code.py, graders/code.py) and the trainer, whose agent runs hold tool sessions there.
CREDENTIALS = {
    "gateway": {"DATABASE_URL"},
    "verifier": {"DATABASE_URL", "REWARDHUB_SANDBOX_TOKEN"},
    "annotation": {"DATABASE_URL", "REDIS_URL", "REWARDHUB_SECRET_KEY"},
    "rubric_rm": {"DATABASE_URL", "REDIS_URL"},
    "sandbox": {"REWARDHUB_SANDBOX_TOKEN"},
    "trainer": {"DATABASE_URL", "REWARDHUB_SANDBOX_TOKEN"},
    "rec_rm": {"DATABASE_URL", "REDIS_URL"},
    "retrieval": {"DATABASE_URL"},
    "teacher": {"DATABASE_URL"},
    "worker": {"DATABASE_URL", "REDIS_URL"},
    "migrate": {"DATABASE_URL"},
}
SERVICES_WITH_DATABASE = {name for name in SERVICES if "DATABASE_URL" in CREDENTIALS[name]}


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def render(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every object the chart renders for ``values`` (layered over working secrets)."""
    with helm.Chart.load(CHART) as chart:
        manifests = chart.render(merge(SECRETS, values or {}), name=RELEASE, namespace="rewardhub")
    docs: list[dict[str, Any]] = []
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
        assert container["ports"] == [{"name": "http", "containerPort": spec["port"], "protocol": "TCP"}]
        assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "http"}
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


def secret_keys(container: dict[str, Any]) -> set[str]:
    """The Secret keys a container's environment holds (and a check that it takes no Secret whole)."""
    assert all("secretRef" not in source for source in container.get("envFrom", []))
    return {entry["valueFrom"]["secretKeyRef"]["key"] for entry in container.get("env", [])
            if "secretKeyRef" in entry.get("valueFrom", {})}


def test_each_container_gets_only_the_credentials_it_uses(docs: list[dict[str, Any]]) -> None:
    (configmap,) = by_kind(docs, "ConfigMap")
    pods = {doc["metadata"]["labels"]["app.kubernetes.io/component"].replace("-", "_"): doc["spec"]["template"]
            for doc in docs if doc["kind"] in ("Deployment", "Job")}
    assert set(pods) == set(CREDENTIALS)
    for name, pod in pods.items():
        (container,) = pod["spec"]["containers"]
        assert secret_keys(container) == CREDENTIALS[name], name
        assert container["image"] == "rewardhub:0.1.0"
        if name != "migrate":  # a hook: it runs before the ConfigMap exists
            assert container["envFrom"] == [{"configMapRef": {"name": configmap}}]
    # Untrusted code runs in the sandbox and is graded by the verifier: neither holds the secret key.
    assert "REWARDHUB_SECRET_KEY" not in CREDENTIALS["verifier"] | CREDENTIALS["sandbox"]


def test_the_sandbox_has_no_credentials_no_egress_and_a_locked_down_pod(docs: list[dict[str, Any]]) -> None:
    sandbox = by_kind(docs, "Deployment")[component("sandbox")]["spec"]["template"]
    (container,) = sandbox["spec"]["containers"]
    assert secret_keys(container) == {"REWARDHUB_SANDBOX_TOKEN"}
    assert sandbox["spec"]["automountServiceAccountToken"] is False
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    assert security["seccompProfile"] == {"type": "RuntimeDefault"} and security["capabilities"]["drop"] == ["ALL"]
    assert sandbox["spec"]["securityContext"]["runAsNonRoot"] is True
    policy = by_kind(docs, "NetworkPolicy")[component("sandbox")]
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"] and policy["spec"]["egress"] == []
    sources = {peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
               for rule in policy["spec"]["ingress"] for peer in rule["from"]}
    assert sources == {"verifier", "trainer"}  # code graders; agent runs' tool sessions
    assert policy["spec"]["podSelector"]["matchLabels"] == \
        by_kind(docs, "Deployment")[component("sandbox")]["spec"]["selector"]["matchLabels"]
    # Tool sessions live in one pod's memory: a caller sticks to the pod that holds its sessions.
    service = by_kind(docs, "Service")[component("sandbox")]["spec"]
    assert service["sessionAffinity"] == "ClientIP"
    assert service["sessionAffinityConfig"] == {"clientIP": {"timeoutSeconds": 3600}}
    assert "sessionAffinity" not in by_kind(docs, "Service")[component("gateway")]["spec"]


def test_secret_holds_the_connection_strings_and_key(docs: list[dict[str, Any]]) -> None:
    secret = by_kind(docs, "Secret")[f"{RELEASE}-rewardhub-secrets"]
    assert secret["stringData"] == {"DATABASE_URL": SECRETS["secrets"]["databaseUrl"],
                                    "REDIS_URL": SECRETS["secrets"]["redisUrl"],
                                    "REWARDHUB_SECRET_KEY": SECRETS["secrets"]["secretKey"]}


def test_an_empty_secret_key_is_generated() -> None:
    docs = render({"secrets": {"secretKey": "", "sandboxToken": "t" * 40}})
    data = by_kind(docs, "Secret")[f"{RELEASE}-rewardhub-secrets"]["stringData"]
    assert re.fullmatch(r"[A-Za-z0-9]{64}", data["REWARDHUB_SECRET_KEY"])
    assert data["REWARDHUB_SANDBOX_TOKEN"] == "t" * 40


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


def test_migrate_job_runs_before_install_and_upgrade_with_its_own_hook_secret(docs: list[dict[str, Any]]) -> None:
    (job,) = by_kind(docs, "Job").values()
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == HOOK_INSTALL_UPGRADE
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["migrate"]
    cli_params(container["args"])
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    # The release's ConfigMap and Secret are ordinary objects (uninstalled and rolled back with it)...
    for kind in ("ConfigMap", "Secret"):
        for name, config in by_kind(docs, kind).items():
            if name != component("migrate"):
                assert "helm.sh/hook" not in config["metadata"].get("annotations", {}), name
    # ...so the hook reads a hook Secret of its own, created before it and deleted when it succeeds.
    hook_secret = by_kind(docs, "Secret")[component("migrate")]
    hook = hook_secret["metadata"]["annotations"]
    assert hook["helm.sh/hook"] == HOOK_INSTALL_UPGRADE
    assert int(hook["helm.sh/hook-weight"]) < int(annotations["helm.sh/hook-weight"])
    assert "hook-succeeded" in hook["helm.sh/hook-delete-policy"]
    assert hook_secret["stringData"] == {"DATABASE_URL": SECRETS["secrets"]["databaseUrl"]}
    (entry,) = container["env"][:1]
    assert entry["valueFrom"]["secretKeyRef"] == {"name": component("migrate"), "key": "DATABASE_URL"}
    # Its NetworkPolicy too is a hook before it (a default-deny namespace would block it otherwise).
    policy = by_kind(docs, "NetworkPolicy")[component("migrate")]["metadata"]["annotations"]
    assert policy["helm.sh/hook"] == HOOK_INSTALL_UPGRADE
    assert int(policy["helm.sh/hook-weight"]) < int(annotations["helm.sh/hook-weight"])
    other_policies = [p for n, p in by_kind(docs, "NetworkPolicy").items() if n != component("migrate")]
    assert all("annotations" not in p["metadata"] for p in other_policies)


def test_worker_runs_the_celery_worker_command(docs: list[dict[str, Any]], values: dict[str, Any]) -> None:
    worker = by_kind(docs, "Deployment")[component("worker")]
    (container,) = worker["spec"]["template"]["spec"]["containers"]
    params = cli_params(container["args"])
    # No --queues by default: the worker consumes every job kind's queue.
    assert "--queues" not in container["args"] and values["worker"]["queues"] == ""
    assert params == {"queues": "", "concurrency": values["worker"]["concurrency"], "pool": values["worker"]["pool"]}
    probe = container["livenessProbe"]["exec"]["command"]
    compile(probe[2], "<worker probe>", "exec")
    chosen = by_kind(render({"worker": {"queues": "rubric_rm,rec_rm"}}), "Deployment")[component("worker")]
    assert cli_params(chosen["spec"]["template"]["spec"]["containers"][0]["args"])["queues"] == "rubric_rm,rec_rm"


def test_the_charts_job_queues_are_the_codes() -> None:
    from services.common.registry import queue_names

    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    block = helpers[helpers.index('define "rewardhub.jobQueues"'):]
    listed = block.split("-}}", 1)[1].split("{{", 1)[0].strip()
    assert listed.split(",") == queue_names()


KEDA_REDIS: dict[str, Any] = {"address": "redis.cache:6379", "databaseIndex": 2}
KEDA: dict[str, Any] = {"enabled": True, "redis": KEDA_REDIS}


def test_no_keda_objects_by_default(docs: list[dict[str, Any]]) -> None:
    assert not [doc for doc in docs if doc["apiVersion"].startswith("keda.sh/")]
    assert by_kind(docs, "Deployment")[component("worker")]["spec"]["replicas"] == 1


def test_keda_scales_the_worker_on_each_queue_it_consumes() -> None:
    docs = render({"worker": {"keda": KEDA}})
    worker = by_kind(docs, "Deployment")[component("worker")]
    assert "replicas" not in worker["spec"]  # KEDA's HPA owns the count; an upgrade must not reset it
    (scaled,) = [doc for doc in docs if doc["kind"] == "ScaledObject"]
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": component("worker")}
    assert (spec["minReplicaCount"], spec["maxReplicaCount"], spec["cooldownPeriod"]) == (1, 8, 300)
    from services.common.registry import queue_names

    assert [t["metadata"]["listName"] for t in spec["triggers"]] == queue_names()
    # KEDA reads trigger metadata as strings only.
    assert spec["triggers"][0] == {"type": "redis", "metadata": {
        "address": "redis.cache:6379", "listName": "celery", "listLength": "5", "activationListLength": "0",
        "databaseIndex": "2", "enableTLS": "false"}}
    assert not [doc for doc in docs if doc["kind"] == "TriggerAuthentication"]


def test_keda_follows_the_workers_queues_and_reads_the_password_from_a_secret() -> None:
    keda = {**KEDA, "redis": {**KEDA_REDIS, "passwordSecret": {"name": "broker", "key": "password"}}}
    docs = render({"worker": {"queues": "rubric_rm", "keda": keda}})
    (scaled,) = [doc for doc in docs if doc["kind"] == "ScaledObject"]
    (auth,) = [doc for doc in docs if doc["kind"] == "TriggerAuthentication"]
    assert auth["spec"] == {"secretTargetRef": [{"parameter": "password", "name": "broker", "key": "password"}]}
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["metadata"]["listName"] == "rubric_rm"
    assert trigger["authenticationRef"] == {"name": auth["metadata"]["name"]}


def test_the_readmes_keda_values_render_a_scaled_worker() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme[readme.index("**Job queues and scaling the worker.**"):]
    block = section[section.index("```yaml\n") + len("```yaml\n"):]
    docs = render(yaml.safe_load(block[:block.index("```")]))
    (scaled,) = [doc for doc in docs if doc["kind"] == "ScaledObject"]
    assert scaled["spec"]["maxReplicaCount"] == 8
    assert {t["authenticationRef"]["name"] for t in scaled["spec"]["triggers"]} == {component("worker")}


def test_keda_without_the_brokers_address_fails_the_render_naming_the_value() -> None:
    with pytest.raises(helm.HelmRenderError, match=r"worker\.keda\.redis\.address is required"):
        render({"worker": {"keda": {"enabled": True}}})


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
    for doc in docs:
        if doc["kind"] in ("Deployment", "Job"):
            for entry in doc["spec"]["template"]["spec"]["containers"][0].get("env", []):
                if "secretKeyRef" in entry.get("valueFrom", {}):
                    assert entry["valueFrom"]["secretKeyRef"]["name"] == "prod-rewardhub"


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
    assert set(values["secrets"]) == {"databaseUrl", "redisUrl"}
    report = helm.lint(CHART, values, strict=True, kube_version="v1.30.0")
    assert report["errors"] == []
    with helm.Chart.load(CHART) as chart:
        manifests = chart.render(values, name=args[2], namespace="rewardhub")
    secret = next(doc for path, text in manifests.items() if path.endswith("secret.yaml")
                  for doc in yaml.safe_load_all(text) if doc and doc["kind"] == "Secret")
    assert secret["stringData"]["DATABASE_URL"] == values["secrets"]["databaseUrl"]
    assert len(secret["stringData"]["REWARDHUB_SECRET_KEY"]) == 64


def test_the_readme_says_what_a_bare_helm_install_needs() -> None:
    # Without the --set values the chart stops naming the first missing one; the README says which.
    text = section("Docker Compose and Kubernetes")
    assert "secrets.databaseUrl is required" in text and "secrets.existingSecret" in text
    assert "bundles neither" in text


# --- values.schema.json: typos, wrong types and unknown keys fail the install ---------------------

@pytest.mark.parametrize(("values", "message"), [
    ({"replica": 5}, r"additional properties 'replica' not allowed"),
    ({"services": {"gateway": {"replicas": "two"}}}, r"/services/gateway/replicas': got string, want integer"),
    ({"worker": {"concurency": 16}}, r"/worker': additional properties 'concurency' not allowed"),
    ({"persistence": {"enabled": True}}, r"additional properties 'persistence' not allowed"),
    ({"services": {"verifier": {"credentials": ["databaseUrl", "secretkey"]}}}, r"/services/verifier/credentials/1"),
    ({"ingress": {"hosts": [{"host": "a", "paths": [{"path": "/", "pathType": "Prefix", "service": "gw"}]}]}},
     r"/ingress/hosts/0/paths/0/service"),
])
def test_the_schema_rejects_bad_values_naming_the_key(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmValuesError, match=message):
        render(values)


def test_the_schema_forbids_unknown_keys_at_every_level() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"

    def walk(node: dict[str, Any], path: str) -> Iterator[str]:
        if node.get("type") == "object" and "properties" in node:
            if node.get("additionalProperties") is not False:
                yield path
            for key, child in node["properties"].items():
                yield from walk(child, f"{path}.{key}")
        if isinstance(node.get("items"), dict):
            yield from walk(node["items"], f"{path}[]")

    assert list(walk(schema, "")) == []


# --- realistic values: what a production install sets ----------------------------------------------

REALISTIC: dict[str, Any] = {
    "image": {"repository": "registry.example.com/rewardhub", "tag": "0.1.0", "pullPolicy": "Always",
              "digest": "sha256:" + "0123456789abcdef" * 4},
    "imagePullSecrets": [{"name": "registry"}],
    "secrets": {"sandboxToken": "s" * 40},
    "database": {"pool": {"size": 3, "maxOverflow": 2}, "pgbouncer": True},
    "networkPolicy": {"database": {"to": [{"ipBlock": {"cidr": "10.20.0.5/32"}}]},
                      "redis": {"to": [{"ipBlock": {"cidr": "10.20.0.6/32"}}]},
                      "metricsFrom": [{"namespaceSelector": {"matchLabels": {
                          "kubernetes.io/metadata.name": "monitoring"}}}]},
    "ingress": {"enabled": True, "className": "nginx",
                "annotations": {"nginx.ingress.kubernetes.io/proxy-read-timeout": "600"},
                "hosts": [{"host": "rewardhub.example.com", "paths": [
                    {"path": "/", "pathType": "Prefix", "service": "gateway"},
                    {"path": "/ui", "pathType": "Prefix", "service": "annotation"}]}],
                "tls": [{"hosts": ["rewardhub.example.com"], "secretName": "rewardhub-tls"}]},
    "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
    "services": {
        "gateway": {"autoscaling": {"enabled": True, "minReplicas": 3, "maxReplicas": 10},
                    "podAnnotations": {"example.com/team": "rl"}},
        "verifier": {"autoscaling": {"enabled": True, "minReplicas": 3, "maxReplicas": 20},
                     "extraEnv": [{"name": "REWARDHUB_VERIFIER_ITEM_TIMEOUT_S", "value": "8"}]},
        "rubric_rm": {"env": {"REWARDHUB_LLM_BASE_URL": "http://vllm.llm:8000/v1"},
                      "networkPolicy": {"extraEgress": [{"to": [{"namespaceSelector": {"matchLabels": {
                          "kubernetes.io/metadata.name": "llm"}}}], "ports": [{"port": 8000, "protocol": "TCP"}]}]}},
        "sandbox": {"seccompProfile": {"type": "Localhost", "localhostProfile": "profiles/rewardhub-sandbox.json"}},
        "trainer": {"resources": {"requests": {"cpu": "4", "memory": "32Gi", "nvidia.com/gpu": 1},
                                  "limits": {"cpu": "16", "memory": "64Gi", "nvidia.com/gpu": 1}},
                    "nodeSelector": {"nvidia.com/gpu.present": "true"},
                    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                    "persistence": {"existingClaim": "rewardhub-checkpoints"},
                    "extraVolumes": [{"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}}],
                    "extraVolumeMounts": [{"name": "shm", "mountPath": "/dev/shm"}]},
    },
    "worker": {"replicas": 2, "concurrency": 4},
}


@pytest.fixture(scope="module")
def realistic() -> list[dict[str, Any]]:
    return render(REALISTIC)


def pod_specs(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {f"{doc['kind']}/{doc['metadata']['name']}": doc["spec"]["template"]["spec"]
            for doc in docs if doc["kind"] in ("Deployment", "Job", "StatefulSet", "DaemonSet")}


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    """Where ``pod`` breaks Pod Security Standards "restricted" (and the baseline it includes).

    The rules of https://kubernetes.io/docs/concepts/security/pod-security-standards/, each written
    out here: host namespaces, privileged, added capabilities beyond NET_BIND_SERVICE, hostPath,
    host ports, AppArmor/SELinux/procMount/sysctls overrides, volume types, privilege escalation,
    running as non-root (pod or every container), seccomp RuntimeDefault or Localhost, drop ALL.
    """
    problems = []
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(field):
            problems.append(field)
    allowed_volumes = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                       "projected", "secret"}
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= allowed_volumes:
            problems.append(f"volume {volume['name']}: {sorted(kinds - allowed_volumes)}")
    pod_security = pod.get("securityContext", {})
    if pod_security.get("sysctls"):
        problems.append("sysctls")
    containers = pod["containers"] + pod.get("initContainers", []) + pod.get("ephemeralContainers", [])
    for container in containers:
        name = container["name"]
        security = container.get("securityContext", {})
        if security.get("privileged"):
            problems.append(f"{name}: privileged")
        if security.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation must be false")
        caps = security.get("capabilities", {})
        if "ALL" not in caps.get("drop", []):
            problems.append(f"{name}: capabilities must drop ALL")
        if set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            problems.append(f"{name}: adds {caps['add']}")
        if security.get("procMount", "Default") != "Default":
            problems.append(f"{name}: procMount")
        non_root = security.get("runAsNonRoot", pod_security.get("runAsNonRoot"))
        if non_root is not True:
            problems.append(f"{name}: runAsNonRoot")
        if security.get("runAsUser", pod_security.get("runAsUser")) == 0:
            problems.append(f"{name}: runAsUser 0")
        seccomp = security.get("seccompProfile", pod_security.get("seccompProfile", {}))
        if seccomp.get("type") not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{name}: seccompProfile")
        if any(port.get("hostPort") for port in container.get("ports", [])):
            problems.append(f"{name}: hostPort")
        selinux = security.get("seLinuxOptions", {})
        if selinux.get("type") not in (None, "container_t", "container_init_t", "container_kvm_t") or \
                selinux.get("user") or selinux.get("role"):
            problems.append(f"{name}: seLinuxOptions")
    return problems


def test_the_restricted_check_catches_each_rule() -> None:
    # The checker itself, on a pod that breaks rules one by one (a check that cannot fail proves nothing).
    good: dict[str, Any] = {"securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "c", "securityContext": {"allowPrivilegeEscalation": False,
                                                               "capabilities": {"drop": ["ALL"]}}}]}
    assert restricted_violations(good) == []
    breaks: list[tuple[dict[str, Any], str]] = [
        ({"hostNetwork": True}, "hostNetwork"),
        ({"volumes": [{"name": "h", "hostPath": {"path": "/"}}]}, "volume h"),
        ({"securityContext": {"runAsNonRoot": False, "seccompProfile": {"type": "RuntimeDefault"}}}, "runAsNonRoot"),
        ({"securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "Unconfined"}}}, "seccompProfile"),
        ({"containers": [{"name": "c", "securityContext": {"privileged": True, "allowPrivilegeEscalation": False,
                                                           "capabilities": {"drop": ["ALL"]}}}]}, "privileged"),
        ({"containers": [{"name": "c", "securityContext": {"allowPrivilegeEscalation": False,
                                                           "capabilities": {"drop": ["ALL"], "add": ["SYS_ADMIN"]}}}]},
         "adds"),
        ({"containers": [{"name": "c", "securityContext": {"capabilities": {"drop": ["ALL"]}}}]},
         "allowPrivilegeEscalation"),
    ]
    for change, expected in breaks:
        problems = restricted_violations({**good, **change})
        assert any(expected in problem for problem in problems), (change, problems)


@pytest.mark.parametrize("which", ["defaults", "realistic"])
def test_pod_security_restricted_admits_every_pod(which: str, docs: list[dict[str, Any]],
                                                  realistic: list[dict[str, Any]]) -> None:
    pods = pod_specs(docs if which == "defaults" else realistic)
    assert len(pods) == len(SERVICES) + 2
    for name, pod in pods.items():
        assert restricted_violations(pod) == [], name


@pytest.mark.parametrize("which", ["defaults", "realistic"])
def test_every_object_validates_against_the_kubernetes_schemas(which: str, docs: list[dict[str, Any]],
                                                               realistic: list[dict[str, Any]]) -> None:
    import kubernetes_validate

    validated = 0
    for doc in docs if which == "defaults" else realistic:
        if doc["kind"] == "ServiceMonitor":  # a CRD: Prometheus Operator's, not in Kubernetes' schemas
            assert doc["apiVersion"] == "monitoring.coreos.com/v1"
            continue
        kubernetes_validate.validate(doc, "1.30.0", strict=True)  # strict: unknown fields are errors
        validated += 1
    assert validated >= 30


def test_kubernetes_validate_rejects_an_unknown_field(docs: list[dict[str, Any]]) -> None:
    import kubernetes_validate

    broken = json.loads(json.dumps(by_kind(docs, "Deployment")[component("gateway")]))
    broken["spec"]["template"]["spec"]["containers"][0]["securityContex"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, "1.30.0", strict=True)


def test_read_only_roots_with_tmp_and_data_as_volumes(docs: list[dict[str, Any]]) -> None:
    for name, pod in pod_specs(docs).items():
        (container,) = pod["containers"]
        assert container["securityContext"]["readOnlyRootFilesystem"] is True, name
        mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
        volumes = {volume["name"]: volume for volume in pod["volumes"]}
        assert "emptyDir" in volumes[mounts["/tmp"]] and mounts["/data"] in volumes, name
        assert pod["automountServiceAccountToken"] is False, name


def test_the_service_account_mounts_no_token(docs: list[dict[str, Any]]) -> None:
    (account,) = by_kind(docs, "ServiceAccount").values()
    assert account["automountServiceAccountToken"] is False
    for name, pod in pod_specs(docs).items():
        assert pod["serviceAccountName"] == account["metadata"]["name"], name


def test_recommended_labels_on_every_object(docs: list[dict[str, Any]]) -> None:
    for doc in docs:
        labels = doc["metadata"]["labels"]
        for key in ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
                    "app.kubernetes.io/component", "app.kubernetes.io/part-of", "app.kubernetes.io/managed-by"):
            assert key in labels, (doc["kind"], doc["metadata"]["name"], key)


def test_a_disruption_budget_and_spread_per_component(docs: list[dict[str, Any]]) -> None:
    budgets = by_kind(docs, "PodDisruptionBudget")
    deployments = by_kind(docs, "Deployment")
    assert set(budgets) == set(deployments)
    for name, deployment in deployments.items():
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert budgets[name]["spec"] == {"maxUnavailable": 1, "selector": {"matchLabels": selector}}
        spread = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
        assert {c["topologyKey"] for c in spread} == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}
        assert all(c["labelSelector"]["matchLabels"] == selector for c in spread)


# --- NetworkPolicies: each component reaches what it calls, reached by its callers ----------------

# Who calls whom, from the code: service_client("<name>") calls (gateway -> verifier in
# services/gateway/rewards.py; verifier -> sandbox in run_code.py and graders/code.py; verifier ->
# rubric_rm in graders/rubric.py; verifier -> rec_rm in graders/rec.py and rec_rm -> verifier for its
# constraint checkers), the trainer's rewards through the gateway (services/trainer/worker.py), and
# agent runs' tools: sandbox sessions, retrieval search and the teacher (trainer/agent, trainer/ziprl).
CALLS = {"gateway": {"verifier"}, "verifier": {"sandbox", "rubric_rm", "rec_rm"}, "rec_rm": {"verifier"},
         "trainer": {"gateway", "annotation", "sandbox", "retrieval", "teacher"}}
PUBLIC = {"gateway", "annotation", "rubric_rm", "trainer", "rec_rm", "retrieval", "teacher"}  # user-facing APIs


def peers_components(rule: dict[str, Any], key: str) -> set[str]:
    return {peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
            for peer in rule.get(key, [])
            if "app.kubernetes.io/component" in peer.get("podSelector", {}).get("matchLabels", {})}


def test_every_component_has_a_network_policy_matching_the_call_graph(docs: list[dict[str, Any]]) -> None:
    policies = by_kind(docs, "NetworkPolicy")
    assert set(policies) == {component(n) for n in [*SERVICES, "worker", "migrate"]}
    for name in SERVICES:
        spec = policies[component(name)]["spec"]
        reached = set().union(*(peers_components(rule, "to") for rule in spec["egress"])) if spec["egress"] else set()
        assert {c.replace("-", "_") for c in reached} == CALLS.get(name, set()), name
        callers = {c.replace("-", "_") for rule in spec["ingress"] for c in peers_components(rule, "from")}
        expected_callers = {caller for caller, callees in CALLS.items() if name in callees}
        if name in PUBLIC:
            assert any("from" not in rule for rule in spec["ingress"]), name
        else:
            assert callers == expected_callers, name
        ports = {p["port"] for rule in spec["egress"] for p in rule.get("ports", [])}
        assert (5432 in ports) is (name in SERVICES_WITH_DATABASE), name
        assert (6379 in ports) is ("REDIS_URL" in CREDENTIALS[name]), name
    worker = policies[component("worker")]["spec"]
    assert worker["ingress"] == []
    public = next(rule for rule in worker["egress"] if any("ipBlock" in peer for peer in rule.get("to", [])))
    assert "10.0.0.0/8" in public["to"][0]["ipBlock"]["except"]


def test_network_policies_name_the_database_and_scrapers_when_given(realistic: list[dict[str, Any]]) -> None:
    policies = by_kind(realistic, "NetworkPolicy")
    gateway = policies[component("gateway")]["spec"]
    db_rule = next(rule for rule in gateway["egress"] if rule["ports"][0]["port"] == 5432)
    assert db_rule["to"] == [{"ipBlock": {"cidr": "10.20.0.5/32"}}]
    verifier = policies[component("verifier")]["spec"]
    assert any(rule.get("from") == REALISTIC["networkPolicy"]["metricsFrom"] for rule in verifier["ingress"])
    assert policies[component("sandbox")]["spec"]["egress"] == []


# --- graceful shutdown: grace periods cover preStop plus the longest request ----------------------

def test_grace_periods_cover_the_longest_request_or_task(docs: list[dict[str, Any]], values: dict[str, Any]) -> None:
    from services.common.settings import Settings
    from services.gateway.rewards import _client_timeout
    from services.gateway.schemas import RewardsRequest

    settings = Settings()
    # The gateway's own budget for the largest batch without a deadline (the verifier and sandbox
    # serve parts of the same request).
    largest = RewardsRequest.model_validate({"spec": {"type": "math"}, "items": [
        {"id": str(i), "completion": "1", "ground_truth": "1"} for i in range(settings.max_batch_items)]})
    relay_s = _client_timeout(largest, {"type": "math"})
    assert relay_s == 30.0 + 10_000 * 0.05 + 30.0  # http_timeout_s + per item + margin, by hand
    llm_call_s = settings.llm_timeout_s * (settings.llm_max_retries + 1)
    assert llm_call_s == 240.0
    longest = {"gateway": relay_s, "verifier": relay_s, "sandbox": relay_s, "rubric_rm": llm_call_s,
               "annotation": settings.http_timeout_s, "trainer": settings.http_timeout_s}
    pre_stop = values["shutdown"]["preStopSleepSeconds"]
    deployments = by_kind(docs, "Deployment")
    for name, need in longest.items():
        pod = deployments[component(name)]["spec"]["template"]["spec"]
        assert pod["terminationGracePeriodSeconds"] >= pre_stop + need, name
        (container,) = pod["containers"]
        assert container["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", str(pre_stop)]
    worker = deployments[component("worker")]["spec"]["template"]["spec"]
    assert worker["terminationGracePeriodSeconds"] >= llm_call_s
    # Rolling updates start the new pod before stopping an old one; the trainer recreates (one GPU).
    for name in SERVICES:
        strategy = deployments[component(name)]["spec"]["strategy"]
        if name == "trainer":
            assert strategy == {"type": "Recreate"}
        else:
            assert strategy["rollingUpdate"]["maxUnavailable"] == 0


# --- optional objects --------------------------------------------------------------------------

def test_no_ingress_or_service_monitor_by_default(docs: list[dict[str, Any]]) -> None:
    assert by_kind(docs, "Ingress") == {} and by_kind(docs, "ServiceMonitor") == {}


def test_ingress_and_service_monitors_when_enabled(realistic: list[dict[str, Any]]) -> None:
    (ingress,) = by_kind(realistic, "Ingress").values()
    paths = ingress["spec"]["rules"][0]["http"]["paths"]
    assert [(p["path"], p["backend"]["service"]["name"]) for p in paths] == [
        ("/", component("gateway")), ("/ui", component("annotation"))]
    assert ingress["spec"]["ingressClassName"] == "nginx" and ingress["spec"]["tls"][0]["secretName"] == "rewardhub-tls"
    monitors = by_kind(realistic, "ServiceMonitor")
    assert set(monitors) == {component(name) for name in SERVICES}
    assert all(m["metadata"]["labels"]["release"] == "prometheus" for m in monitors.values())


def test_per_component_scheduling_volumes_and_env(realistic: list[dict[str, Any]]) -> None:
    deployments = by_kind(realistic, "Deployment")
    trainer = deployments[component("trainer")]["spec"]["template"]["spec"]
    assert trainer["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert trainer["tolerations"][0]["key"] == "nvidia.com/gpu"
    volumes = {v["name"]: v for v in trainer["volumes"]}
    assert volumes["data"] == {"name": "data", "persistentVolumeClaim": {"claimName": "rewardhub-checkpoints"}}
    assert volumes["shm"]["emptyDir"]["medium"] == "Memory"
    assert {"name": "shm", "mountPath": "/dev/shm"} in trainer["containers"][0]["volumeMounts"]
    verifier = deployments[component("verifier")]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in verifier["env"]}
    assert env["REWARDHUB_VERIFIER_ITEM_TIMEOUT_S"] == "8"
    assert env["REWARDHUB_DB_POOL_SIZE"] == "2"  # the verifier's own, over the chart's database.pool
    gateway = deployments[component("gateway")]["spec"]["template"]["spec"]["containers"][0]
    assert {e["name"]: e.get("value") for e in gateway["env"]}["REWARDHUB_DB_PGBOUNCER"] == "true"
    sandbox = deployments[component("sandbox")]["spec"]["template"]["spec"]["containers"][0]
    assert sandbox["securityContext"]["seccompProfile"] == REALISTIC["services"]["sandbox"]["seccompProfile"]


# --- database connections: the README's totals, from the rendered chart ---------------------------

def connection_ceiling(docs: list[dict[str, Any]]) -> int:
    """Most connections the release can hold: per Deployment, its pods (the HPA's maximum when it has
    one) × processes per pod (a worker: concurrency + its main process) × (pool size + overflow)."""
    hpa_max = {h["spec"]["scaleTargetRef"]["name"]: h["spec"]["maxReplicas"]
               for h in by_kind(docs, "HorizontalPodAutoscaler").values()}
    total = 0
    for name, deployment in by_kind(docs, "Deployment").items():
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        if "REWARDHUB_DB_POOL_SIZE" not in env:
            continue  # no database
        pods = hpa_max.get(name, deployment["spec"].get("replicas", 0))
        args = container["args"]
        processes = int(args[args.index("--concurrency") + 1]) + 1 if args[0] == "worker" else 1
        total += pods * processes * (int(env["REWARDHUB_DB_POOL_SIZE"]) + int(env["REWARDHUB_DB_MAX_OVERFLOW"]))
    return total


def test_the_readme_gives_the_connection_totals(docs: list[dict[str, Any]], values: dict[str, Any]) -> None:
    text = section("Docker Compose and Kubernetes")
    default_total, hpa_total = (int(n) for n in re.findall(
        r"default replicas that is at most \*\*(\d+)\*\*.*?maxReplicas` at most \*\*(\d+)\*\*", text, re.DOTALL)[0])
    # By hand: gateway 2×10 + verifier 2×4 + annotation, rubric_rm, trainer 10 each + worker 1×3×10
    # + rec_rm 1×4 + retrieval 1×2 + teacher 1×2.
    assert connection_ceiling(docs) == default_total == 20 + 8 + 30 + 30 + 4 + 2 + 2
    scaled = render({"services": {name: {"autoscaling": {"enabled": True}} for name in SERVICES}})
    # gateway 10×10 + verifier 20×4 + annotation 4×10 + rubric_rm 4×10 + trainer 1×10 + worker 30
    # + rec_rm 4×4 + retrieval 4×2 + teacher 1×2.
    assert connection_ceiling(scaled) == hpa_total == 100 + 80 + 40 + 40 + 10 + 30 + 16 + 8 + 2
    assert values["database"]["pool"] == {"size": 5, "maxOverflow": 5}


def test_chart_passes_strict_lint_with_realistic_values() -> None:
    report = helm.lint(CHART, merge(SECRETS, REALISTIC), strict=True, kube_version="v1.30.0")
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []
