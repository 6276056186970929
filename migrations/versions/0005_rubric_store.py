"""rubric_rm: versioned rubric store and rubric jobs

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'rubric_versions',
        sa.Column('id', sa.String(length=32), nullable=False),
        sa.Column('project_id', sa.String(length=32), nullable=False),
        sa.Column('instruction_hash', sa.String(length=64), nullable=False),
        sa.Column('generator_version', sa.String(length=300), nullable=False),
        sa.Column('version', sa.Integer(), nullable=False),
        sa.Column('instruction', sa.Text(), nullable=False),
        sa.Column('rubric', sa.JSON(), nullable=False),
        sa.Column('method', sa.String(length=32), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['project_id'], ['projects.id'], name=op.f('fk_rubric_versions_project_id_projects'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_rubric_versions')),
        sa.UniqueConstraint('project_id', 'instruction_hash', 'generator_version', 'version',
                            name='uq_rubric_versions_cache_key_version'),
    )
    op.create_index('ix_rubric_versions_cache_key', 'rubric_versions', ['project_id', 'instruction_hash', 'generator_version'],
                    unique=False)
    op.create_table(
        'rubric_jobs',
        sa.Column('id', sa.String(length=32), nullable=False),
        sa.Column('project_id', sa.String(length=32), nullable=False),
        sa.Column('kind', sa.String(length=32), nullable=False),
        sa.Column('state', sa.Enum('queued', 'running', 'succeeded', 'failed', name='jobstate',
                                   native_enum=False, length=16), nullable=False),
        sa.Column('total', sa.Integer(), nullable=False),
        sa.Column('done', sa.Integer(), nullable=False),
        sa.Column('payload', sa.JSON(), nullable=False),
        sa.Column('results', sa.JSON(), nullable=True),
        sa.Column('summary', sa.JSON(), nullable=True),
        sa.Column('error', sa.Text(), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(['project_id'], ['projects.id'], name=op.f('fk_rubric_jobs_project_id_projects'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_rubric_jobs')),
    )
    op.create_index(op.f('ix_rubric_jobs_project_id'), 'rubric_jobs', ['project_id'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_rubric_jobs_project_id'), table_name='rubric_jobs')
    op.drop_table('rubric_jobs')
    op.drop_index('ix_rubric_versions_cache_key', table_name='rubric_versions')
    op.drop_table('rubric_versions')
