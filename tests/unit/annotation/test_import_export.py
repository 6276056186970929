"""The pure parts of annotation import, export and browsing: reading rows, checking a row against the
column mapping, flattening label values for CSV/Parquet, veRL's ground truth, statuses, path confinement."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from services.annotation import browse, data_exports, imports
from services.annotation.label_schema import LabelSchema
from services.annotation.models import Task, TaskStatus
from services.annotation.routes_imports import confined
from services.annotation.schemas import ImportMapping
from services.common.errors import InvalidInput
from services.common.settings import get_settings

SCHEMA = LabelSchema.model_validate({"questions": [
    {"id": "answer", "type": "math_answer"},
    {"id": "topic", "type": "single_label", "choices": ["algebra", "geometry"]},
    {"id": "quality", "type": "rating", "min": 1, "max": 5},
    {"id": "flags", "type": "multi_label", "choices": ["typo", "unsafe"], "required": False},
    {"id": "pref", "type": "preference_pair"},
]})
MAPPING = ImportMapping(prompt="q", id="id", candidates="c", answers="a", gold="g", metadata=["src"])


def test_check_row_maps_every_column() -> None:
    row, field, message = imports.check_row(
        {"id": "p1", "q": "What is 2+2?", "c": ["so 4", "so 5"], "a": ["4", None], "g": "4", "src": "gsm8k"},
        MAPPING, n=2)
    assert (field, message) == (None, None) and row is not None
    assert (row.external_id, row.gold, row.meta) == ("p1", "4", {"src": "gsm8k"})
    assert (row.group.prompt_text, row.group.completions, row.group.answers) == ("What is 2+2?", ["so 4", "so 5"],
                                                                                 ["4", None])


def test_check_row_defaults_and_csv_cells() -> None:
    # No id column: sha256 of the prompt; candidates from a CSV cell's JSON array; answers = candidates.
    row, _, _ = imports.check_row({"q": "Hi", "c": '["x", "y"]'}, ImportMapping(prompt="q", candidates="c"), n=2)
    assert row is not None and row.external_id == hashlib.sha256(b"Hi").hexdigest()[:32]
    assert row.group.answers == ["x", "y"] and row.group.completions == ["x", "y"]
    # No candidates column: n empty rollouts (a prompt-only task).
    bare, _, _ = imports.check_row({"prompt": "Hi"}, ImportMapping(), n=3)
    assert bare is not None and bare.group.answers == [None, None, None] and bare.group.completions is None


@pytest.mark.parametrize(("values", "field", "words"), [
    ({"id": "p", "c": ["a", "b"]}, "q", "missing"),
    ({"id": "p", "q": "x", "c": ["a"]}, "c", "has 1 entries, but this project's tasks have rollouts_per_prompt = 2"),
    ({"id": "p", "q": "x", "c": "not json"}, "c", "not a JSON array"),
    ({"id": "p", "q": "x", "c": ["a", "b"], "a": ["1"]}, "a", "has 1 entries"),
    ({"id": "p", "q": "x", "c": ["a", "b"], "a": ["1", "2"]}, "src", "no such column"),
    ({"id": "p", "q": {"no": 1}, "c": ["a", "b"]}, "q", "expected text"),
    ({"id": "p", "q": "x\x00", "c": ["a", "b"], "a": ["1", "2"], "src": 1}, "q", "q: "),
    ({"id": "p", "q": "x", "c": ["a", "b"], "a": ["1" * 20_001, "2"], "src": 1}, "a", "longer than 20000"),
    ({"id": "p", "q": "x", "c": ["a", "b"], "a": ["1", "2"], "src": float("nan")}, "src", "src: NaN"),
])
def test_bad_rows_name_the_column(values: dict[str, Any], field: str, words: str) -> None:
    row, got_field, message = imports.check_row(values, MAPPING, n=2)
    assert row is None and got_field == field and message is not None and words in message


def test_read_rows_of_each_format() -> None:
    lines = imports.read_rows(b'{"q": "a"}\n\n[1]\nnope\n', "jsonl")
    assert [(r.values, r.error) for r in lines] == [
        ({"q": "a"}, None), (None, "line 3 is not an object"), (None, "line 4 is not JSON: Expecting value")]
    assert [r.values for r in imports.read_rows('\ufeffq,n\n"a, b",1\n'.encode(), "csv")] == [{"q": "a, b", "n": "1"}]
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist([{"q": "a", "c": ["x", "y"]}]), buffer)
    assert [r.values for r in imports.read_rows(buffer.getvalue(), "parquet")] == [{"q": "a", "c": ["x", "y"]}]
    with pytest.raises(ValueError, match="CSV: ',' expected"):
        imports.read_rows(b'q\n"a"b\n', "csv")  # strict quoting: the route answers 422 naming file
    with pytest.raises(ValueError, match="CSV: unexpected end of data"):
        imports.read_rows(b'q\n"abc\n', "csv")  # an unterminated quoted field
    assert imports.format_of("rows.NDJSON", None) == "jsonl" and imports.format_of("x", "csv") == "csv"
    with pytest.raises(InvalidInput) as refused:
        imports.format_of("rows.txt", None)
    assert refused.value.field == "format"


def test_flattening_one_column_per_question_part() -> None:
    columns = data_exports.flat_columns(SCHEMA)
    assert [(c.name, c.kind) for c in columns] == [
        ("values.answer.kind", "text"), ("values.answer.answer", "text"), ("values.answer.candidate", "int"),
        ("values.answer.rationale", "text"), ("values.topic", "text"), ("values.quality", "number"),
        ("values.flags", "json"), ("values.pref.choice", "text"), ("values.pref.rationale", "text")]
    record = {"task_id": "t", "labelled_by": ["ann", "bob"], "metadata": {"src": "x", "level": 1},
              "values": {"answer": {"kind": "answer", "answer": "4", "candidate": 0, "rationale": None},
                         "topic": "algebra", "quality": 4, "flags": ["typo", "unsafe"],
                         "pref": {"choice": "A", "rationale": "clearer"}}}
    flat = data_exports.flatten(record, columns, ["task_id", "labelled_by", "metadata"])
    assert flat == {"task_id": "t", "labelled_by": '["ann", "bob"]', "metadata": '{"level": 1, "src": "x"}',
                    "values.answer.kind": "answer", "values.answer.answer": "4", "values.answer.candidate": 0,
                    "values.answer.rationale": None, "values.topic": "algebra", "values.quality": 4.0,
                    "values.flags": '["typo", "unsafe"]', "values.pref.choice": "A",
                    "values.pref.rationale": "clearer"}
    # A question left empty (null values) flattens to empty cells, not an error.
    empty = data_exports.flatten({"values": None}, columns, [])
    assert set(empty.values()) == {None}


def test_csv_and_parquet_streams() -> None:
    columns = data_exports.flat_columns(LabelSchema.model_validate({"questions": [
        {"id": "r", "type": "rating", "min": 1, "max": 3}]}))
    batches = iter([[{"task_id": "a", "values": {"r": 2}}], [{"task_id": "b, c", "values": {}}]])
    text = b"".join(data_exports.stream_csv(batches, columns, ["task_id"])).decode()
    assert text == 'task_id,values.r\na,2.0\n"b, c",\n'
    # No rows at all: still a Parquet file with the schema.
    empty = b"".join(data_exports.stream_flat_parquet(iter([]), columns, ["task_id"]))
    table = pq.read_table(io.BytesIO(empty))
    assert table.num_rows == 0 and table.schema.names == ["task_id", "values.r"]
    two = b"".join(data_exports.stream_flat_parquet(iter([[{"task_id": "a", "values": {"r": 3}}]] * 2), columns,
                                                    ["task_id"]))
    parquet = pq.ParquetFile(io.BytesIO(two))
    assert parquet.metadata.num_row_groups == 2 and parquet.read().to_pylist() == [
        {"task_id": "a", "values.r": 3.0}, {"task_id": "a", "values.r": 3.0}]


def test_spreadsheet_safe_csv_defuses_formulas_only_when_asked() -> None:
    columns = data_exports.flat_columns(LabelSchema.model_validate({"questions": [
        {"id": "note", "type": "free_text"}, {"id": "r", "type": "rating", "min": -3, "max": 3}]}))
    rows = [{"task_id": '=HYPERLINK("http://x","y")', "values": {"note": "@SUM(A1)", "r": -2}},
            {"task_id": "+1", "values": {"note": "plain - text", "r": 1}}]
    exact = b"".join(data_exports.stream_csv(iter([rows]), columns, ["task_id"])).decode()
    assert exact.splitlines()[1] == '"=HYPERLINK(""http://x"",""y"")",@SUM(A1),-2.0'  # the data as stored
    safe = b"".join(data_exports.stream_csv(iter([rows]), columns, ["task_id"], spreadsheet=True)).decode()
    # Text starting with = + - @ gains a leading '; numbers (-2.0) and other text stay as they are.
    assert safe.splitlines()[1:] == ['"\'=HYPERLINK(""http://x"",""y"")",\'@SUM(A1),-2.0', "'+1,plain - text,1.0"]


def test_verl_rows() -> None:
    record = {"prompt": "What is 2+2?", "prompt_id": "p", "task_id": "t", "label_kind": "answer", "label": "4",
              "values": {"topic": "algebra", "pref": {"choice": "B", "rationale": None}}}
    assert data_exports.verl_ground_truth(SCHEMA, record, None) == "4"
    assert data_exports.verl_ground_truth(SCHEMA, {**record, "label_kind": "ambiguous"}, None) is None
    assert data_exports.verl_ground_truth(SCHEMA, record, "topic") == "algebra"
    assert data_exports.verl_ground_truth(SCHEMA, record, "pref") == "B"
    out = b"".join(data_exports.stream_verl(iter([[record, {**record, "label_kind": "ambiguous"}]]), SCHEMA, None,
                                            "openai/gsm8k", "math", "test"))
    assert pq.read_table(io.BytesIO(out)).to_pylist() == [{
        "data_source": "openai/gsm8k", "prompt": [{"role": "user", "content": "What is 2+2?"}], "ability": "math",
        "reward_model": {"style": "rule", "ground_truth": "4"},
        "extra_info": {"split": "test", "index": 0, "prompt_id": "p", "task_id": "t"}}]
    plain = LabelSchema.model_validate({"questions": [{"id": "t", "type": "free_text"}]})
    with pytest.raises(InvalidInput) as refused:
        data_exports.verl_ground_truth(plain, record, None)
    assert refused.value.field == "question_id"


def test_statuses_and_like_escaping() -> None:
    task = Task(status=TaskStatus.open)
    assert [browse.task_status(task, False, False), browse.task_status(task, False, True)] == ["open", "skipped"]
    task.status = TaskStatus.adjudication
    assert browse.task_status(task, False, False) == "disputed"
    task.status = TaskStatus.done
    assert [browse.task_status(task, False, False), browse.task_status(task, True, False)] == [
        "labelled", "adjudicated"]
    assert browse._like_escaped("50%_a\\") == "%50\\%\\_a\\\\%"


def test_server_paths_stay_inside_the_imports_folder(isolated_env: Path) -> None:
    root = get_settings().data_dir / "imports"
    (root / "ds").mkdir(parents=True)
    (root / "ds" / "rows.jsonl").write_text(json.dumps({"prompt": "x"}) + "\n")
    (root / "out").symlink_to(get_settings().data_dir)
    assert confined("ds/rows.jsonl") == (root / "ds" / "rows.jsonl").resolve()
    for bad in ("/etc/passwd", "../rewardhub.db", "out/rewardhub.db", "ds\\x", "missing"):
        with pytest.raises(InvalidInput) as refused:
            confined(bad)
        assert refused.value.field == "source_path", bad
