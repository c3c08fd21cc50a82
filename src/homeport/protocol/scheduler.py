"""Which priority class sends the next turn: weighted fair queueing, no starvation.

Threat this stops: a stream of a high class that never runs dry (a chatty
WebSocket, a flood of API calls) starving every lower class for ever, which
strict priority allows.  Classes share the tunnel by weight instead: class
``p`` weighs ``2 ** (PRIORITY_BULK - p)``, so while two classes both have
output the higher one gets that many times more bytes (class 0 against class
7: 128 to 1) and the lower one still moves.

This is weighted fair queueing over the classes, in integers.  Each busy
class has a *start tag* in virtual time; the next turn goes to the class whose
turn would *finish* first, ``start + (chunk << p)`` (a turn costs bytes divided
by weight; ties go to the higher class), and the start tag then moves on by
what the turn really cost.  A class that ran dry starts again no earlier than
the virtual clock (the start tag of the latest turn), so idling banks no
credit: a camera coming back cannot hog the tunnel, and an interactive class
coming back is ahead of every busy lower class within at most one turn of
each.  Within a class, streams take turns round robin; within a stream, order
never changes (the connection keeps one queue per stream).
"""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

from homeport.protocol.heads import PRIORITY_BULK

T = TypeVar("T")

CLASSES = PRIORITY_BULK + 1
_ALL_IDLE = [False] * CLASSES


def weight(priority: int) -> int:
    """Relative share of class ``priority`` (0 is the most urgent)."""
    return 1 << (PRIORITY_BULK - priority)


class ClassScheduler(Generic[T]):
    """Round-robin queues of ready streams, one per class, picked by fair queueing."""

    __slots__ = ("_busy", "_clock", "_start", "queues")

    def __init__(self) -> None:
        self.queues: list[deque[T]] = [deque() for _ in range(CLASSES)]
        self._start = [0] * CLASSES
        self._busy = [False] * CLASSES
        self._clock = 0

    def next_class(self, turn: int) -> int | None:
        """The class that sends the next turn (of about ``turn`` bytes), or None."""
        if not any(self.queues):  # the common case on a quiet tunnel: keep it cheap
            self._busy[:] = _ALL_IDLE
            return None
        best: int | None = None
        best_finish = 0
        start = self._start
        busy = self._busy
        for priority, queue in enumerate(self.queues):
            if not queue:
                busy[priority] = False
                continue
            if not busy[priority]:
                busy[priority] = True
                if start[priority] < self._clock:
                    start[priority] = self._clock
            finish = start[priority] + (turn << priority)
            if best is None or finish < best_finish:  # strict: ties go to the higher class
                best, best_finish = priority, finish
        return best

    def charge(self, priority: int, size: int) -> None:
        """Class ``priority``, just picked, sent ``size`` bytes (frames included)."""
        start = self._start[priority]
        if start > self._clock:
            self._clock = start
        self._start[priority] = start + (size << priority)

    def discard(self, item: T) -> None:
        """Take ``item`` out of whichever queue holds it (a stream that ended)."""
        for queue in self.queues:
            if item in queue:
                queue.remove(item)
                return
