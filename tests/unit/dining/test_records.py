"""DiningBench records: the JSONL layout, image choice by index, base64 data-URL messages, load errors."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from trainer.dining.records import RecordError, build_messages, image_mime, load_records

PNG = b"\x89PNG\r\n\x1a\n" + b"png-body"
JPEG = b"\xff\xd8\xff\xe0" + b"jpeg-body"


def write(tmp_path: Path, rows: list[object]) -> Path:
    (tmp_path / "img").mkdir(exist_ok=True)
    (tmp_path / "img" / "std.png").write_bytes(PNG)
    (tmp_path / "img" / "u1.jpg").write_bytes(JPEG)
    path = tmp_path / "bench.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows),
                    encoding="utf-8")
    return path


ROW = {"id": 7, "task": "classification", "prompt": "Which dish? A/B", "ground_truth": "B",
       "standard_image": "img/std.png", "user_images": ["img/u1.jpg"]}


def test_images_by_index_and_the_message_layout(tmp_path: Path) -> None:
    path = write(tmp_path, [ROW])
    [record] = load_records(path, image_indices=(1, 0, 5))  # 5 is beyond the record's two images: skipped
    assert record.id == "7" and [p.name for p in record.images] == ["u1.jpg", "std.png"]
    [message] = build_messages(record)
    parts = message["content"]
    assert [p["type"] for p in parts] == ["image_url", "image_url", "text"]  # images before the text
    first = parts[0]["image_url"]["url"]
    assert first.startswith("data:image/jpeg;base64,") and base64.b64decode(first.split(",", 1)[1]) == JPEG
    assert parts[1]["image_url"]["url"].startswith("data:image/png;base64,")
    assert parts[2]["text"] == "Which dish? A/B"
    [default] = load_records(path)
    assert [p.name for p in default.images] == ["std.png"]  # default: the standard image only


def test_an_images_list_is_used_whole_and_task_comes_from_the_caller(tmp_path: Path) -> None:
    row = {"id": "q1", "prompt": "Is it fried?", "ground_truth": "是", "images": ["img/std.png", "img/u1.jpg"]}
    [record] = load_records(write(tmp_path, [row]), task="vqa")
    assert record.task == "vqa" and len(record.images) == 2 and record.judge_question == "Is it fried?"


@pytest.mark.parametrize(("row", "message"), [
    ({**ROW, "id": None}, "bench.jsonl:1: id: required"),
    ({**ROW, "task": "dessert"}, "bench.jsonl:1: task: expected one of"),
    ({**ROW, "prompt": " "}, "bench.jsonl:1: prompt: required"),
    ({k: v for k, v in ROW.items() if k != "ground_truth"}, "bench.jsonl:1: ground_truth: required"),
    ({**ROW, "standard_image": "img/missing.jpg"}, "image 'img/missing.jpg' does not exist"),
    ({**ROW, "standard_image": None, "user_images": []}, "no image selected"),
    ({**ROW, "user_images": [3]}, "user_images: expected a path or a list of paths"),
    ("{not json", "bench.jsonl:1: not valid JSON"),
])
def test_bad_records_name_the_line_and_field(tmp_path: Path, row: object, message: str) -> None:
    with pytest.raises(RecordError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_records(write(tmp_path, [row]))


def test_duplicate_ids_and_an_empty_file_are_errors(tmp_path: Path) -> None:
    with pytest.raises(RecordError, match=r"bench.jsonl:2: id: duplicate id '7'"):
        load_records(write(tmp_path, [ROW, {**ROW, "id": "7"}]))
    with pytest.raises(RecordError, match="holds no records"):
        load_records(write(tmp_path, []))


def test_image_mime_from_magic_then_suffix() -> None:
    assert image_mime(Path("x.jpg"), PNG) == "image/png"
    assert image_mime(Path("x.webp"), b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "image/webp"
    assert image_mime(Path("x.gif"), b"unknown") == "image/gif"
    assert image_mime(Path("x.bin"), b"unknown") == "image/jpeg"
