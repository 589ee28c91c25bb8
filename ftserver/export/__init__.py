"""Exporters: where finished files go (docs/protocol.md §6), and how they are found again.

:func:`make_exporter` builds the one ``export.kind`` names: the local directory in EMQX's
layout (:mod:`ftserver.export.local`) or an S3-compatible bucket (:mod:`ftserver.export.s3`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ftserver.config import ExportConfig
    from ftserver.export.base import Exporter

__all__ = ["make_exporter"]


def make_exporter(cfg: ExportConfig, data_dir: Path, node: str = "") -> Exporter:
    """The exporter of ``export.kind``: ``<data_dir>/exports`` for ``local``; for ``s3`` the
    configured bucket, with its local index in ``<data_dir>/exports-s3`` (``node``: this
    node's name in the checkpoints of streamed uploads, ``server.node``)."""
    if cfg.kind == "s3":
        from ftserver.export.s3 import S3Exporter, index_root

        return S3Exporter(cfg, index_root(data_dir), node)
    from ftserver.export.local import LocalExporter

    return LocalExporter(data_dir / "exports")
