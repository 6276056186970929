"""annotation: failed web-UI login attempts (rate limiting shared by every replica)

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'annotation_login_attempts',
        sa.Column('id', sa.String(length=32), nullable=False),
        sa.Column('scope', sa.String(length=16), nullable=False),
        sa.Column('subject', sa.String(length=64), nullable=False),
        sa.Column('attempted_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_annotation_login_attempts')),
    )
    op.create_index('ix_annotation_login_attempts_subject', 'annotation_login_attempts',
                    ['scope', 'subject', 'attempted_at'], unique=False)
    op.create_index(op.f('ix_annotation_login_attempts_attempted_at'), 'annotation_login_attempts',
                    ['attempted_at'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_annotation_login_attempts_attempted_at'), table_name='annotation_login_attempts')
    op.drop_index('ix_annotation_login_attempts_subject', table_name='annotation_login_attempts')
    op.drop_table('annotation_login_attempts')
