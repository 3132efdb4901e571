"""Features for any folder of videos: no labels, no CSV, no frame extraction.

    python embed.py --ckpt runs/dualvar_ucf101/checkpoint.pth --videos my_videos/ --out features.npz
    python embed.py --ckpt CKPT --videos list.txt --out features.npz --neighbours 5
    torchrun --nproc-per-node 4 embed.py --ckpt CKPT --videos my_videos/ --out features.npz

``--videos`` is a folder, searched recursively for video files (the extensions of dataset/layout.py's
VIDEO_EXTENSIONS, any container FFmpeg reads), or a text file of video paths, one per line (relative paths
relative to the current folder). The videos' root is that folder, or for a list the current folder: every
video is named by its path relative to the root (absolute when outside it), so that a video given twice, once
by an absolute and once by a relative path, is embedded once, and a folder moved elsewhere still resumes.

Each video gives ``--clips`` evenly spaced centre clips (the 10-clip test's positions, METHOD.md §7); its
feature is the mean of the clips' backbone features (``--layer pool``: global average, ``conv5``: the last
feature map max-pooled (1, 2, 2) and flattened). The clip shape (frames, size, resize) is the checkpoint's
unless given. Any checkpoint of train_ssl.py or finetune.py, loaded strictly.

Output ``--out`` (an .npz): ``features`` (N, D) float32, ``paths`` (N,) relative to ``root`` (the
videos' root, absolute), ``num_frames`` (N,), ``fps`` (N,) (NaN where the container states none), and
``config`` (JSON: the settings that decide a feature, among them the SHA-256 of the backbone's weights, and
the checkpoint's path). A video that cannot be read is listed in ``failures.txt`` next to ``--out``
(``path<TAB>reason``, the path as opened) and the others are still embedded; when none can be read, the run
fails and writes no ``--out``. ``--neighbours K`` also writes ``neighbours.csv`` next to ``--out``: each
video's K most cosine-similar other videos, ``video,rank,neighbour,cosine`` (paths as in ``paths``).

Resumable: every ``--save-every`` videos, and when SIGTERM or Ctrl-C stops it, each process writes what it
has to a hidden partial file beside ``--out`` (atomically); ``--out`` itself is written only at the end, when
the first process merges them into it (atomically) and removes them. Rerunning with the same ``--out`` skips
the videos already in ``--out`` or in the partial files of a stopped run, and retries the failed ones; it
refuses an ``--out`` made from other weights or with another feature-changing setting (the same weights
under another checkpoint path are the same). Under torchrun each process embeds every W-th of the videos left
to do, so each video is embedded exactly once.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import math
import os
import signal
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from dataset import sampling
from dataset.clip_input import CLIP_INPUTS, frames_to_decode, to_network_input
from dataset.flags import CLIP_FALLBACKS
from dataset.layout import VIDEO_EXTENSIONS, is_video_file
from dataset.transforms import ClipTransform
from dataset.video_reader import VideoReadError, probe, read_video_frames
from engine.interrupts import TrainingInterrupted
from engine.launch import launch, run_cli
from engine.output_dir import check_writable
from model.backbones import build_backbone
from model.features import LAYERS, video_features
from model.weights import add_backbone_args, check_one_source, checkpoint_config, load_weights, read_source
from utils.atomic import write_text
from utils.config import config_to_dict, inherit_flags
from utils.distributed import add_distributed_args, barrier, default_workers, get_rank, get_world_size
from utils.precision import add_inference_amp_arg, autocast, select_amp
from utils.progress import progress_bar
from utils.workers import quiet_worker

FAILURES_NAME = "failures.txt"
NEIGHBOURS_NAME = "neighbours.csv"
# what must match between a run and the --out it resumes, every setting that changes a feature: the weights
# (by content, see weights_digest), the backbone, the clips, and the precision (--amp as resolved on the device)
CONFIG_KEYS = ("weights", "net", "base_width", "layer", "clips", "num_frames", "stride", "size", "resize",
               "resize_quirk", "clip_input", "amp")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Embed every video of a folder or list with a pretrained backbone",
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
    group.add_argument("--workers", type=int, default=default_workers(),
                       help="DataLoader worker processes (video decoders); default: this node's cores per process, "
                            "less one, at most 8")
    add_inference_amp_arg(group)
    group.add_argument("--save-every", type=int, default=256,
                       help="videos between the partial saves that a rerun resumes from")
    group.add_argument("--num-frames", type=int, default=None,
                       help=f"frames per clip; default: the checkpoint's, else {CLIP_FALLBACKS['num_frames']}")
    group.add_argument("--stride", type=int, default=4, help="temporal stride between a clip's frames")
    group.add_argument("--size", type=int, default=None,
                       help=f"crop side; default: the checkpoint's, else {CLIP_FALLBACKS['size']}")
    group.add_argument("--resize", type=int, nargs=2, default=None, metavar=("H", "W"),
                       help=f"frames are resized to H x W before the centre crop; default: the checkpoint's, else "
                            f"{CLIP_FALLBACKS['resize']}")
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

def video_key(path: str | os.PathLike, root: Path) -> str:
    """The name of a video in the results: its absolute, normalised path relative to ``root`` (an absolute
    ``root``), or that absolute path when it lies outside. Lexical: a symbolic link is not followed out of the
    root."""
    absolute = Path(os.path.normpath(root / path))
    return absolute.relative_to(root).as_posix() if absolute.is_relative_to(root) else absolute.as_posix()


def list_videos(source: str | os.PathLike) -> tuple[Path, list[str]]:
    """(the videos' root, their names relative to it) for ``--videos``: a folder (the root) and its video files,
    recursively and sorted; or a list file's lines, relative to the current folder (the root). Each video once."""
    source = Path(source)
    if source.is_dir():
        root = Path(os.path.abspath(source))
        found = sorted(video_key(p, root) for p in root.rglob("*") if is_video_file(p.name) and p.is_file())
        if not found:
            raise ValueError(f"--videos {source} holds no video file (searched recursively for ."
                             f"{', .'.join(VIDEO_EXTENSIONS)})")
        return root, found
    if not source.is_file():
        raise FileNotFoundError(f"--videos {source}: no such folder or list file")
    root = Path.cwd()
    lines = [line.strip() for line in source.read_text(errors="replace").splitlines()]
    paths = list(dict.fromkeys(video_key(line, root) for line in lines if line and not line.startswith("#")))
    if not paths:
        raise ValueError(f"--videos {source} is an empty list: give one video path per line")
    return root, paths


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
    """What a stopped run left beside ``out``: the processes' partial files and their earlier merge."""
    return sorted(out.parent.glob(f".{out.name}.rank*.npz")) + [p for p in [_earlier_path(out)] if p.is_file()]


def _partial_path(out: Path, rank: int) -> Path:
    return out.parent / f".{out.name}.rank{rank}.npz"


def _earlier_path(out: Path) -> Path:
    """Where a restarted run keeps the partial files of the runs before it: each process rewrites its own."""
    return out.parent / f".{out.name}.earlier.npz"


def start_over_hint(out: Path) -> str:
    return f"to start over, delete {out} and the hidden .{out.name}.* files beside it, or choose another --out"


def save_npz(path: Path, **arrays) -> None:
    """np.savez to a temporary file beside ``path``, then renamed: a reader never sees half a file."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(buffer.getvalue())
    os.replace(tmp, path)


def _setting(key: str, value) -> str:
    if value is None:
        return "not recorded"
    return f"sha256 {value[:12]}" if key == "weights" else str(value)


def load_results(path: Path, config: dict, out: Path) -> dict[str, np.ndarray] | None:
    """The arrays of an earlier --out or partial file (None when absent); ValueError when it was made with
    other weights or settings, whose features would not compare with this run's."""
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
        differences = ", ".join(f"{k}: {_setting(k, a)} there, {_setting(k, b)} now" for k, (a, b) in changed.items())
        weights = (f" (there from {made_with.get('checkpoint')}, now from {config['checkpoint']})"
                   if "weights" in changed else "")
        raise ValueError(f"{path} was made with other weights or settings ({differences}){weights}, and its "
                         f"features would not compare with this run's: to resume it, use the same checkpoint and "
                         f"flags; {start_over_hint(out)}")
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

def _fold(out: Path, config: dict, order: list[str], final: bool) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Merge --out and the partial files beside it; returns the merged arrays and the failures ({path: reason})
    of the partial files not embedded since. ``final``: into --out (atomically, when it holds a row), then the
    partial files are removed; else only the partial files of the processes into the earlier-runs file, which
    is what a restarted run reads, as each process rewrites its own partial file."""
    partials = _partial_files(out)
    loaded = {p: r for p in [out, *partials] if (r := load_results(p, config, out)) is not None}
    merged = merge(list(loaded.values()), order)
    failures = {}
    for part in loaded.values():
        failures.update(zip(part.get("failed_paths", np.array([])).tolist(),
                            part.get("failed_reasons", np.array([])).tolist()))
    for path in merged["paths"].tolist():
        failures.pop(path, None)
    if final:
        if partials and len(merged["paths"]):
            save_npz(out, **merged, root=np.array(config["root"]), config=np.array(json.dumps(config)))
        stale = partials
    else:
        stale = [p for p in partials if p != _earlier_path(out)]
        if stale:
            earlier = merge([loaded[p] for p in partials if p in loaded], order)
            save_npz(_earlier_path(out), **earlier, failed_paths=np.array(list(failures), dtype=str),
                     failed_reasons=np.array(list(failures.values()), dtype=str), config=np.array(json.dumps(config)))
    for partial in stale:
        partial.unlink(missing_ok=True)
    return merged, failures


def weights_digest(module: torch.nn.Module) -> str:
    """SHA-256 of a module's tensors (names, dtypes, shapes, bytes): the same weights give the same digest
    whichever file or path they came from."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def resolved_config(args: argparse.Namespace, weights: str | None = None, root: Path | None = None) -> dict:
    """The settings compared on a resume (CONFIG_KEYS), and, for the record, the checkpoint and the root."""
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in
              ((k, getattr(args, k)) for k in CONFIG_KEYS if k != "weights")}
    checkpoint = args.ckpt if args.ckpt is not None else args.init_from
    return {"weights": weights, **config, "checkpoint": os.path.abspath(checkpoint),
            "root": None if root is None else str(root)}


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
    check_one_source(args)
    # a foreign checkpoint records no configuration: the flags and their fallbacks decide
    ckpt = read_source(args)
    inherit_flags(args, checkpoint_config(ckpt), CLIP_FALLBACKS)
    args.resize = list(args.resize)
    root, paths = list_videos(args.videos)
    return launch(args, get_args_parser(), lambda device: _embed(args, device, ckpt, root, paths, out),
                  saved_in=f"the config array of {out}",
                  dry_run_config=lambda: {**config_to_dict(args), "root": str(root), "videos_found": len(paths)})


def _embed(args: argparse.Namespace, device: torch.device, ckpt: dict, root: Path, paths: list[str],
           out: Path) -> dict:
    args.amp = select_amp(args.amp, device)
    rank, world = get_rank(), get_world_size()
    backbone, _ = build_backbone(args.net, args.base_width)
    loaded, kind = load_weights(backbone, args, ckpt)
    config = resolved_config(args, weights_digest(backbone), root)
    backbone.to(device).eval()
    if rank == 0:  # what a stopped run left in partial files is set aside first: each rank rewrites its own
        _fold(out, config, paths, final=False)
    barrier()
    earlier = merge([r for r in [load_results(p, config, out) for p in [out, _earlier_path(out)]] if r is not None],
                    paths)
    done = set(earlier["paths"].tolist())
    todo = [p for p in paths if p not in done]
    mine = todo[rank::world]
    if rank == 0:
        print(f"loaded {loaded} backbone tensors from {args.ckpt or args.init_from} ({kind}); "
              f"{len(paths)} videos under {root}, {len(paths) - len(todo)} already embedded in {out}, "
              f"{len(todo)} to do" + (f" over {world} processes" if world > 1 else ""), flush=True)
    embedded, failures = _embed_shard(args, device, backbone, root, mine, _partial_path(out, rank), config)
    print(f"rank {rank}: embedded {embedded} videos, {len(failures)} failed", flush=True)
    barrier()
    if rank != 0:
        return {"embedded": embedded, "failed": len(failures)}
    merged, all_failures = _fold(out, config, paths, final=True)
    failures_file = out.parent / FAILURES_NAME
    if all_failures:
        write_text(failures_file, "".join(f"{root / p}\t{r}\n" for p, r in all_failures.items()))
    else:
        failures_file.unlink(missing_ok=True)
    if not len(merged["paths"]):
        first, reason = next(iter(all_failures.items()))
        raise ValueError(f"none of the {len(paths)} videos could be read, so nothing was written to {out}; the "
                         f"reasons are in {failures_file} (the first: {root / first}: {reason})")
    neighbours = ""
    if args.neighbours:
        if len(merged["paths"]) > 1:
            write_neighbours(out.parent / NEIGHBOURS_NAME, merged["features"], merged["paths"], args.neighbours)
            neighbours = f"; neighbours in {out.parent / NEIGHBOURS_NAME}"
        else:
            (out.parent / NEIGHBOURS_NAME).unlink(missing_ok=True)
            neighbours = "; no neighbours.csv: --neighbours needs at least 2 embedded videos"
    print(f"{len(merged['paths'])} videos embedded in {out} ({merged['features'].shape[1]}-d features)"
          + (f"; {len(all_failures)} failed, listed in {failures_file}" if all_failures else "") + neighbours,
          flush=True)
    return {"embedded": embedded, "failed": len(all_failures), "total": len(merged["paths"])}


@torch.no_grad()
def _embed_shard(args, device, backbone, root: Path, paths: list[str], partial: Path,
                 config: dict) -> tuple[int, dict]:
    """Embed ``paths`` (relative to ``root``), saving what this process has to ``partial`` every --save-every
    videos, at the end, and when SIGTERM or Ctrl-C stops it; returns (videos embedded, {path: reason} of those
    that failed)."""
    dataset = VideoClips([str(root / p) for p in paths], args.clips, args.num_frames, args.stride, args.size,
                         args.resize, args.resize_quirk, args.clip_input)
    loader = DataLoader(dataset, batch_size=args.batch_size, num_workers=args.workers, worker_init_fn=quiet_worker,
                        pin_memory=device.type == "cuda")
    batches: list[tuple[np.ndarray, list[int], list[int], list[float]]] = []  # one append per batch: a signal
    failures: dict[str, str] = {}                                               # never finds half a batch
    saved = 0

    def count() -> int:
        return sum(len(rows) for _, rows, _, _ in batches)

    def save() -> None:
        done = list(batches)
        save_npz(partial, features=np.concatenate([f for f, *_ in done]) if done else np.zeros((0, 0), np.float32),
                 paths=np.array([paths[i] for _, rows, _, _ in done for i in rows], dtype=str),
                 num_frames=np.array([n for *_, frames, _ in done for n in frames], np.int64),
                 fps=np.array([f for *_, rates in done for f in rates], np.float64),
                 failed_paths=np.array(list(failures), dtype=str),
                 failed_reasons=np.array(list(failures.values()), dtype=str), config=np.array(json.dumps(config)))

    bar = progress_bar(len(paths), desc="embed", unit="video", leave=False) if get_rank() == 0 else None
    try:
        for batch in loader:
            ok = [i for i, error in enumerate(batch["error"]) if not error]
            for i, error in enumerate(batch["error"]):
                if error:
                    failures[paths[int(batch["index"][i])]] = error
            if ok:
                clips = to_network_input(batch["clips"][ok].to(device, non_blocking=True), args.clip_input)
                with autocast(args.amp, device):
                    out = video_features(backbone, clips, args.layer, merge=False)  # (B, D)
                batches.append((out.float().cpu().numpy(), [int(batch["index"][i]) for i in ok],
                                 [int(batch["num_frames"][i]) for i in ok], [float(batch["fps"][i]) for i in ok]))
            if bar is not None:
                bar.update(len(batch["error"]))
            if count() + len(failures) - saved >= args.save_every:
                save()
                saved = count() + len(failures)
    except (TrainingInterrupted, KeyboardInterrupt) as stop:
        signum = stop.signum if isinstance(stop, TrainingInterrupted) else int(signal.SIGINT)
        save()
        raise TrainingInterrupted(signum, f"after {count()} videos; what this process embedded is saved in "
                                          f"{partial}: run the same command again to continue from it",
                                  saved=True) from None
    finally:
        if bar is not None:
            bar.close()
    if paths:
        save()
    return count(), failures


if __name__ == "__main__":
    run_cli(main, get_args_parser().parse_args())
