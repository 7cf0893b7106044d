"""``SequentialPipeline``: the same contract, all in the calling process."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from ._base import PipelineBase, annotate
from ._chain import Chain


class SequentialPipeline(PipelineBase):
    """Runs every stage in the calling process, one item at a time.

    It validates the same attributes and gives the same outputs, windows,
    ``None`` dropping and errors as :class:`~blpipe.Pipeline`, so it is the
    reference to test against and the place to debug a stage::

        >>> from blpipe import SequentialPipeline, stage
        >>> diff = stage(lambda w: w[1] - w[0], stateful=2)
        >>> with SequentialPipeline([diff]) as p:
        ...     list(p.apply([1, 4, None, 9]))
        [3, 5]
    """

    def __init__(self, operations: Iterable[Any], n_cpu: int | None = None, *,
                 start_method: str | None = None) -> None:
        """``n_cpu`` and ``start_method`` are validated as by ``Pipeline`` and
        otherwise unused, so either class can replace the other."""
        super().__init__(operations, n_cpu, start_method=start_method)
        self._chain = Chain([(s.label, s.func, s.window) for s in self.stages])

    def __enter__(self) -> SequentialPipeline:
        super().__enter__()
        return self

    def _outputs(self, it: Iterator[Any]) -> Iterator[Any]:
        chain = self._chain
        for x in it:
            self._check_open()
            if x is None:
                continue
            outputs, failure = chain.run((x,))
            if failure is not None:
                self._closed = True
                raise annotate(failure)
            if outputs[0] is not None:
                yield outputs[0]
