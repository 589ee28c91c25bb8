"""ftcore: the native kernels of ftserver (no asyncio, no sockets, no policy).

``import ftcore`` gives the compiled kernels. The pure-Python twins in ``ftcore._pure`` are a
reference implementation used by the tests; they are selected only when ``FTCORE_PURE=1``
is set explicitly, never silently, because they are orders of magnitude slower.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ftcore._core import DEBUG, Assembler, RangeSet, RollingSha256, SparseFile
    from ftcore._ingest import SegmentPath

    IMPLEMENTATION: str
elif os.environ.get("FTCORE_PURE", "") not in ("", "0"):
    from ftcore._pure import DEBUG, Assembler, RangeSet, RollingSha256, SparseFile
    from ftcore._pure_ingest import SegmentPath

    IMPLEMENTATION = "python"
else:
    try:
        from ftcore._core import DEBUG, Assembler, RangeSet, RollingSha256, SparseFile
        from ftcore._ingest import SegmentPath
    except ImportError as exc:  # pragma: no cover - exercised only on broken installs
        raise ImportError(
            "ftcore's compiled extension is not built: install with `pip install .` "
            "(needs gcc, Python headers and libssl-dev), or set FTCORE_PURE=1 to run the "
            "slow pure-Python reference kernels"
        ) from exc
    IMPLEMENTATION = "cython"

__all__ = [
    "DEBUG",
    "IMPLEMENTATION",
    "Assembler",
    "RangeSet",
    "RollingSha256",
    "SegmentPath",
    "SparseFile",
]
