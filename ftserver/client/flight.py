"""How much segment data to keep in flight.

Whatever is in flight when a connection breaks is lost and sent again: in the uploader's
socket buffer, on the way, in the server's receive buffer, or received but not acknowledged.
A fixed window of segments either starves a long fat link or, on a slow one, keeps seconds'
worth of data in flight, all of which a cut then costs (at 1 MiB/s, a 4 MiB window is four
seconds of transfer resent per cut). :class:`FlightControl` keeps about twice the measured
bandwidth-delay product in flight, the least that keeps the link busy, within
[``floor``, ``ceiling``] (two segments, the ``window``):

- the delay is the smallest acknowledgement time of a segment seen so far (so queueing on the
  way, which the window itself causes, does not inflate it);
- the bandwidth is the best acknowledged rate over 100 ms slots of the last second (a max
  filter: it follows an increase at once and forgets a better past after a second).

With twice the product in flight the rate can double every round trip until the link is full;
then about one product waits in queues, which is what a cut costs. Until there is a first
measurement the ceiling applies.

:class:`PauseControl` says when nothing may be sent at all: after 0x97 (the server asks the
client to wait), for an exponentially growing, jittered pause, back to the shortest after the
next success.
"""

from __future__ import annotations

from collections import deque

from ftserver.client.link import Backoff

SLOT = 0.1
SLOTS = 10


class FlightControl:
    def __init__(self, floor: int, ceiling: int, *, gain: float = 2.0) -> None:
        self.floor = floor
        self.ceiling = max(floor, ceiling)
        self.gain = gain
        self.rtt_min: float | None = None
        #: completed slots (start time, bytes acknowledged in it)
        self._slots: deque[tuple[float, int]] = deque(maxlen=SLOTS)
        self._slot_start = 0.0
        self._slot_bytes = 0

    def acked(self, now: float, nbytes: int, rtt: float | None) -> None:
        """A segment of ``nbytes`` was acknowledged ``rtt`` seconds after it was sent (None
        when that time says nothing about the path: a resend, a reconnect in between)."""
        if rtt is not None and rtt > 0 and (self.rtt_min is None or rtt < self.rtt_min):
            self.rtt_min = rtt
        self._roll(now)
        self._slot_bytes += nbytes

    def _roll(self, now: float) -> None:
        if now - self._slot_start < SLOT:
            return
        if self._slot_start:
            self._slots.append((self._slot_start, self._slot_bytes))
            # slots without any acknowledgement count as empty ones
            missed = min(SLOTS, int((now - self._slot_start) / SLOT) - 1)
            for i in range(missed):
                self._slots.append((self._slot_start + (i + 1) * SLOT, 0))
        self._slot_start = now
        self._slot_bytes = 0

    def rate(self, now: float) -> float | None:
        """Bytes per second (the best recent slot), None before one slot completed."""
        self._roll(now)
        recent = [n for t, n in self._slots if now - t <= SLOT * (SLOTS + 1)]
        if not recent:
            return None
        return max(max(recent), self._slot_bytes) / SLOT

    def budget(self, now: float) -> int:
        """Bytes that may be in flight now."""
        rate = self.rate(now)
        if rate is None or self.rtt_min is None:
            return self.ceiling
        want = int(self.gain * rate * self.rtt_min)
        return max(self.floor, min(self.ceiling, want))


class PauseControl:
    """Pauses after 0x97: one per episode, however many commands in flight get 0x97."""

    def __init__(self, backoff: Backoff) -> None:
        self.backoff = backoff
        self.until = 0.0
        #: pause episodes so far
        self.count = 0
        self._attempt = 0

    def paused(self, now: float) -> bool:
        return now < self.until

    def pause(self, now: float, sent_at: float) -> float | None:
        """A command published at ``sent_at`` got 0x97: the pause in seconds, or None when it
        belongs to the pause already running (it was sent before that pause ended)."""
        if sent_at < self.until or now < self.until:
            return None
        delay = self.backoff.delay(self._attempt)
        self._attempt += 1
        self.count += 1
        self.until = now + delay
        return delay

    def succeeded(self) -> None:
        """A command succeeded: the next pause is a short one again."""
        self._attempt = 0
