from __future__ import annotations

from hostile.counts import COUNTS


def pytest_terminal_summary(terminalreporter):
    if COUNTS:
        terminalreporter.section("hostile checkpoints: cases tried per family")
        for family, count in sorted(COUNTS.items()):
            terminalreporter.write_line(f"{family:28} {count}")
        terminalreporter.write_line(f"{'total':28} {sum(COUNTS.values())}")
