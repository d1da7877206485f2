"""Tracking: listeners that record what the training loop reports (MLflow, console)."""
