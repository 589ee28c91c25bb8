"""Where the Prometheus binaries are (the Debian package ``prometheus``, which ``ci/test``
installs): on PATH, else /usr/bin. A missing binary is an error, never a skip."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "alerts_test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "ftserver.json"
OPERATIONS = ROOT / "docs" / "operations.md"


def binary(name: str) -> str:
    """The path of ``prometheus`` or ``promtool``."""
    found = shutil.which(name)
    if found is None and os.access(f"/usr/bin/{name}", os.X_OK):
        found = f"/usr/bin/{name}"
    if found is None:
        raise RuntimeError(f"no {name} binary: install the Debian package prometheus (ci/test)")
    return found
