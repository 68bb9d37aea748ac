"""Evaluation: rollouts and metrics, the simulator and logged-data reports, off-policy estimators, output."""
