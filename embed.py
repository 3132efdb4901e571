"""Features for any folder of videos: no labels, no CSV, no frame extraction.

    python embed.py --ckpt runs/dualvar_ucf101/checkpoint.pth --videos my_videos/ --out features.npz
    python embed.py --ckpt CKPT --videos list.txt --out features.npz --neighbours 5
    torchrun --nproc-per-node 4 embed.py --ckpt CKPT --videos my_videos/ --out features.npz

``--videos`` is a folder, searched recursively for video files (the extensions of dataset/layout.py's
VIDEO_EXTENSIONS, any container FFmpeg reads), or a text file of video paths, one per line (relative paths
relative to the current folder). Each video gives ``--clips`` evenly spaced centre clips (the 10-clip test's
positions, METHOD.md §7); its feature is the mean of the clips' backbone features (``--layer pool``: global
average, ``conv5``: the last feature map max-pooled (1, 2, 2) and flattened). The clip shape (frames, size,
resize) is the checkpoint's unless given. Any checkpoint of train_ssl.py or finetune.py, loaded strictly.

Output ``--out`` (an .npz): ``features`` (N, D) float32, ``paths`` (N,) as given or found, ``num_frames``
(N,), ``fps`` (N,) (NaN where the container states none), and ``config`` (JSON: checkpoint, layer, clip
shape). A video that cannot be read is listed in ``failures.txt`` next to ``--out`` (``path<TAB>reason``)
and the others are still embedded. ``--neighbours K`` also writes ``neighbours.csv`` next to ``--out``:
each video's K most cosine-similar other videos, ``video,rank,neighbour,cosine``.

Resumable: every ``--save-every`` videos each process writes what it has to a hidden partial file beside
``--out`` (atomically); at the end the first process merges them into ``--out`` (atomically) and removes
them. Rerunning with the same ``--out`` skips the videos already in ``--out`` or in partial files of a killed
run, and retries the failed ones. Under torchrun each process embeds every W-th of the videos left to do,
so each video is embedded exactly once.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from dataset import sampling
from dataset.clip_input import CLIP_INPUTS, frames_to_decode, to_network_input
from dataset.layout import VIDEO_EXTENSIONS, is_video_file
from dataset.transforms import ClipTransform
from dataset.video_reader import VideoReadError, probe, read_video_frames
from model.backbones import build_backbone
from model.classifier import (add_backbone_args, backbone_state, checkpoint_config, init_from, load_backbone,
                              read_checkpoint, resolve_backbone_args)
from retrieve import DATA_FALLBACKS, LAYERS, video_features
from utils.atomic import write_text
from utils.cli import launch, run_cli
from utils.distributed import add_distributed_args, barrier, get_rank, get_world_size
from utils.engine import add_inference_amp_arg, autocast, quiet_worker, select_amp
from utils.evaluation import inherit_flags
from utils.logging import config_to_dict
from utils.progress import progress_bar
from utils.run_dir import check_writable

FAILURES_NAME = "failures.txt"
NEIGHBOURS_NAME = "neighbours.csv"
# what must match between a run and the --out it resumes: features of other settings would not compare
CONFIG_KEYS = ("ckpt", "init_from", "net", "base_width", "layer", "clips", "num_frames", "stride", "size", "resize",
               "resize_quirk", "clip_input")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("Embed every video of a folder or list with a pretrained backbone",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    group = parser.add_argument_group("embedding")
    group.add_argument("--ckpt", default=None,
                       help="checkpoint whose backbone gives the features (train_ssl.py's or finetune.py's)")
    group.add_argument("--init-from", default=None, metavar="PATH",
                       help="instead of --ckpt: a checkpoint of a VCOP-family codebase (VCOP, IIC, DualVar, PRP, "
                            "Pace, ...; any key prefix), loaded strictly into --net r3d, r21d or c3d")
    group.add_argument("--videos", required=True,
                       help="a folder (searched recursively for files ending in ." + ", .".join(VIDEO_EXTENSIONS) +
                            ") or a text file with one video path per line")
    group.add_argument("--out", default="features.npz",
                       help="the .npz written (features, paths, num_frames, fps); failures.txt and neighbours.csv "
                            "go next to it")
    group.add_argument("--clips", type=int, default=10, help="evenly spaced centre clips per video, averaged")
    group.add_argument("--layer", default="pool", choices=LAYERS,
                       help="pool: global average of the last feature map; conv5: that map max-pooled by "
                            "(1, 2, 2) and flattened")
    group.add_argument("--neighbours", type=int, default=0, metavar="K",
                       help="also write neighbours.csv: each video's K nearest videos by cosine similarity "
                            "(0: none)")
    group.add_argument("--batch-size", type=int, default=4, help="videos per batch (each is --clips clips)")
    group.add_argument("--workers", type=int, default=4, help="DataLoader worker processes (video decoders)")
    add_inference_amp_arg(group)
    group.add_argument("--save-every", type=int, default=256,
                       help="videos between the partial saves that a rerun resumes from")
    group.add_argument("--num-frames", type=int, default=None,
                       help=f"frames per clip; default: the checkpoint's, else {DATA_FALLBACKS['num_frames']}")
    group.add_argument("--stride", type=int, default=4, help="temporal stride between a clip's frames")
    group.add_argument("--size", type=int, default=None,
                       help=f"crop side; default: the checkpoint's, else {DATA_FALLBACKS['size']}")
    group.add_argument("--resize", type=int, nargs=2, default=None, metavar=("H", "W"),
                       help=f"frames are resized to H x W before the centre crop; default: the checkpoint's, else "
                            f"{DATA_FALLBACKS['resize']}")
    group.add_argument("--clip-input", default=None, choices=CLIP_INPUTS,
                       help="rgb = the frames; diff = differences of consecutive sampled frames "
                            "(dataset/clip_input.py); default: the checkpoint's, else rgb")
    group.add_argument("--resize-quirk", action="store_true",
                       help="resize to W x H instead, as the authors' code did (take it when the checkpoint did)")
    group.add_argument("--dry-run", action="store_true",
                       help="print the resolved configuration and the number of videos as JSON and exit")
    add_backbone_args(parser)
    add_distributed_args(parser)
    return parser


# ---------------------------------------------------------------- the videos

def list_videos(source: str | os.PathLike) -> list[str]:
    """The video paths of ``--videos``: a folder's video files (recursively, sorted), or a list file's lines."""
    source = Path(source)
    if source.is_dir():
        found = sorted(str(p) for p in source.rglob("*") if is_video_file(p.name) and p.is_file())
        if not found:
            raise ValueError(f"--videos {source} holds no video file (searched recursively for ."
                             f"{', .'.join(VIDEO_EXTENSIONS)})")
        return found
    if not source.is_file():
        raise FileNotFoundError(f"--videos {source}: no such folder or list file")
    lines = [line.strip() for line in source.read_text(errors="replace").splitlines()]
    paths = list(dict.fromkeys(line for line in lines if line and not line.startswith("#")))
    if not paths:
        raise ValueError(f"--videos {source} is an empty list: give one video path per line")
    return paths


class VideoClips(Dataset):
    """Item i: ``clips`` (n, 3, T, size, size), the centre crops of n evenly spaced clips of video ``paths[i]``,
    with its ``num_frames`` and ``fps``; a video that cannot be read gives zero clips and its ``error``."""

    def __init__(self, paths: list[str], clips: int, num_frames: int, stride: int, size: int,
                 resize: tuple[int, int], resize_quirk: bool = False, clip_input: str = "rgb"):
        self.paths = paths
        self.clips, self.stride, self.size = clips, stride, size
        # the frames decoded per clip: one more than the network's T for differences (to_network_input)
        self.num_frames = frames_to_decode(num_frames, clip_input)
        self.transform = ClipTransform("eval", size=size, resize=tuple(resize), resize_quirk=resize_quirk)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        out = torch.zeros(self.clips, 3, self.num_frames, self.size, self.size)
        item = {"index": index, "clips": out, "num_frames": 0, "fps": math.nan, "error": ""}
        try:
            info = probe(self.paths[index])
            if info.num_frames < 1:
                raise VideoReadError(f"video {self.paths[index]} has no decodable frame")
            indices = sampling.eval_clip_indices(info.num_frames, self.num_frames, self.stride, self.clips)
            frames = read_video_frames(self.paths[index], indices.reshape(-1), info.num_frames)
        except VideoReadError as error:
            item["error"] = " ".join(str(error).split())
            return item
        for clip_frames, clip in zip(frames.unflatten(0, indices.shape), out):  # (T, 3, H, W) each
            self.transform(clip_frames, np.random.default_rng(0), out=clip)  # a centre crop draws nothing
        item.update(num_frames=info.num_frames, fps=math.nan if info.fps is None else info.fps)
        return item


# ---------------------------------------------------------------- results on disk

def _partial_files(out: Path) -> list[Path]:
    return sorted(out.parent.glob(f".{out.name}.rank*.npz"))


def _partial_path(out: Path, rank: int) -> Path:
    return out.parent / f".{out.name}.rank{rank}.npz"


def save_npz(path: Path, **arrays) -> None:
    """np.savez to a temporary file beside ``path``, then renamed: a reader never sees half a file."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(buffer.getvalue())
    os.replace(tmp, path)


def load_results(path: Path, config: dict) -> dict[str, np.ndarray] | None:
    """The arrays of an earlier --out or partial file (None when absent); ValueError when it was made with
    other settings, whose features would not compare with this run's."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
        made_with = json.loads(str(arrays["config"]))
    except (OSError, ValueError, KeyError) as error:
        raise ValueError(f"{path} is not a features file of embed.py ({error}); choose another --out") from None
    changed = {k: (made_with.get(k), config[k]) for k in CONFIG_KEYS if made_with.get(k) != config[k]}
    if changed:
        differences = ", ".join(f"{k}: {a} there, {b} now" for k, (a, b) in changed.items())
        raise ValueError(f"{path} was made with other settings ({differences}): use the same flags to resume it, "
                         "or choose another --out")
    return arrays


def merge(parts: list[dict[str, np.ndarray]], order: list[str]) -> dict[str, np.ndarray]:
    """One set of rows from several: the first row of each path kept, rows in ``order`` (others after them)."""
    rows: dict[str, tuple] = {}
    for part in parts:
        for i, path in enumerate(part["paths"].tolist()):
            rows.setdefault(path, (part["features"][i], part["num_frames"][i], part["fps"][i]))
    position = {p: i for i, p in enumerate(order)}
    paths = sorted(rows, key=lambda p: position.get(p, len(order)))
    if not paths:
        return {"features": np.zeros((0, 0), np.float32), "paths": np.array([], dtype=str),
                "num_frames": np.zeros(0, np.int64), "fps": np.zeros(0)}
    return {"features": np.stack([rows[p][0] for p in paths]).astype(np.float32), "paths": np.array(paths),
            "num_frames": np.array([rows[p][1] for p in paths], np.int64),
            "fps": np.array([rows[p][2] for p in paths], np.float64)}


def write_neighbours(path: Path, features: np.ndarray, paths: np.ndarray, k: int, chunk: int = 1024) -> None:
    """Each video's k most cosine-similar other videos (ties to the earlier row), ``video,rank,neighbour,cosine``."""
    normalised = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    k = min(k, len(paths) - 1)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["video", "rank", "neighbour", "cosine"])
    for start in range(0, len(paths), chunk):
        similarity = normalised[start:start + chunk] @ normalised.T  # (c, N)
        similarity[np.arange(len(similarity)), np.arange(start, start + len(similarity))] = -np.inf  # not itself
        nearest = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
        for row, neighbours in enumerate(nearest):
            for rank, j in enumerate(neighbours, start=1):
                writer.writerow([paths[start + row], rank, paths[j], f"{similarity[row, j]:.6f}"])
    write_text(path, text.getvalue())


# ---------------------------------------------------------------- the run

def _fold(out: Path, config: dict, order: list[str]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Merge --out and the partial files beside it into --out (atomically), then remove the partial files;
    returns the merged arrays and the failures ({path: reason}) of the partial files not embedded since."""
    partials = _partial_files(out)
    parts = [r for r in [load_results(out, config)] + [load_results(p, config) for p in partials] if r is not None]
    merged = merge(parts, order)
    failures = {}
    for part in parts:
        failures.update(zip(part.get("failed_paths", np.array([])).tolist(),
                            part.get("failed_reasons", np.array([])).tolist()))
    for path in merged["paths"].tolist():
        failures.pop(path, None)
    if partials or not out.is_file():
        save_npz(out, **merged, config=np.array(json.dumps(config)))
    for partial in partials:
        partial.unlink(missing_ok=True)
    return merged, failures


def resolved_config(args: argparse.Namespace) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in
            ((k, getattr(args, k)) for k in CONFIG_KEYS)}


def main(args: argparse.Namespace) -> dict | None:
    """Embed the videos; returns the counts (None for --dry-run)."""
    for flag in ("clips", "batch_size", "save_every", "num_frames", "size", "stride"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be at least 1, got {value}")
    if args.neighbours < 0 or args.workers < 0:
        raise ValueError("--neighbours and --workers must not be negative")
    out = Path(args.out)
    if out.suffix != ".npz":
        raise ValueError(f"--out {out} must end in .npz (np.savez would add the suffix)")
    check_writable(out.parent, flag="the folder of --out", create=False)
    if (args.ckpt is None) == (args.init_from is None):
        raise ValueError("pass exactly one of --ckpt (a checkpoint of this project) and --init-from (a VCOP-family "
                         "checkpoint)")
    # a foreign checkpoint records no configuration: the flags and their fallbacks decide
    ckpt = read_checkpoint(args.ckpt) if args.ckpt is not None else {}
    resolve_backbone_args(args, ckpt)
    inherit_flags(args, checkpoint_config(ckpt), DATA_FALLBACKS)
    args.resize = list(args.resize)
    paths = list_videos(args.videos)
    return launch(args, get_args_parser(), lambda device: _embed(args, device, ckpt, paths, out),
                  saved_in=f"the config array of {out}",
                  dry_run_config=lambda: {**config_to_dict(args), "videos_found": len(paths)})


def _embed(args: argparse.Namespace, device: torch.device, ckpt: dict, paths: list[str], out: Path) -> dict:
    args.amp = select_amp(args.amp, device)
    rank, world = get_rank(), get_world_size()
    config = resolved_config(args)
    backbone, _ = build_backbone(args.net, args.base_width)
    if args.init_from is not None:
        loaded, kind = init_from(backbone, args.init_from, args.net)["loaded_tensors"], "VCOP-family checkpoint"
    else:
        loaded = load_backbone(backbone, args.ckpt, ckpt, args.net, args.base_width)
        kind = backbone_state(ckpt, args.ckpt)[1]
    backbone.to(device).eval()
    if rank == 0:  # what a killed run left in partial files goes into --out first: each rank rewrites its own
        _fold(out, config, paths)
    barrier()
    earlier = load_results(out, config)
    done = set(earlier["paths"].tolist()) if earlier is not None else set()
    todo = [p for p in paths if p not in done]
    mine = todo[rank::world]
    if rank == 0:
        print(f"loaded {loaded} backbone tensors from {args.ckpt or args.init_from} ({kind}); "
              f"{len(paths)} videos, {len(paths) - len(todo)} already embedded in {out}, {len(todo)} to do"
              + (f" over {world} processes" if world > 1 else ""), flush=True)
    embedded, failures = _embed_shard(args, device, backbone, mine, _partial_path(out, rank), config)
    print(f"rank {rank}: embedded {embedded} videos, {len(failures)} failed", flush=True)
    barrier()
    if rank != 0:
        return {"embedded": embedded, "failed": len(failures)}
    merged, all_failures = _fold(out, config, paths)
    failures_file = out.parent / FAILURES_NAME
    if all_failures:
        write_text(failures_file, "".join(f"{p}\t{r}\n" for p, r in all_failures.items()))
    else:
        failures_file.unlink(missing_ok=True)
    if args.neighbours and len(merged["paths"]) > 1:
        write_neighbours(out.parent / NEIGHBOURS_NAME, merged["features"], merged["paths"], args.neighbours)
    print(f"{len(merged['paths'])} videos embedded in {out} ({merged['features'].shape[1]}-d features)"
          + (f"; {len(all_failures)} failed, listed in {failures_file}" if all_failures else ""), flush=True)
    return {"embedded": embedded, "failed": len(all_failures), "total": len(merged["paths"])}


@torch.no_grad()
def _embed_shard(args, device, backbone, paths: list[str], partial: Path, config: dict) -> tuple[int, dict]:
    """Embed ``paths``, saving what this process has to ``partial`` every --save-every videos and at the end;
    returns (videos embedded, {path: reason} of those that failed)."""
    dataset = VideoClips(paths, args.clips, args.num_frames, args.stride, args.size, args.resize, args.resize_quirk,
                         args.clip_input)
    loader = DataLoader(dataset, batch_size=args.batch_size, num_workers=args.workers, worker_init_fn=quiet_worker,
                        pin_memory=device.type == "cuda")
    features, rows, num_frames, fps, failures = [], [], [], [], {}
    saved = 0

    def save() -> None:
        save_npz(partial, features=np.concatenate(features) if features else np.zeros((0, 0), np.float32),
                 paths=np.array([paths[i] for i in rows], dtype=str), num_frames=np.array(num_frames, np.int64),
                 fps=np.array(fps, np.float64), failed_paths=np.array(list(failures), dtype=str),
                 failed_reasons=np.array(list(failures.values()), dtype=str), config=np.array(json.dumps(config)))

    bar = progress_bar(len(paths), desc="embed", unit="video", leave=False) if get_rank() == 0 else None
    for batch in loader:
        ok = [i for i, error in enumerate(batch["error"]) if not error]
        for i, error in enumerate(batch["error"]):
            if error:
                failures[paths[int(batch["index"][i])]] = error
        if ok:
            clips = to_network_input(batch["clips"][ok].to(device, non_blocking=True), args.clip_input)
            with autocast(args.amp, device):
                out = video_features(backbone, clips, args.layer, merge=False)  # (B, D)
            features.append(out.float().cpu().numpy())
            rows += [int(batch["index"][i]) for i in ok]
            num_frames += [int(batch["num_frames"][i]) for i in ok]
            fps += [float(batch["fps"][i]) for i in ok]
        if bar is not None:
            bar.update(len(batch["error"]))
        if len(rows) + len(failures) - saved >= args.save_every:
            save()
            saved = len(rows) + len(failures)
    if bar is not None:
        bar.close()
    if paths:
        save()
    return len(rows), failures


if __name__ == "__main__":
    run_cli(main, get_args_parser().parse_args())
