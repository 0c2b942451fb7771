"""Run every benchmark, print the table, write benchmarks/RESULTS.md.

    .venv/bin/python -m benchmarks [--quick] [--only NAME ...] [--output PATH]

The full run takes about 30 minutes on 2 cores and needs ~10 GB of memory and
~4 GB of free disk in the work directory (the checkpoints' disk is the one
measured: pass `--work-dir` on the disk you care about).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

from benchmarks import (
    bench_cloud,
    bench_final,
    bench_goodput,
    bench_memory,
    bench_restore,
    bench_scaling,
    bench_steady,
    bench_supervisor,
    machine,
    report,
)
from benchmarks.context import Context
from benchmarks.measure import Row
from benchmarks.settings import FULL, QUICK

# In this order: the cheap ones without TensorFlow first.
BENCHMARKS = {
    "supervisor": bench_supervisor,
    "restore": bench_restore,
    "final": bench_final,
    "scaling": bench_scaling,
    "steady": bench_steady,
    "memory": bench_memory,
    "goodput": bench_goodput,
    "cloud": bench_cloud,
}
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "RESULTS.md"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test")
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), help="run only these")
    parser.add_argument(
        "--output",
        type=Path,
        help=f"write the results here (default: {DEFAULT_OUTPUT.name} for a full run; "
        "a quick run writes nothing unless given)",
    )
    parser.add_argument(
        "--work-dir", type=Path, help="where checkpoints are written (default: a temp dir)"
    )
    parser.add_argument(
        "--keep-work",
        action="store_true",
        help="keep the work directory (every process's log) instead of removing it",
    )
    args = parser.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # progress shows up when piped to a file
    settings = QUICK if args.quick else FULL
    output = args.output or (None if args.quick else DEFAULT_OUTPUT)
    work = Path(tempfile.mkdtemp(prefix="ftharness-bench-", dir=args.work_dir))
    ctx = Context(settings, work)
    started = time.monotonic()
    load_at_start = machine.load()
    rows: list[Row] = []
    failures: dict[str, str] = {}
    names = args.only or list(BENCHMARKS)
    try:
        for name in names:
            print(f"== {name}", flush=True)
            try:
                rows += BENCHMARKS[name].run(ctx)
            except Exception as error:  # one broken benchmark must not hide the others
                traceback.print_exc()
                failures[name] = f"{type(error).__name__}: {error}".splitlines()[0]
    finally:
        if args.keep_work:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    minutes = (time.monotonic() - started) / 60
    print()
    print(report.text_table(rows))
    if output is not None:
        command = "python -m benchmarks" + (" --quick" if args.quick else "")
        if args.only:
            command += " --only " + " ".join(args.only)
        report.write_results(
            output,
            rows,
            machine.describe(work.parent, ctx.python),
            settings,
            {name: BENCHMARKS[name].__doc__ or "" for name in names},
            failures,
            command,
            minutes,
            ctx.sections,
            f"{load_at_start} at the start, {machine.load()} at the end",
        )
        print(f"\nwrote {output}")
    print(f"took {minutes:.1f} minutes")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
