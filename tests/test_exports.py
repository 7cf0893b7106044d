"""The public surface: each public name exported once, and no internals exported."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import blpipe

PUBLIC_MODULES = sorted(f"blpipe.{p.stem}" for p in Path(blpipe.__file__).parent.glob("*.py")
                        if not p.stem.startswith("_"))


def test_the_public_modules_are_the_ones_without_an_underscore() -> None:
    assert PUBLIC_MODULES == ["blpipe.errorlog", "blpipe.errors", "blpipe.pipeline",
                              "blpipe.sequential", "blpipe.stages", "blpipe.statistics"]


def test_each_public_name_is_exported_once() -> None:
    names = blpipe.__all__
    assert len(names) == len(set(names))
    owners: dict[str, list[str]] = {}
    for name in PUBLIC_MODULES:
        for exported in importlib.import_module(name).__all__:
            owners.setdefault(exported, []).append(name)
    assert {n: o for n, o in owners.items() if len(o) > 1} == {}
    # every name a public module exports is blpipe's, and the same object
    assert set(owners) <= set(names)
    for exported, (module,) in owners.items():
        assert getattr(blpipe, exported) is getattr(importlib.import_module(module), exported)


def test_public_modules_export_no_internals() -> None:
    for name in PUBLIC_MODULES:
        module = importlib.import_module(name)
        for exported in module.__all__:
            obj = getattr(module, exported)
            assert not exported.startswith("_"), (name, exported)
            # defined there, not re-exported from a private module
            assert obj.__module__ == name, (name, exported, obj.__module__)


def test_every_public_name_is_importable_from_blpipe_and_documented() -> None:
    for name in blpipe.__all__:
        obj = getattr(blpipe, name)
        assert obj.__module__.startswith("blpipe"), name
        assert inspect.getdoc(obj), f"blpipe.{name} has no docstring"


def test_every_public_name_says_the_public_module_it_is_exported_from() -> None:
    """``__module__`` is what pickle, reprs, help() and documentation tools use
    to find and name an object: it must be a public path that exports it, so no
    private module's name is baked into a user's pickles or shown to a reader."""
    private: dict[str, str] = {}
    for name in blpipe.__all__:
        obj = getattr(blpipe, name)
        if any(part.startswith("_") for part in obj.__module__.split(".")):
            private[name] = obj.__module__
        else:
            assert getattr(importlib.import_module(obj.__module__), obj.__qualname__) is obj, name
    assert private == {}
