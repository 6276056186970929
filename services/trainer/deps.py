"""The trainer service's route dependencies: the request's session and the caller's project scope."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import Depends, Query

from services.common.auth import TrainerOrAdmin
from services.common.db import SessionDep as SessionDep
from services.trainer import datasets


def project_scope(principal: TrainerOrAdmin) -> set[str] | None:
    """The projects a trainer or admin key may see runs of (None: every project)."""
    return None if principal.all_projects else set(principal.project_ids)


# A trainer or admin's project scope: what every run route filters by.
RunScope = Annotated[set[str] | None, Depends(project_scope)]
DatasetName = Annotated[str, Query(pattern=datasets.NAME_PATTERN, description="The dataset's name (what a run "
                                   "config's `dataset` names); a .jsonl/.parquet suffix is dropped.")]
DatasetFormat = Annotated[Literal["jsonl", "parquet"] | None, Query(description="Checked against the body; "
                                                                    "unset: detected.")]
AfterStepQuery = Annotated[int | None, Query(ge=0, deprecated=True, description=(
    "Deprecated (use `cursor`): only steps after this one. Still accepted for one release."))]


