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
import functools
import math
import os
import signal
import threading
import time
from typing import Callable, Iterator

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from utils import preemption
from utils.distributed import all_reduce_mean, collective_device, get_rank, get_world_size, is_dist
from utils.logging import MetricLogger
from utils.run_dir import close_inherited_locks

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}
AMP_CHOICES = ("auto", *AMP_DTYPES)
PRECISION_NAMES = {"none": "fp32", "bf16": "bf16 autocast", "fp16": "fp16 autocast with a GradScaler"}


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
    ``train_one_epoch`` finish the current iteration, save a checkpoint and raise TrainingInterrupted; a
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


def _stop_requested_anywhere(local: int | None) -> int | None:
    """The signal that asked some rank to stop, or None; every rank must call this together."""
    if not is_dist():
        return local
    # signal numbers are small and positive: the mean is non-zero iff some rank was signalled
    mean = all_reduce_mean(float(local or 0))
    return (local or int(signal.SIGTERM)) if mean > 0 else None


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


def add_inference_amp_arg(group) -> None:
    """The --amp flag of the scripts that only run inference (test, retrieve, embed)."""
    group.add_argument("--amp", default="auto", choices=AMP_CHOICES,
                       help="mixed-precision inference: auto = bf16 where the GPU or CPU computes it natively, fp16 "
                            "on older GPUs, else fp32; bf16; fp16 (CUDA only); none = fp32")


CPU_BF16_ENV = "VSSL_CPU_BF16"


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX): only there is bf16 autocast faster
    than fp32; elsewhere oneDNN emulates it, several times slower. VSSL_CPU_BF16=1 or 0 overrides the
    detection, so that either branch of ``--amp auto`` runs on any machine (tests, and reproducing a figure
    computed on the other kind of CPU)."""
    forced = os.environ.get(CPU_BF16_ENV)
    if forced is not None:
        if forced not in ("0", "1"):
            raise ValueError(f"{CPU_BF16_ENV}={forced}: expected 1 (treat this CPU as computing bf16 natively) or "
                             "0 (as not); unset it to detect")
        return forced == "1"
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(probe() for probe in probes if probe is not None)


@functools.cache
def cpu_bf16_conv3d_grad_is_right() -> bool:
    """Whether this CPU's bf16 Conv3d weight gradient is right where the clip has 2 time steps and the kernel
    3 (R3D's and R(2+1)D's last stage at 16 frames, their third at 8). oneDNN's AVX-512 kernels in torch
    2.14 return garbage there (values near 1e36, inf or NaN: a NaN loss one step later); its AVX2 ones are
    right. A 2 ms check against the fp32 gradient of the same bf16 operands."""
    generator = torch.Generator().manual_seed(0)
    x, grad_out = (torch.randn(2, 16, 2, 2, 2, generator=generator).bfloat16() for _ in range(2))
    weight = torch.randn(16, 16, 3, 1, 1, generator=generator).bfloat16().requires_grad_()
    torch.nn.functional.conv3d(x, weight, padding=(1, 0, 0)).backward(grad_out)
    reference = torch.nn.grad.conv3d_weight(x.float(), weight.shape, grad_out.float(), padding=(1, 0, 0))
    return bool(torch.allclose(weight.grad.float(), reference, rtol=0.05, atol=0.05 * reference.abs().max().item()))


def cuda_has_native_bf16(device: torch.device) -> bool:
    """Ampere (compute capability 8) and newer, or ROCm: bf16 tensor cores. Older GPUs only emulate bf16."""
    return bool(torch.version.hip) or torch.cuda.get_device_properties(device).major >= 8


def resolve_amp(amp: str, device: torch.device, training: bool = False) -> tuple[str, str]:
    """(the --amp mode to run, why): ``auto`` becomes bf16 on CUDA with native bfloat16, fp16 with a GradScaler
    on older GPUs; on a CPU with AVX512-BF16 or AMX, bf16 for inference and fp32 for ``training`` (see
    ``cpu_bf16_conv3d_grad_is_right``); fp32 elsewhere. The other modes stay as given."""
    if amp != "auto":
        return amp, "as given"
    if device.type == "cuda":
        if cuda_has_native_bf16(device):
            return "bf16", "CUDA device with native bfloat16"
        return "fp16", "CUDA device without native bfloat16 (before Ampere): float16 with loss scaling"
    if device.type == "cpu" and cpu_has_fast_bf16():
        if training:
            return "none", ("training on a CPU: oneDNN's bf16 Conv3d weight gradients are wrong for some clip "
                            "lengths on AVX-512 CPUs (docs/gpu.md)")
        return "bf16", "CPU with AVX512-BF16 or AMX"
    return "none", f"{device.type.upper()} without native bfloat16: fp32 is faster than emulated bf16"


def check_amp(amp: str, device: torch.device, training: bool = False) -> None:
    if amp not in AMP_CHOICES:
        raise ValueError(f"--amp {amp}: expected one of {', '.join(AMP_CHOICES)}")
    if amp == "fp16" and device.type != "cuda":
        raise ValueError("--amp fp16 needs a CUDA device (float16 autocast with a GradScaler); "
                         "on the CPU use --amp auto, bf16 or none")
    if amp == "bf16" and device.type == "cuda" and not cuda_has_native_bf16(device):
        name = torch.cuda.get_device_name(device)
        major, minor = torch.cuda.get_device_capability(device)
        raise ValueError(f"--amp bf16: {name} (compute capability {major}.{minor}) has no native bfloat16 and would "
                         "emulate it slowly or fail; use --amp fp16 (or auto, which picks it there) or --amp none")
    if amp == "bf16" and device.type == "cpu" and training and not cpu_bf16_conv3d_grad_is_right():
        raise ValueError(f"--amp bf16: this CPU's bf16 Conv3d weight gradients are wrong (oneDNN in torch "
                         f"{torch.__version__}, clips of 2 time steps: the loss turns NaN); train with --amp none "
                         "or auto (fp32 on a CPU)")


def select_amp(amp: str, device: torch.device, announce: bool = True, training: bool = False) -> str:
    """Check ``--amp`` on ``device`` and resolve ``auto`` (for ``training`` or inference); prints the choice when
    ``announce`` (rank 0)."""
    check_amp(amp, device, training)
    chosen, why = resolve_amp(amp, device, training)
    check_amp(chosen, device, training)
    if announce and get_rank() == 0:
        print(f"--amp {amp}: {PRECISION_NAMES[chosen]} on {device} ({why})", flush=True)
    return chosen


def autocast(amp: str, device: torch.device, training: bool = False):
    """Autocast context for ``--amp`` (``auto`` resolved on ``device`` for ``training`` or inference); a no-op
    for ``none``."""
    dtype = AMP_DTYPES[resolve_amp(amp, device, training)[0]]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def make_grad_scaler(amp: str, device: torch.device) -> torch.amp.GradScaler:
    """A GradScaler that is active only for fp16 (a pass-through otherwise, so the loop has one path)."""
    check_amp(amp, device, training=True)
    return torch.amp.GradScaler(device.type, enabled=resolve_amp(amp, device, training=True)[0] == "fp16")


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
    when it came between epochs) and raise TrainingInterrupted; a stop that ``paper_scripts/submit.py``
    requested (`utils.preemption`) makes it save and raise `preemption.Preempted`.
    """
    scaler = scaler or torch.amp.GradScaler(device.type, enabled=False)
    stop = _stop_requested_anywhere(_stop_signal)
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
        verdict = _Verdict(loss, _stop_signal, preemption.requested())  # started now, read after the backward pass

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
