"""Errors a stage went on past (``on_error``), counted against its ``max_errors``.

>>> from blpipe import SequentialPipeline, stage
>>> @stage(stateful=False, on_error="collect")
... def parse(text):
...     return int(text)
>>> with SequentialPipeline([parse]) as p:
...     list(p.apply(["1", "x", "3"]))
[1, 3]
>>> [(e.stage, e.position, e.input, e.error_type) for e in p.errors.records]
[('stage 0 (parse)', 1, "'x'", 'ValueError')]
"""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from ._core.spec import StageSpec

__all__ = ["ErrorLog", "ErrorRecord"]


@dataclass(frozen=True)
class ErrorRecord:
    """One input a stage raised on, dropped under ``on_error = "collect"``."""

    stage: str
    """The stage as messages name it: ``'stage 1 (parse)'``."""
    position: int
    """The input's index among the inputs this stage received, from 0 (for a
    window stage, the index of the window's newest input). ``None`` inputs
    and items dropped upstream never reach a stage, so they are not counted."""
    input: str
    """A short ``repr`` of the input."""
    error_type: str
    """The exception's class name, ``'ValueError'``."""
    message: str
    """``str()`` of the exception."""
    traceback: str
    """The exception's formatted traceback, from the process that ran the stage."""
    exception: BaseException | None = field(default=None, compare=False, repr=False)
    """The exception itself, when it could be rebuilt in this process."""
    size: int = 1
    """How many inputs the error covers: a group stage's error covers its group,
    whose first input is at ``position``."""

    def to_json(self) -> dict[str, Any]:
        """The record as a JSON-ready ``dict``, without the exception object."""
        return {"stage": self.stage, "position": self.position, "size": self.size,
                "input": self.input, "error_type": self.error_type, "message": self.message,
                "traceback": self.traceback}


class ErrorLog:
    """The errors of one pipeline: counts per stage, and the latest records.

    Only the most recent ``keep`` records stay in memory; ``dropped`` counts
    the older ones. It can be read from any thread while the pipeline runs.
    """

    def __init__(self, stages: Sequence[StageSpec], keep: int) -> None:
        self._specs = tuple(stages)
        self._records: deque[ErrorRecord] = deque(maxlen=keep)
        self._lock = threading.Lock()
        self.counts = [0] * len(stages)
        """Errors of each stage so far, under every policy, in stage order."""
        self.collected = 0
        """Records made so far, including those no longer kept."""

    @property
    def records(self) -> list[ErrorRecord]:
        """The most recent records, oldest first."""
        with self._lock:
            return list(self._records)

    @property
    def dropped(self) -> int:
        """Records made but no longer kept, for want of room."""
        with self._lock:
            return self.collected - len(self._records)

    def write_jsonl(self, file: IO[str]) -> int:
        """Write the kept records as JSON lines; returns how many."""
        records = self.records
        for r in records:
            file.write(json.dumps(r.to_json()) + "\n")
        return len(records)

    def admit(self, stage: int) -> bool:
        """Count an error of ``stage``; ``False`` when it is one too many."""
        self.counts[stage] += 1
        limit = self._specs[stage].max_errors
        return limit is None or self.counts[stage] <= limit

    def wants(self, stage: int) -> bool:
        """Whether ``stage``'s errors are recorded (``on_error = "collect"``)."""
        return self._specs[stage].on_error == "collect"

    def record(self, stage: int, position: int, input_repr: str, exc: BaseException,
               tb: str, size: int = 1) -> None:
        r = ErrorRecord(self._specs[stage].label, position, input_repr, type(exc).__name__,
                        str(exc), tb, exc, size)
        with self._lock:
            self._records.append(r)
            self.collected += 1

    def over_budget(self, stage: int) -> str:
        """The note for the error that exceeded ``stage``'s ``max_errors``."""
        spec = self._specs[stage]
        return (f"blpipe: {spec.label} raised on {self.counts[stage]} inputs, over its "
                f"max_errors={spec.max_errors}; this is the last, and the stream ends here")
