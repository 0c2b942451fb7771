"""A run's timeline as a picture: attempts as bars, checkpoints as ticks.

`timeline_data()` turns a `RunStory` into the series to draw (times in
seconds since the first launch); `render()` draws exactly those series and
returns them, so that what was plotted can be checked against the records.
matplotlib is an optional extra (`pip install 'ftharness[plot]'`), imported
only here, through its object API (no pyplot: no global figure state).
"""

from __future__ import annotations

import base64
import html
import io
import time
from dataclasses import dataclass
from pathlib import Path

from ftharness.inspect.story import RunStory

FORMATS = (".png", ".svg", ".html")
_DPI = 100
_COLORS = {
    "finished": "#2e7d32",
    "preempted": "#ef6c00",
    "peer_stopped": "#ffb74d",
    "peer_lost": "#e57373",
    "crashed": "#c62828",
    "fatal": "#6a1b9a",
    "unknown": "#757575",
}


class TimelineUnavailable(Exception):
    """matplotlib is missing or the output format is unknown (a usage error, 64)."""


@dataclass(frozen=True)
class Bar:
    attempt: int
    start: float  # seconds since the first launch
    end: float  # its end, or its last record update
    outcome: str
    training_from: float | None  # estimated end of startup (launch -> first step)


@dataclass(frozen=True)
class Tick:
    attempt: int
    time: float  # the checkpoint's commit time
    step: int


@dataclass(frozen=True)
class Marker:
    attempt: int
    time: float
    kind: str  # "crash", "fatal", "stop requested", "unknown end"


@dataclass(frozen=True)
class TimelineData:
    origin: float  # Unix time of the first launch
    title: str
    bars: tuple[Bar, ...]
    ticks: tuple[Tick, ...]
    markers: tuple[Marker, ...]

    def default_size(self) -> tuple[int, int]:
        """Pixels: 1000 wide; 40 px per attempt, at least 300 high."""
        return 1000, max(300, 150 + 40 * len(self.bars))


def timeline_data(story: RunStory) -> TimelineData:
    if not story.attempts:
        raise ValueError("no attempts to draw")
    origin = story.attempts[0].record.launched_at
    bars: list[Bar] = []
    ticks: list[Tick] = []
    markers: list[Marker] = []
    for attempt in story.attempts:
        record = attempt.record
        start = record.launched_at - origin
        end = attempt.last_seen_at - origin
        training_from = (
            start + attempt.startup_seconds if attempt.startup_seconds is not None else None
        )
        bars.append(Bar(attempt.number, start, end, attempt.outcome, training_from))
        ticks.extend(
            Tick(attempt.number, commit.committed_at - origin, commit.step)
            for commit in record.checkpoints
        )
        if record.stop is not None:
            markers.append(
                Marker(attempt.number, record.stop.requested_at - origin, "stop requested")
            )
        if attempt.outcome in ("crashed", "fatal"):
            markers.append(
                Marker(attempt.number, end, "crash" if attempt.outcome == "crashed" else "fatal")
            )
        elif attempt.outcome == "unknown":
            markers.append(Marker(attempt.number, end, "unknown end"))
    return TimelineData(origin, _title(story), tuple(bars), tuple(ticks), tuple(markers))


def render(data: TimelineData, path: Path, size: tuple[int, int] | None = None) -> TimelineData:
    """Draw `data` into `path` (.png, .svg or .html with the PNG inside); returns `data`."""
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise TimelineUnavailable(f"{path}: the timeline is written as {', '.join(FORMATS)}")
    width, height = size or data.default_size()
    figure = _draw(data, width, height)
    if suffix == ".html":
        png = io.BytesIO()
        figure.savefig(png, format="png", dpi=_DPI)
        path.write_text(_html_page(data.title, png.getvalue()))
    else:
        figure.savefig(path, format=suffix[1:], dpi=_DPI)
    return data


def _draw(data: TimelineData, width: int, height: int):
    try:
        from matplotlib.figure import Figure  # optional extra: only when drawing
    except ImportError:
        raise TimelineUnavailable(
            "the timeline needs matplotlib: pip install 'ftharness[plot]'"
        ) from None
    figure = Figure(figsize=(width / _DPI, height / _DPI), dpi=_DPI, layout="constrained")
    axes = figure.subplots()
    for bar in data.bars:
        y = -bar.attempt  # the first attempt on top
        color = _COLORS.get(bar.outcome, _COLORS["unknown"])
        axes.broken_barh([(bar.start, bar.end - bar.start)], (y - 0.3, 0.6), facecolors=color)
        if bar.training_from is not None:
            # Startup (estimated) drawn paler over the start of the bar.
            axes.broken_barh(
                [(bar.start, bar.training_from - bar.start)],
                (y - 0.3, 0.6),
                facecolors="white",
                alpha=0.45,
            )
    if data.ticks:
        axes.vlines(
            [tick.time for tick in data.ticks],
            [-tick.attempt - 0.38 for tick in data.ticks],
            [-tick.attempt + 0.38 for tick in data.ticks],
            colors="black",
            linewidth=1,
            label="checkpoint committed",
        )
    styles = {
        "crash": ("X", "#c62828", "crash"),
        "fatal": ("X", "#6a1b9a", "fatal exit"),
        "stop requested": ("v", "black", "stop signal (preemption)"),
        "unknown end": ("?", "#757575", "no end recorded"),
    }
    for kind, (marker, color, label) in styles.items():
        points = [m for m in data.markers if m.kind == kind]
        if points:
            axes.scatter(
                [m.time for m in points],
                [-m.attempt + 0.45 for m in points],
                marker=marker if marker != "?" else "$?$",
                color=color,
                s=70,
                zorder=3,
                label=label,
            )
    axes.set_yticks(
        [-bar.attempt for bar in data.bars],
        [f"#{bar.attempt} {bar.outcome}" for bar in data.bars],
    )
    axes.set_ylim(-len(data.bars) - 0.8, -0.2)
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(data.origin))
    axes.set_xlabel(f"seconds since the first launch ({started}); paler: startup (estimated)")
    axes.set_title(data.title)
    axes.grid(axis="x", alpha=0.3)
    # Beside the axes, never over a bar.
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    return figure


def _title(story: RunStory) -> str:
    goodput = f"goodput {story.goodput:.0%}" if story.goodput is not None else "goodput n/a"
    counts: dict[str, int] = {}
    for attempt in story.attempts:
        counts[attempt.outcome] = counts.get(attempt.outcome, 0) + 1
    summary = ", ".join(f"{n} {outcome}" for outcome, n in counts.items())
    runs = ", ".join(story.run_ids)
    return f"run {runs}: {goodput} ({len(story.attempts)} attempts: {summary})"


def _html_page(title: str, png: bytes) -> str:
    encoded = base64.b64encode(png).decode()
    return (
        '<!doctype html>\n<html><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title></head>\n"
        f'<body><img alt="{html.escape(title)}" src="data:image/png;base64,{encoded}">'
        "</body></html>\n"
    )
