"""The annotation SDK's request, retry and pagination behaviour, against scripted test doubles of the API.

Every server here is an ``httpx.MockTransport`` test double (named ``*_double``): it plays a fixed script
of answers and records what it was sent. Nothing sleeps: the clients get a ``sleep`` that records the
waits it is asked for. The real service is exercised in tests/integration/test_annotation_client.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from rewardhub.annotation_client import (
    AnnotationClient,
    AnnotationError,
    AsyncAnnotationClient,
    Calls,
    RetryPolicy,
    retry_after_seconds,
)
from rewardhub.client import AnnotationClient as ExportedClient
from tests.unit.test_light_client import _run_blocked

PID = "a" * 32
ANNOTATION_OK = {"id": "n1", "task_id": "t1", "assignment_id": "as1", "submission_id": "k", "kind": "answer",
                 "answer": None, "candidate_index": None, "rationale": None, "values": {"pref": "A"},
                 "created_at": "2026-04-01T09:00:00Z", "undone": False, "task_status": "done", "replayed": False}


def error(status: int, code: str, field: str | None = None, retry_after: str | None = None) -> httpx.Response:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return httpx.Response(status, json={"error": {"code": code, "message": f"{code}!", "field": field}},
                          headers=headers)


class ScriptedServerDouble:
    """Test double of the annotation API: answers each request with the next scripted response (an
    ``httpx.Response`` or an exception to raise), and records the requests."""

    def __init__(self, *script: httpx.Response | Exception) -> None:
        self.script = list(script)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        step = self.script.pop(0)
        if isinstance(step, Exception):
            raise step
        return step

    @property
    def keys(self) -> list[str | None]:
        return [r.headers.get("idempotency-key") for r in self.requests]


def client_for(double: Callable[[httpx.Request], httpx.Response], waits: list[float], **kw: Any) -> AnnotationClient:
    return AnnotationClient("http://platform.test", "secret", transport=httpx.MockTransport(double),
                            sleep=waits.append, **kw)


def test_429_and_503_are_retried_honouring_retry_after_with_one_idempotency_key() -> None:
    in_30_s = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    double = ScriptedServerDouble(error(429, "rate_limited", retry_after="2"),
                                  error(503, "commit_failed", retry_after=in_30_s),
                                  error(503, "commit_failed"),
                                  httpx.Response(201, json=ANNOTATION_OK))
    waits: list[float] = []
    client = client_for(double, waits)
    out = client.submit(PID, "as1", {"pref": "A"})
    assert out["values"] == {"pref": "A"} and len(double.requests) == 4
    # Waits: attempt 0 backoff 0.3·2^0 = 0.3 < Retry-After 2 → 2; attempt 1: 0.3·2 = 0.6 < the HTTP date
    # ~30 s ahead → ~30 (a date is read against the clock, so a little under 30); attempt 2: no header,
    # 0.3·2^2 = 1.2.
    assert waits[0] == 2.0 and 28.0 < waits[1] <= 30.0 and waits[2] == pytest.approx(1.2)
    assert len(set(double.keys)) == 1 and double.keys[0]  # the same generated key on every attempt
    assert {r.content for r in double.requests} == {b'{"values":{"pref":"A"}}'}
    assert all(r.headers["authorization"] == "Bearer secret" for r in double.requests)
    assert str(double.requests[0].url) == f"http://platform.test/services/annotation/v1/annotation/projects/{PID}" \
                                          "/assignments/as1/submit"


def test_a_given_idempotency_key_is_sent_and_each_call_gets_its_own_otherwise() -> None:
    double = ScriptedServerDouble(*[httpx.Response(201, json=ANNOTATION_OK) for _ in range(3)])
    client = client_for(double, [])
    client.submit(PID, "as1", {"pref": "A"}, idempotency_key="mine-1")
    client.submit(PID, "as1", {"pref": "A"})
    client.submit(PID, "as1", {"pref": "A"})
    assert double.keys[0] == "mine-1" and len(set(double.keys)) == 3


def test_retry_after_is_capped_and_retries_run_out_into_the_typed_error() -> None:
    double = ScriptedServerDouble(*[error(503, "commit_failed", field="body", retry_after="3600")
                                    for _ in range(3)])
    waits: list[float] = []
    client = client_for(double, waits, retry=RetryPolicy(max_retries=2, max_retry_after_s=5.0))
    with pytest.raises(AnnotationError) as raised:
        client.get_project(PID)
    assert (raised.value.status_code, raised.value.code, raised.value.field, raised.value.retry_after) == (
        503, "commit_failed", "body", 3600.0)
    assert waits == [5.0, 5.0] and len(double.requests) == 3  # 1 try + max_retries=2


def test_writes_that_may_have_reached_the_server_are_retried_only_when_replay_safe() -> None:
    # adjudicate is not deduplicated by the server: a 502 or a read timeout may mean it was stored.
    for failure in (error(502, "bad_gateway"), httpx.ReadTimeout("slow")):
        double = ScriptedServerDouble(failure, httpx.Response(201, json={}))
        with pytest.raises((AnnotationError, httpx.ReadTimeout)):
            client_for(double, []).adjudicate(PID, "t1", {"pref": "B"})
        assert len(double.requests) == 1
    # ... but a connection that was never made, or a 503 (nothing done), is retried.
    double = ScriptedServerDouble(httpx.ConnectError("refused"), error(503, "commit_failed"),
                                  httpx.Response(201, json={"id": "adj"}))
    waits: list[float] = []
    assert client_for(double, waits).adjudicate(PID, "t1", {"pref": "B"})["id"] == "adj"
    assert waits == pytest.approx([0.3, 0.6])  # 0.3·2^0, 0.3·2^1
    # A submit is deduplicated by its key: a read timeout and 409 idempotency_in_progress are retried.
    double = ScriptedServerDouble(httpx.ReadTimeout("slow"), error(409, "idempotency_in_progress", retry_after="1"),
                                  httpx.Response(200, json={**ANNOTATION_OK, "replayed": True}))
    assert client_for(double, []).submit(PID, "as1", {"pref": "A"})["replayed"] is True
    assert len(set(double.keys)) == 1 and len(double.requests) == 3


def test_client_errors_are_raised_at_once_with_code_and_field() -> None:
    double = ScriptedServerDouble(error(422, "invalid_input", field="values.pref"))
    with pytest.raises(AnnotationError) as raised:
        client_for(double, []).submit(PID, "as1", {"pref": "C"})
    assert (raised.value.status_code, raised.value.code, raised.value.field) == (422, "invalid_input", "values.pref")
    assert len(double.requests) == 1
    double = ScriptedServerDouble(httpx.Response(404, text="<html>not here</html>"))
    with pytest.raises(AnnotationError) as raised:
        client_for(double, []).get_project(PID)
    assert (raised.value.status_code, raised.value.code, raised.value.field) == (404, "http_error", None)


def test_retry_after_header_forms() -> None:
    now = datetime(2026, 4, 1, 9, 0, tzinfo=UTC)
    assert retry_after_seconds("3", now) == 3.0
    assert retry_after_seconds("Wed, 01 Apr 2026 09:00:10 GMT", now) == 10.0
    assert retry_after_seconds("Wed, 01 Apr 2026 08:00:00 GMT", now) == 0.0  # in the past
    assert retry_after_seconds("soon", now) is None and retry_after_seconds(None, now) is None


def test_iterators_follow_next_cursor_and_the_label_feed_stops_at_an_empty_page() -> None:
    double = ScriptedServerDouble(httpx.Response(200, json={"data": [{"id": "1"}, {"id": "2"}], "next_cursor": "c2"}),
                                  httpx.Response(200, json={"data": [{"id": "3"}], "next_cursor": None}))
    client = client_for(double, [])
    assert [p["id"] for p in client.iter_projects(project_id=PID, limit=2)] == ["1", "2", "3"]
    assert [dict(r.url.params) for r in double.requests] == [{"project_id": PID, "limit": "2"},
                                                             {"project_id": PID, "limit": "2", "cursor": "c2"}]
    label = {"seq": 7, "event": "labelled"}
    double = ScriptedServerDouble(httpx.Response(200, json={"data": [label], "next_cursor": "7"}),
                                  httpx.Response(200, json={"data": [], "next_cursor": "7"}))
    client = client_for(double, [])
    assert [entry["seq"] for entry in client.iter_labels(PID, cursor=3)] == [7]
    assert [r.url.params.get("cursor") for r in double.requests] == ["3", "7"]


def test_urls_queue_answers_and_exports() -> None:
    double = ScriptedServerDouble(httpx.Response(204), httpx.Response(201, json={"key": "k2", "role": "annotator"}),
                                  httpx.Response(200, content=b'{"winner": "A", "pair_id": "p"}\n\n{"winner": "B", '
                                                              b'"pair_id": "q"}\n',
                                                 headers={"content-type": "application/x-ndjson"}))
    client = AnnotationClient("http://platform.test/", "k", annotation_url="http://ann.test:8001",
                              transport=httpx.MockTransport(double))
    assert client.next_task(PID) is None  # 204: nothing to label
    assert client.create_api_key(PID, "annotator")["key"] == "k2"
    assert [p["winner"] for p in client.export_preference_pairs(PID, question_id="pref")] == ["A", "B"]
    assert [str(r.url) for r in double.requests] == [
        f"http://ann.test:8001/v1/annotation/projects/{PID}/queue/next",
        f"http://platform.test/v1/projects/{PID}/keys",  # the gateway, at the platform root
        f"http://ann.test:8001/v1/annotation/projects/{PID}/exports/preference-pairs?question_id=pref"]
    assert double.requests[2].headers.get("idempotency-key") is None  # reads carry none
    assert ExportedClient is AnnotationClient
    assert Calls.update_project(PID, label_budget=5).body == {"label_budget": 5}  # None leaves fields alone


def test_async_client_retries_the_same_way() -> None:
    double = ScriptedServerDouble(error(429, "rate_limited", retry_after="1"),
                                  httpx.Response(200, json={"data": [{"id": "x"}], "next_cursor": None}))
    waits: list[float] = []

    async def record(seconds: float) -> None:
        waits.append(seconds)

    async def run() -> list[str]:
        async with AsyncAnnotationClient("http://platform.test", "k", transport=httpx.MockTransport(double),
                                         sleep=record) as client:
            return [a["id"] async for a in client.iter_annotators(PID)]

    assert asyncio.run(run()) == ["x"] and waits == [1.0]
    assert len(double.requests) == 2


def test_the_annotation_sdk_needs_only_the_light_install() -> None:
    result = _run_blocked("""
        import httpx
        from rewardhub.client import AnnotationClient

        def server_double(request):  # test double: one empty page
            return httpx.Response(200, json={"data": [], "next_cursor": None})

        client = AnnotationClient("http://x.test", "k", transport=httpx.MockTransport(server_double))
        print(list(client.iter_projects()))
        print(sorted(m for m in sys.modules if m.split(".")[0] in HEAVY))
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines() == ["[]", "[]"]


class CutOffStreamDouble(httpx.SyncByteStream):
    """Test double of a response body: one chunk, then the connection drops."""

    def __iter__(self) -> Iterator[bytes]:
        yield b'{"seq": 1}\n'
        raise httpx.ReadError("connection reset")


def test_imports_are_multipart_with_the_mapping_and_a_key_that_survives_retries(tmp_path: Path) -> None:
    source = tmp_path / "rows.csv"
    source.write_bytes(b"question\nWhat is 1+1?\n")
    result = {"imported": 1, "rejected": 0, "step": 0, "rows": [], "budget": {"total": 1, "spent": 1, "left": 0}}
    double = ScriptedServerDouble(httpx.ReadTimeout("slow"), httpx.Response(200, json=result))
    out = client_for(double, []).import_tasks(PID, source, mapping={"prompt": "question"}, mode="partial")
    assert out["imported"] == 1 and len(set(double.keys)) == 1 and len(double.requests) == 2
    body = double.requests[1].content
    assert double.requests[1].headers["content-type"].startswith("multipart/form-data")
    for part in (b'name="file"; filename="rows.csv"', b"What is 1+1?", b'name="mapping"', b'{"prompt": "question"}',
                 b'name="mode"', b"partial"):
        assert part in body
    with pytest.raises(ValueError, match="filename"):
        Calls.import_tasks(PID, b"question\n")


def test_streams_retry_until_they_start_and_downloads_leave_no_partial_file(tmp_path: Path) -> None:
    double = ScriptedServerDouble(error(503, "commit_failed"), httpx.Response(200, content=b"a,b\n1,2\n"))
    waits: list[float] = []
    target = tmp_path / "labels.csv"
    assert client_for(double, waits).export_labels(PID, target, format="csv", filters={"status": "labelled"}) == 8
    assert target.read_bytes() == b"a,b\n1,2\n" and waits == [0.3] and not list(tmp_path.glob("*.part"))
    assert dict(double.requests[1].url.params) == {"format": "csv", "kind": "final", "status": "labelled"}
    # Cut off after the first chunk: raised, not retried (part of it was read), and no file is left.
    double = ScriptedServerDouble(httpx.Response(200, stream=CutOffStreamDouble()))
    with pytest.raises(httpx.ReadError):
        client_for(double, []).export_labels(PID, tmp_path / "cut.csv")
    assert len(double.requests) == 1 and list(tmp_path.glob("cut.csv*")) == []
    double = ScriptedServerDouble(httpx.Response(200, stream=CutOffStreamDouble()))
    seen: list[dict[str, Any]] = []
    with pytest.raises(httpx.ReadError):
        seen.extend(client_for(double, []).iter_exported_labels(PID))
    assert len(double.requests) == 1
