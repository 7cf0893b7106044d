"""The checks of an option's value: a pipeline's own options, and a stage's attributes.

One rule for all: a value of the wrong type (a str, a float where an int is
needed, a bool) is a ``TypeError``; one of the right type but out of range is
a ``ValueError``. Each message names where the option was given, the option
and its value, then what is accepted::

    Pipeline(keep_errors=-1); it must be an int >= 0, the number of error records ...
    stage 0 (f): batch_size='8' is a str; it must be an int >= 1

``where`` is the class whose constructor takes the option (``Pipeline``), or
the stage whose attribute it is (``stage 0 (f)``, ``stage(f)``).
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Sequence
from typing import NamedTuple


def named(where: str, name: str, value: object) -> str:
    """The option and its value, as the message names them: as the call that
    passed it for a constructor's, after the stage for a stage's."""
    if where.isidentifier():
        return f"{where}({name}={value!r})"
    return f"{where}: {name}={value!r}"


def wrong_type(where: str, name: str, value: object, accepted: str) -> TypeError:
    kind = type(value).__name__
    article = "an" if kind[:1].lower() in "aeiou" else "a"
    return TypeError(f"{named(where, name, value)} is {article} {kind}; it must be {accepted}")


def out_of_range(where: str, name: str, value: object, accepted: str) -> ValueError:
    return ValueError(f"{named(where, name, value)}; it must be {accepted}")


def count(where: str, name: str, value: object, least: int, other: str = "") -> int:
    """``value`` as an int of at least ``least``; ``other`` follows what is
    accepted in the messages (what it counts, what else may be given)."""
    accepted = f"an int >= {least}{other}"
    # numbers.Integral: numpy's ints too; a bool is one, but never meant as a count
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise wrong_type(where, name, value, accepted)
    if value < least:
        raise out_of_range(where, name, value, accepted)
    return int(value)


def seconds(where: str, name: str, value: object, other: str = "",
            endless: bool = False) -> float:
    """``value`` as a number of seconds > 0, finite unless ``endless``."""
    accepted = f"a number of seconds > 0{other}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise wrong_type(where, name, value, accepted)
    s = float(value)
    if not (s > 0 if endless else 0 < s < math.inf):  # NaN fails both
        raise out_of_range(where, name, value, accepted)
    return s


def choice(where: str, name: str, value: object, choices: Sequence[str],
           other: str = "") -> str:
    """``value``, one of the strings ``choices``."""
    accepted = f"one of {list(choices)}{other}"
    if not isinstance(value, str):
        raise wrong_type(where, name, value, accepted)
    if value not in choices:
        raise out_of_range(where, name, value, accepted)
    return value


def callback(where: str, name: str, value: object, accepted: str) -> None:
    """``value`` must be callable (its caller lets ``None`` by)."""
    if not callable(value):
        raise wrong_type(where, name, value, accepted)


def cpus(where: str, value: object) -> int | str | None:
    """``n_cpu``: the worker processes in all (an int >= 1), every usable CPU
    (``-1`` or ``None``), or ``"auto"``, the latter sized to the load."""
    accepted = ("an int >= 1 (the worker processes in all), -1 or None for every usable "
                "CPU, or 'auto' (a pool that adapts to the load)")
    if value is None:
        return None
    if isinstance(value, str) and value == "auto":
        return "auto"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise wrong_type(where, "n_cpu", value, accepted)
    if value == -1:
        return None
    if value < 1:
        raise out_of_range(where, "n_cpu", value, accepted)
    return int(value)


class PipelineOptions(NamedTuple):
    """A ``Pipeline``'s own options, checked."""

    max_tasks_per_child: int | None
    max_bytes_in_flight: int | None
    checkpoint_every: float | None


def pipeline_options(where: str, executor: bool, n_cpu: object, max_tasks_per_child: object,
                     max_bytes_in_flight: object, checkpoint: object,
                     checkpoint_every: object, on_checkpoint: object) -> PipelineOptions:
    """Check the options only a ``Pipeline`` takes (``executor``: one was given);
    the pipeline base checks those every pipeline takes."""
    if executor:
        if n_cpu == "auto":
            raise ValueError(f"{named(where, 'n_cpu', n_cpu)} sizes blpipe's own pool; with "
                             f"an executor, the executor's size is yours to set: leave "
                             f"n_cpu out")
        if max_tasks_per_child is not None:
            raise ValueError(f"{named(where, 'max_tasks_per_child', max_tasks_per_child)} "
                             f"replaces blpipe's own pool workers; an executor's workers "
                             f"are the executor's: set it there (e.g. "
                             f"ProcessPoolExecutor(max_tasks_per_child=n))")
    tasks = None if max_tasks_per_child is None else count(
        where, "max_tasks_per_child", max_tasks_per_child, 1,
        " (calls), or None to keep pool workers for the whole run")
    budget = None if max_bytes_in_flight is None else count(
        where, "max_bytes_in_flight", max_bytes_in_flight, 1,
        " (bytes), or None for no byte budget")
    every = None
    if checkpoint is not None:
        if not isinstance(checkpoint, (str, os.PathLike)):
            raise wrong_type(where, "checkpoint", checkpoint,
                             "a file path (a str or an os.PathLike), or None")
        if checkpoint_every is not None:
            every = seconds(where, "checkpoint_every", checkpoint_every,
                            ", or None to checkpoint only when checkpoint() is called and at "
                            "the end", endless=True)
        if on_checkpoint is not None:
            callback(where, "on_checkpoint", on_checkpoint, "a callable that takes the "
                     "number of inputs covered (to commit the consumer's output), or None")
    return PipelineOptions(tasks, budget, every)
