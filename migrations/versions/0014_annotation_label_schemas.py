"""annotation: label schemas (question types) per project

Annotations, adjudications and purchases get ``label_values`` (every question's answer by question id,
JSON; null on rows from before, whose math answer stays in ``answer``/``label``). Existing projects'
``label_schema`` — the flat math form ``{free_form, candidates, ambiguous, rationale}`` — becomes
``{"questions": [{"id": "answer", "type": "math_answer", …the same options}]}``; the downgrade turns a
schema that is one math_answer question back into the flat form (other schemas fall back to its defaults).

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-01
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None

LEGACY = ("free_form", "candidates", "ambiguous", "rationale")
LEGACY_DEFAULTS: dict[str, Any] = {"free_form": True, "candidates": True, "ambiguous": True, "rationale": "optional"}
TABLES = ("annotation_annotations", "annotation_adjudications", "annotation_purchases")


def to_questions(schema: Any) -> Any:
    """The flat math form as one math_answer question (a schema that already has questions is kept)."""
    if isinstance(schema, dict) and "questions" in schema:
        return schema
    flat = schema if isinstance(schema, dict) else {}
    options = {**LEGACY_DEFAULTS, **{k: v for k, v in flat.items() if k in LEGACY}}
    return {"questions": [{"id": "answer", "type": "math_answer", "prompt": "The final answer", "required": True,
                           "guidelines": "", **options}]}


def to_flat(schema: Any) -> dict[str, Any]:
    questions = schema.get("questions") if isinstance(schema, dict) else None
    if not isinstance(questions, list):
        return dict(LEGACY_DEFAULTS) if not isinstance(schema, dict) else schema
    math = [q for q in questions if isinstance(q, dict) and q.get("type") == "math_answer"]
    source = math[0] if len(questions) == 1 and math else {}
    return {k: source.get(k, v) for k, v in LEGACY_DEFAULTS.items()}


def _convert(convert: Any) -> None:
    bind = op.get_bind()
    projects = sa.table('annotation_projects', sa.column('id', sa.String), sa.column('label_schema', sa.JSON))
    for row_id, schema in bind.execute(sa.select(projects.c.id, projects.c.label_schema)).all():
        value = json.loads(schema) if isinstance(schema, str) else schema
        new = convert(value)
        if new != value:
            bind.execute(projects.update().where(projects.c.id == row_id).values(label_schema=new))


def upgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column('label_values', sa.JSON(), nullable=True))
    _convert(to_questions)


def downgrade() -> None:
    _convert(to_flat)
    for table in reversed(TABLES):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column('label_values')
