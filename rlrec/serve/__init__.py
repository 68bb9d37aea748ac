"""Serving: export a trained policy, answer recommendation requests over HTTP with exact propensities,
log decisions and feedback, and play simulated customers against the service (see README, "Deploy")."""
