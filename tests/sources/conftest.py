"""Pytest fixtures for the source adapter tests (writers live in source_fixtures.py)."""

from source_fixtures import ctx, inat_dir  # noqa: F401  (fixtures re-exported for pytest)
