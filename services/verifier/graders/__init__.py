"""Deterministic graders: pure functions ``(spec, completion, ground_truth) -> GradeResult``."""
