"""DataLoader worker hygiene: a worker ignores the signals meant for its training process, ends when its parent
asks, and holds none of the parent's output-folder locks."""

from __future__ import annotations

import contextlib
import os
import signal
import threading

# file descriptors of the output-folder locks this process holds (engine.output_dir): forked workers close
# their copies
_held_lock_fds: set[int] = set()


def hold_lock_fd(fd: int) -> None:
    """Record ``fd`` as a lock that forked workers must not keep."""
    _held_lock_fds.add(fd)


def release_lock_fd(fd: int) -> None:
    _held_lock_fds.discard(fd)


def close_inherited_locks(*_) -> None:
    """For forked children (DataLoader workers): drop their copies of the parent's lock descriptors, so that
    an orphaned worker can never keep a folder locked after its parent died. The parent keeps its lock."""
    for fd in list(_held_lock_fds):
        with contextlib.suppress(OSError):
            os.close(fd)
    _held_lock_fds.clear()


def quiet_worker(worker_id: int) -> None:
    """DataLoader worker_init_fn: a Ctrl-C or a scheduler's SIGTERM reaches every process of the job, but only
    the training process may act on it (a worker that dies of it would break the save at the next iteration
    boundary). So the worker ignores SIGINT, and SIGTERM from anyone but its parent; a SIGTERM from the parent
    ends it at once: that is how the parent's exit stops the workers it did not shut down itself (multiprocessing
    terminates its daemon children, then joins them; a worker that ignored that would hang the parent's exit,
    as after an error raised inside a worker). Also drops inherited output-folder locks."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "sigwaitinfo"):  # not on macOS, where no scheduler signals the job: SIGTERM ends the worker
        # Blocked here, the SIGTERM waits for the thread below, which learns who sent it; the threads that the
        # decoders start later inherit the block.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        threading.Thread(target=_exit_on_parents_sigterm, args=(os.getppid(),), name="sigterm-from-parent",
                         daemon=True).start()
    close_inherited_locks()


def _exit_on_parents_sigterm(parent: int) -> None:
    while signal.sigwaitinfo({signal.SIGTERM}).si_pid != parent:
        pass
    # status 0: the parent asked for it; torch's SIGCHLD handler in the parent reports any other status as a crash
    os._exit(0)
