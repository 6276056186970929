"""Property-based fuzzing of the gateway's OpenAPI schema (schemathesis) on a real PostgreSQL: no 5xx."""

from __future__ import annotations

import pytest

from services.gateway.app import create_app
from tests.conftest import Tenant, bearer
from tests.integration.fuzzing import fuzz, operations_of

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

MAX_EXAMPLES = 100


def test_every_operation_survives_fuzzing(postgres_tenant: Tenant) -> None:
    app = create_app()
    operations = operations_of(app)
    assert len(operations) >= 7
    assert fuzz(app, operations, bearer(postgres_tenant.keys["root"]), MAX_EXAMPLES) == []
