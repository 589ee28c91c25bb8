"""Kernel tests run against both flavours: the compiled ``ftcore._core`` and the pure-Python
twin ``ftcore._pure`` (the ``impl`` fixture); property tests compare the two directly."""

from __future__ import annotations

import types

import pytest

from flavours import KERNELS


@pytest.fixture(params=sorted(KERNELS))
def impl(request: pytest.FixtureRequest) -> types.ModuleType:
    """The kernel module under test: both flavours, every test."""
    return KERNELS[request.param]
