"""Running store commands as the dispatcher does, for tests that call the store directly."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

from ftserver.errors import TransferBusy

T = TypeVar("T")


async def settle(command: Callable[[], T]) -> T:
    """Run a store command as the dispatcher does: a transfer staged on disk but not open in
    the store is recovered in a thread first (``TransferBusy`` with ``ready``); wait for
    that, then run the command again. ``TransferBusy`` without ``ready`` (the transfer is
    open in another store) is the caller's to see."""
    while True:
        try:
            return command()
        except TransferBusy as busy:
            if busy.ready is None:
                raise
            await asyncio.wait([asyncio.ensure_future(busy.ready)])
