"""annotation: projects, prompts, rollout groups, selection, purchases, queue, accounts

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('annotation_annotators',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('username', sa.String(length=64), nullable=False),
    sa.Column('password_hash', sa.String(length=256), nullable=True),
    sa.Column('role', sa.Enum('annotator', 'reviewer', 'admin', name='annotatorrole', native_enum=False, length=16), nullable=False),
    sa.Column('api_key_id', sa.String(length=32), nullable=True),
    sa.Column('display_name', sa.String(length=200), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('disabled_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['api_key_id'], ['api_keys.id'], name=op.f('fk_annotation_annotators_api_key_id_api_keys'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_annotation_annotators')),
    sa.UniqueConstraint('api_key_id', name=op.f('uq_annotation_annotators_api_key_id')),
    sa.UniqueConstraint('username', name=op.f('uq_annotation_annotators_username'))
    )
    op.create_table('annotation_projects',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('project_id', sa.String(length=32), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('description', sa.String(length=2000), nullable=False),
    sa.Column('label_budget', sa.Integer(), nullable=False),
    sa.Column('labels_bought', sa.Integer(), nullable=False),
    sa.Column('label_schema', sa.JSON(), nullable=False),
    sa.Column('overlap_k', sa.Integer(), nullable=False),
    sa.Column('lease_seconds', sa.Integer(), nullable=False),
    sa.Column('rollouts_per_prompt', sa.Integer(), nullable=False),
    sa.Column('policy', sa.Enum('care', 'random', 'low_consensus', 'entropy', 'oracle_cag', name='policy', native_enum=False, length=16), nullable=False),
    sa.Column('care_params', sa.JSON(), nullable=False),
    sa.Column('answer_source', sa.Enum('human', 'answer_key', name='answersource', native_enum=False, length=16), nullable=False),
    sa.Column('webhook_url', sa.String(length=2000), nullable=True),
    sa.Column('webhook_secret', sa.String(length=128), nullable=False),
    sa.Column('label_seq', sa.Integer(), nullable=False),
    sa.Column('last_step', sa.Integer(), nullable=True),
    sa.Column('lock_version', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['project_id'], ['projects.id'], name=op.f('fk_annotation_projects_project_id_projects'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_annotation_projects')),
    sa.UniqueConstraint('project_id', 'name', name=op.f('uq_annotation_projects_project_id'))
    )
    with op.batch_alter_table('annotation_projects', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_annotation_projects_project_id'), ['project_id'], unique=False)

    op.create_table('annotation_answer_keys',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('annotation_project_id', sa.String(length=32), nullable=False),
    sa.Column('prompt_external_id', sa.String(length=200), nullable=False),
    sa.Column('answer', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['annotation_project_id'], ['annotation_projects.id'], name=op.f('fk_annotation_answer_keys_annotation_project_id_annotation_projects'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_annotation_answer_keys')),
    sa.UniqueConstraint('annotation_project_id', 'prompt_external_id', name=op.f('uq_annotation_answer_keys_annotation_project_id'))
    )
    op.create_table('annotation_idempotency',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('annotation_project_id', sa.String(length=32), nullable=False),
    sa.Column('endpoint', sa.String(length=100), nullable=False),
    sa.Column('key', sa.String(length=200), nullable=False),
    sa.Column('request_hash', sa.String(length=64), nullable=False),
    sa.Column('status_code', sa.Integer(), nullable=False),
    sa.Column('response', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['annotation_project_id'], ['annotation_projects.id'], name=op.f('fk_annotation_idempotency_annotation_project_id_annotation_projects'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_annotation_idempotency')),
    sa.UniqueConstraint('annotation_project_id', 'endpoint', 'key', name=op.f('uq_annotation_idempotency_annotation_project_id'))
    )
    op.create_table('annotation_memberships',
    sa.Column('annotator_id', sa.String(length=32), nullable=False),
    sa.Column('annotation_project_id', sa.String(length=32), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['annotation_project_id'], ['annotation_projects.id'], name=op.f('fk_annotation_memberships_annotation_project_id_annotation_projects'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['annotator_id'], ['annotation_annotators.id'], name=op.f('fk_annotation_memberships_annotator_id_annotation_annotators'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('annotator_id', 'annotation_project_id', name=op.f('pk_annotation_memberships'))
    )
    op.create_table('annotation_prompts',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('annotation_project_id', sa.String(length=32), nullable=False),
    sa.Column('external_id', sa.String(length=200), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['annotation_project_id'], ['annotation_projects.id'], name=op.f('fk_annotation_prompts_annotation_project_id_annotation_projects'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_annotation_prompts')),
    sa.UniqueConstraint('annotation_project_id', 'external_id', name=op.f('uq_annotation_prompts_annotation_project_id'))
    )
    op.create_table('annotation_selector_states',
    sa.Column('annotation_project_id', sa.String(length=32), nullable=False),
    sa.Column('policy', sa.String(length=32), nullable=False),
    sa.Column('state', sa.LargeBinary(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['annotation_project_id'], ['annotation_projects.id'], name=op.f('fk_annotation_selector_states_annotation_project_id_annotation_projects'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('annotation_project_id', name=op.f('pk_annotation_selector_states'))
    )
    op.create_table('annotation_rollout_groups',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('annotation_project_id', sa.String(length=32), nullable=False),
    sa.Column('prompt_id', sa.String(length=32), nullable=False),
    sa.Column('step', sa.Integer(), nullable=False),
    sa.Column('n', sa.Integer(), nullable=False),
    sa.Column('answers', sa.JSON(), nullable=False),
    sa.Column('completions', sa.JSON(), nullable=True),
    sa.Column('response_lengths', sa.JSON(), nullable=True),
    sa.Column('mean_token_probs', sa.JSON(), nullable=True),
    sa.Column('prompt_features', sa.LargeBinary(), nullable=True),
    sa.Column('rollout_features', sa.LargeBinary(), nullable=True),
    sa.Column('feature_dim', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['annotation_project_id'], ['annotation_projects.id'], name=op.f('fk_annotation_rollout_groups_annotation_project_id_annotation_projects'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['prompt_id'], ['annotation_prompts.id'], name=op.f('fk_annotation_rollout_groups_prompt_id_annotation_prompts'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_annotation_rollout_groups')),
    sa.UniqueConstraint('annotation_project_id', 'step', 'prompt_id', name=op.f('uq_annotation_rollout_groups_annotation_project_id'))
    )
    with op.batch_alter_table('annotation_rollout_groups', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_annotation_rollout_groups_prompt_id'), ['prompt_id'], unique=False)

    op.create_table('annotation_pseudo_labels',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('rollout_group_id', sa.String(length=32), nullable=False),
    sa.Column('answer', sa.Text(), nullable=True),
    sa.Column('majority_ratio', sa.Float(), nullable=False),
    sa.Column('valid_ratio', sa.Float(), nullable=False),
    sa.Column('clusters', sa.JSON(), nullable=False),
    sa.ForeignKeyConstraint(['rollout_group_id'], ['annotation_rollout_groups.id'], name=op.f('fk_annotation_pseudo_labels_rollout_group_id_annotation_rollout_groups'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_annotation_pseudo_labels')),
    sa.UniqueConstraint('rollout_group_id', name=op.f('uq_annotation_pseudo_labels_rollout_group_id'))
    )
    op.create_table('annotation_purchases',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('annotation_project_id', sa.String(length=32), nullable=False),
    sa.Column('prompt_id', sa.String(length=32), nullable=False),
    sa.Column('rollout_group_id', sa.String(length=32), nullable=False),
    sa.Column('step', sa.Integer(), nullable=False),
    sa.Column('policy', sa.String(length=32), nullable=False),
    sa.Column('score', sa.Float(), nullable=True),
    sa.Column('source', sa.Enum('human', 'answer_key', name='answersource', native_enum=False, length=16), nullable=False),
    sa.Column('status', sa.Enum('pending', 'labelled', name='purchasestatus', native_enum=False, length=16), nullable=False),
    sa.Column('label_kind', sa.Enum('answer', 'ambiguous', name='labelkind', native_enum=False, length=16), nullable=True),
    sa.Column('label', sa.Text(), nullable=True),
    sa.Column('labelled_by', sa.JSON(), nullable=False),
    sa.Column('adjudicator_id', sa.String(length=32), nullable=True),
    sa.Column('purchased_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('labelled_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('label_seq', sa.Integer(), nullable=True),
    sa.Column('observed_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['annotation_project_id'], ['annotation_projects.id'], name=op.f('fk_annotation_purchases_annotation_project_id_annotation_projects'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['prompt_id'], ['annotation_prompts.id'], name=op.f('fk_annotation_purchases_prompt_id_annotation_prompts'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['rollout_group_id'], ['annotation_rollout_groups.id'], name=op.f('fk_annotation_purchases_rollout_group_id_annotation_rollout_groups'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_annotation_purchases')),
    sa.UniqueConstraint('annotation_project_id', 'prompt_id', name=op.f('uq_annotation_purchases_annotation_project_id'))
    )
    with op.batch_alter_table('annotation_purchases', schema=None) as batch_op:
        batch_op.create_index('ix_annotation_purchases_project_label_seq', ['annotation_project_id', 'label_seq'], unique=False)

    op.create_table('annotation_selection_scores',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('rollout_group_id', sa.String(length=32), nullable=False),
    sa.Column('policy', sa.Enum('care', 'random', 'low_consensus', 'entropy', 'oracle_cag', name='policy', native_enum=False, length=16), nullable=False),
    sa.Column('score', sa.Float(), nullable=True),
    sa.Column('reliability', sa.Float(), nullable=True),
    sa.Column('reliable', sa.Boolean(), nullable=False),
    sa.Column('selected', sa.Boolean(), nullable=False),
    sa.Column('bought', sa.Boolean(), nullable=False),
    sa.Column('advantage_weight', sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(['rollout_group_id'], ['annotation_rollout_groups.id'], name=op.f('fk_annotation_selection_scores_rollout_group_id_annotation_rollout_groups'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_annotation_selection_scores')),
    sa.UniqueConstraint('rollout_group_id', name=op.f('uq_annotation_selection_scores_rollout_group_id'))
    )
    op.create_table('annotation_tasks',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('annotation_project_id', sa.String(length=32), nullable=False),
    sa.Column('purchase_id', sa.String(length=32), nullable=False),
    sa.Column('prompt_id', sa.String(length=32), nullable=False),
    sa.Column('rollout_group_id', sa.String(length=32), nullable=False),
    sa.Column('priority', sa.Float(), nullable=False),
    sa.Column('overlap_k', sa.Integer(), nullable=False),
    sa.Column('status', sa.Enum('open', 'adjudication', 'done', name='taskstatus', native_enum=False, length=16), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('agreement', sa.Float(), nullable=True),
    sa.Column('final_kind', sa.Enum('answer', 'ambiguous', name='labelkind', native_enum=False, length=16), nullable=True),
    sa.Column('final_answer', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('completed_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['annotation_project_id'], ['annotation_projects.id'], name=op.f('fk_annotation_tasks_annotation_project_id_annotation_projects'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['prompt_id'], ['annotation_prompts.id'], name=op.f('fk_annotation_tasks_prompt_id_annotation_prompts'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['purchase_id'], ['annotation_purchases.id'], name=op.f('fk_annotation_tasks_purchase_id_annotation_purchases'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['rollout_group_id'], ['annotation_rollout_groups.id'], name=op.f('fk_annotation_tasks_rollout_group_id_annotation_rollout_groups'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_annotation_tasks')),
    sa.UniqueConstraint('purchase_id', name=op.f('uq_annotation_tasks_purchase_id'))
    )
    with op.batch_alter_table('annotation_tasks', schema=None) as batch_op:
        batch_op.create_index('ix_annotation_tasks_queue', ['annotation_project_id', 'status', 'priority'], unique=False)

    op.create_table('annotation_adjudications',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('task_id', sa.String(length=32), nullable=False),
    sa.Column('adjudicator_id', sa.String(length=32), nullable=False),
    sa.Column('kind', sa.Enum('answer', 'ambiguous', name='labelkind', native_enum=False, length=16), nullable=False),
    sa.Column('answer', sa.Text(), nullable=True),
    sa.Column('candidate_index', sa.Integer(), nullable=True),
    sa.Column('rationale', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['adjudicator_id'], ['annotation_annotators.id'], name=op.f('fk_annotation_adjudications_adjudicator_id_annotation_annotators'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['task_id'], ['annotation_tasks.id'], name=op.f('fk_annotation_adjudications_task_id_annotation_tasks'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_annotation_adjudications')),
    sa.UniqueConstraint('task_id', name=op.f('uq_annotation_adjudications_task_id'))
    )
    op.create_table('annotation_assignments',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('task_id', sa.String(length=32), nullable=False),
    sa.Column('annotation_project_id', sa.String(length=32), nullable=False),
    sa.Column('annotator_id', sa.String(length=32), nullable=False),
    sa.Column('state', sa.Enum('active', 'submitted', 'skipped', name='assignmentstate', native_enum=False, length=16), nullable=False),
    sa.Column('leased_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['annotation_project_id'], ['annotation_projects.id'], name=op.f('fk_annotation_assignments_annotation_project_id_annotation_projects'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['annotator_id'], ['annotation_annotators.id'], name=op.f('fk_annotation_assignments_annotator_id_annotation_annotators'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['task_id'], ['annotation_tasks.id'], name=op.f('fk_annotation_assignments_task_id_annotation_tasks'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_annotation_assignments')),
    sa.UniqueConstraint('task_id', 'annotator_id', name=op.f('uq_annotation_assignments_task_id'))
    )
    with op.batch_alter_table('annotation_assignments', schema=None) as batch_op:
        batch_op.create_index('ix_annotation_assignments_annotator', ['annotator_id', 'state'], unique=False)
        batch_op.create_index(batch_op.f('ix_annotation_assignments_task_id'), ['task_id'], unique=False)

    op.create_table('annotation_annotations',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('task_id', sa.String(length=32), nullable=False),
    sa.Column('assignment_id', sa.String(length=32), nullable=False),
    sa.Column('annotation_project_id', sa.String(length=32), nullable=False),
    sa.Column('annotator_id', sa.String(length=32), nullable=False),
    sa.Column('submission_id', sa.String(length=100), nullable=False),
    sa.Column('kind', sa.Enum('answer', 'ambiguous', name='labelkind', native_enum=False, length=16), nullable=False),
    sa.Column('answer', sa.Text(), nullable=True),
    sa.Column('candidate_index', sa.Integer(), nullable=True),
    sa.Column('rationale', sa.Text(), nullable=True),
    sa.Column('duration_s', sa.Float(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('undone_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['annotation_project_id'], ['annotation_projects.id'], name=op.f('fk_annotation_annotations_annotation_project_id_annotation_projects'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['annotator_id'], ['annotation_annotators.id'], name=op.f('fk_annotation_annotations_annotator_id_annotation_annotators'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['assignment_id'], ['annotation_assignments.id'], name=op.f('fk_annotation_annotations_assignment_id_annotation_assignments'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['task_id'], ['annotation_tasks.id'], name=op.f('fk_annotation_annotations_task_id_annotation_tasks'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_annotation_annotations')),
    sa.UniqueConstraint('annotator_id', 'submission_id', name=op.f('uq_annotation_annotations_annotator_id'))
    )
    with op.batch_alter_table('annotation_annotations', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_annotation_annotations_task_id'), ['task_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('annotation_annotations', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_annotation_annotations_task_id'))

    op.drop_table('annotation_annotations')
    with op.batch_alter_table('annotation_assignments', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_annotation_assignments_task_id'))
        batch_op.drop_index('ix_annotation_assignments_annotator')

    op.drop_table('annotation_assignments')
    op.drop_table('annotation_adjudications')
    with op.batch_alter_table('annotation_tasks', schema=None) as batch_op:
        batch_op.drop_index('ix_annotation_tasks_queue')

    op.drop_table('annotation_tasks')
    op.drop_table('annotation_selection_scores')
    with op.batch_alter_table('annotation_purchases', schema=None) as batch_op:
        batch_op.drop_index('ix_annotation_purchases_project_label_seq')

    op.drop_table('annotation_purchases')
    op.drop_table('annotation_pseudo_labels')
    with op.batch_alter_table('annotation_rollout_groups', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_annotation_rollout_groups_prompt_id'))

    op.drop_table('annotation_rollout_groups')
    op.drop_table('annotation_selector_states')
    op.drop_table('annotation_prompts')
    op.drop_table('annotation_memberships')
    op.drop_table('annotation_idempotency')
    op.drop_table('annotation_answer_keys')
    with op.batch_alter_table('annotation_projects', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_annotation_projects_project_id'))

    op.drop_table('annotation_projects')
    op.drop_table('annotation_annotators')
