"""Schemathesis + Hypothesis over an app's OpenAPI operations: the failures that answered 5xx."""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


def operations_of(app: object) -> list[schemathesis.APIOperation]:
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    return [result.ok() for result in schema.get_all_operations()]


def fuzz(app: object, operations: list[schemathesis.APIOperation], auth: dict[str, str],
         max_examples: int) -> list[str]:
    """Call each operation with generated cases, with and without ``auth``; return every 5xx seen.

    Every 4xx must carry the platform's error body (``{"error": {"code", "message", ...}}``).
    Derandomised, so CI explores the same cases every run.
    """
    failures: list[str] = []
    for operation in operations:

        @given(case=operation.as_strategy(), with_auth=st.booleans())
        @settings(max_examples=max_examples, deadline=None, derandomize=True, database=None,
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
    return failures
