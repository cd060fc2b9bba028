"""Evaluation beyond accuracy: comparisons (and, as they move here, scoring, metrics and the suite)."""
