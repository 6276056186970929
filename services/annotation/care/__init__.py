"""CARE active annotation: CAG, probes, acquisition and baseline policies (specs/care.md).

Pure functions on arrays and tensors; ``selector.CareSelector`` holds a project's state.
"""

from services.annotation.care.cag import (
    cag_cost,
    corrective_advantage_gap,
    cost_table,
    expected_gap,
    grpo_advantage,
)
from services.annotation.care.features import GroupView, LabelledView
from services.annotation.care.params import CareParams, care_params_from, validate_care_params
from services.annotation.care.selector import CareSelector, Decision

__all__ = [
    "CareParams", "CareSelector", "Decision", "GroupView", "LabelledView", "cag_cost", "care_params_from",
    "corrective_advantage_gap", "cost_table", "expected_gap", "grpo_advantage", "validate_care_params",
]
