"""The two flavours of every kernel: the compiled one and its pure-Python twin."""

from __future__ import annotations

import types

import ftcore._core
import ftcore._pure

KERNELS: dict[str, types.ModuleType] = {"cython": ftcore._core, "python": ftcore._pure}
