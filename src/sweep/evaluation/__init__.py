"""Held-out evaluation: metrics, answers, loss."""
