"""trainer: training runs and their per-step metrics

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'training_runs',
        sa.Column('id', sa.String(length=32), nullable=False),
        sa.Column('project_id', sa.String(length=32), nullable=False),
        sa.Column('name', sa.String(length=200), nullable=False),
        sa.Column('status', sa.Enum('queued', 'running', 'succeeded', 'failed', 'cancelled', name='runstatus',
                                    native_enum=False, length=16), nullable=False),
        sa.Column('config', sa.JSON(), nullable=False),
        sa.Column('output_dir', sa.String(length=1000), nullable=False),
        sa.Column('cancel_requested', sa.Boolean(), nullable=False),
        sa.Column('current_step', sa.Integer(), nullable=False),
        sa.Column('max_steps', sa.Integer(), nullable=False),
        sa.Column('last_metrics', sa.JSON(), nullable=False),
        sa.Column('checkpoint', sa.String(length=1000), nullable=True),
        sa.Column('error', sa.Text(), nullable=True),
        sa.Column('worker_pid', sa.Integer(), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(['project_id'], ['projects.id'], name=op.f('fk_training_runs_project_id_projects'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_training_runs')),
    )
    op.create_index(op.f('ix_training_runs_project_id'), 'training_runs', ['project_id'], unique=False)
    op.create_table(
        'training_run_metrics',
        sa.Column('id', sa.String(length=32), nullable=False),
        sa.Column('run_id', sa.String(length=32), nullable=False),
        sa.Column('step', sa.Integer(), nullable=False),
        sa.Column('metrics', sa.JSON(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['run_id'], ['training_runs.id'], name=op.f('fk_training_run_metrics_run_id_training_runs'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_training_run_metrics')),
    )
    op.create_index('ix_training_run_metrics_run_step', 'training_run_metrics', ['run_id', 'step'], unique=True)


def downgrade() -> None:
    op.drop_index('ix_training_run_metrics_run_step', table_name='training_run_metrics')
    op.drop_table('training_run_metrics')
    op.drop_index(op.f('ix_training_runs_project_id'), table_name='training_runs')
    op.drop_table('training_runs')
