"""trainer: uploaded datasets per project, and the id of the API key minted for each run

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'training_datasets',
        sa.Column('id', sa.String(length=32), nullable=False),
        sa.Column('project_id', sa.String(length=32), nullable=False),
        sa.Column('name', sa.String(length=100), nullable=False),
        sa.Column('format', sa.String(length=16), nullable=False),
        sa.Column('filename', sa.String(length=120), nullable=False),
        sa.Column('size_bytes', sa.BigInteger(), nullable=False),
        sa.Column('rows', sa.Integer(), nullable=False),
        sa.Column('sha256', sa.String(length=64), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['project_id'], ['projects.id'], name=op.f('fk_training_datasets_project_id_projects'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_training_datasets')),
        sa.UniqueConstraint('project_id', 'name', name=op.f('uq_training_datasets_project_id')),
    )
    op.create_index(op.f('ix_training_datasets_project_id'), 'training_datasets', ['project_id'], unique=False)
    with op.batch_alter_table('training_runs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('api_key_id', sa.String(length=32), nullable=True))
        batch_op.create_foreign_key(batch_op.f('fk_training_runs_api_key_id_api_keys'), 'api_keys',
                                    ['api_key_id'], ['id'], ondelete='SET NULL')


def downgrade() -> None:
    with op.batch_alter_table('training_runs', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_training_runs_api_key_id_api_keys'), type_='foreignkey')
        batch_op.drop_column('api_key_id')
    op.drop_index(op.f('ix_training_datasets_project_id'), table_name='training_datasets')
    op.drop_table('training_datasets')
