"""Peak extra memory of a background checkpoint.

Fresh worker processes train the model for 8 steps: half of them take one
checkpoint (at step 5, written while steps 6-8 train), half take none. Each
reports its peak RSS from the end of step 4 to the end of training (Linux's
VmHWM, reset there through /proc/self/clear_refs): the lifetime peak
(`ru_maxrss`) is set earlier, by TensorFlow's start and the first step's
tracing, and hides a checkpoint's memory. The extra memory of a
checkpoint is the difference between the two kinds, paired per round
(rotated order), median over rounds, as a multiple of the state's size.
"""

from __future__ import annotations

from benchmarks.context import Context
from benchmarks.measure import Row, format_ratio, interleaved, median, megabytes, spread

NAME = "memory"


def run(ctx: Context) -> list[Row]:
    peaks: dict[str, list[int]] = {"save": [], "none": []}
    state: list[int] = []

    def measure(with_save: bool):
        def once() -> float:
            args = ["--backup-dir", ctx.fresh_dir("memory") / "b"]
            result = ctx.run_worker("memory", *args, *(["--save"] if with_save else []))
            if with_save and result["checkpoints"] != ["ckpt-000000000005"]:
                raise RuntimeError(f"expected one checkpoint at step 5: {result['checkpoints']}")
            peaks["save" if with_save else "none"].append(result["peak_rss_bytes"])
            state.append(result["state_bytes"])
            return float(result["peak_rss_bytes"])

        return once

    rounds = 1 if ctx.settings.quick else 5
    interleaved({"save": measure(True), "none": measure(False)}, rounds)
    extra = median([s - n for s, n in zip(peaks["save"], peaks["none"], strict=True)])
    size = state[0]
    ratio = extra / size
    print(f"  extra peak memory {megabytes(extra)} = {format_ratio(ratio)} x the state")
    return [
        Row(
            NAME,
            "peak RSS with a background checkpoint - without / state size",
            ratio,
            megabytes(extra),
            megabytes(size),
            "≤ 1.1",
            ratio <= 1.1,
            f"peak RSS (VmHWM) from step 4 to the end, fresh processes, {rounds} rounds; peaks "
            f"{megabytes(median(peaks['save']))} vs {megabytes(median(peaks['none']))}",
            spread([(s - n) / size for s, n in zip(peaks["save"], peaks["none"], strict=True)]),
        )
    ]
