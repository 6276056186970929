"""reward specs, idempotency, results

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('idempotency_records',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('project_id', sa.String(length=32), nullable=False),
    sa.Column('endpoint', sa.String(length=100), nullable=False),
    sa.Column('key', sa.String(length=200), nullable=False),
    sa.Column('request_hash', sa.String(length=64), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('status_code', sa.Integer(), nullable=True),
    sa.Column('response', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['project_id'], ['projects.id'], name=op.f('fk_idempotency_records_project_id_projects'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_idempotency_records')),
    sa.UniqueConstraint('project_id', 'endpoint', 'key', name=op.f('uq_idempotency_records_project_id'))
    )
    op.create_table('reward_results',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('project_id', sa.String(length=32), nullable=False),
    sa.Column('request_id', sa.String(length=32), nullable=False),
    sa.Column('item_id', sa.String(length=200), nullable=False),
    sa.Column('spec_ref', sa.String(length=120), nullable=False),
    sa.Column('score', sa.Float(), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('sub_scores', sa.JSON(), nullable=False),
    sa.Column('details', sa.JSON(), nullable=False),
    sa.Column('elapsed_ms', sa.Float(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['project_id'], ['projects.id'], name=op.f('fk_reward_results_project_id_projects'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_reward_results'))
    )
    with op.batch_alter_table('reward_results', schema=None) as batch_op:
        batch_op.create_index('ix_reward_results_project_request', ['project_id', 'request_id'], unique=False)

    op.create_table('reward_specs',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('project_id', sa.String(length=32), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('spec', sa.JSON(), nullable=False),
    sa.Column('description', sa.String(length=2000), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['project_id'], ['projects.id'], name=op.f('fk_reward_specs_project_id_projects'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_reward_specs')),
    sa.UniqueConstraint('project_id', 'name', 'version', name=op.f('uq_reward_specs_project_id'))
    )
    with op.batch_alter_table('reward_specs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_reward_specs_project_id'), ['project_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('reward_specs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_reward_specs_project_id'))

    op.drop_table('reward_specs')
    with op.batch_alter_table('reward_results', schema=None) as batch_op:
        batch_op.drop_index('ix_reward_results_project_request')

    op.drop_table('reward_results')
    op.drop_table('idempotency_records')
