"""annotation: submissions accepted or rejected by a reviewer, each task's history

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-01

- ``annotation_reviews``: one accept/reject per submission (who, when, an optional comment);
- ``annotation_label_edits``: every edit of a label by its annotator, old and new value;
- ``annotation_annotations.rejected_at`` / ``edited_at``;
- ``annotation_projects.label_edit_window_s`` (default one day).

The assignment state ``rejected`` needs no change: enum columns are plain strings without a CHECK.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0017'
down_revision = '0016'
branch_labels = None
depends_on = None


def _fk(table: str, column: str, referred: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint([column], [f'{referred}.id'], name=op.f(f'fk_{table}_{column}_{referred}'),
                                   ondelete='CASCADE')


def upgrade() -> None:
    with op.batch_alter_table('annotation_projects', schema=None) as batch_op:
        batch_op.add_column(sa.Column('label_edit_window_s', sa.Integer(), nullable=False, server_default='86400'))
    with op.batch_alter_table('annotation_annotations', schema=None) as batch_op:
        batch_op.add_column(sa.Column('rejected_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('edited_at', sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        'annotation_reviews',
        sa.Column('id', sa.String(length=32), nullable=False),
        sa.Column('annotation_id', sa.String(length=32), nullable=False),
        sa.Column('task_id', sa.String(length=32), nullable=False),
        sa.Column('annotation_project_id', sa.String(length=32), nullable=False),
        sa.Column('reviewer_id', sa.String(length=32), nullable=False),
        sa.Column('decision', sa.Enum('accepted', 'rejected', name='reviewdecision', native_enum=False, length=16),
                  nullable=False),
        sa.Column('comment', sa.Text(), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        _fk('annotation_reviews', 'annotation_id', 'annotation_annotations'),
        _fk('annotation_reviews', 'task_id', 'annotation_tasks'),
        _fk('annotation_reviews', 'annotation_project_id', 'annotation_projects'),
        _fk('annotation_reviews', 'reviewer_id', 'annotation_annotators'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_annotation_reviews')),
        sa.UniqueConstraint('annotation_id', name=op.f('uq_annotation_reviews_annotation_id')),
    )
    op.create_index(op.f('ix_annotation_reviews_task_id'), 'annotation_reviews', ['task_id'], unique=False)
    op.create_table(
        'annotation_label_edits',
        sa.Column('id', sa.String(length=32), nullable=False),
        sa.Column('annotation_id', sa.String(length=32), nullable=False),
        sa.Column('task_id', sa.String(length=32), nullable=False),
        sa.Column('annotation_project_id', sa.String(length=32), nullable=False),
        sa.Column('annotator_id', sa.String(length=32), nullable=False),
        sa.Column('old', sa.JSON(), nullable=False),
        sa.Column('new', sa.JSON(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        _fk('annotation_label_edits', 'annotation_id', 'annotation_annotations'),
        _fk('annotation_label_edits', 'task_id', 'annotation_tasks'),
        _fk('annotation_label_edits', 'annotation_project_id', 'annotation_projects'),
        _fk('annotation_label_edits', 'annotator_id', 'annotation_annotators'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_annotation_label_edits')),
    )
    op.create_index(op.f('ix_annotation_label_edits_annotation_id'), 'annotation_label_edits', ['annotation_id'],
                    unique=False)
    op.create_index(op.f('ix_annotation_label_edits_task_id'), 'annotation_label_edits', ['task_id'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_annotation_label_edits_task_id'), table_name='annotation_label_edits')
    op.drop_index(op.f('ix_annotation_label_edits_annotation_id'), table_name='annotation_label_edits')
    op.drop_table('annotation_label_edits')
    op.drop_index(op.f('ix_annotation_reviews_task_id'), table_name='annotation_reviews')
    op.drop_table('annotation_reviews')
    with op.batch_alter_table('annotation_annotations', schema=None) as batch_op:
        batch_op.drop_column('edited_at')
        batch_op.drop_column('rejected_at')
    with op.batch_alter_table('annotation_projects', schema=None) as batch_op:
        batch_op.drop_column('label_edit_window_s')
