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

import math
import signal
import time
from typing import Callable, Iterator

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from engine.interrupts import NonFiniteLossError, TrainingInterrupted, pending_signal, stop_requested_anywhere
from engine.run_log import MetricLogger
from utils import preemption
from utils.distributed import collective_device, get_rank, get_world_size, is_dist
from utils.precision import autocast
from utils.workers import quiet_worker


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


def epoch_lengths(iters_per_epoch: int, epochs: int, steps: int = 0) -> list[int]:
    """Iterations of each epoch of a run: ``epochs`` full epochs, or with ``steps`` > 0 that many optimizer steps,
    in full epochs and a last one cut short (a budget that does not depend on the training-set size)."""
    if not steps:
        return [iters_per_epoch] * epochs
    full, rest = divmod(steps, iters_per_epoch)
    return [iters_per_epoch] * full + ([rest] if rest else [])


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
                      persistent_workers=False, worker_init_fn=quiet_worker)


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
    Raises NonFiniteLossError before the update of the first iteration whose loss is not finite.
    Under ``stop_at_iteration_boundary``, a stop signal makes it save after the current iteration (or at once,
    when it came between epochs) and raise TrainingInterrupted; a stop that a launcher requested
    (`utils.preemption`) makes it save and raise `preemption.Preempted`.
    """
    scaler = scaler or torch.amp.GradScaler(device.type, enabled=False)
    stop = stop_requested_anywhere(pending_signal())
    if stop is not None:  # the signal came between epochs (validation, the epoch-end save)
        _save_and_stop(stop, save_fn, epoch, start_iter, global_step)
    model.train()
    meters = MetricLogger()
    global_batch = loader.batch_size * get_world_size()
    bar = logger.progress(num_iters, start_iter, f"epoch {epoch}") if logger is not None else None
    # The metrics of the iterations since the last log stay on the device and cross to the host together, at
    # the next logged iteration: one transfer per --log-every iterations instead of one per iteration.
    pending: list[tuple[int, int, torch.Tensor, dict[str, float]]] = []
    names: list[str] = []

    def flush(log_last: bool) -> None:
        rows = torch.stack([values for _, _, values, _ in pending]).tolist()
        for (it_done, step, _, host), row in zip(pending, rows):
            values = {**dict(zip(names, row)), **host}
            meters.update(values)
            if log_last and it_done == pending[-1][0] and logger is not None:
                logger.log("iter", step, values, epoch=epoch, iteration=it_done)
                if bar is not None:
                    bar.set_postfix_str(f"loss {values['loss']:.4f}", refresh=False)
        pending.clear()

    tic = time.perf_counter()
    for it, batch in enumerate(loader, start=start_iter):
        if it >= num_iters:
            break
        data_time = time.perf_counter() - tic
        with autocast(amp, device, training=True):
            out = forward_fn(model, batch)
        loss = weighted_loss(out, loss_weights)
        names = ["loss", *out]
        values = torch.stack([loss.detach().float()] + [v.detach().float().reshape(()) for v in out.values()])
        verdict = _Verdict(loss, pending_signal(), preemption.requested())  # started now, read after the backward pass

        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        stop, preempted = verdict.settle(values, names, epoch, it, global_step)  # the one host sync of an iteration
        scaler.step(optimizer)
        scaler.update()
        global_step += 1

        step_time = time.perf_counter() - tic
        host = {"lr": optimizer.param_groups[0]["lr"], "samples_per_s": global_batch / step_time,
                "data_time": data_time, "step_time": step_time}
        if device.type == "cuda":  # the allocator's own count: no device sync
            host["gpu_peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        pending.append((it, global_step, values, host))
        if bar is not None:
            bar.update()
        logged = it % log_every == 0 or it == num_iters - 1
        if logged or stop is not None:
            flush(log_last=logged)
        if stop is not None:
            _save_and_stop(stop, save_fn, epoch, it + 1, global_step)
        if save_fn is not None and save_every_iters and (it + 1) % save_every_iters == 0 and it + 1 < num_iters:
            save_fn(epoch, it + 1, global_step)
        if it + 1 < num_iters and preempted:  # the last one is followed by the epoch-end save
            if save_fn is not None:
                save_fn(epoch, it + 1, global_step)
            raise preemption.Preempted(f"stopped on request after iteration {it} of epoch {epoch}")
        tic = time.perf_counter()
    if pending:
        flush(log_last=False)
    if bar is not None:
        bar.close()
    return meters.global_averages(), global_step


def _save_and_stop(signum: int, save_fn, epoch: int, iterations_done: int, global_step: int):
    if save_fn is not None:
        save_fn(epoch, iterations_done, global_step)
    raise TrainingInterrupted(signum, f"at epoch {epoch}, iteration {iterations_done}", saved=save_fn is not None)


class _Verdict:
    """Whether this iteration's loss is finite on every rank, which stop signal some rank received, and whether
    some rank was asked to stop by a scheduler (``utils.preemption``).

    Started right after the forward pass, without waiting: under torchrun its all-reduce runs while the
    backward pass is computed. ``settle`` waits for it after the backward pass, before the update, and raises
    NonFiniteLossError there (nothing is updated); every rank decides alike, as every rank must stop together,
    or the others hang in the next collective. Its ``tolist`` is the one host sync per iteration.
    """

    def __init__(self, loss: torch.Tensor, stop: int | None, preempt: bool = False):
        self.stop = stop
        # torch.full runs on the device: no host-to-device copy, which would wait for the queued work
        self.flags = torch.stack([torch.isfinite(loss.detach()).float(),
                                  torch.full((), float(stop or 0), device=loss.device),
                                  torch.full((), float(preempt), device=loss.device)])
        self.work = None
        if is_dist():
            self.flags = self.flags.to(collective_device())
            self.work = dist.all_reduce(self.flags, async_op=True)  # sums over ranks

    def settle(self, values: torch.Tensor, names: list[str], epoch: int, it: int,
               global_step: int) -> tuple[int | None, bool]:
        """(the stop signal or None, whether a scheduler asked to stop), the same on every rank."""
        if self.work is not None:
            self.work.wait()
        finite_count, stop_sum, preempt_count = self.flags.tolist()
        stop = (self.stop or int(signal.SIGTERM)) if stop_sum > 0 else None
        if finite_count == get_world_size():
            return stop, preempt_count > 0
        mine = dict(zip(names, values.tolist()))
        terms = ", ".join(f"{k}={mine[k]:.6g}" for k in names if k == "loss" or k.startswith("loss_"))
        raise NonFiniteLossError(
            f"non-finite loss at epoch {epoch}, iteration {it} (global step {global_step}) on rank "
            f"{get_rank()}: {terms}. Nothing was updated in this iteration and the last checkpoint is "
            "kept; lower --lr, or try --amp none, then resume with --resume auto")
