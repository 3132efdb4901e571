"""Timing variants of the same work so that their ratio holds still on a shared machine.

Timing A in one block and B in another lets every change of machine load between the blocks enter the
ratio A / B. ``alternate`` times them in turn inside one loop (A, B, A, B, ...) and takes the ratio within
each loop, where both saw nearly the same load; the median of those per-loop ratios is the figure to
report, and its spread (min / max and the interquartile range) says how far to trust it.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def spread(values: list[float], digits: int = 4) -> dict:
    """Median, min, max and interquartile range (q1, q3) of ``values``, rounded."""
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else values * 3
    return {"median": round(statistics.median(values), digits), "min": round(min(values), digits),
            "max": round(max(values), digits), "iqr": [round(q1, digits), round(q3, digits)]}


def alternate(variants: dict[str, Callable[[], object]], *, repeats: int, warmup: int = 1,
              sync: Callable[[], None] | None = None) -> dict[str, list[float]]:
    """Seconds of each call of each variant: ``warmup`` untimed loops, then ``repeats`` loops that call every
    variant once in turn. ``sync`` (e.g. torch.cuda.synchronize) runs before and after each timed call."""
    return alternate_clocks(variants, {"wall": time.perf_counter}, repeats=repeats, warmup=warmup, sync=sync)["wall"]


def alternate_clocks(variants: dict[str, Callable[[], object]], clocks: dict[str, Callable[[], float]], *,
                     repeats: int, warmup: int = 1,
                     sync: Callable[[], None] | None = None) -> dict[str, dict[str, list[float]]]:
    """``alternate`` read on several clocks at once: ``{clock name: {variant: seconds per call}}``. E.g.
    ``time.process_time`` beside ``time.perf_counter``: the CPU time of this process moves far less with
    other jobs' load on a shared machine than the wall clock does."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    for _ in range(warmup):
        for run in variants.values():
            run()
    times = {clock: {name: [] for name in variants} for clock in clocks}
    for _ in range(repeats):
        for name, run in variants.items():
            if sync is not None:
                sync()
            tics = [clock() for clock in clocks.values()]
            run()
            if sync is not None:
                sync()
            for (clock_name, clock), tic in zip(clocks.items(), tics):
                times[clock_name][name].append(clock() - tic)
    return times


def ratio(times: dict[str, list[float]], numerator: str, denominator: str, digits: int = 3) -> dict:
    """The per-loop ratios numerator / denominator of ``alternate``'s times: median, min, max, IQR."""
    return spread([a / b for a, b in zip(times[numerator], times[denominator])], digits)
