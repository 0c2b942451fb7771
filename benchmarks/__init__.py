"""Benchmarks of ftharness against Keras's BackupAndRestore and the raw disk.

Run them all with one command from the repository root:

    .venv/bin/python -m benchmarks            # ~30 minutes, writes benchmarks/RESULTS.md
    .venv/bin/python -m benchmarks --quick    # small sizes: a smoke test, ~1 minute

Every figure is a ratio of two things measured side by side in the same run,
interleaved, as medians over repeats; absolute times are shown beside it for
context only (the machine is shared, its speed varies).
"""
