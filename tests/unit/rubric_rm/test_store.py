"""The versioned rubric store (SQLite, migrated), and reading rubrics written as text."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from services.common.db import session_scope
from services.rubric_rm import store
from services.rubric_rm.prompts import render_rubric
from services.rubric_rm.rubric_text import parse_rubric_text
from services.rubric_rm.schemas import HardRule, Rubric
from tests.conftest import Tenant, make_tenant
from tests.unit.rubric_rm.helpers import example_rubric


@pytest.fixture
def tenant(isolated_env: Path) -> Tenant:
    return make_tenant()


def test_instruction_hash_is_sha256_of_the_exact_text() -> None:
    assert store.instruction_hash("abc") == hashlib.sha256(b"abc").hexdigest()
    assert store.instruction_hash("abc ") != store.instruction_hash("abc")


def test_versions_count_up_per_cache_key_and_latest_wins(tenant: Tenant) -> None:
    first, second = example_rubric(), Rubric(hard_rules=[HardRule(rule_id="R9", type="must", criterion="c", test="t")])
    with session_scope() as session:
        v1 = store.save_rubric(session, tenant.project_a, "q", "generator:m:1", first, "generator")
        v2 = store.save_rubric(session, tenant.project_a, "q", "generator:m:1", second, "generator")
        other_version = store.save_rubric(session, tenant.project_a, "q", "generator:m:2", first, "generator")
        other_project = store.save_rubric(session, tenant.project_b, "q", "generator:m:1", first, "generator")
        assert (v1.version, v2.version, other_version.version, other_project.version) == (1, 2, 1, 1)
    with session_scope() as session:
        latest = store.latest_rubric(session, tenant.project_a, "q", "generator:m:1")
        assert latest is not None and latest.id == v2.id
        assert store.rubric_of(latest) == second
        assert store.latest_rubric(session, tenant.project_a, "another question", "generator:m:1") is None
        assert store.latest_rubric(session, tenant.project_b, "q", "generator:m:1").id == other_project.id  # type: ignore[union-attr]


@pytest.mark.postgres
def test_versions_and_race_retry_on_postgres(postgres_tenant: Tenant, monkeypatch: pytest.MonkeyPatch) -> None:
    test_versions_count_up_per_cache_key_and_latest_wins(postgres_tenant)
    test_a_version_number_taken_by_a_concurrent_writer_is_skipped(postgres_tenant, monkeypatch)


def test_the_consistency_check_is_not_stored(tenant: Tenant) -> None:
    from services.rubric_rm.schemas import PairConsistencyCheck

    rubric = example_rubric().model_copy(update={"pair_consistency_check": PairConsistencyCheck(
        expected_winner="A", rubric_predicts="A")})
    with session_scope() as session:
        record = store.save_rubric(session, tenant.project_a, "q", "g", rubric, "diagnose_synthesise")
        assert set(record.rubric) == {"hard_rules", "principles"}
        assert store.rubric_of(record).pair_consistency_check is None


def test_a_version_number_taken_by_a_concurrent_writer_is_skipped(tenant: Tenant,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    with session_scope() as session:
        store.save_rubric(session, tenant.project_a, "q", "g", example_rubric(), "generator")
    with session_scope() as session:
        real_scalar = session.scalar
        reads: list[object] = []

        def stale_first_read(*args: object, **kwargs: object) -> object:
            value = real_scalar(*args, **kwargs)  # type: ignore[arg-type]
            reads.append(value)
            # The first read misses the other writer's version 1, as a racing transaction would.
            return None if len(reads) == 1 else value

        monkeypatch.setattr(session, "scalar", stale_first_read)
        record = store.save_rubric(session, tenant.project_a, "q", "g", example_rubric(), "generator")
        assert reads == [1, 1] and record.version == 2


def test_rendered_rubrics_read_back_unchanged() -> None:
    rubric = example_rubric()
    assert parse_rubric_text(render_rubric(rubric)) == rubric


def test_plain_rule_lists_and_json() -> None:
    rubric = parse_rubric_text("1. cites a source\n2) Never insults the user\n\n## Principles\n- concise\n* polite")
    assert [(r.rule_id, r.type, r.criterion) for r in rubric.hard_rules] == [
        ("R1", "must", "cites a source"), ("R2", "forbid", "Never insults the user")]
    assert [(p.principle_id, p.description) for p in rubric.principles] == [("P1", "concise"), ("P2", "polite")]
    # A rule that merely starts with the word "Rules" is a rule, not a header.
    assert parse_rubric_text("Rules of arithmetic are applied correctly").hard_rules[0].criterion.startswith("Rules")
    as_json = parse_rubric_text('{"hard_rules": [{"rule_id": "A", "type": "forbid", "criterion": "x", "test": "y"}]}')
    assert as_json.hard_rules[0].type == "forbid"


@pytest.mark.parametrize(("text", "message"), [
    ("   ", "empty"),
    ("Principles:\n(none)", "at least one hard rule or principle"),
    ('{"hard_rules": [', "does not parse"),
    ('{"hard_rules": [{"rule_id": "A", "type": "maybe", "criterion": "x", "test": "y"}]}', "hard_rules.0.type"),
    ("\n".join(f"- rule {i}" for i in range(13)), "at most 12"),
    ("- [R1] a\n- [R1] b", "unique"),
])
def test_unusable_rubric_text_is_a_value_error(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_rubric_text(text)
