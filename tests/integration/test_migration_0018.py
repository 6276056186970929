"""Migration 0018 on SQLite and PostgreSQL: existing questions' guidelines become their version 1, old projects
get no honeypots (rate 0, no seed yet); it downgrades to 0017 keeping them, and upgrades again."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from services.common.migrate import downgrade, upgrade

NOW = datetime(2026, 5, 1, tzinfo=UTC)
SCHEMA = {"questions": [{"id": "answer", "type": "math_answer", "guidelines": "Lowest terms."},
                        {"id": "topic", "type": "single_label", "choices": ["a", "b"], "guidelines": ""}]}


def _round_trip(url: str) -> None:
    upgrade(url, "0017")
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO projects (id, name, description, created_at) VALUES ('p1', 'tenancy', '', :now)"), {"now": NOW})
            conn.execute(text(
                "INSERT INTO annotation_projects (id, project_id, name, description, label_budget, labels_bought, "
                "label_schema, overlap_k, lease_seconds, rollouts_per_prompt, policy, care_params, answer_source, "
                "webhook_secret, label_seq, lock_version, created_at) VALUES ('a1', 'p1', 'old', '', 1, 0, :schema, "
                "1, 600, 2, 'random', '{}', 'human', 's', 0, 0, :now)"), {"schema": json.dumps(SCHEMA), "now": NOW})
        upgrade(url)
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT question_id, version, text FROM annotation_question_guidelines")).all()
            assert [tuple(r) for r in rows] == [("answer", 1, "Lowest terms.")]  # an empty text is no version
            assert conn.execute(text("SELECT honeypot_rate, honeypot_seed FROM annotation_projects")).one() == (0, None)
        downgrade(url, "0017")
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM annotation_projects")).scalar() == 1
        upgrade(url)
    finally:
        engine.dispose()


def test_sqlite(isolated_env: Path) -> None:
    _round_trip(f"sqlite:///{isolated_env / 'm18.db'}")


@pytest.mark.postgres
def test_postgres(postgres_url: str) -> None:
    _round_trip(postgres_url)
