"""docs/metrics.md lists exactly the metrics ftserver exports, with their types and labels."""

from __future__ import annotations

import re
from pathlib import Path

from ftserver import metrics

DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"


def documented() -> dict[str, tuple[str, str]]:
    rows = {}
    for line in DOC.read_text().splitlines():
        m = re.match(r"\| `(ftserver_[a-z_]+)` \| (\w+) \| ([^|]*) \|", line)
        if m:
            rows[m.group(1)] = (m.group(2), m.group(3).strip())
    return rows


def test_every_metric_is_documented_and_nothing_else() -> None:
    expected = {}
    for metric in metrics.ALL:
        suffix = "_total" if metric._type == "counter" else ""
        labels = ", ".join(metric._labelnames) or "—"
        expected[metric._name + suffix] = (metric._type, labels)
    assert documented() == expected


def test_names_follow_prometheus_conventions() -> None:
    for metric in metrics.ALL:
        assert metric._name.startswith("ftserver_")
        if metric._type == "histogram":
            assert metric._name.endswith("_seconds")
        assert re.fullmatch(r"[a-z_]+", metric._name)
