"""The rendered chart scanned by checkov (offline: its Kubernetes checks are built in), defaults and
realistic values: every failing check must be one the README's table lists and justifies."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO_ROOT
from tests.unit.deploy.readme_commands import section
from tests.unit.deploy.test_helm import REALISTIC, render

# `make install-dev` puts checkov in a venv of its own (its pins conflict with pytest's); CHECKOV overrides.
CHECKOV = Path(os.environ.get("CHECKOV") or REPO_ROOT / ".venv" / "checkov" / "bin" / "checkov")
# Accepted for each set of values (the README's "Policy scan" table says why).
ACCEPTED = {
    "defaults": {"CKV_K8S_35", "CKV_K8S_43", "CKV_K8S_15"},
    "realistic": {"CKV_K8S_35"},
}


def scan(docs: list[dict[str, Any]], folder: Path) -> dict[str, Any]:
    """checkov's JSON report on ``docs``, with no network (no download of guidelines or policies)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifests.yaml").write_text(yaml.safe_dump_all(docs))
    env = {**os.environ, "BC_API_KEY": "", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false"}
    done = subprocess.run([str(CHECKOV), "-d", str(folder), "--framework", "kubernetes", "--skip-download",
                           "--quiet", "--compact", "-o", "json"],
                          capture_output=True, text=True, timeout=300, env=env, check=False)
    assert done.returncode in (0, 1), done.stderr[-2000:]  # 1: some checks failed
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def failed_ids(report: dict[str, Any]) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for check in report["results"]["failed_checks"]:
        found.setdefault(check["check_id"], set()).add(check["resource"])
    return found


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    if not CHECKOV.exists():
        pytest.fail(f"checkov is not installed at {CHECKOV}: run `make install-dev` (or set CHECKOV)")
    return {name: scan(render(values), tmp_path_factory.mktemp(name))
            for name, values in (("defaults", {}), ("realistic", REALISTIC))}


@pytest.mark.parametrize("which", ["defaults", "realistic"])
def test_checkov_finds_nothing_but_the_accepted_checks(reports: dict[str, dict[str, Any]], which: str) -> None:
    report = reports[which]
    assert report["summary"]["parsing_errors"] == 0
    assert report["summary"]["resource_count"] >= 40
    assert set(failed_ids(report)) == ACCEPTED[which], failed_ids(report)


def test_the_readme_justifies_each_accepted_check() -> None:
    text = section("Docker Compose and Kubernetes")
    table = set(re.findall(r"^\| `(CKV2?_K8S_\d+)` \|", text, re.MULTILINE))
    assert table == set().union(*ACCEPTED.values())


def test_checkov_fails_a_pod_that_breaks_the_rules(tmp_path: Path) -> None:
    # The scan can fail: the gateway with a writable root and a privileged container is caught.
    docs = render({})
    gateway = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-gateway"))
    security = gateway["spec"]["template"]["spec"]["containers"][0]["securityContext"]
    security.update({"readOnlyRootFilesystem": False, "privileged": True, "allowPrivilegeEscalation": True})
    failed = failed_ids(scan([gateway], tmp_path))
    assert {"CKV_K8S_22", "CKV_K8S_16", "CKV_K8S_20"} <= set(failed), failed
