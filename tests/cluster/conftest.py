"""The cluster tests' fixtures live in ``clusterlib`` (a module name of its own: the tests of
tests/s3 have a ``conftest`` too)."""

from clusterlib import cluster, seaweed

__all__ = ["cluster", "seaweed"]
