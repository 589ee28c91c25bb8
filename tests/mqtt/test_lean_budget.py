"""The worker's budget for packets not yet complete (:mod:`ftserver.mqtt.budget`), in process:
each holder is a real ``Decoder`` fed part of a PUBLISH, the way a connection reads."""

from __future__ import annotations

from ftserver.mqtt.budget import PartialPacketBudget
from ftserver.mqtt.codec import Decoder, encode
from ftserver.mqtt.packets import Publish

KiB = 1024
READ = 1024


class Conn:
    """A connection as the budget sees it, reading into a real decoder."""

    def __init__(self, budget: PartialPacketBudget, size: int) -> None:
        self.budget = budget
        self.budget_held = 0
        self.paused = False
        self.decoder = Decoder(1 << 24, protocol_level=5, read_size=READ)
        self.data = encode(Publish("$file/f/0", b"x" * size, 1, packet_id=1), 5)
        self.pos = 0
        self.packets = 0

    def budget_pause(self) -> None:
        assert not self.paused
        self.paused = True

    def budget_resume(self) -> None:
        assert self.paused
        self.paused = False

    def budget_missing(self) -> int:
        return self.decoder.missing

    def read(self, n: int) -> None:
        """One read of up to ``n`` bytes (what the connection's get_buffer offers)."""
        assert not self.paused
        view = self.decoder.get_buffer(-1, tight=self.budget.tight)
        n = min(n, len(view), len(self.data) - self.pos)
        view[:n] = self.data[self.pos : self.pos + n]
        self.decoder.buffer_updated(n)
        self.pos += n
        while self.decoder.next_packet() is not None:
            self.packets += 1
        d = self.decoder
        self.budget.update(self, d.capacity if d.buffered else 0)

    def read_until_paused_or_done(self) -> None:
        while not self.paused and self.pos < len(self.data):
            self.read(64 * KiB)


def test_counts_capacity_held_and_frees_it() -> None:
    budget = PartialPacketBudget(0)  # no limit: only counted
    a = Conn(budget, 100 * KiB)
    a.read(10 * KiB)
    assert budget.total == a.decoder.capacity > 0 and budget.holders == 1
    a.read_until_paused_or_done()
    assert a.packets == 1
    assert budget.total == 0 and budget.holders == 0  # the buffer went with the packet
    assert 64 * KiB <= budget.peak <= 100 * KiB * 3 // 2 + READ  # grew with what arrived


def test_over_budget_the_largest_holders_pause_and_small_ones_go_on() -> None:
    budget = PartialPacketBudget(1024 * KiB)
    stalled = [Conn(budget, 4096 * KiB) for _ in range(4)]
    for c in stalled:
        c.read(8 * KiB)  # all four start, then grow in turns
    for _ in range(200):
        for c in stalled:
            if not c.paused and c.pos < 1024 * KiB:
                c.read(64 * KiB)
    assert budget.total > budget.limit
    assert sum(c.paused for c in stalled) >= 3  # (one may be the runner)
    assert budget.total <= budget.hard_limit + 5 * 256 * KiB
    # an honest connection with a small packet completes while they hold the budget
    honest = Conn(budget, 100 * KiB)
    honest.read_until_paused_or_done()
    while honest.paused:  # it is never left paused for good: it becomes the runner
        raise AssertionError("the honest connection was left paused")
    assert honest.packets == 1


def test_the_runner_completes_when_every_holder_is_paused() -> None:
    """Many honest large packets, more than the budget: one at a time completes."""
    budget = PartialPacketBudget(256 * KiB)
    conns = [Conn(budget, 300 * KiB) for _ in range(4)]
    for _ in range(10_000):
        active = [c for c in conns if not c.paused and c.pos < len(c.data)]
        if not active:
            break
        for c in active:
            if not c.paused:  # (a read of another may have paused it)
                c.read(16 * KiB)
    assert [c.packets for c in conns] == [1, 1, 1, 1]  # nobody deadlocked
    assert budget.total == 0 and budget.paused == 0


def test_a_closer_connection_takes_a_stalled_runners_place() -> None:
    budget = PartialPacketBudget(256 * KiB)
    big = Conn(budget, 1024 * KiB)
    while big.pos < 512 * KiB:  # over the budget alone: it is the runner, never left paused
        big.read(64 * KiB)
    assert budget.total > budget.hard_limit and not big.paused
    # it stalls there; a connection closer to completing its packet takes over
    small = Conn(budget, 64 * KiB)
    small.read(16 * KiB)
    assert big.paused and not small.paused
    small.read_until_paused_or_done()
    assert small.packets == 1
    assert not big.paused  # the runner again: if its client sends on, it is read


def test_forgetting_a_holder_frees_its_bytes_and_resumes_the_others() -> None:
    budget = PartialPacketBudget(256 * KiB)
    a, b, c = (Conn(budget, 1024 * KiB) for _ in range(3))
    for _ in range(40):
        for x in (a, b, c):
            if not x.paused:
                x.read(32 * KiB)
    assert budget.total > budget.limit and budget.paused >= 1
    budget.forget(a)
    assert budget.total == b.budget_held + c.budget_held
    budget.forget(b)
    assert budget.total == c.budget_held <= budget.limit  # within the budget again...
    assert not c.paused and budget.paused == 0  # ...so nobody is held back
    budget.forget(c)
    assert budget.total == 0 and budget.holders == 0
