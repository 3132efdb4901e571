"""The training loop, shared by pretraining and finetuning.

``train_one_epoch`` knows nothing about the method: a ``forward_fn(model, batch)`` returns a dict of
scalar tensors, the ``loss_*`` entries are summed with their weights, and every entry is logged.

Exact resume rests on three facts: an item is a pure function of (seed, epoch, index) (the
dataset's contract); the order of indices comes from a DistributedSampler seeded by (seed, epoch),
from which a resumed epoch skips the batches already done without decoding them; and the
DataLoader draws its worker seeds from its own generator, never from the global RNG that the
model's randomness uses and the checkpoint restores.
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Callable, Iterator

import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from utils import preemption
from utils.distributed import all_reduce_mean, get_rank, get_world_size, is_dist
from utils.logging import MetricLogger

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the message names the iteration and every loss term."""


def check_amp(amp: str, device: torch.device) -> None:
    if amp not in AMP_DTYPES:
        raise ValueError(f"--amp {amp}: expected one of {', '.join(AMP_DTYPES)}")
    if amp == "fp16" and device.type != "cuda":
        raise ValueError("--amp fp16 needs a CUDA device (float16 autocast with a GradScaler); "
                         "on the CPU use --amp bf16 or --amp none")


def autocast(amp: str, device: torch.device):
    """Autocast context for ``--amp``; a no-op for ``none``."""
    if AMP_DTYPES[amp] is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=AMP_DTYPES[amp])


def make_grad_scaler(amp: str, device: torch.device) -> torch.amp.GradScaler:
    """A GradScaler that is active only for fp16 (a pass-through otherwise, so the loop has one path)."""
    check_amp(amp, device)
    return torch.amp.GradScaler(device.type, enabled=amp == "fp16")


class SkipSampler(Sampler):
    """The indices of ``sampler`` after the first ``skip`` ones (resuming in the middle of an epoch)."""

    def __init__(self, sampler: Sampler, skip: int):
        self.sampler, self.skip = sampler, skip

    def __iter__(self) -> Iterator[int]:
        for position, index in enumerate(self.sampler):
            if position >= self.skip:
                yield index

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.skip)


def iterations_per_epoch(dataset, batch_size: int, max_iters: int | None = None) -> int:
    """Full batches one process runs per epoch (DistributedSampler share, last partial batch dropped)."""
    per_process = math.ceil(len(dataset) / get_world_size())
    iters = per_process // batch_size
    if iters == 0:
        raise ValueError(f"the training set has {len(dataset)} videos, fewer than one batch of {batch_size} "
                         f"per process × {get_world_size()} processes: lower --batch-size")
    return min(iters, max_iters) if max_iters else iters


def epoch_loader(dataset, *, batch_size: int, workers: int, seed: int, epoch: int, start_iter: int = 0,
                 pin_memory: bool = False) -> DataLoader:
    """The DataLoader of one training epoch, starting at batch ``start_iter``.

    Build a new one every epoch: ``dataset.set_epoch`` must reach fresh (non-persistent) workers.
    """
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)
    sampler = DistributedSampler(dataset, num_replicas=get_world_size(), rank=get_rank(), shuffle=True,
                                 seed=seed)
    sampler.set_epoch(epoch)
    generator = torch.Generator()
    generator.manual_seed((seed * 1_000_003 + epoch) * 1_009 + get_rank())  # worker seeds only
    return DataLoader(dataset, batch_size=batch_size, sampler=SkipSampler(sampler, start_iter * batch_size),
                      num_workers=workers, pin_memory=pin_memory, drop_last=True, generator=generator,
                      persistent_workers=False)


def weighted_loss(out: dict[str, torch.Tensor], loss_weights: dict[str, float]) -> torch.Tensor:
    """sum over the ``loss_*`` entries of ``loss_weights[k] · out[k]``, in fp32."""
    terms = [k for k in out if k.startswith("loss_")]
    missing = [k for k in terms if k not in loss_weights]
    if missing or not terms:
        raise ValueError(f"the model returned loss terms {terms} but has weights for {sorted(loss_weights)}; "
                         "every loss_* entry needs a weight in the model's loss_weights")
    return sum(loss_weights[k] * out[k].float() for k in terms)


def train_one_epoch(model: torch.nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer, *,
                    forward_fn: Callable[[torch.nn.Module, dict], dict[str, torch.Tensor]],
                    loss_weights: dict[str, float], epoch: int, num_iters: int, start_iter: int = 0,
                    global_step: int = 0, device: torch.device, amp: str = "none",
                    scaler: torch.amp.GradScaler | None = None, logger=None, log_every: int = 10,
                    save_every_iters: int = 0, save_fn: Callable[[int, int, int], None] | None = None,
                    ) -> tuple[dict[str, float], int]:
    """Run iterations ``start_iter .. num_iters-1`` of ``epoch``; returns (epoch means over processes,
    global step).

    ``save_fn(epoch, iterations_done, global_step)`` is called on every rank after every
    ``save_every_iters``-th iteration except the last (the caller saves at the end of the epoch).
    Raises NonFiniteLossError before the update of the first iteration whose loss is not finite, and
    `preemption.Preempted` after saving when a stop was requested (`utils.preemption`).
    """
    scaler = scaler or torch.amp.GradScaler(device.type, enabled=False)
    model.train()
    meters = MetricLogger()
    global_batch = loader.batch_size * get_world_size()
    bar = logger.progress(num_iters, start_iter, f"epoch {epoch}") if logger is not None else None
    tic = time.perf_counter()
    for it, batch in enumerate(loader, start=start_iter):
        if it >= num_iters:
            break
        data_time = time.perf_counter() - tic
        with autocast(amp, device):
            out = forward_fn(model, batch)
        loss = weighted_loss(out, loss_weights)

        names = ["loss", *out]
        values = torch.stack([loss.detach().float()] + [v.detach().float().reshape(()) for v in out.values()])
        values = dict(zip(names, values.tolist()))  # one host sync per iteration
        _stop_if_not_finite(values, out, epoch, it, global_step)

        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        global_step += 1

        step_time = time.perf_counter() - tic
        values.update(lr=optimizer.param_groups[0]["lr"], samples_per_s=global_batch / step_time,
                      data_time=data_time, step_time=step_time)
        meters.update(values)
        if bar is not None:
            bar.set_postfix_str(f"loss {values['loss']:.4f}", refresh=False)
            bar.update()
        if logger is not None and (it % log_every == 0 or it == num_iters - 1):
            logger.log("iter", global_step, values, epoch=epoch, iteration=it)
        if save_fn is not None and save_every_iters and (it + 1) % save_every_iters == 0 and it + 1 < num_iters:
            save_fn(epoch, it + 1, global_step)
        if it + 1 < num_iters and preemption.stop_requested():  # the last one is followed by the epoch-end save
            if save_fn is not None:
                save_fn(epoch, it + 1, global_step)
            raise preemption.Preempted(f"stopped on request after iteration {it} of epoch {epoch}")
        tic = time.perf_counter()
    if bar is not None:
        bar.close()
    return meters.global_averages(), global_step


def _stop_if_not_finite(values: dict[str, float], out: dict, epoch: int, it: int, global_step: int) -> None:
    finite = math.isfinite(values["loss"])
    if is_dist():  # every rank must stop together, or the others hang in the next collective
        finite = all_reduce_mean(float(finite)) == 1.0
    if not finite:
        terms = ", ".join(f"{k}={values[k]:.6g}" for k in ["loss", *out] if k == "loss" or k.startswith("loss_"))
        raise NonFiniteLossError(
            f"non-finite loss at epoch {epoch}, iteration {it} (global step {global_step}) on rank "
            f"{get_rank()}: {terms}. Nothing was updated in this iteration and the last checkpoint is "
            "kept; lower --lr, or try --amp none, then resume with --resume auto")
