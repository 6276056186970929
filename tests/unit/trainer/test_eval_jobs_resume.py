"""Resume hooks of the evaluation jobs: per-prompt sample files (model) and per-stage outputs (sts).

The STS job is run in-process twice: the first attempt is stopped after its shift stage (the
cancel path between stages), the second must reuse the SAE and the shifted dimensions on file and
compute only the target scores. ``train_sae`` is wrapped to count its calls (the real function runs).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require_module
from trainer.evaluate import EvalSample, _append_lines, finished_prompts, read_samples


def _sample(prompt: int, index: int, score: float = 1.0) -> EvalSample:
    return EvalSample(prompt_index=prompt, sample_index=index, data_source="d", completion="7", tokens=1,
                      truncated=False, score=score, status="ok")


def test_a_prompt_is_finished_only_with_all_k_samples_and_a_torn_line_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "samples.jsonl"
    _append_lines(path, [_sample(0, 0), _sample(0, 1), _sample(1, 0)])
    with path.open("a") as handle:
        handle.write('{"prompt_index": 1, "sample_')  # a write torn by a kill
    samples = read_samples(path)
    assert finished_prompts(samples, 2) == {0}, "prompt 1 has 1 of its 2 samples"
    _append_lines(path, [_sample(1, 0, 0.0), _sample(1, 1)])  # the batch redone after the crash
    samples = read_samples(path)
    assert finished_prompts(samples, 2) == {0, 1}
    assert samples[(1, 0)].score == 0.0, "the last line of a (prompt, sample) wins"
    assert all(json.loads(line) for line in path.read_text().splitlines()[-2:])


def test_a_stopped_sts_job_resumes_from_its_sae_and_shift_on_file(isolated_env: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    require_module("sae_lens", "the STS dependency (train extra)")
    from services.trainer import eval_kinds, evaljobs
    from tests.integration.test_evaluation_jobs import write_sts_texts
    from trainer.sts import sae as sae_lib
    from trainer.tiny_models import build_tiny_causal_lm

    project = "0" * 32
    area = isolated_env / "data" / "projects" / project
    build_tiny_causal_lm(area / "models" / "tiny", seed=0, hidden_size=32, num_layers=2)
    write_sts_texts(area)
    config = eval_kinds.parse_config("sts", {
        "model": "models/tiny", "layer": 0, "fine_tuning": "sts/tune.jsonl",
        "targets": {"add": "sts/add.jsonl", "say": "sts/say.jsonl"}, "top_k": 4, "d_sae": 16, "sae_epochs": 1,
        "max_examples": 8})
    trained: list[int] = []
    real_train = sae_lib.train_sae

    def counting_train(*args: Any, **kwargs: Any) -> Any:
        trained.append(1)
        return real_train(*args, **kwargs)

    monkeypatch.setattr(sae_lib, "train_sae", counting_train)
    stages: list[str] = []

    def progress(**values: Any) -> None:
        if "stage" in values:
            stages.append(values["stage"])

    def stop_after_shift() -> bool:
        return "shift" in stages

    out = evaljobs.job_dir(project, "job")
    ctx = eval_kinds.JobContext(project_id=project, out_dir=out, api_key="unused", registered={},
                                progress=progress, should_stop=stop_after_shift, reward_target=lambda _: (None, None))
    with pytest.raises(eval_kinds.Stopped):
        eval_kinds.execute("sts", config, ctx)
    assert trained == [1] and (out / "sae" / "cfg.json").is_file() and (out / "shift.pt").is_file()
    assert not (out / "scores.jsonl").exists()

    stages.clear()
    ctx.should_stop = lambda: False
    report = eval_kinds.execute("sts", config, ctx)
    assert trained == [1], "the SAE on file is loaded, not trained again"
    assert report["resumed_stages"] == ["sae", "shift"]
    assert set(report["scores"]) == {"add", "say"}
    assert json.loads((out / "report.json").read_text())["scores"] == report["scores"]
