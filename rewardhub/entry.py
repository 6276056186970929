"""The ``rewardhub`` console script.

``pip install rewardhub`` is the light client (httpx and tenacity: ``rewardhub.client`` and the TRL /
veRL adapters); the command line serves, migrates and trains, so it needs the ``server`` and ``train``
extras. Without them the command says so in one line instead of a traceback.
"""

from __future__ import annotations

import os
import sys
import tempfile

OUR_PACKAGES = frozenset({"rewardhub", "services", "trainer", "webui", "migrations"})


def prepare_worker_metrics() -> None:
    """``rewardhub worker`` with REWARDHUB_WORKER_METRICS_PORT: Prometheus's multiprocess mode, which must
    be chosen before prometheus_client is first imported (it picks its value storage at import)."""
    if sys.argv[1:2] == ["worker"] and os.environ.get("REWARDHUB_WORKER_METRICS_PORT") \
            and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="rewardhub-worker-metrics-")


def main() -> None:
    prepare_worker_metrics()
    try:
        from rewardhub.cli import app
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").split(".")[0]
        if not missing or missing in OUR_PACKAGES:
            raise  # a broken install of our own code is a bug to see whole, not a missing extra
        sys.stderr.write(f"rewardhub: the command line needs the server and training extras ({missing} is not "
                         "installed): pip install 'rewardhub[server,train]'\n")
        raise SystemExit(2) from None
    app()
