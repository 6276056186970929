"""trainer: evaluation jobs (eval model, DiningBench, STS) with progress and resume

One table, ``evaluation_jobs``: the job's kind and config, its progress (stage, done/total items,
items a resumed attempt found finished), its report (``metrics``), and the same heartbeat-lease
columns as ``training_runs`` (0004, 0008, 0011), so the run launcher and watchers supervise it.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0019'
down_revision = '0018'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'evaluation_jobs',
        sa.Column('id', sa.String(length=32), nullable=False),
        sa.Column('project_id', sa.String(length=32), nullable=False),
        sa.Column('name', sa.String(length=200), nullable=False),
        sa.Column('kind', sa.String(length=16), nullable=False),
        sa.Column('status', sa.Enum('queued', 'running', 'succeeded', 'failed', 'cancelled', name='runstatus',
                                    native_enum=False, length=16), nullable=False),
        sa.Column('config', sa.JSON(), nullable=False),
        sa.Column('output_dir', sa.String(length=1000), nullable=False),
        sa.Column('cancel_requested', sa.Boolean(), nullable=False),
        sa.Column('stage', sa.String(length=64), nullable=False),
        sa.Column('done_items', sa.Integer(), nullable=False),
        sa.Column('total_items', sa.Integer(), nullable=False),
        sa.Column('resumed_items', sa.Integer(), nullable=False),
        sa.Column('metrics', sa.JSON(), nullable=True),
        sa.Column('error', sa.Text(), nullable=True),
        sa.Column('worker_pid', sa.Integer(), nullable=True),
        sa.Column('attempt', sa.Integer(), nullable=False),
        sa.Column('auto_resumes', sa.Integer(), nullable=False),
        sa.Column('supervisor', sa.String(length=255), nullable=True),
        sa.Column('worker_host', sa.String(length=255), nullable=True),
        sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('api_key_id', sa.String(length=32), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(['project_id'], ['projects.id'], name=op.f('fk_evaluation_jobs_project_id_projects'),
                                ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['api_key_id'], ['api_keys.id'], name=op.f('fk_evaluation_jobs_api_key_id_api_keys'),
                                ondelete='SET NULL'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_evaluation_jobs')),
    )
    op.create_index(op.f('ix_evaluation_jobs_project_id'), 'evaluation_jobs', ['project_id'], unique=False)
    op.create_index('ix_evaluation_jobs_status_heartbeat_at', 'evaluation_jobs', ['status', 'heartbeat_at'],
                    unique=False)


def downgrade() -> None:
    op.drop_index('ix_evaluation_jobs_status_heartbeat_at', table_name='evaluation_jobs')
    op.drop_index(op.f('ix_evaluation_jobs_project_id'), table_name='evaluation_jobs')
    op.drop_table('evaluation_jobs')
