"""An output folder belongs to one run at a time, and to one kind of run.

``claim_output_dir`` is what train_ssl.py and finetune.py call before they write anything:

- ``OUTPUT_DIR/run.lock``: an ``fcntl.flock`` lock held for the whole run (the kernel drops it when the
  process dies, even by SIGKILL); its text names the holder (host, PID, command), so that a second run
  into the same folder stops with a message naming the first instead of mixing both runs' files.
- ``OUTPUT_DIR/run_kind.json``: ``{"kind": "pretrain" | "finetune", "model", "net"}`` of the run that
  created the folder. A run of another kind is refused, so that finetuning into a pretraining folder
  cannot overwrite the pretrained ``checkpoint.pth``. Folders written before this record existed are
  recognised by their ``config.json``.
- temporary files ``.NAME.tmpPID`` left by processes killed while writing a checkpoint are removed
  (under the lock, no live run can own one).

``check_writable`` is the check test.py and retrieve.py run before any inference.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import socket
import sys
from pathlib import Path

from utils.atomic import cannot_write
from utils.distributed import all_reduce_mean, is_dist, is_main_process
from utils.workers import hold_lock_fd, release_lock_fd

LOCK_NAME = "run.lock"
RUN_KIND_NAME = "run_kind.json"
_STALE_TMP = re.compile(r"\..+\.tmp(\d+)")
_KIND_FIELDS = ("kind", "model", "net")

class OutputDirError(RuntimeError):
    """The output folder cannot be used; the message names it and what to do."""


def check_writable(output_dir: str | os.PathLike, flag: str = "--output-dir", create: bool = True) -> Path:
    """Create ``output_dir`` if needed and check that a file can be written there (one-line errors). With
    ``create=False`` (dry runs) nothing is created: the folder, or its nearest existing parent, must be writable."""
    path = Path(output_dir)
    if path.exists() and not path.is_dir():
        raise OutputDirError(f"{flag} {path} is a file, not a folder: choose another {flag}")
    if not create:
        existing = next(p for p in (path.absolute(), *path.absolute().parents) if p.exists())
        if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
            raise OutputDirError(f"{flag} {path} cannot be created or written ({existing} is not a writable "
                                 f"folder): choose a folder you can write to")
        return path
    reason = cannot_write(path)
    if reason:
        raise OutputDirError(f"{flag} {path} is not writable ({reason}): choose a folder you can write to, "
                             f"or fix its permissions")
    return path


def _holder_text() -> str:
    return f"host {socket.gethostname()}, PID {os.getpid()}: {' '.join(sys.argv)}"


class OutputDirLock:
    """An exclusive, non-blocking ``flock`` on ``OUTPUT_DIR/run.lock``; the file's text names the holder."""

    def __init__(self, output_dir: str | os.PathLike):
        self.path = Path(output_dir) / LOCK_NAME
        self.fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "unknown process"
            os.close(fd)
            raise OutputDirError(f"--output-dir {self.path.parent} is in use by another run ({holder}; lock "
                                 f"{self.path}): wait for it to finish, or choose another --output-dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, (_holder_text() + "\n").encode(), 0)
        self.fd = fd
        hold_lock_fd(fd)

    def release(self) -> None:
        if self.fd is None:
            return
        # the file stays: unlinking it would let a third run lock a new file while a second holds the old one
        release_lock_fd(self.fd)
        os.ftruncate(self.fd, 0)
        os.close(self.fd)
        self.fd = None


def _describe(kind: dict) -> str:
    return ", ".join(f"{k} {kind.get(k)}" for k in _KIND_FIELDS)


SCRIPT_OF_KIND = {"pretrain": "train_ssl.py", "finetune": "finetune.py"}


def run_kind(config) -> dict:
    """``{"kind", "model", "net"}`` of a run from its flags (an argparse namespace or a config dict): finetune.py
    has --pretrain, train_ssl.py has --model; ``{}`` for anything else."""
    config = config if isinstance(config, dict) else vars(config)
    if "pretrain" in config:
        return {"kind": "finetune", "model": "classifier", "net": config.get("net")}
    if "model" in config:
        return {"kind": "pretrain", "model": config["model"], "net": config.get("net")}
    return {}


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except ValueError:
        raise OutputDirError(f"{path} is not valid JSON: it was damaged; delete it if the folder holds only "
                             "this kind of run, or choose another --output-dir") from None


def recorded_kind(output_dir: str | os.PathLike) -> dict | None:
    """The kind of run that owns ``output_dir``: run_kind.json, else inferred from an older config.json."""
    output_dir = Path(output_dir)
    record = output_dir / RUN_KIND_NAME
    if record.is_file():
        return _read_json(record)
    config_file = output_dir / "config.json"
    if not config_file.is_file():
        return None
    return run_kind(_read_json(config_file).get("config", {})) or None


def _refuse_another_kind(output_dir: Path, kind: dict) -> None:
    owner = recorded_kind(output_dir)
    # a field not known yet (finetune.py's --net before its --pretrain checkpoint is read) is not compared
    if owner is not None and any(owner.get(k) != kind[k] for k in _KIND_FIELDS if kind.get(k) is not None):
        raise OutputDirError(
            f"--output-dir {output_dir} belongs to another kind of run ({_describe(owner)}; this run: "
            f"{_describe(kind)}), and this run would overwrite its checkpoints: choose another --output-dir")


def check_run_kind(output_dir: str | os.PathLike, kind: dict) -> None:
    """Refuse a run whose kind, model or net differs from the one that owns the folder; record it if new."""
    output_dir = Path(output_dir)
    _refuse_another_kind(output_dir, kind)
    if not (output_dir / RUN_KIND_NAME).is_file():
        tmp = output_dir / f".{RUN_KIND_NAME}.tmp{os.getpid()}"
        tmp.write_text(json.dumps({k: kind.get(k) for k in _KIND_FIELDS}, indent=2) + "\n")
        os.replace(tmp, output_dir / RUN_KIND_NAME)


def check_output_dir(output_dir: str | os.PathLike, kind: dict) -> None:
    """What ``claim_output_dir`` checks, without creating or writing anything (for --dry-run)."""
    check_writable(output_dir, create=False)
    if Path(output_dir).is_dir():
        _refuse_another_kind(Path(output_dir), kind)


def remove_stale_temporaries(output_dir: str | os.PathLike) -> dict[Path, int]:
    """Delete the ``.NAME.tmpPID`` files of other processes (call under the lock: their writers are dead);
    returns their sizes in bytes."""
    removed = {}
    for entry in Path(output_dir).iterdir():
        match = _STALE_TMP.fullmatch(entry.name)
        if match and int(match.group(1)) != os.getpid() and entry.is_file():
            removed[entry] = entry.stat().st_size
            entry.unlink(missing_ok=True)
    return removed


@contextlib.contextmanager
def claim_output_dir(output_dir: str | os.PathLike, kind: dict):
    """Own ``output_dir`` for the body of the ``with``: writable, locked, of this ``kind``, no stale temporary
    files. A collective under torchrun: rank 0 claims, every rank raises if it failed."""
    lock = OutputDirLock(output_dir)
    error = None
    kind_file = Path(output_dir) / RUN_KIND_NAME
    recorded_here = False
    if is_main_process():
        try:
            check_writable(output_dir)
            lock.acquire()
            recorded_here = not kind_file.is_file()
            check_run_kind(output_dir, kind)
            removed = remove_stale_temporaries(output_dir)
            if removed:
                print(f"removed {len(removed)} temporary file(s) ({sum(removed.values()) / 2**20:.1f} MiB) left in "
                      f"{output_dir} by runs killed while writing", flush=True)
        except (OutputDirError, OSError, ValueError) as e:
            lock.release()
            error = e
    if is_dist() and all_reduce_mean(float(error is not None)) > 0 and error is None:
        error = OutputDirError(f"rank 0 could not claim --output-dir {output_dir} (its message says why)")
    if error is not None:
        raise error
    try:
        yield
    except BaseException:
        # a run that failed before it wrote config.json (a --dataset that does not exist, ...) did nothing here: a
        # kind recorded by it would refuse a run of another kind into a folder that holds nothing
        if recorded_here and not (Path(output_dir) / "config.json").is_file():
            kind_file.unlink(missing_ok=True)
        raise
    finally:
        lock.release()
