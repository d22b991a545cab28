"""Evaluation stages: pure functions from inventory, samples and reports to statuses and records."""
