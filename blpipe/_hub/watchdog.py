"""The watchdog's view of worker processes: the call each has in hand, and since when.

A worker's call is timed by the hub from the chunk's send, until that has run
long enough to be unusual; then the hub asks (a signal) and the worker
writes its call in hand to its board (:mod:`blpipe._core.stall`)::

   statistics() ─► calls(workers) ─ PROBE signal ─► worker: answer_probes ─► Board
                         ▲                                                   │
                         └──────────────────── read ◄────────────────────────┘
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .._core.stall import NAMED_AFTER, PROBE, Call, ask, in_chunk, since

if TYPE_CHECKING:
    from .spawn import Worker


def calls(workers: list[Worker], now: float, usual: Sequence[float]) -> list[Call]:
    """Each busy worker's call in hand: ``(stage, since, input)``, the input as
    text. A chunk runs since its worker's last message, or since it was sent
    to an idle one. Once it has run long enough to be unusual, its workers
    are asked which call is in hand (at most once a second); until they
    answer (a call that holds the GIL never lets them), the call is told
    by its chunk."""
    heads = [(w, *w.pending[0]) for w in workers if w.task is not None and w.pending]
    asked = []
    for w, segment, rec in heads:
        if (now - w.since >= max(NAMED_AFTER, 5 * usual[segment.first])
                and (w.asked is None or w.asked[0] is not rec or now - w.asked[1] >= 1.0)):
            w.asked = rec, now
            for x in workers:  # a link's workers share their chunks
                if x.pending is w.pending and x.board.version():
                    with contextlib.suppress(OSError):
                        os.kill(x.proc.pid, PROBE)
                        asked.append(x.board)
    if asked:
        ask(asked)
    found: list[Call] = []
    for w, segment, rec in heads:
        told = False
        for x in workers:
            seen = x.board.read() if x.pending is w.pending and w.asked is not None else None
            if seen is not None and seen[1] is not None and \
                    any(r.seq == seen[0] for _, r in w.pending):
                hand = seen[1]
                found.append((hand[0], since(hand, usual, now), hand[3]))
                told = True
        if not told:
            found.append((segment.first, w.since, in_chunk(rec.n_in, rec.first)))
    return found
