"""blpipe: run a chain of callables over a stream on every core, in order, in bounded memory.

>>> from blpipe import Pipeline, stage
>>> square = stage(lambda x: x * x, stateful=False, batch_size=16)
>>> with Pipeline([square]) as p:
...     list(p.apply(range(6)))
[0, 1, 4, 9, 16, 25]

Every public name is exported here, once. The public modules (``pipeline``,
``sequential``, ``stages``, ``statistics``, ``errorlog``, ``errors``) each
define a part of them. The machinery is in two private packages, by where
it runs: ``_core`` in any process (the stage contract, chains, failures,
messages, the worker), ``_hub`` in the calling process only (the event loop,
segments, worker processes, executors, checkpoints). ``docs/how-it-works.md``
draws an item's path through them.

A name's module is imported when the name is first used: a worker process
imports ``blpipe._core.worker`` and what it needs, never the calling
process's side.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__all__ = [
    "BrokenPipeline",
    "Checkpoint",
    "ErrorLog",
    "ErrorRecord",
    "Pipeline",
    "RemoteTraceback",
    "SequentialPipeline",
    "SerializationError",
    "Stage",
    "StageStatistics",
    "StageTimeout",
    "Statistics",
    "Where",
    "WorkerDied",
    "stage",
    "usable_cpu_count",
    "where",
]
__version__ = "0.1.0"

_MODULE = {
    "BrokenPipeline": "errors", "RemoteTraceback": "errors", "SerializationError": "errors",
    "WorkerDied": "errors", "StageTimeout": "errors", "ErrorLog": "errorlog",
    "ErrorRecord": "errorlog",
    "Pipeline": "pipeline", "SequentialPipeline": "sequential", "Stage": "stages",
    "stage": "stages", "Where": "stages", "where": "stages",
    "StageStatistics": "statistics", "Statistics": "statistics",
    "usable_cpu_count": "_hub.cpu", "Checkpoint": "_hub.checkpoints",
}


def __getattr__(name: str) -> object:
    module = _MODULE.get(name)
    if module is None:
        raise AttributeError(f"module 'blpipe' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # once: later lookups find it without this call
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


if TYPE_CHECKING:  # what the names are, for type checkers and editors
    from ._hub.checkpoints import Checkpoint
    from ._hub.cpu import usable_cpu_count
    from .errorlog import ErrorLog, ErrorRecord
    from .errors import (
        BrokenPipeline,
        RemoteTraceback,
        SerializationError,
        StageTimeout,
        WorkerDied,
    )
    from .pipeline import Pipeline
    from .sequential import SequentialPipeline
    from .stages import Stage, Where, stage, where
    from .statistics import StageStatistics, Statistics
