"""The ``rewardhub`` console script.

``pip install rewardhub`` is the light client (httpx and tenacity: ``rewardhub.client`` and the TRL /
veRL adapters); the command line serves, migrates and trains, so it needs the ``server`` and ``train``
extras. Without them the command says so in one line instead of a traceback.
"""

from __future__ import annotations

import sys

OUR_PACKAGES = frozenset({"rewardhub", "services", "trainer", "webui", "migrations"})


def main() -> None:
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
