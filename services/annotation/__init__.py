"""CARE active-annotation service: pseudo-labels, budgeted label purchases, the annotator queue."""
