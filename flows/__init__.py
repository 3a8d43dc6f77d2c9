"""Prefect flows: thin task wrappers around ``pipeline`` functions, and nothing else."""
