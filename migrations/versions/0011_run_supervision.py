"""trainer: run worker heartbeat lease (attempt, supervisor, worker host, heartbeat) and automatic resumes

Runs that are queued or running when this migration runs were launched by a trainer service that
did not supervise them: they get attempt 1, a supervisor marker and a heartbeat stamped now, so the
watchers judge them by the heartbeat bound like any other run (their old workers never beat).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('training_runs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('attempt', sa.Integer(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('auto_resumes', sa.Integer(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('supervisor', sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column('worker_host', sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index('ix_training_runs_status_heartbeat_at', ['status', 'heartbeat_at'], unique=False)
    runs = sa.table('training_runs', sa.column('status', sa.String()), sa.column('attempt', sa.Integer()),
                    sa.column('supervisor', sa.String()), sa.column('heartbeat_at', sa.DateTime(timezone=True)))
    op.execute(runs.update().where(runs.c.status.in_(['queued', 'running']))
               .values(attempt=1, supervisor='migration 0011', heartbeat_at=sa.func.current_timestamp()))


def downgrade() -> None:
    with op.batch_alter_table('training_runs', schema=None) as batch_op:
        batch_op.drop_index('ix_training_runs_status_heartbeat_at')
        batch_op.drop_column('heartbeat_at')
        batch_op.drop_column('worker_host')
        batch_op.drop_column('supervisor')
        batch_op.drop_column('auto_resumes')
        batch_op.drop_column('attempt')
