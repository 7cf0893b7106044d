"""blpipe: run a chain of callables over a stream on every core, in order, in bounded memory.

>>> from blpipe import Pipeline, stage
>>> square = stage(lambda x: x * x, stateful=False, batch_size=16)
>>> with Pipeline([square]) as p:
...     list(p.apply(range(6)))
[0, 1, 4, 9, 16, 25]
"""

from ._cpu import usable_cpu_count
from .errorlog import ErrorLog, ErrorRecord
from .errors import BrokenPipeline, RemoteTraceback, SerializationError, WorkerDied
from .pipeline import Pipeline
from .sequential import SequentialPipeline
from .stages import Stage, stage

__all__ = [
    "BrokenPipeline",
    "ErrorLog",
    "ErrorRecord",
    "Pipeline",
    "RemoteTraceback",
    "SequentialPipeline",
    "SerializationError",
    "Stage",
    "WorkerDied",
    "stage",
    "usable_cpu_count",
]
__version__ = "0.1.0"
