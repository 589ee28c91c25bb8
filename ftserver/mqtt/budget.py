"""The worker's budget for packets not yet complete: what bounds memory against slow senders.

A connection's receive buffer holds a packet until its last byte arrives. A client that
announces a large packet, sends part of it and stalls (or a few hundred of them) would make
the server hold all of it; :class:`PartialPacketBudget` bounds the sum over every connection
of a worker. What counts is the memory held: the capacity of each receive buffer that holds
unconsumed bytes (a buffer that holds nothing is dropped, see ``ftserver.mqtt.decoder``).

When the sum exceeds the budget, a connection that holds more than an even share of it
(budget / connections holding something) is paused after its read: the largest holders
stop growing, their bytes wait in the kernel and then in the client, while connections with
smaller packets (an honest device's segments) go on and complete. Newcomers below their
share may take the sum an eighth over the budget; beyond that every connection holding
something is paused after its read. Reading resumes on every paused connection once the sum
is back within the budget.

So that packets still complete while the budget stays spent (by stalled clients, or by many
honest large uploads at once), one connection at a time goes on regardless (the *runner*)
until it has completed a packet: the paused one with the fewest bytes left to receive, and a
connection about to be paused takes its place when it has fewer still (so a runner that
stalled is replaced by the next connection that sends). The budget may be exceeded by that
one packet. From half the budget on, a read grows a buffer by an eighth of what it holds (at
least the decoder's read size), which keeps the overshoot to a fraction of one read per
connection.

The MQTT layer owns this (it is the decoder's memory); ``ftserver.server`` sets the limit
from the configuration (``limits.partial_packet_budget``, this worker's share of it).
"""

from __future__ import annotations

from typing import Protocol


class Holder(Protocol):
    """A connection, as the budget sees it."""

    #: what the budget last counted for it (the budget's own bookkeeping)
    budget_held: int

    def budget_pause(self) -> None:
        """Stop reading (the budget is spent and this connection holds more than its share)."""
        ...

    def budget_resume(self) -> None:
        """Read again."""
        ...

    def budget_missing(self) -> int:
        """Bytes its pending packet still lacks (0: its header is not complete yet)."""
        ...


class PartialPacketBudget:
    """The bytes held for packets not yet complete by every connection of a worker."""

    __slots__ = ("_paused", "_runner", "holders", "limit", "peak", "total")

    def __init__(self, limit: int = 0) -> None:
        #: the budget in bytes (0: no limit, only counted)
        self.limit = limit
        #: bytes held now, over every connection
        self.total = 0
        #: the highest ``total`` so far
        self.peak = 0
        #: connections holding something
        self.holders = 0
        self._paused: set[Holder] = set()
        self._runner: Holder | None = None

    @property
    def hard_limit(self) -> int:
        """Beyond this (an eighth over the budget) every connection holding something is
        paused after its read, however small its share (the runner excepted)."""
        return self.limit + (self.limit >> 3)

    @property
    def tight(self) -> bool:
        """Half the budget is used: reads grow buffers by an eighth at most."""
        return self.limit > 0 and self.total * 2 >= self.limit

    @property
    def paused(self) -> int:
        """Connections paused by the budget now."""
        return len(self._paused)

    def update(self, who: Holder, held: int) -> None:
        """``who`` holds ``held`` bytes now (after its read was processed)."""
        old = who.budget_held
        if held == old:
            if not held:
                return
        else:
            who.budget_held = held
            total = self.total = self.total + held - old
            if total > self.peak:
                self.peak = total
            if not old:
                self.holders += 1
            elif not held:
                self.holders -= 1
            if who is self._runner and held < old:
                self._runner = None  # it completed a packet
            if not held and who in self._paused:
                self._paused.discard(who)  # nothing held, nothing to hold back
                who.budget_resume()
        if not self.limit:
            return
        if self.total <= self.limit:
            self._resume_all()
            return
        if (
            held
            and who is not self._runner
            and who not in self._paused
            and (held * self.holders > self.limit or self.total > self.hard_limit)
        ):
            runner = self._runner
            if runner is not None and who.budget_missing() < runner.budget_missing():
                # closer to completing its packet than the runner (which may have stalled):
                # it takes the runner's place
                self._runner = who
                who = runner
            self._paused.add(who)
            who.budget_pause()
        self._ensure_progress()

    def forget(self, who: Holder) -> None:
        """``who`` is gone: what it held is free."""
        if who.budget_held:
            self.total -= who.budget_held
            self.holders -= 1
            who.budget_held = 0
        self._paused.discard(who)
        if who is self._runner:
            self._runner = None
        if self.limit:
            if self.total <= self.limit:
                self._resume_all()
            else:
                self._ensure_progress()

    def _resume_all(self) -> None:
        self._runner = None
        if self._paused:
            paused, self._paused = self._paused, set()
            for who in paused:
                who.budget_resume()

    def _ensure_progress(self) -> None:
        """Over the budget, one paused connection goes on: the one closest to completing its
        packet. (The unpaused holders may be stalled clients: they cannot be relied on.)"""
        if self._runner is not None or not self._paused:
            return
        runner = min(self._paused, key=lambda h: h.budget_missing())
        self._paused.discard(runner)
        self._runner = runner
        runner.budget_resume()
