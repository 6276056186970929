"""annotation: project guidelines (Markdown, version, read-before-labelling gate), their confirmations,
and "come back later" on assignments

Existing projects get empty guidelines at version 0 with no gate; existing assignments are not deferred.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('annotation_projects', schema=None) as batch_op:
        batch_op.add_column(sa.Column('guidelines', sa.Text(), nullable=False, server_default=''))
        batch_op.add_column(sa.Column('guidelines_version', sa.Integer(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('guidelines_required', sa.Boolean(), nullable=False,
                                      server_default=sa.false()))
    with op.batch_alter_table('annotation_assignments', schema=None) as batch_op:
        batch_op.add_column(sa.Column('deferred_at', sa.DateTime(timezone=True), nullable=True))
    op.create_table('annotation_guidelines_confirmations',
    sa.Column('annotator_id', sa.String(length=32), nullable=False),
    sa.Column('annotation_project_id', sa.String(length=32), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('confirmed_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['annotation_project_id'], ['annotation_projects.id'], name=op.f('fk_annotation_guidelines_confirmations_annotation_project_id_annotation_projects'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['annotator_id'], ['annotation_annotators.id'], name=op.f('fk_annotation_guidelines_confirmations_annotator_id_annotation_annotators'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('annotator_id', 'annotation_project_id', 'version', name=op.f('pk_annotation_guidelines_confirmations'))
    )


def downgrade() -> None:
    op.drop_table('annotation_guidelines_confirmations')
    with op.batch_alter_table('annotation_assignments', schema=None) as batch_op:
        batch_op.drop_column('deferred_at')
    with op.batch_alter_table('annotation_projects', schema=None) as batch_op:
        batch_op.drop_column('guidelines_required')
        batch_op.drop_column('guidelines_version')
        batch_op.drop_column('guidelines')
