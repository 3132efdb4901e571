"""Training checkpoints that resume exactly, written atomically and loadable with ``weights_only=True``.

A checkpoint records the position of the *next* iteration to run: ``epoch`` (0-based) and
``iteration`` (batches of that epoch already done). The one written at the end of epoch e therefore
holds ``epoch = e + 1, iteration = 0``; ``epochNNN.pth`` copies are named after the finished epoch e
(``epoch189.pth`` = the state after the 190th epoch, as in the published recipe). Keys:
``model`` (state dict of the unwrapped module), ``optimizer``, ``scheduler``, ``scaler``, ``epoch``,
``iteration``, ``global_step``, ``config`` (plain dict) and ``rng`` (one entry per process).
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from engine.interrupts import NonFiniteLossError, TrainingInterrupted, stop_at_iteration_boundary
from engine.output_dir import SCRIPT_OF_KIND, run_kind
from utils.checkpoint_io import CheckpointError, load_checkpoint, save_checkpoint, state_mismatch
from utils.distributed import get_rank, get_world_size, is_dist, is_main_process

CHECKPOINT_NAME = "checkpoint.pth"


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside DistributedDataParallel (or the model itself)."""
    return model.module if hasattr(model, "module") else model


def get_rng_state() -> dict:
    """Every RNG state of this process, as tensors and plain values that ``weights_only`` accepts."""
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"kind": np_kind, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "cached_gaussian": float(np_gauss)},
        "python": {"version": py_version, "internal": torch.tensor(py_internal, dtype=torch.int64),
                   "gauss_next": py_gauss},
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    cuda_states = state["cuda"]
    if cuda_states and torch.cuda.is_available():
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
        else:
            warnings.warn(f"the checkpoint holds CUDA RNG states for {len(cuda_states)} devices but "
                          f"{torch.cuda.device_count()} are visible; CUDA random streams are not restored")
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"].tolist()), p["gauss_next"]))


def gather_rng_states() -> list[dict]:
    """The RNG states of all processes, in rank order (a collective: every rank must call it)."""
    state = get_rng_state()
    if not is_dist():
        return [state]
    states: list = [None] * get_world_size()
    dist.all_gather_object(states, state)
    return states


def resolve_resume(resume: str, output_dir: str | os.PathLike) -> Path | None:
    """``auto``: OUTPUT_DIR/checkpoint.pth when it exists, else a fresh start; ``none``: a fresh start;
    anything else: a checkpoint path that must exist."""
    if resume == "none":
        return None
    if resume == "auto":
        latest = Path(output_dir) / CHECKPOINT_NAME
        return latest if latest.is_file() else None
    path = Path(resume)
    if not path.is_file():
        raise FileNotFoundError(f"--resume {resume}: no such checkpoint file (use 'auto' to restart from "
                                f"{Path(output_dir) / CHECKPOINT_NAME} when present, or 'none')")
    return path


def agreed_resume_path(resume: str, output_dir: str | os.PathLike) -> Path | None:
    """``resolve_resume`` as rank 0 sees it, on every rank (a collective under torchrun).

    Each rank looking on its own disk would let a node without the checkpoint start at epoch 0 while the others
    resume: the replicas drift apart and the job hangs in a later collective. So rank 0 decides, and every rank
    must be able to read what it decided, or all stop with the same message.
    """
    if not is_dist():
        return resolve_resume(resume, output_dir)
    decision: list = [None, None]  # [path or None, error message or None]
    if is_main_process():
        try:
            path = resolve_resume(resume, output_dir)
            decision[0] = None if path is None else str(path)
        except FileNotFoundError as error:
            decision[1] = str(error)
    dist.broadcast_object_list(decision, src=0)
    if decision[1] is not None:
        raise FileNotFoundError(decision[1])
    if decision[0] is None:
        return None
    path = Path(decision[0])
    unreadable: list = [None] * get_world_size()
    dist.all_gather_object(unreadable, None if os.access(path, os.R_OK) and path.is_file() else socket.gethostname())
    missing = [f"rank {rank} on {host}" for rank, host in enumerate(unreadable) if host is not None]
    if missing:
        raise CheckpointError(
            f"rank 0 resumes from {path}, which {', '.join(missing)} cannot read: --output-dir must be a folder that "
            "every node shares (a network file system), and the data must exist on every node; or pass "
            "--resume none to start afresh")
    return path


def _load_on_every_rank(path: Path, fix: str) -> dict:
    """``load_checkpoint`` on every rank (a collective under torchrun), which must all read the same position: a
    rank whose node holds another file at that path (an old run on a local disk) stops every rank, and so does a
    rank that cannot read it, instead of one rank failing while the others wait in the next collective."""
    if not is_dist():
        return load_checkpoint(path, fix=fix)
    try:
        ckpt, mine = load_checkpoint(path, fix=fix), None
    except (CheckpointError, FileNotFoundError) as error:
        ckpt, mine = None, str(error)
    position = None if ckpt is None else [ckpt.get(key) for key in ("epoch", "iteration", "global_step")]
    seen: list = [None] * get_world_size()
    dist.all_gather_object(seen, (mine, position, socket.gethostname()))
    for rank, (error, theirs, host) in enumerate(seen):
        if error is not None:
            raise CheckpointError(f"rank {rank} on {host}: {error}")
        if theirs != seen[0][1]:
            raise CheckpointError(
                f"rank 0 and rank {rank} (on {host}) read different files at {path} (epoch, iteration, step "
                f"{seen[0][1]} and {theirs}): --output-dir must be a folder that every node shares (a network file "
                "system), and the data must exist on every node; or pass --resume none to start afresh")
    return ckpt


@dataclass
class ResumePoint:
    epoch: int = 0
    iteration: int = 0
    global_step: int = 0
    path: Path | None = None


class Checkpointer:
    """Saves and restores everything a run needs to continue bit-exactly.

    ``save`` is a collective (it gathers every rank's RNG state); only rank 0 writes.
    """

    # flags that may change between a run and its resumption without a warning
    RESUMABLE_CHANGES = frozenset({"resume", "output_dir", "epochs", "steps", "dry_run", "log_every", "save_freq",
                                   "save_every_iters", "workers", "local_rank", "data_root", "frame_root", "csv_dir",
                                   "video_root", "max_bad_videos", "resolved"})
    REQUIRED_KEYS = ("model", "optimizer", "scheduler", "scaler", "epoch", "iteration", "global_step", "rng")

    def __init__(self, output_dir, model, optimizer, scheduler=None, scaler=None, config: dict | None = None,
                 extra: dict[str, dict] | None = None):
        """``extra``: named dicts of the run's own (finetuning's best validation so far) that every checkpoint keeps
        beside the training state and a resume restores in place."""
        self.output_dir = Path(output_dir)
        self.model, self.optimizer, self.scheduler, self.scaler = model, optimizer, scheduler, scaler
        self.config = config or {}
        self.extra = extra or {}

    @property
    def latest_path(self) -> Path:
        return self.output_dir / CHECKPOINT_NAME

    def state(self, epoch: int, iteration: int, global_step: int) -> dict:
        return {
            "model": unwrap(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else {},
            "scaler": self.scaler.state_dict() if self.scaler is not None else {},
            "epoch": epoch,
            "iteration": iteration,
            "global_step": global_step,
            "config": self.config,
            "run_kind": run_kind(self.config),
            "rng": gather_rng_states(),
            **{name: dict(value) for name, value in self.extra.items()},
        }

    def save(self, epoch: int, iteration: int, global_step: int, copy_name: str | None = None) -> None:
        """Write OUTPUT_DIR/checkpoint.pth, and OUTPUT_DIR/``copy_name`` too when given."""
        state = self.state(epoch, iteration, global_step)
        if is_main_process():
            save_checkpoint(state, self.latest_path)
            if copy_name:
                save_checkpoint(state, self.output_dir / copy_name)

    def restore_extra(self, ckpt: dict) -> None:
        """Restore the ``extra`` dicts from a loaded checkpoint (those it holds)."""
        for name, value in self.extra.items():
            if name in ckpt:
                value.clear()
                value.update(ckpt[name])

    @contextlib.contextmanager
    def naming_last_good(self):
        """Train under ``stop_at_iteration_boundary`` (SIGTERM / SIGINT save at the next iteration boundary);
        re-raise a NonFiniteLossError or an interruption naming the checkpoint to resume from."""
        def kept() -> str:
            return str(self.latest_path) if self.latest_path.is_file() else "none written yet"

        try:
            with stop_at_iteration_boundary():
                yield
        except NonFiniteLossError as e:
            raise NonFiniteLossError(f"{e}; last good checkpoint: {kept()}") from None
        except TrainingInterrupted as e:
            state = "checkpoint saved there" if e.saved else "last checkpoint"
            raise TrainingInterrupted(e.signum, f"{e.where}; {state}: {kept()}; to go on, run the same command "
                                      "again (--resume auto continues from it)", e.saved) from None

    def resume(self, resume: str) -> ResumePoint:
        """Restore model, optimizer, scheduler, scaler and this rank's RNG states per ``--resume``, from the
        checkpoint that rank 0 picks (every rank must call it)."""
        path = agreed_resume_path(resume, self.output_dir)
        if path is None:
            return ResumePoint()
        ckpt = _load_on_every_rank(path, fix="delete it, or pass --resume none to start afresh")
        missing = [key for key in self.REQUIRED_KEYS if key not in ckpt]
        if missing:
            raise CheckpointError(f"{path} lacks {', '.join(missing)}: it is not a training checkpoint of this "
                                  "project and cannot be resumed (to start from its weights, use the script's "
                                  "weight-loading option instead of --resume)")
        self._check_kind(path, ckpt)
        mismatch = state_mismatch(unwrap(self.model).state_dict(), ckpt["model"], shown=3, more=" and {} more",
                                  reshaped="other shape in the checkpoint")
        if mismatch:
            raise CheckpointError(f"checkpoint {path} does not fit this model ({mismatch}); was it written with "
                                  "other --model/--mode/--net/--base-width flags? Pass those, or --resume none")
        unwrap(self.model).load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.scheduler is not None and ckpt["scheduler"]:
            self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.scaler is not None and ckpt["scaler"]:
            self.scaler.load_state_dict(ckpt["scaler"])
        self._warn_config_changes(path, ckpt.get("config", {}))
        self.restore_extra(ckpt)
        rng = ckpt["rng"]
        if len(rng) == get_world_size():
            set_rng_state(rng[get_rank()])
        else:
            warnings.warn(f"{path} was written by {len(rng)} processes, this run has {get_world_size()}: "
                          "random streams are not restored and the data are sharded differently, so the run "
                          "continues but does not replay the uninterrupted one exactly")
        return ResumePoint(ckpt["epoch"], ckpt["iteration"], ckpt["global_step"], path)

    def _check_kind(self, path: Path, ckpt: dict) -> None:
        mine, theirs = run_kind(self.config), ckpt.get("run_kind") or run_kind(ckpt.get("config") or {})
        if not (mine.get("kind") and theirs.get("kind")) or mine["kind"] == theirs["kind"]:
            return
        fix = ("to finetune from it, pass it to finetune.py --pretrain" if theirs["kind"] == "pretrain"
               else f"pass a {SCRIPT_OF_KIND[mine['kind']]} checkpoint to --resume, or --resume none")
        raise CheckpointError(f"{path} is a {theirs['kind']} checkpoint (written by {SCRIPT_OF_KIND[theirs['kind']]}), "
                              f"which {SCRIPT_OF_KIND[mine['kind']]} cannot resume: {fix}")

    def _warn_config_changes(self, path: Path, saved: dict) -> None:
        changed = sorted(k for k in set(saved) | set(self.config)
                         if k not in self.RESUMABLE_CHANGES and saved.get(k) != self.config.get(k))
        if changed and is_main_process():
            details = ", ".join(f"{k}: {saved.get(k)!r} -> {self.config.get(k)!r}" for k in changed)
            warnings.warn(f"resuming from {path} with a changed configuration ({details})")
