"""Annotator accounts: argon2id hashes, login, membership, API-key annotators."""

from __future__ import annotations

import pytest

from services.annotation import accounts
from services.annotation.models import AnnotationProject, Annotator, AnnotatorRole, Policy
from services.common.auth import Principal
from services.common.db import session_scope
from services.common.errors import Conflict, InvalidInput
from services.common.models import Role
from tests.conftest import Tenant


def _project(tenant: Tenant, name: str) -> str:
    with session_scope() as session:
        project = AnnotationProject(project_id=tenant.project_a, name=name, label_budget=1, label_schema={},
                                    policy=Policy.random, webhook_secret="s")
        session.add(project)
        session.flush()
        return project.id


def test_passwords_are_stored_as_argon2id_and_checked(sqlite_tenant: Tenant) -> None:
    project_id = _project(sqlite_tenant, "p")
    with session_scope() as session:
        made = accounts.create_annotator(session, "alice", "correct horse battery", project_ids=[project_id],
                                         role=AnnotatorRole.reviewer)
        assert made.password_hash.startswith("$argon2id$") and "correct horse" not in made.password_hash
    with session_scope() as session:
        alice = accounts.authenticate(session, "alice", "correct horse battery")
        assert alice is not None and alice.role is AnnotatorRole.reviewer and accounts.can_adjudicate(alice)
        assert accounts.authenticate(session, "alice", "correct horse batterY") is None
        assert accounts.authenticate(session, "bob", "correct horse battery") is None
        assert [p.id for p in accounts.member_projects(session, alice.id)] == [project_id]
        accounts.set_password(session, alice.id, "a different passphrase")
    with session_scope() as session:
        assert accounts.authenticate(session, "alice", "a different passphrase") is not None
        accounts.disable(session, session.query(Annotator).filter_by(username="alice").one().id)
    with session_scope() as session:
        assert accounts.authenticate(session, "alice", "a different passphrase") is None


@pytest.mark.parametrize(("username", "password", "field"), [
    ("al", "correct horse battery", "username"), ("has space", "correct horse battery", "username"),
    ("key-abc", "correct horse battery", "username"), ("carol", "short", "password"),
])
def test_bad_usernames_and_passwords_name_the_field(sqlite_tenant: Tenant, username: str, password: str,
                                                    field: str) -> None:
    with session_scope() as session, pytest.raises(InvalidInput) as err:
        accounts.create_annotator(session, username, password)
    assert err.value.field == field


def test_usernames_are_unique_and_membership_is_per_project(sqlite_tenant: Tenant) -> None:
    first, second = _project(sqlite_tenant, "one"), _project(sqlite_tenant, "two")
    with session_scope() as session:
        alice = accounts.create_annotator(session, "alice", "correct horse battery", project_ids=[first])
        assert accounts.is_member(session, alice.id, first) and not accounts.is_member(session, alice.id, second)
        accounts.add_membership(session, alice.id, second)
        accounts.add_membership(session, alice.id, second)  # adding twice is a no-op
        assert accounts.is_member(session, alice.id, second)
        with pytest.raises(Conflict):
            accounts.create_annotator(session, "alice", "another password here")


def test_an_api_key_gets_one_annotator_account(sqlite_tenant: Tenant) -> None:
    key = Principal(key_id="k" * 32, role=Role.annotator, all_projects=False)
    admin = Principal(key_id="a" * 32, role=Role.admin, all_projects=True)
    with session_scope() as session:
        from services.common.models import ApiKey

        session.add_all([ApiKey(id="k" * 32, prefix="rh_k", key_hash="1" * 64, role=Role.annotator),
                         ApiKey(id="a" * 32, prefix="rh_a", key_hash="2" * 64, role=Role.admin)])
        session.flush()
        first = accounts.annotator_for_key(session, key)
        assert accounts.annotator_for_key(session, key).id == first.id
        assert first.role is AnnotatorRole.annotator and first.password_hash is None
        assert accounts.annotator_for_key(session, admin).role is AnnotatorRole.admin
    with session_scope() as session:
        assert accounts.authenticate(session, first.username, "") is None
