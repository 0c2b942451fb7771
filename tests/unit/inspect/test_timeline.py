"""The timeline: what is drawn is the record; the files have the promised size and format."""

from __future__ import annotations

import pytest
from PIL import Image

from ftharness.events import AttemptEnd, AttemptRecord, CommitSeen, StopRequest
from ftharness.inspect.story import tell
from ftharness.inspect.timeline import TimelineUnavailable, render, timeline_data

T0 = 1_700_000_000.0


def attempt(number: int, launched: float, ended: float | None, outcome: str, **extra):
    commits = (
        CommitSeen(10 * number, T0 + launched + 5, 0, 1),
        CommitSeen(10 * number + 5, T0 + launched + 8, 0, 1),
    )
    return AttemptRecord(
        run_id="r1",
        session="s1",
        attempt=number,
        host="h",
        supervisor_pid=1,
        worker_pid=number,
        launched_at=T0 + launched,
        start_step=10 * number - 5,
        updated_at=T0 + (ended or launched + 9),
        checkpoints=commits,
        end=AttemptEnd(T0 + ended, outcome, 1, None, 10 * number + 5, None) if ended else None,
        **extra,
    )


RECORDS = [
    attempt(1, 0, 10, "crashed"),
    attempt(2, 12, 22, "stopped", stop=StopRequest("SIGTERM", T0 + 21)),
    attempt(3, 30, None, "running"),
]


def test_the_series_are_the_records():
    data = timeline_data(tell(RECORDS))
    assert data.origin == T0
    assert [(b.attempt, b.start, b.end, b.outcome) for b in data.bars] == [
        (1, 0, 10, "crashed"),
        (2, 12, 22, "preempted"),
        (3, 30, 39, "unknown"),  # drawn to its last update
    ]
    assert [(t.attempt, t.time, t.step) for t in data.ticks] == [
        (1, 5, 10),
        (1, 8, 15),
        (2, 17, 20),
        (2, 20, 25),
        (3, 35, 30),
        (3, 38, 35),
    ]
    assert [(m.attempt, m.time, m.kind) for m in data.markers] == [
        (1, 10, "crash"),
        (2, 21, "stop requested"),
        (3, 39, "unknown end"),
    ]
    # Startup is drawn where the pace puts the first step: 5 s before a
    # commit 5 steps in, at 0.6 s/step... 5 - 5 * 0.6 = 2 s after launch.
    assert [b.training_from for b in data.bars] == pytest.approx([2.0, 14.0, 32.0])


@pytest.mark.parametrize("suffix", [".png", ".svg", ".html"])
def test_every_format_is_written(tmp_path, suffix):
    path = tmp_path / f"run{suffix}"
    render(timeline_data(tell(RECORDS)), path)
    head = path.read_bytes()[:200]
    if suffix == ".png":
        with Image.open(path) as image:
            assert image.size == (1000, 300)  # 3 attempts: the 300 px minimum
    elif suffix == ".svg":
        assert b"<svg" in head
    else:
        assert head.startswith(b"<!doctype html>")
        assert b"data:image/png;base64," in path.read_bytes()


def test_size_grows_with_attempts_and_can_be_chosen(tmp_path):
    many = [attempt(n, 20 * n, 20 * n + 10, "crashed") for n in range(1, 9)]
    data = timeline_data(tell(many))
    assert data.default_size() == (1000, 150 + 40 * 8)
    render(data, tmp_path / "run.png", size=(640, 480))
    with Image.open(tmp_path / "run.png") as image:
        assert image.size == (640, 480)


def test_unknown_formats_and_empty_runs_are_refused(tmp_path):
    with pytest.raises(TimelineUnavailable, match=r"written as \.png, \.svg, \.html"):
        render(timeline_data(tell(RECORDS)), tmp_path / "run.pdf")
    with pytest.raises(ValueError, match="no attempts"):
        timeline_data(tell([]))
