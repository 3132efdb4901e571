"""How the entry scripts end: a failure a user or a cluster can cause prints one clear line and exits
non-zero; only a bug in the code shows a traceback.

    if __name__ == "__main__":
        run_cli(main, get_args_parser().parse_args())
"""

from __future__ import annotations

import errno
import re
import signal
import sys
from collections.abc import Callable

from utils.checkpoint import CheckpointError
from utils.engine import NonFiniteLossError, TrainingInterrupted
from utils.run_dir import OutputDirError

# ValueError covers dataset.layout.LayoutError and the flag checks
USER_ERRORS = (ValueError, FileNotFoundError, CheckpointError, NonFiniteLossError, OutputDirError)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # ANSI escapes, carriage returns ... (not \t, \n)
_WORKER = re.compile(r"Caught (\w+) in DataLoader worker process \d+")
# what gloo and NCCL report in the surviving processes when one process of the group dies
_PEER_LOST = re.compile(r"Connection (reset|closed) by peer|NCCL (error|communicator was aborted)|"
                        r"collective operation timeout")


def printable(text: str) -> str:
    """``text`` on one line with control characters shown as escapes: an escape sequence or a carriage return
    inside a file name would otherwise let the terminal erase the rest of the message."""
    text = _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)
    return " ".join(line.strip() for line in text.strip().splitlines() if line.strip())


def _worker_error(error: BaseException) -> str | None:
    """The one-line message of an exception raised inside a DataLoader worker, which torch re-raises with
    the worker's whole traceback as its text; None for other exceptions."""
    text = str(error)
    match = _WORKER.match(text)
    if not match:
        return None
    lines = [line for line in text.splitlines() if line.strip()]
    last = lines[-1].strip() if lines else ""
    kind, _, message = last.partition(": ")
    if isinstance(error, USER_ERRORS):
        return message or last
    return (f"data loading failed in a DataLoader worker ({kind.rpartition('.')[2]}: {message}); "
            "run with --workers 0 to see the full traceback")


def describe(error: BaseException, output_dir: str | None = None) -> tuple[str, int] | None:
    """(one-line message, exit status) for an error a user or the machine causes; None for a bug."""
    if isinstance(error, TrainingInterrupted):
        return str(error), 128 + error.signum
    if isinstance(error, KeyboardInterrupt):
        return "stopped by SIGINT (Ctrl-C); run the same command again to start over", 128 + signal.SIGINT
    worker = _worker_error(error)
    if worker is not None:
        return worker, 1
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        where = error.filename or (f"the disk of --output-dir {output_dir}" if output_dir else "the disk")
        if isinstance(error.strerror, str) and error.strerror.startswith("no space left"):
            return f"{error.strerror}: free some space, then run the same command again", 1
        return f"no space left on {where}: free some space, then run the same command again", 1
    if isinstance(error, FileNotFoundError) or not isinstance(error, OSError):
        if isinstance(error, RuntimeError) and _PEER_LOST.search(str(error)):
            return (f"another process of this job stopped ({str(error).splitlines()[0][:200]}); its own message says "
                    "why. Under torchrun --max-restarts the group restarts and resumes from the last checkpoint; "
                    "otherwise run the same command again (--resume auto)", 1)
        if isinstance(error, RuntimeError) and "DataLoader worker" in str(error):
            return (f"{str(error).splitlines()[0]}: a data-loading process died, most often killed for lack of "
                    "memory; lower --workers or --batch-size, then run the same command again", 1)
        if isinstance(error, USER_ERRORS):
            return str(error), 1
        return None
    if error.errno in (errno.EACCES, errno.EROFS, errno.EPERM, errno.ENOTDIR, errno.EISDIR, errno.EEXIST):
        where = error.filename or output_dir
        return f"cannot write {where} ({error.strerror}): choose another --output-dir or fix its permissions", 1
    return f"{error.strerror or error}{f': {error.filename}' if error.filename else ''}", 1


def _stop_now(signum, frame) -> None:
    raise TrainingInterrupted(signum, "; run the same command again to start over", saved=False)


def run_cli(main: Callable, args) -> None:
    """``main(args)``; a failure that ``describe`` knows becomes ``error: <one line>`` and its exit status.
    SIGTERM outside a training loop (which saves first, see utils.engine) stops with a line too, not silently."""
    signal.signal(signal.SIGTERM, _stop_now)
    try:
        main(args)
    except (Exception, KeyboardInterrupt) as error:
        known = describe(error, getattr(args, "output_dir", None))
        if known is None:
            raise
        message, status = known
        print(f"error: {printable(message)}", file=sys.stderr, flush=True)
        sys.exit(status)
