"""Stop training at the next iteration boundary when a scheduler asks (time limit or preemption).

A launcher that runs the training in its own process (the Slurm launcher, under submitit) calls `request_stop`
from its signal handler. The training loop (engine/loop.py) reads this process's `requested()` at every
iteration and all-reduces it in the collective it runs anyway (the finite-loss and stop-signal check), so every
rank answers the same, saves the same checkpoint and raises `Preempted` together. Until `enable()` has been called nothing is ever requested: plain runs are unaffected.
"""

from __future__ import annotations

from utils.distributed import all_reduce_mean, is_dist

_enabled = False
_requested = False


class Preempted(BaseException):
    """The run saved its checkpoint at an iteration boundary and stopped; resume it with --resume auto.

    A BaseException, like KeyboardInterrupt, so that no handler of ordinary errors swallows it.
    """


def enable() -> None:
    global _enabled
    _enabled = True


def request_stop(*_signal_args) -> None:
    """Signal-handler-safe: only sets a flag that the training loop reads."""
    global _requested
    _requested = True


def requested() -> bool:
    """Whether this process was asked to stop (no collective)."""
    return _enabled and _requested


def stop_requested() -> bool:
    """Whether any process was asked to stop (a collective once enabled: every rank must call it)."""
    if not _enabled:
        return False
    if is_dist():
        return all_reduce_mean(float(_requested)) > 0
    return _requested
