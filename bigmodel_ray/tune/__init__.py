"""Hyperparameter search over any job (issue 5); space.py: search spaces in job files."""
