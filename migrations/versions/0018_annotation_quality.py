"""annotation: honeypot gold tasks and per-question guideline versions

* ``annotation_projects.honeypot_rate`` (0 for existing projects: no honeypots) and ``honeypot_seed``
  (made on first use).
* ``annotation_tasks.honeypot`` (false for existing tasks), and ``purchase_id`` may be null: a
  honeypot is not bought. Downgrading deletes honeypot tasks (and their labels) before it makes
  ``purchase_id`` required again.
* ``annotation_honeypot_keys``: each honeypot's hidden answer.
* ``annotation_question_guidelines`` (every version of every question's guidelines) and
  ``annotation_question_guidelines_confirmations`` (who confirmed which version). Existing
  questions with guidelines get their current text as version 1.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-01
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = '0018'
down_revision = '0017'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('annotation_projects', schema=None) as batch_op:
        batch_op.add_column(sa.Column('honeypot_rate', sa.Float(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('honeypot_seed', sa.String(length=64), nullable=True))
    with op.batch_alter_table('annotation_tasks', schema=None) as batch_op:
        batch_op.add_column(sa.Column('honeypot', sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.alter_column('purchase_id', existing_type=sa.String(length=32), nullable=True)
    op.create_table('annotation_honeypot_keys',
    sa.Column('task_id', sa.String(length=32), nullable=False),
    sa.Column('annotation_project_id', sa.String(length=32), nullable=False),
    sa.Column('values', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['annotation_project_id'], ['annotation_projects.id'], name=op.f('fk_annotation_honeypot_keys_annotation_project_id_annotation_projects'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['task_id'], ['annotation_tasks.id'], name=op.f('fk_annotation_honeypot_keys_task_id_annotation_tasks'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('task_id', name=op.f('pk_annotation_honeypot_keys'))
    )
    with op.batch_alter_table('annotation_honeypot_keys', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_annotation_honeypot_keys_annotation_project_id'),
                              ['annotation_project_id'], unique=False)
    guidelines = op.create_table('annotation_question_guidelines',
    sa.Column('annotation_project_id', sa.String(length=32), nullable=False),
    sa.Column('question_id', sa.String(length=64), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['annotation_project_id'], ['annotation_projects.id'], name=op.f('fk_annotation_question_guidelines_annotation_project_id_annotation_projects'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('annotation_project_id', 'question_id', 'version', name=op.f('pk_annotation_question_guidelines'))
    )
    op.create_table('annotation_question_guidelines_confirmations',
    sa.Column('annotator_id', sa.String(length=32), nullable=False),
    sa.Column('annotation_project_id', sa.String(length=32), nullable=False),
    sa.Column('question_id', sa.String(length=64), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('confirmed_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['annotation_project_id'], ['annotation_projects.id'], name=op.f('fk_annotation_question_guidelines_confirmations_annotation_project_id_annotation_projects'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['annotator_id'], ['annotation_annotators.id'], name=op.f('fk_annotation_question_guidelines_confirmations_annotator_id_annotation_annotators'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('annotator_id', 'annotation_project_id', 'question_id', 'version', name=op.f('pk_annotation_question_guidelines_confirmations'))
    )
    _first_versions(guidelines)


def _first_versions(guidelines: sa.Table) -> None:
    """Each existing question's guidelines text becomes its version 1."""
    conn = op.get_bind()
    now = datetime.now(UTC)
    rows = []
    for project_id, schema in conn.execute(sa.text('SELECT id, label_schema FROM annotation_projects')):
        if isinstance(schema, str):
            schema = json.loads(schema)
        for question in (schema or {}).get('questions', []) if isinstance(schema, dict) else []:
            text = question.get('guidelines') if isinstance(question, dict) else None
            if isinstance(text, str) and text.strip() and isinstance(question.get('id'), str):
                rows.append({'annotation_project_id': project_id, 'question_id': question['id'], 'version': 1,
                             'text': text, 'created_at': now})
    if rows:
        op.bulk_insert(guidelines, rows)


def downgrade() -> None:
    op.drop_table('annotation_question_guidelines_confirmations')
    op.drop_table('annotation_question_guidelines')
    with op.batch_alter_table('annotation_honeypot_keys', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_annotation_honeypot_keys_annotation_project_id'))
    op.drop_table('annotation_honeypot_keys')
    # A honeypot has no purchase: it cannot survive purchase_id becoming required again.
    op.execute(sa.text('DELETE FROM annotation_tasks WHERE purchase_id IS NULL'))
    with op.batch_alter_table('annotation_tasks', schema=None) as batch_op:
        batch_op.alter_column('purchase_id', existing_type=sa.String(length=32), nullable=False)
        batch_op.drop_column('honeypot')
    with op.batch_alter_table('annotation_projects', schema=None) as batch_op:
        batch_op.drop_column('honeypot_seed')
        batch_op.drop_column('honeypot_rate')
