"""Lambdas, closures, local classes and names of __main__ work under every start method."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import dill

from blpipe import Pipeline

SCRIPT = textwrap.dedent('''
    import sys
    import dill
    from blpipe import Pipeline

    OFFSET = 100                      # a module-level name of __main__

    def uses_main_name(x):
        return x + OFFSET

    uses_main_name.stateful = False

    def main():
        k = 3
        closure = lambda x: x * k     # a closure, as a lambda
        closure.stateful = False
        closure.batch_size = 4

        class Local:                  # a locally defined class
            stateful = 2
            def __call__(self, w):
                return w[1] - w[0]

        class Counter:                # a local stateful class, dedicated process
            def __init__(self):
                self.n = 0
            def __call__(self, x):
                self.n += 1
                return (self.n, x)

        before = dict(dill.settings)
        with Pipeline([uses_main_name, closure, Local(), Counter()],
                      start_method=sys.argv[1]) as p:
            print(list(p.apply(range(5))))
        assert dill.settings == before, "blpipe changed the global dill settings"

    if __name__ == "__main__":
        main()
''')


def test_main_script_under_each_start_method(tmp_path: Path, start_method: str) -> None:
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    done = subprocess.run([sys.executable, str(script), start_method], capture_output=True,
                          text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert not done.stderr, done.stderr  # no warning, no leak report
    assert done.stdout.strip() == "[(1, 3), (2, 3), (3, 3), (4, 3)]"


def test_lambdas_in_items_and_results(start_method: str) -> None:
    def make(x: int) -> object:
        return lambda: x  # a result plain pickle cannot carry

    make.stateful = False  # type: ignore[attr-defined]

    def call(f: object) -> int:
        return f() * 2  # type: ignore[operator,no-any-return]

    with Pipeline([make, call], start_method=start_method) as p:
        assert list(p.apply(range(4))) == [0, 2, 4, 6]


def test_global_dill_settings_untouched() -> None:
    before = dict(dill.settings)
    with Pipeline([lambda x: x]) as p:
        assert list(p.apply([1])) == [1]
    assert dill.settings == before
