"""Before the first command: which transfer this upload is, a new one or one to resume.

With ``resume`` and a state file, the recorded upload continues when it describes the same
upload (same source, size, content, name, and client and file id when given): same client
id, file id and init metadata, and only the byte ranges not acknowledged yet. Anything else
starts a new transfer, with a message saying why; an unreadable state file is ignored the same
way.
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

from ftserver.client import state as statefile
from ftserver.client.options import UploadOptions
from ftserver.client.source import Source
from ftserver.client.state import UploadState

log = logging.getLogger("ftserver.client")


def initial_state(
    src: Source,
    opts: UploadOptions,
    *,
    name: str,
    checksum: str | None,
    client_id: str | None,
    new_client_id: str,
) -> UploadState:
    """The transfer to run: the recorded one if it matches, else a new one.

    ``client_id`` is the one the connection will use (None: not chosen yet; then a new
    transfer takes ``new_client_id``). The state file, if any, is written before returning,
    so that an upload interrupted at once can be resumed too.
    """
    path = opts.state_path
    state: UploadState | None = None
    if path is not None and opts.resume:
        state = _recorded(path, src, opts, name, checksum, client_id)
    if state is None:
        state = UploadState(
            client_id=new_client_id,
            file_id=opts.file_id or uuid.uuid4().hex,
            meta=opts.init_meta(name, src.size, checksum),
            size=src.size,
            checksum=checksum,
            source=src.description,
            mtime_ns=src.mtime_ns,
        )
    if path is not None:
        statefile.save(path, state)
    return state


def _recorded(
    path: Path,
    src: Source,
    opts: UploadOptions,
    name: str,
    checksum: str | None,
    client_id: str | None,
) -> UploadState | None:
    try:
        state = statefile.load(path)
    except ValueError as exc:
        log.warning("ignoring the state file: %s", exc)
        return None
    if state is None:
        return None
    why = mismatch(state, src, checksum, name, opts.file_id, client_id)
    if why:
        log.warning("not resuming: %s; starting a new upload", why)
        return None
    log.info(
        "resuming %s/%s: %d of %d bytes already acknowledged",
        state.client_id,
        state.file_id,
        sum(e - s for s, e in state.acked),
        state.size,
    )
    return state


def mismatch(
    state: UploadState,
    src: Source,
    checksum: str | None,
    name: str,
    file_id: str | None,
    client_id: str | None,
) -> str:
    """Why ``state`` does not describe this upload ("" when it does)."""
    if state.source != src.description:
        return f"it records {state.source}"
    if state.size != src.size:
        return "the size changed"
    if checksum is not None and state.checksum is not None:
        if checksum != state.checksum:
            return "the content changed"
    elif state.mtime_ns != src.mtime_ns:
        return "the file was modified"
    if state.meta.get("name") != name:
        return f"it records the name {state.meta.get('name')!r}"
    if file_id is not None and file_id != state.file_id:
        return f"it records file id {state.file_id!r}"
    if client_id is not None and client_id != state.client_id:
        return f"it records client id {state.client_id!r}"
    return ""
