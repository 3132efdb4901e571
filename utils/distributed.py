"""Process-group plumbing: torchrun initialisation, rank queries and the collectives the code needs.

Every helper degrades to the single-process behaviour (identity, rank 0, world size 1) when no process
group is initialised, so callers never branch on whether they run under torchrun.

All processes must call the collectives in the same order with tensors of the same shape (training
loaders therefore drop the last incomplete batch).
"""
import argparse
import datetime
import os
import warnings

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol


def add_distributed_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    group = parser.add_argument_group("device and distributed")
    group.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                       help="auto: cuda:(LOCAL_RANK mod visible GPUs) when CUDA is available, else cpu")
    group.add_argument("--local-rank", "--local_rank", dest="local_rank", type=int, default=None,
                       help="GPU index on this node; set by legacy launchers, torchrun sets LOCAL_RANK instead "
                            "(leave unset)")
    group.add_argument("--dist-backend", default="auto", choices=["auto", "gloo", "nccl"],
                       help="process-group backend under torchrun; auto: nccl on CUDA, gloo on CPU")
    group.add_argument("--dist-timeout", type=float, default=DEFAULT_TIMEOUT_MIN, metavar="MINUTES",
                       help="how long a collective may wait for the slowest process before the job fails (nccl's "
                            "own default, 10 minutes, is shorter than an uneven evaluation pass on a large data set)")
    group.add_argument("--deterministic", action="store_true",
                       help="deterministic kernels (cuDNN deterministic, no autotuning, no TF32, "
                            "torch.use_deterministic_algorithms with warnings for ops that have none): slower, "
                            "and needed for a bit-exact resume on GPUs")
    return parser


DEFAULT_TIMEOUT_MIN = 60.0


def _launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def _resolve_device(requested: str, local_rank: int) -> torch.device:
    if requested == "cpu":
        return torch.device("cpu")
    if requested == "auto" and not torch.cuda.is_available():
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("--device cuda was given but no CUDA device is visible; "
                           "use --device cpu (or auto) or check CUDA_VISIBLE_DEVICES")
    return torch.device("cuda", cuda_index(local_rank, torch.cuda.device_count()))


def cuda_index(local_rank: int, visible: int) -> int:
    """The GPU of a process: its local rank modulo the GPUs it sees, so that a scheduler that gives each process
    only its own GPU (Slurm --gpus-per-task=1: every process sees one device, cuda:0) works like torchrun."""
    if visible > 1 and local_rank >= visible:
        warnings.warn(f"local rank {local_rank} sees {visible} GPUs: it shares GPU {local_rank % visible} with "
                      "another process; start at most one process per visible GPU (torchrun --nproc-per-node)")
    return local_rank % visible


def configure_kernels(device: torch.device, deterministic: bool) -> None:
    """Kernel choices for speed, or for reproducibility with ``deterministic``.

    Fast (default): cuDNN autotunes its convolution algorithms (the clip shapes are fixed, so the search is paid
    once) and float32 convolutions and matmuls use TF32 on Ampere and newer. Deterministic: neither, cuDNN's
    deterministic algorithms, and torch's deterministic implementations (a warning names any op that has
    none). CUBLAS_WORKSPACE_CONFIG must be set before cuBLAS starts, hence here, before any CUDA work.
    """
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = device.type == "cuda" and not deterministic
    precision = "ieee" if deterministic else "tf32"
    torch.backends.cuda.matmul.fp32_precision = precision
    torch.backends.cudnn.conv.fp32_precision = precision


def init_distributed(args: argparse.Namespace) -> torch.device:
    """Join the torchrun process group (env:// rendezvous) if launched by torchrun; return the device.

    Reads RANK, WORLD_SIZE and LOCAL_RANK from the environment (a `--local-rank` flag is used when
    LOCAL_RANK is absent). `args.device` picks the device (auto: cuda:(LOCAL_RANK mod visible GPUs) if CUDA is
    available, else cpu) and `args.dist_backend` the backend (auto: nccl on CUDA, gloo on CPU). Without torchrun's
    environment nothing is initialised and the run is single-process.
    """
    requested = getattr(args, "device", "auto")
    if requested not in ("auto", "cpu", "cuda"):
        raise ValueError(f"--device must be auto, cpu or cuda, got {requested!r}")
    env_local_rank = os.environ.get("LOCAL_RANK")
    flag_local_rank = getattr(args, "local_rank", None)
    local_rank = int(env_local_rank) if env_local_rank is not None else (flag_local_rank or 0)
    device = _resolve_device(requested, local_rank)
    configure_kernels(device, getattr(args, "deterministic", False))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not _launched_by_torchrun() or is_dist():
        return device

    missing = [key for key in ("MASTER_ADDR", "MASTER_PORT") if key not in os.environ]
    if missing:
        raise RuntimeError(f"RANK and WORLD_SIZE are set but {', '.join(missing)} is not: launch with torchrun "
                           f"(which sets all of them) or set the rendezvous variables yourself")
    backend = getattr(args, "dist_backend", "auto")
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl" and device.type != "cuda":
        raise RuntimeError("--dist-backend nccl needs CUDA devices; use --dist-backend gloo (or auto) on CPU")
    timeout_min = getattr(args, "dist_timeout", DEFAULT_TIMEOUT_MIN)
    if timeout_min <= 0:
        raise ValueError(f"--dist-timeout must be a positive number of minutes, got {timeout_min}")
    timeout = datetime.timedelta(minutes=timeout_min)
    device_id = device if device.type == "cuda" else None
    store = restart_scoped_store(timeout)
    if store is None:
        dist.init_process_group(backend=backend, init_method="env://", timeout=timeout, device_id=device_id)
    else:
        dist.init_process_group(backend=backend, store=store, rank=int(os.environ["RANK"]),
                                world_size=int(os.environ["WORLD_SIZE"]), timeout=timeout, device_id=device_id)
    return device


def restart_scoped_store(timeout: datetime.timedelta) -> dist.Store | None:
    """Under torchrun's shared rendezvous store, a client of it whose keys belong to this restart alone; else None.

    torchrun (2.x) serves the workers' store from its agent and keeps it across ``--max-restarts`` restarts, and the
    env:// rendezvous adds no per-restart prefix. A restarted group then finds the previous group's keys: gloo
    reads a dead worker's address and fails in connectFullMesh ("Connection refused") or hangs, NCCL reads a
    stale unique id. Scoping the keys by TORCHELASTIC_RESTART_COUNT gives every restart a clean namespace.
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    client = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                           int(os.environ["WORLD_SIZE"]), is_master=False, timeout=timeout)
    return dist.PrefixStore(f"restart_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", client)


def host_to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A CPU tensor (random draws, index tables) on ``device`` without waiting for the work queued there: a plain
    copy from pageable memory synchronises the host with the GPU; a non-blocking one from pinned memory does not."""
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, which Slurm and taskset narrow)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_workers(max_workers: int = 8) -> int:
    """DataLoader workers per process: the cores this process may use, shared with the other processes of its
    node (torchrun's LOCAL_WORLD_SIZE; Slurm binds each task to its own cores instead), one core left for the
    process itself, at most ``max_workers``."""
    cores = usable_cores()
    local_processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    return max(1, min(max_workers, cores // local_processes - 1))


def cleanup() -> None:
    if is_dist():
        dist.destroy_process_group()


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if is_dist():
        dist.barrier()


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate `x` (B, ...) of every process along dim 0 -> (W·B, ...), carrying gradients.

    The backward pass reduce-scatters (sums) the gradient of the gathered tensor, so each process's
    slice receives the gradients that every process's loss sends to it. Identity when not distributed.
    """
    if get_world_size() == 1:
        return x
    gathered = funcol.all_gather_single_autograd(x.contiguous(), 0, dist.group.WORLD)
    # Waiting here hands callers a plain tensor (autograd is preserved) instead of an async wrapper.
    return gathered.wait() if isinstance(gathered, funcol.AsyncCollectiveTensor) else gathered


@torch.no_grad()
def all_gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate `x` (B, ...) of every process along dim 0 -> (W·B, ...), detached."""
    if get_world_size() == 1:
        return x.detach()
    x = x.detach().contiguous()
    gathered = x.new_empty((get_world_size() * x.shape[0], *x.shape[1:]))
    dist.all_gather_single(gathered, x)
    return gathered


def collective_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


@torch.no_grad()
def all_reduce_mean(x):
    """Mean of `x` over processes: a tensor gives a new float tensor, a Python number gives a float."""
    if not torch.is_tensor(x):
        if not is_dist():
            return float(x)
        return all_reduce_mean(torch.tensor(float(x), device=collective_device())).item()
    if not is_dist():
        return x.detach().float().clone()
    reduced = x.detach().to(collective_device(), torch.float32, copy=True)
    dist.all_reduce(reduced)
    reduced /= get_world_size()
    return reduced.to(x.device)


def broadcast(x: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Overwrite `x` in place with rank `src`'s value and return it (identity when not distributed)."""
    if is_dist():
        dist.broadcast(x, src)
    return x
