"""Concatenate-at-fin: how a file stored one segment per file is assembled (baseline d).

EMQX's local storage keeps every segment as its own file and, at fin, checks that the
segments chain from 0 to the size, reads them all back in order, hashes them and writes the
export. :func:`assemble` is that, and the naive subscriber's fin; :func:`write_segments`
lays out a file's segments the way the naive subscriber stores them, so the fin scenario can
time :func:`assemble` of the same file ftserver exported.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from pathlib import Path

from bench.loadgen.content import Content

CHUNK = 1 << 20


def segment_name(offset: int) -> str:
    return f"seg.{offset:020d}"


def write_segments(directory: Path, content: Content, size: int, segment: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for off in range(0, size, segment):
        with open(directory / segment_name(off), "wb") as f:
            f.write(content.segment(off, min(segment, size - off)))


class Incomplete(Exception):
    pass


def assemble(directory: Path, size: int, out: Path) -> str:
    """Concatenate the segment files of ``directory`` into ``out`` (via a temporary name and a
    rename), hashing as it goes; returns the SHA-256 (hex). Raises :class:`Incomplete` when
    the segments do not chain from 0 to ``size`` exactly (EMQX's rule)."""
    offsets = sorted(int(p.name[4:]) for p in directory.iterdir() if p.name.startswith("seg."))
    h = hashlib.sha256()
    pos = 0
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "wb") as dst:
        for off in offsets:
            if off != pos:
                if off < pos:
                    continue  # a duplicate that an earlier, longer segment covers
                raise Incomplete(f"gap at {pos}")
            with open(directory / segment_name(off), "rb") as src:
                while pos < size and (chunk := src.read(min(CHUNK, size - pos))):
                    h.update(chunk)
                    dst.write(chunk)
                    pos += len(chunk)
            if pos >= size:
                break
        if pos < size:
            raise Incomplete(f"only {pos} of {size} bytes")
    os.replace(tmp, out)
    shutil.rmtree(directory, ignore_errors=True)
    return h.hexdigest()


def timed_assemble(directory: Path, size: int, out: Path) -> float:
    """Seconds :func:`assemble` takes."""
    t0 = time.perf_counter()
    assemble(directory, size, out)
    return time.perf_counter() - t0
