"""`rewardhub eval rec FILE`: labelled records scored in-process, accuracy and confusion per dimension."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from rewardhub.cli import app

ITEMS = [{"item_id": "r1", "title": "Sushi Zen", "attributes": {"cuisine": "japanese", "price": 25}}]
GOOD = json.dumps({"recommendations": [{"item_id": "r1", "price": 25}]})
WRONG = json.dumps({"recommendations": [{"item_id": "r1", "price": 99}]})
GHOST = json.dumps({"recommendations": [{"item_id": "zz"}]})


def record(rid: str, dimension: str, response: str, label: int) -> dict[str, object]:
    return {"id": rid, "dimension": dimension, "user": {"id": "u1", "history": []}, "query": "sushi tonight",
            "context": {"items": ITEMS}, "response": response, "label": label}


def test_eval_rec_reports_accuracy_confusion_and_hybrid_agreement(tmp_path: Path) -> None:
    rows = [record("i1", "instruction", GOOD, 1), record("i2", "instruction", "no json here", 0),
            record("f1", "factual", GOOD, 1), record("f2", "factual", WRONG, 0), record("f3", "factual", GHOST, 1),
            record("o1", "overall", GOOD, 1), record("o2", "overall", GHOST, 0)]
    path = tmp_path / "records.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = CliRunner().invoke(app, ["eval", "rec", str(path), "--embedder", "hashing", "--json",
                                      "--output", str(tmp_path / "report.json")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report.json").read_text())
    dims = report["dimensions"]
    assert dims["instruction"]["accuracy"] == 1.0
    # f1 tp, f2 tn (1 of 1 claims wrong → 0), f3 labelled 1 but hallucinated → fn: 2/3
    assert dims["factual"]["confusion"] == {"tp": 1, "fp": 0, "tn": 1, "fn": 1, "undecided": 0}
    # o2 is vetoed (hallucinated) → 0 → agrees; o1's hybrid = mean(instruction 1, factual 1, relevance r) ≥ 0.5
    assert report["hybrid_agreement"] == 1.0
    assert "no behaviour model" in report["notes"][0]


def test_eval_rec_names_a_bad_record(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"id": "x", "dimension": "taste", "response": "", "label": 1}) + "\n")
    result = CliRunner().invoke(app, ["eval", "rec", str(path), "--embedder", "hashing"])
    assert result.exit_code != 0 and "dimension" in result.output
