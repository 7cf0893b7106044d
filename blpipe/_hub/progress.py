"""``progress=``: a tqdm bar, or any callable fed statistics at a bounded rate."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..statistics import Statistics

EVERY = 0.1  # seconds between two calls while the run goes on; one more call at its end

Progress = Callable[[Statistics], Any]


def make_progress(progress: object) -> Progress | None:
    """Validate ``progress=`` at construction."""
    if progress is None or progress is False:
        return None
    if progress is True:
        return _Bar()
    if callable(progress):
        return progress
    raise TypeError(f"progress={progress!r}: pass True for a tqdm bar, or a callable that "
                    f"takes a blpipe.statistics.Statistics record")


class _Bar:
    """A tqdm bar of outputs, with each stage's output count in its postfix."""

    def __init__(self) -> None:
        try:
            from tqdm.auto import tqdm  # type: ignore[import-untyped,unused-ignore]
        except ImportError:
            raise ImportError("progress=True draws a tqdm bar, and tqdm is not installed: "
                              "python -m pip install 'blpipe[progress]'") from None
        self._tqdm = tqdm
        self._bar: Any = None

    def __call__(self, st: Statistics) -> None:
        if self._bar is None:
            self._bar = self._tqdm(unit="item", desc="blpipe")
        bar = self._bar
        bar.update(st.items_yielded - bar.n)
        postfix = " ".join(f"s{i}={s.items_out:,}" for i, s in enumerate(st.stages))
        stalled = [f"s{i} {s.oldest_call_seconds:.0f}s on {s.oldest_call_input or '?'}"
                   for i, s in enumerate(st.stages) if s.stalled()]
        if stalled:
            postfix += " stalled: " + ", ".join(stalled)
        bar.set_postfix_str(postfix, refresh=bool(stalled))  # no output moves the bar
        if not st.running:
            bar.close()
