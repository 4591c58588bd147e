"""Fixtures for the sampling tests that use the training test doubles: ``flow`` and ``mixture`` from
``tests/train/_helpers.py``, as the training tests get them."""

from tests.train._helpers import flow, mixture  # noqa: F401 (fixtures)
