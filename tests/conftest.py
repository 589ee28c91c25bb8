"""Shared test harness.

- ``impl``: runs a test against both kernel flavours (compiled ``ftcore._core`` and the
  pure-Python twin ``ftcore._pure``).
- Warnings are errors (pyproject), every test has a timeout (pytest-timeout).
"""

from __future__ import annotations

import types

import pytest

import ftcore._core
import ftcore._pure

KERNELS = {"cython": ftcore._core, "python": ftcore._pure}


@pytest.fixture(params=sorted(KERNELS))
def impl(request: pytest.FixtureRequest) -> types.ModuleType:
    """The kernel module under test: both flavours, every test."""
    return KERNELS[request.param]
