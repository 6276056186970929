"""Prompt datasets in every input format: JSONL, veRL-schema Parquet (written with pyarrow), and local
Hugging Face ``datasets`` (save_to_disk folders, DatasetDict splits, datasets' parquet/json loaders)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from trainer.config import ConfigError, parse_config
from trainer.data import DatasetError, PromptRow, load_config_rows, load_rows


def verl_records() -> list[dict[str, Any]]:
    """Rows as veRL's examples/data_preprocess/gsm8k.py writes them (chat prompt, rule reward, extra_info)."""
    return [
        {"data_source": "openai/gsm8k",
         "prompt": [{"role": "system", "content": "Think step by step."},
                    {"role": "user", "content": "What is 2 + 3?"}],
         "ability": "math",
         "reward_model": {"style": "rule", "ground_truth": "5"},
         "extra_info": {"split": "train", "index": 0}},
        {"data_source": "openai/gsm8k",
         "prompt": [{"role": "user", "content": "What is 4 * 6?"}],
         "ability": "math",
         "reward_model": {"style": "rule", "ground_truth": "24"},
         "extra_info": {"split": "train", "index": 1}},
    ]


def write_parquet(path: Path, records: list[dict[str, Any]]) -> Path:
    pq.write_table(pa.Table.from_pylist(records), path)
    return path


def test_verl_parquet_written_with_pyarrow_reads_back_field_by_field(tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "train.parquet", verl_records())
    # pyarrow stores the prompt as list<struct<role, content>> and reward_model as a struct.
    assert pa.types.is_list(pq.read_schema(path).field("prompt").type)

    rows = load_rows(path)

    assert rows == [
        PromptRow(index=0, prompt=[{"role": "system", "content": "Think step by step."},
                                   {"role": "user", "content": "What is 2 + 3?"}],
                  ground_truth="5", data_source="openai/gsm8k", extra_info={"split": "train", "index": 0}),
        PromptRow(index=1, prompt=[{"role": "user", "content": "What is 4 * 6?"}],
                  ground_truth="24", data_source="openai/gsm8k", extra_info={"split": "train", "index": 1}),
    ]


def test_parquet_text_prompts_and_a_message_key_only_some_messages_have(tmp_path: Path) -> None:
    text = write_parquet(tmp_path / "text.parquet", [{"prompt": "Say 7.", "reward_model": {"ground_truth": "7"}}])
    assert load_rows(text)[0].prompt == "Say 7."
    # One struct schema for every message: the "name" the second message lacks reads back as None; it is dropped.
    chat = write_parquet(tmp_path / "chat.parquet", [{
        "prompt": [{"role": "user", "content": "hi", "name": "ann"}, {"role": "user", "content": "again"}],
        "reward_model": {"ground_truth": "x"}}])
    assert load_rows(chat)[0].prompt == [{"role": "user", "content": "hi", "name": "ann"},
                                         {"role": "user", "content": "again"}]


@pytest.mark.parametrize(("bad", "message"), [
    ({"prompt": [{"role": "user", "content": None}], "reward_model": {"ground_truth": "1"}},
     "row 1: prompt[0] must be a {role, content} message"),
    ({"prompt": [{"role": "user", "content": "q"}], "reward_model": None},
     "row 1: field 'reward_model.ground_truth' is required"),
    ({"prompt": [], "reward_model": {"ground_truth": "1"}},
     "row 1: field 'prompt' is an empty list of messages"),
])
def test_bad_parquet_row_names_the_row_and_the_field(tmp_path: Path, bad: dict[str, Any], message: str) -> None:
    good = {"prompt": [{"role": "user", "content": "q"}], "reward_model": {"ground_truth": "1"}}
    path = write_parquet(tmp_path / "bad.parquet", [good, bad])
    with pytest.raises(DatasetError) as error:
        load_rows(path)
    assert str(error.value) == f"{path} {message}"


def test_jsonl_bad_fields_are_named(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"prompt": "q", "reward_model": {"ground_truth": 1}, "extra_info": [1]}) + "\n")
    with pytest.raises(DatasetError, match=r"row 0: field 'extra_info' must be an object, got list"):
        load_rows(path)
    path.write_text(json.dumps({"prompt": "q", "reward_model": {"ground_truth": 1}, "data_source": 3}) + "\n")
    with pytest.raises(DatasetError, match=r"row 0: field 'data_source' must be text, got int"):
        load_rows(path)
    path.write_text('{"prompt": "q", "reward_model": {"ground_truth": 1}}\n{"prompt": \n')
    with pytest.raises(DatasetError, match=r"rows.jsonl line 2: invalid JSON"):
        load_rows(path)


def test_jsonl_has_no_split_to_choose(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"prompt": "q", "reward_model": {"ground_truth": 1}}) + "\n")
    assert [r.ground_truth for r in load_rows(path)] == [1]
    with pytest.raises(DatasetError, match=r"^dataset_split: a jsonl file has no splits"):
        load_rows(path, split="test")


def test_save_to_disk_dataset_is_found_by_auto(tmp_path: Path) -> None:
    from datasets import Dataset

    Dataset.from_list(verl_records()).save_to_disk(str(tmp_path / "ds"))
    rows = load_rows(tmp_path / "ds")
    assert [(r.ground_truth, r.extra_info["index"]) for r in rows] == [("5", 0), ("24", 1)]
    assert rows[1].prompt == [{"role": "user", "content": "What is 4 * 6?"}]
    # The hub stays off for whatever datasets does next in this process.
    assert os.environ["HF_DATASETS_OFFLINE"] == "1"


def test_dataset_dict_split_is_chosen_and_a_missing_one_is_named(tmp_path: Path) -> None:
    from datasets import Dataset, DatasetDict

    train, test = verl_records()
    DatasetDict({"train": Dataset.from_list([train]), "test": Dataset.from_list([test])}).save_to_disk(
        str(tmp_path / "dd"))
    assert [r.ground_truth for r in load_rows(tmp_path / "dd")] == ["5"]  # unset: train
    assert [r.ground_truth for r in load_rows(tmp_path / "dd", split="test")] == ["24"]
    with pytest.raises(DatasetError, match=r"^dataset_split: .* has no split 'validation'; it has test, train$"):
        load_rows(tmp_path / "dd", split="validation")


def test_datasets_parquet_loader_reads_a_folder_of_shards_in_name_order(tmp_path: Path) -> None:
    shards = tmp_path / "shards"
    shards.mkdir()
    first, second = verl_records()
    write_parquet(shards / "part-00001.parquet", [second])
    write_parquet(shards / "part-00000.parquet", [first])
    rows = load_rows(shards, dataset_format="hf_parquet")
    assert [r.ground_truth for r in rows] == ["5", "24"]
    assert rows[0].extra_info == {"split": "train", "index": 0}


def test_datasets_json_loader_takes_a_glob(tmp_path: Path) -> None:
    for i, record in enumerate(verl_records()):
        (tmp_path / f"part{i}.jsonl").write_text(json.dumps(record) + "\n")
    rows = load_rows(tmp_path / "part*.jsonl", dataset_format="hf_json")
    assert [r.ground_truth for r in rows] == ["5", "24"]


def test_a_hub_name_is_never_looked_up(tmp_path: Path) -> None:
    # Not a local path: the loaders are never asked, so nothing can be downloaded.
    with pytest.raises(DatasetError, match=r"^dataset file openai/gsm8k does not exist"):
        load_rows("openai/gsm8k", dataset_format="hf_parquet")
    with pytest.raises(DatasetError, match=r"^dataset file openai/gsm8k does not exist$"):
        load_rows("openai/gsm8k")


def test_a_plain_folder_needs_a_format(tmp_path: Path) -> None:
    (tmp_path / "folder").mkdir()
    with pytest.raises(DatasetError, match=r"a folder that save_to_disk did not write; set dataset_format"):
        load_rows(tmp_path / "folder")
    with pytest.raises(DatasetError, match=r"the folder holds no parquet files"):
        load_rows(tmp_path / "folder", dataset_format="hf_parquet")


def test_run_config_dataset_fields(tmp_path: Path) -> None:
    from datasets import Dataset, DatasetDict

    train, test = verl_records()
    DatasetDict({"train": Dataset.from_list([train]), "test": Dataset.from_list([test])}).save_to_disk(
        str(tmp_path / "dd"))
    config = parse_config({"model": {"tiny": {}}, "dataset": str(tmp_path / "dd"), "dataset_split": "test"})
    assert [r.ground_truth for r in load_config_rows(config)] == ["24"]
    with pytest.raises(ConfigError, match=r"^dataset_format: Input should be 'auto', 'jsonl'"):
        parse_config({"model": {"tiny": {}}, "dataset": "x.csv", "dataset_format": "csv"})
