"""Checkpoint files: written atomically (a crash or a full disk keeps the previous file), read with
``weights_only=True`` (no code runs from a file), and errors that name the file and the fix."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import torch


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read or does not fit the model; the message names the file and the fix."""


def _out_of_space(error: BaseException, folder: Path) -> bool:
    """Whether a failed write ran out of space: torch's zip writer reports it as a RuntimeError that may hide
    the OSError (ENOSPC) in its context, or not carry it at all."""
    seen = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        seen = seen.__cause__ or seen.__context__
    try:
        return isinstance(error, RuntimeError) and shutil.disk_usage(folder).free < 64 * 2**20
    except OSError:
        return False


def save_checkpoint(state: dict, path: str | os.PathLike) -> None:
    """Write ``state`` to ``path`` atomically: a crash at any moment leaves the previous file intact.
    A full disk raises OSError(ENOSPC) naming the folder (the previous file is kept)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        if _out_of_space(e, path.parent):
            raise OSError(errno.ENOSPC, f"no space left on {path.parent} while writing {path.name} (the previous "
                                        f"{path.name} is kept)", str(path.parent)) from None
        raise
    finally:
        tmp.unlink(missing_ok=True)


def load_checkpoint(path: str | os.PathLike, fix: str = "check the path, or delete the file") -> dict:
    """Load a checkpoint on the CPU with ``weights_only=True``; errors name the file and ``fix`` (what the
    calling script's user can do about it)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist: {fix}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several unrelated types for truncated or foreign files
        raise CheckpointError(f"cannot read checkpoint {path} ({why_unreadable(e)}): {fix}") from None


def why_unreadable(error: Exception) -> str:
    """Why ``torch.load(weights_only=True)`` failed, in one clause, without torch's advice to pass
    ``weights_only=False`` (which would run whatever code the file carries) or its unpickler's opcodes."""
    text = str(error)
    if "Unsupported global" in text:
        return "it holds Python objects that a safe load refuses"
    # torch's zip reader says what is wrong (a missing central directory: a truncated file) in its first sentence
    detail = text.strip().splitlines()[0].split(". ")[0] if isinstance(error, RuntimeError) and text.strip() else ""
    return "it is truncated, corrupt or not a PyTorch checkpoint" + (f": {detail}" if detail else "")


def few(keys: list[str], shown: int = 4, more: str = " (+{} more)") -> str:
    """The first ``shown`` of ``keys`` and how many more there are, for messages about state dicts."""
    return ", ".join(keys[:shown]) + (more.format(len(keys) - shown) if len(keys) > shown else "")


def state_mismatch(expected: dict[str, torch.Tensor], given: dict[str, torch.Tensor], *, shown: int = 4,
                   more: str = " (+{} more)", reshaped: str = "wrong shape (checkpoint vs model)") -> str:
    """How the state dict ``given`` differs from the model's ``expected`` ('' when it fits): missing, unexpected and
    ``reshaped`` tensors, a few of each named."""
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    wrong_shape = [f"{k} {tuple(given[k].shape)} vs {tuple(expected[k].shape)}"
                   for k in sorted(set(expected) & set(given)) if given[k].shape != expected[k].shape]
    return "; ".join(f"{label}: {few(keys, shown, more)}" for label, keys in (
        ("missing", missing), ("unexpected", unexpected), (reshaped, wrong_shape)) if keys)
