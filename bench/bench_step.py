"""Cost of one DualVar training step against its limit, the backbone passes alone. Prints one JSON line.

    python bench/bench_step.py                  # CPU, --base-width 16, batch 8, 8×64×64
    python bench/bench_step.py --device cuda --base-width 64 --batch-size 8 --num-frames 16 --size 112

- ``dualvar_step_s``: one SimCLR clip-sr-tc step (forward over the 3B clips A, B, A′ and over the B
  shuffled clips, losses, backward, SGD step), median over ``--repeats`` after ``--warmup`` steps
  (``*_spread``: min, max and interquartile range);
- ``backbone_only_s``: the same backbone passes (3B clips, then B clips) with a fixed random linear
  function of the feature maps as the loss and the same SGD step on the backbone: no heads, losses or
  shuffling — the limit;
- ``overhead``: the median over the timed loops of dualvar step / backbone-only step within each loop
  (target ≤ 1.05), ``overhead_spread`` its min, max and interquartile range;
- ``simclr_step_s``: the plain two-view baseline (``--mode clip``), and ``dualvar_over_simclr`` (per-loop
  ratios likewise, with ``dualvar_over_simclr_spread``);
- with ``--grad-checkpoint``, ``grad_checkpoint_cost``: the DualVar step with every backbone stage checkpointed
  (train_ssl.py --grad-checkpoint) over the plain one, per-loop ratios, and ``dualvar_grad_checkpoint_peak_mb``;
- ``*_peak_mb``: on the CPU the growth of the peak resident set size (``getrusage`` max RSS) of a fresh
  process over building the model and running two steps (one subprocess per kind, so that peaks do
  not mask each other); on CUDA ``torch.cuda.max_memory_allocated``.
Timed steps of the three kinds take turns in one loop (bench/timing.alternate), and each ratio is taken
within a loop, so load changes on a shared machine hit both of its figures alike.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
if not __package__:  # run as a file: the repository root is not on the path yet
    sys.path.insert(0, str(REPO))

from engine.loop import weighted_loss  # noqa: E402
from model import add_method_args, build_method  # noqa: E402
from model.backbones import build_backbone, set_grad_checkpointing  # noqa: E402
from utils.precision import AMP_CHOICES, autocast, select_amp  # noqa: E402

from bench.timing import alternate, ratio, spread  # noqa: E402

MEASUREMENTS = ("dualvar", "backbone", "simclr")
STEP_KEYS = {"dualvar_step": "dualvar", "backbone_only": "backbone", "simclr_step": "simclr"}  # JSON key -> kind
CHECKPOINTED = "dualvar_grad_checkpoint"


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--net", default="r21d", help="backbone (--net of train_ssl.py)")
    parser.add_argument("--base-width", type=int, default=16, help="backbone width (64 = published)")
    parser.add_argument("--batch-size", type=int, default=8, help="videos per step (B)")
    parser.add_argument("--num-frames", type=int, default=8, help="frames per clip (T)")
    parser.add_argument("--size", type=int, default=64, help="crop size (H = W)")
    parser.add_argument("--amp", default="auto", choices=AMP_CHOICES,
                        help="autocast as in training (auto: bf16 on Ampere or newer GPUs, fp16 on older ones, fp32 on "
                             "the CPU); the report names the mode it resolved to")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--repeats", type=int, default=30,
                        help="timed loops, each one step of every kind; medians of times and per-loop ratios")
    parser.add_argument("--channels-last", action="store_true",
                        help="also time the DualVar step with the network and its input in channels-last 3D memory "
                             "(torch.channels_last_3d), in the same loop: 'channels_last_speedup' is the median of "
                             "the per-loop ratios contiguous / channels-last (adopt it only where it is > 1)")
    parser.add_argument("--grad-checkpoint", action="store_true",
                        help="also time (and measure the memory of) the DualVar step with gradient checkpointing per "
                             "backbone stage, in the same loop: 'grad_checkpoint_cost' is the median of the per-loop "
                             "ratios checkpointed / plain")
    parser.add_argument("--memory-of", choices=[*MEASUREMENTS, CHECKPOINTED],
                        help=argparse.SUPPRESS)  # internal: one memory probe
    return parser


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def build_step(name: str, args: argparse.Namespace, channels_last: bool = False, grad_checkpoint: bool = False):
    """A closure running one training step of kind ``name`` (see the module docstring), with the weights and the
    clips in channels-last 3D memory when ``channels_last``, the backbone's stages checkpointed when
    ``grad_checkpoint``."""
    device = torch.device(args.device)
    batch, clip_shape = args.batch_size, (3, args.num_frames, args.size, args.size)
    if name == "backbone":
        model = build_backbone(args.net, args.base_width)[0].to(device)
        views = torch.randn(3 * batch, *clip_shape, device=device)  # A, B, A′
        shuffled = torch.randn(batch, *clip_shape, device=device)

        probes = {}  # fixed random weights per feature-map shape

        def probe(features):
            # Not a plain mean: BatchNorm cancels a constant gradient, leaving denormal residues that make
            # CPU convolutions many times slower and the limit meaningless.
            if features.shape not in probes:
                probes[features.shape] = torch.randn(features.shape, device=device)
            return (features.float() * probes[features.shape]).mean()

        def loss_fn():
            return probe(model(views)) + probe(model(shuffled))
    else:
        parser = argparse.ArgumentParser()
        add_method_args(parser)
        mode = "clip-sr-tc" if name == "dualvar" else "clip"
        model = build_method(parser.parse_args(["--model", "simclr", "--mode", mode, "--net", args.net,
                                                "--base-width", str(args.base_width)])).to(device)
        clips = torch.randn(batch, model.num_views, *clip_shape, device=device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last_3d)
            # (B, V, 3, T, H, W) with channels innermost, so that each view's (B, 3, T, H, W) is channels-last 3D
            clips = clips.permute(0, 1, 3, 4, 5, 2).contiguous().permute(0, 1, 5, 2, 3, 4)

        def loss_fn():
            return weighted_loss(model(clips), model.loss_weights)

    set_grad_checkpointing(model, grad_checkpoint)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=args.amp == "fp16")
    model.train()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(args.amp, device):
            loss = loss_fn()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    step.model = model
    return step


def peak_memory_mb(name: str, args: argparse.Namespace) -> float:
    """Peak memory of building and running two steps of ``name``; call in a fresh process."""
    rss_before = max_rss_mb()
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    step = build_step("dualvar", args, grad_checkpoint=True) if name == CHECKPOINTED else build_step(name, args)
    step(), step()
    return torch.cuda.max_memory_allocated() / 2**20 if args.device == "cuda" else max_rss_mb() - rss_before


def step_times(args: argparse.Namespace) -> dict[str, list[float]]:
    """Seconds of each timed step of each kind, the kinds taking turns in one loop."""
    steps = {name: build_step(name, args) for name in MEASUREMENTS}
    if args.channels_last:
        steps["dualvar_channels_last"] = build_step("dualvar", args, channels_last=True)
    if args.grad_checkpoint:
        steps[CHECKPOINTED] = build_step("dualvar", args, grad_checkpoint=True)
    sync = torch.cuda.synchronize if args.device == "cuda" else None
    return alternate(steps, repeats=args.repeats, warmup=args.warmup, sync=sync)


def main(args: argparse.Namespace) -> dict:
    args.amp = select_amp(args.amp, torch.device(args.device), announce=False, training=True)
    if args.memory_of:
        print(json.dumps({"peak_mb": peak_memory_mb(args.memory_of, args)}))
        return {}
    peaks = {}
    for name in (*MEASUREMENTS, CHECKPOINTED) if args.grad_checkpoint else MEASUREMENTS:
        done = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--memory-of", name], capture_output=True,
                              text=True, cwd=REPO)
        if done.returncode != 0:
            sys.exit(f"bench_step: measuring the memory of the {name} step failed:\n{done.stderr}")
        peaks[name] = json.loads(done.stdout.strip().splitlines()[-1])["peak_mb"]
    torch.manual_seed(0)
    times = step_times(args)
    overhead, over_simclr = ratio(times, "dualvar", "backbone"), ratio(times, "dualvar", "simclr")
    channels_last = ratio(times, "dualvar", "dualvar_channels_last") if args.channels_last else None
    checkpoint_cost = ratio(times, CHECKPOINTED, "dualvar") if args.grad_checkpoint else None
    report = {
        "device": args.device, "net": args.net, "base_width": args.base_width, "batch_size": args.batch_size,
        "clip": f"{args.num_frames}x{args.size}x{args.size}", "amp": args.amp, "threads": torch.get_num_threads(),
        "repeats": args.repeats,
        **{f"{key}_s": spread(times[name])["median"] for key, name in STEP_KEYS.items()},
        **{f"{key}_spread": spread(times[name]) for key, name in STEP_KEYS.items()},
        "overhead": overhead["median"], "overhead_spread": overhead,
        "dualvar_over_simclr": over_simclr["median"], "dualvar_over_simclr_spread": over_simclr,
        **({"channels_last_speedup": channels_last["median"], "channels_last_speedup_spread": channels_last,
            "dualvar_channels_last_step_s": spread(times["dualvar_channels_last"])["median"]}
           if args.channels_last else {}),
        **({"grad_checkpoint_cost": checkpoint_cost["median"], "grad_checkpoint_cost_spread": checkpoint_cost,
            "dualvar_grad_checkpoint_step_s": spread(times[CHECKPOINTED])["median"],
            "dualvar_grad_checkpoint_peak_mb": round(peaks[CHECKPOINTED], 1)} if args.grad_checkpoint else {}),
        "dualvar_peak_mb": round(peaks["dualvar"], 1),
        "backbone_only_peak_mb": round(peaks["backbone"], 1),
        "simclr_peak_mb": round(peaks["simclr"], 1),
        "memory": "torch.cuda.max_memory_allocated" if args.device == "cuda"
        else "growth of max RSS (getrusage) over building + 2 steps, in a fresh process per step kind",
    }
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main(get_args_parser().parse_args())
