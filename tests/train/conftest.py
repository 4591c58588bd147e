"""Fixtures for the training tests: ``flow`` and ``mixture``, defined with the test doubles in
``tests/train/_helpers.py`` (the sampling tests use the same ones)."""

from tests.train._helpers import flow, mixture  # noqa: F401 (fixtures)
