"""Property-based fuzzing of the gateway's OpenAPI schema (schemathesis) on a real PostgreSQL: no 5xx."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.gateway.app import create_app
from tests.conftest import Tenant, bearer

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

MAX_EXAMPLES = 100


def _operations(app: object) -> list[schemathesis.APIOperation]:
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    return [result.ok() for result in schema.get_all_operations()]


def test_every_operation_survives_fuzzing(postgres_tenant: Tenant) -> None:
    app = create_app()
    operations = _operations(app)
    assert len(operations) >= 7
    auth = bearer(postgres_tenant.keys["root"])
    failures: list[str] = []
    for operation in operations:

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
