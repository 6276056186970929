"""Property-based fuzzing of every other service's OpenAPI schema on a real PostgreSQL: no 5xx.

The gateway has its own, deeper run (test_gateway_fuzz.py); here each service gets a smaller,
derandomised one so CI explores the same cases every time.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rewardhub.service_map import SERVICES, build_service_app
from tests.conftest import Tenant, bearer

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

MAX_EXAMPLES = 30
# /v1/grade can be handed code specs that run in the sandbox: covered by the verifier's own tests.
SKIP = {("verifier", "POST", "/v1/grade")}


@pytest.mark.parametrize("service", sorted(set(SERVICES) - {"gateway"}))
def test_service_survives_fuzzing(service: str, postgres_tenant: Tenant) -> None:
    app = build_service_app(service)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert operations
    auth = bearer(postgres_tenant.keys["root"])
    failures: list[str] = []
    for operation in operations:
        if (service, operation.method.upper(), operation.path) in SKIP:
            continue

        @given(case=operation.as_strategy(), with_auth=st.booleans())
        @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def run(case: schemathesis.Case, with_auth: bool) -> None:
            if with_auth:
                case.headers = {**(case.headers or {}), **auth}
            response = case.call(app=app)
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:300]}")
            elif response.status_code >= 400:
                error = response.json()["error"]
                assert error["code"] and error["message"], response.text

        run()
    assert failures == []
