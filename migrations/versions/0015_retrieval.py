"""retrieval: corpora and their passages (the BM25 index files are built from them)

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'retrieval_corpora',
        sa.Column('id', sa.String(length=32), nullable=False),
        sa.Column('project_id', sa.String(length=32), nullable=False),
        sa.Column('name', sa.String(length=200), nullable=False),
        sa.Column('description', sa.Text(), nullable=False),
        sa.Column('document_count', sa.Integer(), nullable=False),
        sa.Column('index_key', sa.String(length=32), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['project_id'], ['projects.id'],
                                name=op.f('fk_retrieval_corpora_project_id_projects'), ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_retrieval_corpora')),
        sa.UniqueConstraint('project_id', 'name', name='uq_retrieval_corpora_project_name'),
    )
    op.create_index(op.f('ix_retrieval_corpora_project_id'), 'retrieval_corpora', ['project_id'], unique=False)
    op.create_table(
        'retrieval_documents',
        sa.Column('corpus_id', sa.String(length=32), nullable=False),
        sa.Column('doc_id', sa.String(length=200), nullable=False),
        sa.Column('position', sa.Integer(), nullable=False),
        sa.Column('title', sa.Text(), nullable=False),
        sa.Column('text', sa.Text(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['corpus_id'], ['retrieval_corpora.id'],
                                name=op.f('fk_retrieval_documents_corpus_id_retrieval_corpora'), ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('corpus_id', 'doc_id', name=op.f('pk_retrieval_documents')),
    )


def downgrade() -> None:
    op.drop_table('retrieval_documents')
    op.drop_index(op.f('ix_retrieval_corpora_project_id'), table_name='retrieval_corpora')
    op.drop_table('retrieval_corpora')
