"""Automatic recovery of failed models (seed 1.1, the `recovery:` section)."""
