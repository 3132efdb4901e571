"""How the entry scripts start and end. ``launch`` is the shared end of their ``main``: --dry-run prints
the resolved configuration; a real run prints one line of configuration and works between
``init_distributed`` and ``cleanup``. ``run_cli`` turns a failure a user or a cluster can cause into one
clear line and a non-zero exit status; only a bug in the code shows a traceback.

    def main(args):
        check_args(args)
        return launch(args, get_args_parser(), lambda device: _work(args, device), saved_in=...)

    if __name__ == "__main__":
        run_cli(main, get_args_parser().parse_args())
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import re
import shlex
import signal
import sys
from collections.abc import Callable
from typing import TypeVar

import torch

from engine.interrupts import NonFiniteLossError, TrainingInterrupted
from engine.output_dir import OutputDirError, claim_output_dir, run_kind
from utils.checkpoint_io import CheckpointError
from utils.config import config_to_dict, git_revision
from utils.distributed import cleanup, init_distributed, is_main_process

Result = TypeVar("Result")

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
    SIGTERM outside a training loop (which saves first, see engine.interrupts) stops with a line too, not silently."""
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


def changed_flags(args: argparse.Namespace, parser: argparse.ArgumentParser) -> str:
    """The flags of ``args`` whose values differ from ``parser``'s defaults, written as a command line."""
    def plain(value):
        return json.loads(json.dumps(value, default=str))  # paths and tuples compare as config.json stores them

    words = []
    for action in parser._actions:
        if not action.option_strings or action.dest == "help" or not hasattr(args, action.dest):
            continue
        value, default = getattr(args, action.dest), parser.get_default(action.dest)
        if isinstance(default, str) and callable(action.type):
            default = action.type(default)  # as argparse converts a string default
        if plain(value) == plain(default):
            continue
        flag = max(action.option_strings, key=len)
        if action.nargs == 0:  # store_true / store_false: the flag alone says it
            words.append(flag)
        elif isinstance(value, (list, tuple)):
            words.append(" ".join([flag, *(shlex.quote(str(v)) for v in value)]))
        else:
            words.append(f"{flag} {shlex.quote(str(value))}")
    return " ".join(words)


def configuration_line(args: argparse.Namespace, parser: argparse.ArgumentParser, saved_in: str) -> str:
    """One line in place of the whole configuration: the flags that differ from the defaults, where all of them
    are kept, and the git revision."""
    git = git_revision()
    revision = (f"git {git['commit'][:12]}{' with uncommitted changes' if git['dirty'] else ''}"
                if git["commit"] else "no git revision")
    changed = changed_flags(args, parser)
    return (f"configuration: {'flags that differ from the defaults: ' + changed if changed else 'the defaults'} "
            f"(every flag goes to {saved_in}; {revision})")


def launch(args: argparse.Namespace, parser: argparse.ArgumentParser, work: Callable[[torch.device], Result], *,
           saved_in: str, dry_run_config: Callable[[], dict] | None = None,
           claim_output: bool = False) -> Result | None:
    """The shared end of an entry script's ``main``, once its flags are checked. --dry-run prints the resolved
    configuration (``dry_run_config()``, by default the flags) as JSON and returns None. Otherwise: the
    processes start (``init_distributed``), rank 0 prints ``configuration_line``, ``work(device)`` runs (inside
    ``claim_output_dir`` with ``claim_output``) and the processes stop (``cleanup``) whatever happens."""
    if args.dry_run:
        config = dry_run_config() if dry_run_config is not None else config_to_dict(args)
        print(json.dumps(config, indent=2, sort_keys=True))
        return None
    device = init_distributed(args)
    try:
        claim = claim_output_dir(args.output_dir, run_kind(args)) if claim_output else contextlib.nullcontext()
        with claim:
            if is_main_process():
                print(configuration_line(args, parser, saved_in), flush=True)
            return work(device)
    finally:
        cleanup()
