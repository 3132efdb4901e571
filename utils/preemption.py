"""Stop training at the next iteration boundary when a scheduler asks (time limit or preemption).

`paper_scripts/submit.py` calls `request_stop` from its signal handler. `train_one_epoch` then asks
`stop_requested()` after every iteration; every rank answers the same (the flag is all-reduced), so
all processes save the same checkpoint and raise `Preempted` together. Nothing is checked, and no
collective is added, until `enable()` has been called: plain runs are unaffected.
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


def stop_requested() -> bool:
    """Whether any process was asked to stop (a collective once enabled: every rank must call it)."""
    if not _enabled:
        return False
    if is_dist():
        return all_reduce_mean(float(_requested)) > 0
    return _requested
