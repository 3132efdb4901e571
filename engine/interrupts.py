"""How a training run stops early: a stop signal (SIGTERM from a scheduler, Ctrl-C) saves at the next iteration
boundary, a non-finite loss stops before its update; both are exceptions that name the checkpoint to resume from."""

from __future__ import annotations

import contextlib
import signal
import threading

from utils.distributed import all_reduce_mean, is_dist


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the message names the iteration and every loss term."""


class TrainingInterrupted(Exception):
    """SIGTERM or SIGINT stopped the training; ``saved`` says whether a checkpoint of the stopping point was
    written. Not a KeyboardInterrupt subclass, so that it reaches the script's one-line reporting."""

    def __init__(self, signum: int, where: str, saved: bool):
        self.signum, self.where, self.saved = signum, where, saved
        super().__init__(f"stopped by {signal.Signals(signum).name}{'' if where.startswith(';') else ' '}{where}")


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_stop_signal: int | None = None


def _request_stop(signum, frame) -> None:
    global _stop_signal
    if _stop_signal is not None:  # a second signal: stop now, without waiting for the iteration to end
        raise TrainingInterrupted(signum, "again before the iteration ended", saved=False)
    _stop_signal = signum


@contextlib.contextmanager
def stop_at_iteration_boundary():
    """Inside the ``with``, SIGTERM (what cluster schedulers send before a kill) and SIGINT (Ctrl-C) make
    ``engine.loop.train_one_epoch`` finish the current iteration, save a checkpoint and raise TrainingInterrupted; a
    second signal raises at once. Outside the main thread (signals cannot be caught there) it does nothing."""
    global _stop_signal
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _request_stop) for s in STOP_SIGNALS}
    _stop_signal = None
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _stop_signal = None


def pending_signal() -> int | None:
    """The stop signal this process received inside ``stop_at_iteration_boundary`` (None: none yet)."""
    return _stop_signal


def stop_requested_anywhere(local: int | None) -> int | None:
    """The signal that asked some rank to stop, or None; every rank must call this together."""
    if not is_dist():
        return local
    # signal numbers are small and positive: the mean is non-zero iff some rank was signalled
    mean = all_reduce_mean(float(local or 0))
    return (local or int(signal.SIGTERM)) if mean > 0 else None
