"""Mixed precision (``--amp``): which precision a device computes fast and right, the autocast context and
the GradScaler of a run. ``auto`` is bf16 on GPUs with native bfloat16, fp16 with loss scaling on older GPUs, and
on a CPU bf16 for inference only where the CPU computes it natively (training stays fp32 there: see
``cpu_bf16_conv3d_grad_is_right``)."""

from __future__ import annotations

import contextlib
import functools
import os

import torch

from utils.distributed import get_rank

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}
AMP_CHOICES = ("auto", *AMP_DTYPES)
PRECISION_NAMES = {"none": "fp32", "bf16": "bf16 autocast", "fp16": "fp16 autocast with a GradScaler"}


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
