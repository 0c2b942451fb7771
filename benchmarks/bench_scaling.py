"""Scaling: the final checkpoint and the periodic stall against the state's size.

The model is made 2 x and 4 x wider and narrower around the reference
(width 1024, 2048, 4096 at depth 8: 101 MB, 403 MB and 1.61 GB of weights and
Adam's two slots). For each size, interleaved in rounds:
- raw: the same number of bytes written with one `write()` + one `fsync()`;
- one worker under `ftharness supervise` that takes two periodic
  checkpoints, then gets SIGTERM within the next step (as "after a periodic
  save" in the final benchmark). From it: the second periodic save's stall
  (the worker's own log: capture into the reused host buffers; the first
  save allocates them), the memcpy baseline (the
  same number of bytes between two preallocated, touched buffers, timed in
  the same process one step before the save), the final checkpoint's step
  boundary → committed (its log) and SIGTERM → manifest on disk (outside).
The table and the plot (docs/speed-scaling.png) show the medians; the
largest state that fits a grace period comes from a straight line fitted
through the SIGTERM → committed medians (time = a + size / bandwidth).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from benchmarks.bench_final import AFTER, random_bytes, raw_write_fsync, supervised_final
from benchmarks.context import REPO, Context
from benchmarks.measure import Row, format_ratio, interleaved, median, ratios, seconds, spread

NAME = "scaling"
FULL_WIDTHS = (1024, 2048, 4096)
QUICK_WIDTHS = (128, 256)
REFERENCE_WIDTH = 2048  # the 403 MB model: the row that carries the stall target
GRACE_SECONDS = 30.0
PLOT = REPO / "docs" / "speed-scaling.png"


def run(ctx: Context) -> list[Row]:
    widths = QUICK_WIDTHS if ctx.settings.quick else FULL_WIDTHS
    table = []
    rows = []
    for width in widths:
        settings = replace(ctx.settings, width=width)
        data = random_bytes(settings.state_bytes)
        step_estimate = ctx.calibration()["step_seconds"] * (width / ctx.settings.width) ** 2
        facts: list[dict] = []

        def raw(data=data) -> float:
            return raw_write_fsync(ctx.fresh_dir("scaling-raw") / "arrays.bin", data)

        def ours(settings=settings, step_estimate=step_estimate, facts=facts) -> float:
            result = supervised_final(ctx, settings, AFTER, step_estimate)
            facts.append(result)
            return result["sigterm_to_manifest"]

        results = interleaved({"raw": raw, "ftharness": ours}, ctx.settings.repeats)
        del data
        raw_s = results["raw"]
        stalls = [f["periodic_stall"] for f in facts]
        memcpys = [f["memcpy"] for f in facts]
        boundary = [f["boundary_to_commit"] for f in facts]
        sigterm = [f["sigterm_to_manifest"] for f in facts]
        size = facts[0]["state_bytes"]
        entry = {
            "size": size,
            "raw": median(raw_s),
            "boundary": median(boundary),
            "sigterm": median(sigterm),
            "step": median([f["step_seconds"] for f in facts]),
            "stall": median(stalls),
            "memcpy": median(memcpys),
            "boundary_ratio": median(ratios(boundary, raw_s)),
            "boundary_spread": spread(ratios(boundary, raw_s)),
            "stall_ratio": median(ratios(stalls, memcpys)),
            "stall_spread": spread(ratios(stalls, memcpys)),
        }
        table.append(entry)
        size_text = _size(size)
        reference = width == REFERENCE_WIDTH or (ctx.settings.quick and width == widths[-1])
        rows.append(
            Row(
                NAME,
                f"periodic checkpoint's training stall, {size_text} / memcpy of the same bytes "
                "into a preallocated buffer",
                entry["stall_ratio"],
                seconds(entry["stall"]),
                seconds(entry["memcpy"]),
                "≤ 1.5" if reference else "",
                entry["stall_ratio"] <= 1.5 if reference else None,
                "the copy into host buffers allocated at the first save and reused (two "
                "threads), plus the rest of the capture (callbacks' and RNG states, JSON)",
                entry["stall_spread"],
            )
        )
        rows.append(
            Row(
                NAME,
                f"final checkpoint, step boundary → committed, {size_text} / raw write + fsync",
                entry["boundary_ratio"],
                seconds(entry["boundary"]),
                seconds(entry["raw"]),
                note=f"SIGTERM to the supervisor → manifest on disk {seconds(entry['sigterm'])} "
                f"(a step is {seconds(entry['step'])})",
                spread=entry["boundary_spread"],
            )
        )
        print(
            f"  {size_text}: stall {format_ratio(entry['stall_ratio'])} x memcpy, final "
            f"{format_ratio(entry['boundary_ratio'])} x raw, SIGTERM → committed "
            f"{seconds(entry['sigterm'])}"
        )
    ctx.sections["Scaling with the state's size"] = _markdown(table, ctx)
    return rows


def largest_state(table: list[dict], budget: float) -> tuple[float, float, float]:
    """From a least-squares line time = a + size / bandwidth through SIGTERM → committed:
    (bytes that fit `budget` seconds, a, bandwidth in bytes/s)."""
    sizes = [e["size"] for e in table]
    times = [e["sigterm"] for e in table]
    n = len(sizes)
    mean_size, mean_time = sum(sizes) / n, sum(times) / n
    slope = sum((s - mean_size) * (t - mean_time) for s, t in zip(sizes, times, strict=True)) / (
        sum((s - mean_size) ** 2 for s in sizes) or 1.0
    )
    intercept = mean_time - slope * mean_size
    return (budget - intercept) / slope, intercept, 1 / slope


def _size(size: float) -> str:
    return f"{size / 1e9:.2f} GB" if size >= 1e9 else f"{size / 1e6:.0f} MB"


def _markdown(table: list[dict], ctx: Context) -> str:
    lines = [
        "Medians over the rounds (spread: min-max of the per-round ratios).",
        "",
        "| state | raw write + fsync | final: step boundary → committed | ratio | SIGTERM → "
        "manifest on disk | a step | periodic stall | memcpy | ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for e in table:
        lines.append(
            f"| {_size(e['size'])} | {seconds(e['raw'])} | {seconds(e['boundary'])} | "
            f"{format_ratio(e['boundary_ratio'])} ({e['boundary_spread']}) | "
            f"{seconds(e['sigterm'])} | {seconds(e['step'])} | {seconds(e['stall'])} | "
            f"{seconds(e['memcpy'])} | {format_ratio(e['stall_ratio'])} ({e['stall_spread']}) |"
        )
    if len(table) >= 2:
        fits, intercept, bandwidth = largest_state(table, GRACE_SECONDS - 5)
        lines += [
            "",
            f"A line through SIGTERM → committed: {seconds(intercept)} + size / "
            f"{bandwidth / 1e6:.0f} MB/s. Within the 25 s a {GRACE_SECONDS:.0f} s grace period "
            f"leaves (5 s for the process to exit and the signal's way), the final checkpoint "
            f"fits about {fits / 1e9:.1f} GB of state on this disk (extrapolated from "
            f"{_size(table[0]['size'])}-{_size(table[-1]['size'])}).",
        ]
    if not ctx.settings.quick:
        _plot(table, PLOT)
        lines += ["", f"![scaling]({Path('..') / PLOT.relative_to(REPO)})"]
    return "\n".join(lines)


def _plot(table: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [e["size"] / 1e9 for e in table]
    figure, axis = plt.subplots(figsize=(7, 4.5), dpi=120)
    for key, label, style in (
        ("raw", "raw write + fsync", "k--"),
        ("boundary", "final checkpoint: step boundary → committed", "C0-o"),
        ("sigterm", "final checkpoint: SIGTERM → manifest on disk", "C1-o"),
        ("stall", "periodic checkpoint: training stall", "C2-s"),
        ("memcpy", "memcpy of the same bytes", "C2:"),
    ):
        axis.plot(sizes, [e[key] for e in table], style, label=label)
    axis.set_xlabel("state size (GB)")
    axis.set_ylabel("seconds")
    axis.set_title("ftharness checkpoints against the state's size")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
