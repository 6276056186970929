"""A tiny random-weights model folder (built from a config, nothing downloaded) under a teacher_models_dir."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from services.common.settings import reset_settings_cache
from services.teacher.model_cache import CACHE


@pytest.fixture(scope="session")
def teacher_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from trainer.tiny_models import build_tiny_causal_lm

    root = tmp_path_factory.mktemp("teacher-models")
    build_tiny_causal_lm(root / "tiny", seed=0)
    return root


@pytest.fixture
def teacher_env(isolated_env: Path, teacher_models_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Settings with the tiny models' folder as teacher_models_dir and an empty model cache."""
    monkeypatch.setenv("REWARDHUB_TEACHER_MODELS_DIR", str(teacher_models_dir))
    reset_settings_cache()
    CACHE.clear()
    yield teacher_models_dir
    CACHE.clear()
