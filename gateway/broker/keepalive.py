"""The link's keepalive, as a plain class over a monotonic clock (no I/O, no timers).

MQTT asks the client to send something at least every keepalive interval;
the broker drops a client silent for 1.5 intervals. The link pings when
nothing went out *or* nothing came in for one interval (an idle broker is
probed too), and gives up on the broker when a ping has had no answer (no
byte at all) for one more interval: a dead broker is noticed within two
intervals.

A missing answer only counts while the link reads its socket. When the link
stops reading because the broker overran our Receive Maximum (see
``gateway.broker.link``), the answer may be waiting unread behind the
messages: the deadline starts again when reading resumes. Pings still go
out while reading is paused, so the broker never drops us for silence.
"""

from __future__ import annotations

from enum import Enum


class Action(Enum):
    NOTHING = "nothing"
    PING = "ping"
    GIVE_UP = "give_up"


class Keepalive:
    """When to send PINGREQ and when the broker is gone, given the times of traffic."""

    def __init__(self, interval_s: float, now: float) -> None:
        if interval_s <= 0:
            raise ValueError("keepalive interval must be positive")
        self.interval_s = interval_s
        self.last_sent = now
        self.last_received = now
        self.ping_sent_at: float | None = None
        self.reading = True

    def sent(self, now: float) -> None:
        self.last_sent = now

    def received(self, now: float) -> None:
        """Any byte from the broker shows it is alive (the answer to a ping included)."""
        self.last_received = now
        self.ping_sent_at = None

    def pinged(self, now: float) -> None:
        self.last_sent = now
        if self.ping_sent_at is None:  # a second ping does not move the first one's deadline
            self.ping_sent_at = now

    def reading_paused(self) -> None:
        self.reading = False

    def reading_resumed(self, now: float) -> None:
        self.reading = True
        if self.ping_sent_at is not None:
            self.ping_sent_at = now  # the answer gets a full interval from now

    def next_action(self, now: float) -> tuple[Action, float]:
        """What to do now, and when to ask again (after a PING: call ``pinged``, then ask)."""
        interval = self.interval_s
        waiting = self.ping_sent_at is not None
        answer_by = None
        if self.ping_sent_at is not None and self.reading:
            answer_by = self.ping_sent_at + interval
            if now >= answer_by:
                return Action.GIVE_UP, now
        send_by = self.last_sent + interval
        if not waiting:
            send_by = min(send_by, self.last_received + interval)
        if now >= send_by:
            return Action.PING, now
        return Action.NOTHING, send_by if answer_by is None else min(send_by, answer_by)
