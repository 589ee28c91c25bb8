"""The operations tests reuse the harness of the end-to-end tests (ftserver processes, paho
clients) and of the S3 tests (SeaweedFS)."""

from __future__ import annotations

import sys
from pathlib import Path

_TESTS = Path(__file__).resolve().parents[1]
for _sub in ("integration", "s3"):
    if str(_TESTS / _sub) not in sys.path:
        sys.path.insert(0, str(_TESTS / _sub))
