"""Text and JSON for the inspection commands: tables for people, JSON for scripts."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

from ftharness.inspect.story import AttemptStory, RunStory
from ftharness.inspect.verify import Verdict
from ftharness.progress import human_bytes
from ftharness.untrusted import shown


def human_seconds(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes, seconds = divmod(round(seconds), 60)
    if minutes < 90:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes:02d} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


def _table(header: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        lines.append("  ".join(cells).rstrip())
    return lines


# -- ls ------------------------------------------------------------------------------


def check_label(verdict: Verdict) -> str:
    if not verdict.intact:
        # A problem can quote the manifest (a file name, a parse error): untrusted.
        return "DAMAGED: " + "; ".join(shown(problem) for problem in verdict.problems)
    return "checksums ok" if verdict.checksums else "sizes ok"


def ls_text(verdicts: list[Verdict], now: float) -> str:
    if not verdicts:
        return "no committed checkpoints"
    rows = []
    for verdict in verdicts:  # newest first
        manifest = verdict.manifest
        if manifest is None:
            rows.append([str(verdict.step), "?", "?", "?", "?", "?", check_label(verdict)])
            continue
        writer = manifest.writer
        rows.append(
            [
                str(verdict.step),
                str(manifest.epoch),
                str(manifest.batch),
                human_bytes(sum(entry.size for entry in manifest.files.values())),
                human_seconds(max(0.0, now - manifest.created)),
                f"{shown(writer.host)}/pid {writer.pid}/run {shown(writer.run_id)}",
                check_label(verdict),
            ]
        )
    header = ["STEP", "EPOCH", "BATCH", "SIZE", "AGE", "WRITER (HOST/PID/RUN)", "CHECK"]
    return "\n".join(_table(header, rows, right={0, 1, 2, 3}))


def verdict_json(verdict: Verdict, now: float) -> dict[str, Any]:
    manifest = verdict.manifest
    entry: dict[str, Any] = {
        "name": verdict.name,
        "step": verdict.step,
        "intact": verdict.intact,
        "checked": "checksums" if verdict.checksums else "sizes",
        "problems": list(verdict.problems),
    }
    if manifest is not None:
        entry.update(
            epoch=manifest.epoch,
            batch=manifest.batch,
            bytes=sum(file.size for file in manifest.files.values()),
            created=manifest.created,
            age_seconds=round(max(0.0, now - manifest.created), 3),
            writer=asdict(manifest.writer),
            files={name: asdict(file) for name, file in manifest.files.items()},
        )
    return entry


# -- status ----------------------------------------------------------------------------


def _lost(attempt: AttemptStory) -> str:
    if attempt.outcome in ("finished", "fatal"):
        return "-"
    if attempt.lost_seconds == 0:
        return "none"
    if attempt.lost_seconds is None:
        return "?"
    at_least = ">= " if attempt.outcome == "unknown" else ""
    steps = ""
    if attempt.lost_steps is not None:
        steps = f"~{attempt.lost_steps} step{'s' if attempt.lost_steps != 1 else ''}, "
    return f"{at_least}{steps}{human_seconds(attempt.lost_seconds)}"


def _steps(attempt: AttemptStory) -> str:
    start = attempt.start_step if attempt.start_step is not None else 0
    end = attempt.end_step if attempt.end_step is not None else start
    return f"{start} -> {end}"


def status_text(story: RunStory, url: str, newest: Verdict | None, now: float) -> str:
    first = story.attempts[0].record
    sessions = len(story.sessions)
    lines = [
        f"run {', '.join(shown(r) for r in story.run_ids)} in {shown(url)}: {story.state} after "
        f"{len(story.attempts)} attempt{'s' if len(story.attempts) != 1 else ''} "
        f"({sessions} supervisor session{'s' if sessions != 1 else ''}), "
        f"first launched {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(first.launched_at))}",
    ]
    if newest is not None and newest.manifest is not None:
        manifest = newest.manifest
        lines.append(
            f"newest checkpoint: step {manifest.step} (epoch {manifest.epoch}, batch "
            f"{manifest.batch}), committed {human_seconds(max(0.0, now - manifest.created))} "
            f"ago, {check_label(newest)}"
        )
    elif newest is not None:
        lines.append(f"newest checkpoint: step {newest.step}, {check_label(newest)}")
    else:
        lines.append("newest checkpoint: none")
    if story.goodput is not None and story.pace is not None:
        lines.append(
            f"goodput {story.goodput:.0%}: {human_seconds(story.useful_seconds or 0)} of useful "
            f"training in {human_seconds(story.wall_seconds)} of wall time "
            f"(estimated at {story.pace:.3g} s/step)"
        )
    else:
        lines.append("goodput: n/a (no two checkpoints in one attempt to measure the pace)")
    lines.append("")
    session_numbers = {session: n for n, session in enumerate(story.sessions, start=1)}
    rows = [
        [
            str(a.number),
            f"{session_numbers[a.record.session]}:{a.record.attempt}",
            time.strftime("%H:%M:%S", time.localtime(a.record.launched_at)),
            human_seconds(a.duration),
            _steps(a),
            str(len(a.record.checkpoints)),
            f"{a.outcome}: {shown(a.detail)}",
            _lost(a),
        ]
        for a in story.attempts
    ]
    header = ["#", "SESSION:ATTEMPT", "LAUNCHED", "TOOK", "STEPS", "CKPTS", "ENDED", "LOST (EST.)"]
    lines.extend(_table(header, rows, right={0, 3, 5}))
    lines.append("")
    lines.extend(_time_accounting(story))
    return "\n".join(lines)


def _time_accounting(story: RunStory) -> list[str]:
    wall = story.wall_seconds
    backoff = sum(a.gap_before or 0.0 for a in story.attempts if a.gap_kind == "backoff")
    away = sum(a.gap_before or 0.0 for a in story.attempts if a.gap_kind == "no supervisor")
    parts: list[tuple[str, float | None, str]] = [
        ("useful training", story.useful_seconds, "estimated"),
        ("startup and restore", story.startup_seconds, "estimated"),
        ("re-done work", story.redone_seconds, "estimated"),
        ("final checkpoints", story.final_save_seconds, "measured"),
        ("restart backoff", backoff, "exact"),
        ("no supervisor running", away, "exact"),
        ("other", story.other_seconds, "what the estimates leave unexplained"),
    ]
    rows = []
    for name, seconds, how in parts:
        if seconds is None:
            rows.append([name, "?", "", how])
            continue
        share = f"{seconds / wall:.0%}" if wall > 0 else ""
        rows.append(
            [
                name,
                human_seconds(seconds) if seconds >= 0 else f"-{human_seconds(-seconds)}",
                share,
                how,
            ]
        )
    return [f"where the {human_seconds(wall)} of wall time went:"] + [
        "  " + line for line in _table(["", "", "", ""], rows, right={1, 2})[1:]
    ]


def status_json(story: RunStory, url: str, newest: Verdict | None, now: float) -> dict[str, Any]:
    return {
        "url": url,
        "state": story.state,
        "run_ids": story.run_ids,
        "sessions": story.sessions,
        "newest_checkpoint": verdict_json(newest, now) if newest is not None else None,
        "first_step": story.first_step,
        "last_step": story.last_step,
        "checkpoints_committed": story.checkpoints_committed,
        "wall_seconds": round(story.wall_seconds, 3),
        "goodput": story.goodput,
        "estimated": {
            "pace_seconds_per_step": story.pace,
            "useful_seconds": story.useful_seconds,
            "startup_seconds": story.startup_seconds,
            "redone_seconds": story.redone_seconds,
            "other_seconds": story.other_seconds,
        },
        "exact": {
            "idle_seconds": round(story.idle_seconds, 3),
            "final_checkpoint_seconds": round(story.final_save_seconds, 3),
        },
        "attempts": [
            {
                "number": a.number,
                "outcome": a.outcome,
                "detail": a.detail,
                "start_step": a.start_step,
                "end_step": a.end_step,
                "duration_seconds": round(a.duration, 3),
                "gap_before_seconds": a.gap_before,
                "gap_kind": a.gap_kind,
                "estimated": {
                    "startup_seconds": a.startup_seconds,
                    "lost_seconds": a.lost_seconds,
                    "lost_steps": a.lost_steps,
                },
                "final_checkpoint_seconds": a.final_save_seconds,
                "record": asdict(a.record),
            }
            for a in story.attempts
        ],
    }
