"""rec_rm: item catalogs, interaction logs, reward configurations, behaviour models

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def _project_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(['project_id'], ['projects.id'], name=op.f(f'fk_{table}_project_id_projects'),
                                   ondelete='CASCADE')


def upgrade() -> None:
    op.create_table(
        'rec_rm_catalog_versions',
        sa.Column('id', sa.String(length=32), nullable=False),
        sa.Column('project_id', sa.String(length=32), nullable=False),
        sa.Column('version', sa.Integer(), nullable=False),
        sa.Column('source_format', sa.String(length=16), nullable=False),
        sa.Column('n_items', sa.Integer(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        _project_fk('rec_rm_catalog_versions'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_rec_rm_catalog_versions')),
        sa.UniqueConstraint('project_id', 'version', name='uq_rec_rm_catalog_versions_project_version'),
    )
    op.create_index(op.f('ix_rec_rm_catalog_versions_project_id'), 'rec_rm_catalog_versions', ['project_id'],
                    unique=False)
    op.create_table(
        'rec_rm_catalog_items',
        sa.Column('catalog_version_id', sa.String(length=32), nullable=False),
        sa.Column('item_id', sa.String(length=200), nullable=False),
        sa.Column('title', sa.Text(), nullable=False),
        sa.Column('title_key', sa.String(length=300), nullable=False),
        sa.Column('attributes', sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(['catalog_version_id'], ['rec_rm_catalog_versions.id'],
                                name=op.f('fk_rec_rm_catalog_items_catalog_version_id_rec_rm_catalog_versions'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('catalog_version_id', 'item_id', name=op.f('pk_rec_rm_catalog_items')),
    )
    op.create_index('ix_rec_rm_catalog_items_title_key', 'rec_rm_catalog_items', ['catalog_version_id', 'title_key'],
                    unique=False)
    op.create_table(
        'rec_rm_interactions',
        sa.Column('id', sa.String(length=32), nullable=False),
        sa.Column('project_id', sa.String(length=32), nullable=False),
        sa.Column('user_id', sa.String(length=200), nullable=False),
        sa.Column('item_id', sa.String(length=200), nullable=False),
        sa.Column('event', sa.String(length=64), nullable=False),
        sa.Column('timestamp', sa.DateTime(timezone=True), nullable=False),
        sa.Column('context', sa.JSON(), nullable=False),
        sa.Column('import_id', sa.String(length=32), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        _project_fk('rec_rm_interactions'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_rec_rm_interactions')),
    )
    op.create_index('ix_rec_rm_interactions_user', 'rec_rm_interactions', ['project_id', 'user_id', 'timestamp'],
                    unique=False)
    op.create_index('ix_rec_rm_interactions_item', 'rec_rm_interactions', ['project_id', 'item_id'], unique=False)
    op.create_index('ix_rec_rm_interactions_time', 'rec_rm_interactions', ['project_id', 'timestamp', 'id'],
                    unique=False)
    op.create_table(
        'rec_rm_reward_configs',
        sa.Column('id', sa.String(length=32), nullable=False),
        sa.Column('project_id', sa.String(length=32), nullable=False),
        sa.Column('version', sa.Integer(), nullable=False),
        sa.Column('config', sa.JSON(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        _project_fk('rec_rm_reward_configs'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_rec_rm_reward_configs')),
        sa.UniqueConstraint('project_id', 'version', name='uq_rec_rm_reward_configs_project_version'),
    )
    op.create_index(op.f('ix_rec_rm_reward_configs_project_id'), 'rec_rm_reward_configs', ['project_id'],
                    unique=False)
    op.create_table(
        'rec_rm_behaviour_models',
        sa.Column('id', sa.String(length=32), nullable=False),
        sa.Column('project_id', sa.String(length=32), nullable=False),
        sa.Column('version', sa.Integer(), nullable=False),
        sa.Column('state', sa.Enum('queued', 'running', 'succeeded', 'failed', name='modelstate',
                                   native_enum=False, length=16), nullable=False),
        sa.Column('stage', sa.String(length=32), nullable=False),
        sa.Column('total', sa.Integer(), nullable=False),
        sa.Column('done', sa.Integer(), nullable=False),
        sa.Column('params', sa.JSON(), nullable=False),
        sa.Column('metrics', sa.JSON(), nullable=True),
        sa.Column('blob', sa.LargeBinary(), nullable=True),
        sa.Column('error', sa.Text(), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=True),
        _project_fk('rec_rm_behaviour_models'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_rec_rm_behaviour_models')),
        sa.UniqueConstraint('project_id', 'version', name='uq_rec_rm_behaviour_models_project_version'),
    )
    op.create_index(op.f('ix_rec_rm_behaviour_models_project_id'), 'rec_rm_behaviour_models', ['project_id'],
                    unique=False)
    op.create_index('ix_rec_rm_behaviour_models_state', 'rec_rm_behaviour_models', ['state'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_rec_rm_behaviour_models_state', table_name='rec_rm_behaviour_models')
    op.drop_index(op.f('ix_rec_rm_behaviour_models_project_id'), table_name='rec_rm_behaviour_models')
    op.drop_table('rec_rm_behaviour_models')
    op.drop_index(op.f('ix_rec_rm_reward_configs_project_id'), table_name='rec_rm_reward_configs')
    op.drop_table('rec_rm_reward_configs')
    op.drop_index('ix_rec_rm_interactions_time', table_name='rec_rm_interactions')
    op.drop_index('ix_rec_rm_interactions_item', table_name='rec_rm_interactions')
    op.drop_index('ix_rec_rm_interactions_user', table_name='rec_rm_interactions')
    op.drop_table('rec_rm_interactions')
    op.drop_index('ix_rec_rm_catalog_items_title_key', table_name='rec_rm_catalog_items')
    op.drop_table('rec_rm_catalog_items')
    op.drop_index(op.f('ix_rec_rm_catalog_versions_project_id'), table_name='rec_rm_catalog_versions')
    op.drop_table('rec_rm_catalog_versions')
