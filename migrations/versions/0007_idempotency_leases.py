"""idempotency: one table for every service, pending claims with leases

Adds the lease columns to ``idempotency_records`` (a pending claim now expires, so a retry can take
it over), moves annotation's ``annotation_idempotency`` rows into it (endpoint
``annotation/<annotation project id>/<endpoint>``) and drops that table. Pending rows left by
earlier versions (which had no lease) get an already-expired lease: they were stuck for good.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None

ANNOTATION_PREFIX = 'annotation/'


def upgrade() -> None:
    with op.batch_alter_table('idempotency_records') as batch:
        batch.add_column(sa.Column('owner', sa.String(length=32), nullable=True))
        batch.add_column(sa.Column('lease_expires_at', sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column('attempts', sa.Integer(), nullable=False, server_default='1'))
        batch.add_column(sa.Column('completed_at', sa.DateTime(timezone=True), nullable=True))
    op.execute("UPDATE idempotency_records SET lease_expires_at = created_at WHERE state = 'pending'")
    op.execute(
        "INSERT INTO idempotency_records (id, project_id, endpoint, key, request_hash, state, status_code, "
        "response, attempts, created_at, completed_at) "
        f"SELECT ai.id, ap.project_id, '{ANNOTATION_PREFIX}' || ai.annotation_project_id || '/' || ai.endpoint, "
        "ai.key, ai.request_hash, 'done', ai.status_code, ai.response, 1, ai.created_at, ai.created_at "
        "FROM annotation_idempotency ai JOIN annotation_projects ap ON ap.id = ai.annotation_project_id")
    op.drop_table('annotation_idempotency')


def downgrade() -> None:
    op.create_table(
        'annotation_idempotency',
        sa.Column('id', sa.String(length=32), nullable=False),
        sa.Column('annotation_project_id', sa.String(length=32), nullable=False),
        sa.Column('endpoint', sa.String(length=100), nullable=False),
        sa.Column('key', sa.String(length=200), nullable=False),
        sa.Column('request_hash', sa.String(length=64), nullable=False),
        sa.Column('status_code', sa.Integer(), nullable=False),
        sa.Column('response', sa.Text(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['annotation_project_id'], ['annotation_projects.id'],
                                name=op.f('fk_annotation_idempotency_annotation_project_id_annotation_projects'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_annotation_idempotency')),
        sa.UniqueConstraint('annotation_project_id', 'endpoint', 'key',
                            name=op.f('uq_annotation_idempotency_annotation_project_id')),
    )
    # 'annotation/' is 11 characters, the annotation project id the next 32, then '/'.
    op.execute(
        "INSERT INTO annotation_idempotency (id, annotation_project_id, endpoint, key, request_hash, status_code, "
        "response, created_at) "
        "SELECT ir.id, substr(ir.endpoint, 12, 32), substr(ir.endpoint, 45), ir.key, ir.request_hash, "
        "ir.status_code, ir.response, ir.created_at FROM idempotency_records ir "
        f"JOIN annotation_projects ap ON ap.id = substr(ir.endpoint, 12, 32) "
        f"WHERE ir.endpoint LIKE '{ANNOTATION_PREFIX}%' AND ir.state = 'done'")
    op.execute(f"DELETE FROM idempotency_records WHERE endpoint LIKE '{ANNOTATION_PREFIX}%'")
    with op.batch_alter_table('idempotency_records') as batch:
        batch.drop_column('completed_at')
        batch.drop_column('attempts')
        batch.drop_column('lease_expires_at')
        batch.drop_column('owner')
