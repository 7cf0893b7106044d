"""Run one benchmark row once and write its result as JSON.

``run.py`` starts this script in a fresh interpreter for every measurement::

    python benchmarks/_child.py ROW WORKLOAD --n N --iterations I \
        --expect DIGEST --result PATH

The result file holds ``status`` (``ok`` or ``wrong``), the timed-region
``seconds``, ``first_output_seconds``, the output ``digest`` and ``extra``
figures some rows add (chunk counts, Dask cluster start-up); a run that
raises writes none and exits with status 1, its traceback on stderr.
Interpreter start-up and imports are outside the timed region. Once the
last output has been consumed, and before the system under test shuts down,
``PATH.consumed`` records the output digest, so the parent can tell a hang
in shut-down from one before the end.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

# The blpipe measured: the reference checkout for an @ref row, else this one, ahead of any
# installed blpipe (an editable install of another checkout would shadow it otherwise).
sys.path.insert(0, os.environ.get("BLPIPE_BENCH_REF") or
                os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import systems
from workloads import WORKLOADS, Collector


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("row", help="row label, e.g. 'blpipe[bs=64]'")
    parser.add_argument("workload", choices=sorted(WORKLOADS))
    parser.add_argument("--n", type=int, required=True, help="items (W4: outputs taken)")
    parser.add_argument("--iterations", type=int, default=0,
                        help="iterations of the calibrated CPU stage (W2, W3)")
    parser.add_argument("--expect", required=True, help="digest of the serial reference")
    parser.add_argument("--result", required=True, help="where to write the JSON result")
    args = parser.parse_args(argv)

    workload = WORKLOADS[args.workload]
    result: dict[str, object] = {"row": args.row, "workload": args.workload, "n": args.n}

    def consumed(collector: Collector) -> None:
        digest = collector.digest()
        with open(args.result + ".consumed", "w") as f:
            json.dump({"digest": digest, "ok": digest == args.expect}, f)

    row = systems.find_row(workload, args.row)
    # An exception propagates: the traceback goes to stderr, the exit code is
    # 1 and no result file is written, which the parent reports as an error.
    m = systems.measure(workload, row, args.n, args.iterations, on_consumed=consumed)
    result.update(status="ok" if m.digest == args.expect else "wrong",
                  seconds=m.seconds, first_output_seconds=m.first_output_seconds,
                  digest=m.digest, expected=args.expect, extra=m.extra)
    with open(args.result, "w") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
