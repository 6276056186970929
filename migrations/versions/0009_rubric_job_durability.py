"""rubric_rm: durable jobs: per-item checkpoints, submission time, heartbeat lease, attempts

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('rubric_jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('submitted_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('owner', sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('attempts', sa.Integer(), nullable=False, server_default='0'))
        batch_op.create_index('ix_rubric_jobs_state', ['state'], unique=False)
    op.create_table(
        'rubric_job_items',
        sa.Column('job_id', sa.String(length=32), nullable=False),
        sa.Column('item_index', sa.Integer(), autoincrement=False, nullable=False),
        sa.Column('result', sa.JSON(), nullable=False),
        sa.Column('finished_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['job_id'], ['rubric_jobs.id'], name=op.f('fk_rubric_job_items_job_id_rubric_jobs'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('job_id', 'item_index', name=op.f('pk_rubric_job_items')),
    )


def downgrade() -> None:
    op.drop_table('rubric_job_items')
    with op.batch_alter_table('rubric_jobs', schema=None) as batch_op:
        batch_op.drop_index('ix_rubric_jobs_state')
        batch_op.drop_column('attempts')
        batch_op.drop_column('heartbeat_at')
        batch_op.drop_column('owner')
        batch_op.drop_column('submitted_at')
