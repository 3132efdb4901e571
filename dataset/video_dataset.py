"""Frame-folder datasets: CSV rows -> decoded, sampled, augmented clips (METHOD.md §2-3).

Every random choice of item i in epoch e comes from ``np.random.default_rng([seed, e, i])``, so an
item is a pure function of (seed, epoch, index): any number of DataLoader workers gives the same
batches, no two workers share a stream, and a resumed run sees the same data.

Items are dicts with "index" (row in the split) and "label" (-1 when unlabelled) plus
- "dualvar":  "clips" (3, 3, T, H, W), views A, B, A' (A' = A's frames, augmented again);
- "two_view": "clips" (2, 3, T, H, W), views A, B (drawn and augmented as in "dualvar");
- "iic":      "clip" (3, T, H, W) in [0, 1], cropped only (no colour work, not normalised); with a flow
              modality also "flow" (3, T, H, W), the same frames' flow;
- "finetune": "clip" (3, T, H, W);
- "eval":     "clips" (10, 3, T, H, W), centre crops.
With ``clip_input="diff"`` (dataset/clip_input.py) the RGB clips hold T + 1 frames, which ``to_device`` turns
into the T frame differences the network takes.

Video files: a CSV row whose first column ends in a video extension (``<Class>/<video>.mp4``, written by
``write_csv.py --source video``) is read from ``video_root`` by dataset/video_reader.py, by frame index
exactly as a frame folder (frame i = the i-th decoded frame = ``image_{i+1:05d}.jpg``), for every sampler.
Each sample decodes the union of its clips' frames once. A video that fails to decode in a training sampler
is named on stderr and replaced by another video of its class (drawn with (seed, epoch, row) among those
not known to be bad); the run stops with a LayoutError once more than ``max_bad_videos`` (a fraction of the
split, default 1 %) of the videos have failed in this process and its DataLoader workers. The "eval" sampler
(testing, retrieval) never replaces a video: its error stops the run. Optical flow keeps its extracted folders.

Optical flow (``modality`` "u" or "v", METHOD.md §6): RGB frame i reads flow frame min(i, L_flow - 1),
L_flow = max(L - 1, 1), where flow frame t is the motion from RGB frame t to t + 1 (so the last RGB
frame reuses the last motion). The one quantised component is replicated to 3 channels and mapped
from 0..255 to [0, 1] (128 = no motion), never ImageNet-normalised, in every sampler, so that
pretraining, finetuning, testing and retrieval see the same input. Crops: one box per clip, shared by
RGB and flow in "iic" (flow takes no colour work); "finetune" flow clips get a random crop and a
left-right flip, which negates u (255 - value), and no colour jitter; "eval" flow clips are centre
crops as for RGB.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from dataset import sampling
from dataset.clip_input import CLIP_INPUTS, check_clip_input, frames_to_decode, to_network_input
from dataset.layout import (FLOW_COMPONENTS, LayoutError, VideoRecord, count_flow_frames, count_frames,
                            expected_flow_frames, flow_dir, flow_frame_name, frame_name, is_video_file, read_split_csv)
from dataset.local_dataset import REGISTRY, DatasetPaths, flow_command, resolve_dataset
from dataset.transforms import ClipTransform, ViewParams, to_float_clips
from dataset.video_reader import VideoReadError, read_video_frames
from utils.atomic import write_text
from utils.distributed import default_workers
from utils.malloc import keep_freed_memory_for_reuse

SPLITS = ("trainval", "train", "val", "test")
SAMPLERS = ("dualvar", "two_view", "iic", "finetune", "eval")
# "res" reads RGB frames like "rgb" (the residual is computed from them); "u" / "v" read optical flow
MODALITIES = ("rgb", "res", *FLOW_COMPONENTS)
FLOW_SAMPLERS = ("iic", "finetune", "eval")
HOLDOUT_SEED = 666
CROP_ONLY_P = 0.2  # view A skips colour jitter and blur with this probability (METHOD.md §3)
NUM_EVAL_CLIPS = 10
DEFAULT_MAX_BAD_VIDEOS = 0.01


# ---------------------------------------------------------------- JPEG decoding

# Each decoder maps JPEG bytes to a list of uint8 arrays: (H, W, 3) RGB, or (H, W) with gray=True
# (optical flow).

def _decode_torchvision(blobs: list[bytes], gray: bool = False) -> list[np.ndarray]:
    from torchvision.io import ImageReadMode, decode_jpeg
    tensors = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
    images = decode_jpeg(tensors, mode=ImageReadMode.GRAY if gray else ImageReadMode.RGB)  # (C, H, W) each
    return [t[0].numpy() if gray else t.permute(1, 2, 0).numpy() for t in images]


def _decode_simplejpeg(blobs: list[bytes], gray: bool = False) -> list[np.ndarray]:
    import simplejpeg
    if gray:
        return [simplejpeg.decode_jpeg(b, colorspace="GRAY")[..., 0] for b in blobs]
    return [simplejpeg.decode_jpeg(b, colorspace="RGB") for b in blobs]


def _decode_cv2(blobs: list[bytes], gray: bool = False) -> list[np.ndarray]:
    import cv2
    frames = []
    for b in blobs:
        image = cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_GRAYSCALE if gray else cv2.IMREAD_COLOR)
        if image is None:
            raise ValueError("OpenCV could not decode the data")
        frames.append(image if gray else image[..., ::-1])  # BGR -> RGB
    return frames


DECODERS = {"simplejpeg": _decode_simplejpeg, "cv2": _decode_cv2, "torchvision": _decode_torchvision}


def _default_decoder() -> str:
    # simplejpeg (libjpeg-turbo) measured fastest on 128x171 frames (bench/bench_data.py: ~1.6x
    # OpenCV and torchvision, whose image decoding is deprecated since 0.29); OpenCV is the fallback.
    try:
        import simplejpeg  # noqa: F401
        return "simplejpeg"
    except ImportError:
        return "cv2"


DEFAULT_DECODER = _default_decoder()

def _redo_hint(video_dir: Path) -> str:
    """How to extract one frame folder again: extract_frame.py skips folders that hold frames, unless --redo."""
    video_dir = Path(video_dir)
    return (f"extract it again with python process_data/src/extract_frame.py --video-root <your videos> --frame-root "
            f"{video_dir.parent.parent} --redo {video_dir.parent.name}/{video_dir.name}, then re-run "
            "process_data/src/write_csv.py so that the CSV matches the frames on disk")


@dataclass(frozen=True)
class _ImageLayout:
    """How one kind of frame folder names and counts its files, for reading and for error messages."""

    kind: str  # "frame" or "flow frame"
    file_name: Callable[[int], str]
    count: Callable[[Path], int]


_RGB_LAYOUT = _ImageLayout("frame", frame_name, count_frames)
_FLOW_LAYOUT = _ImageLayout("flow frame", flow_frame_name, count_flow_frames)


def _read_images(folder: Path, indices: np.ndarray, layout: _ImageLayout, decode: Callable,
                 expected: str, hint: str) -> np.ndarray:
    """The decoded images of ``indices`` stacked (N, H, W[, C]); each distinct file is read and decoded once.

    Raises LayoutError naming the folder or file for a missing folder, a missing file (``expected``
    says how many files the CSV implies), an empty file and a file the decoder rejects.
    """
    unique, inverse = np.unique(indices, return_inverse=True)
    blobs = []
    for i in unique:
        path = folder / layout.file_name(int(i))
        try:
            with open(path, "rb") as f:
                blobs.append(f.read())
        except FileNotFoundError:
            if not folder.is_dir():
                raise LayoutError(f"{layout.kind} folder {folder} does not exist; {hint}") from None
            raise LayoutError(f"{layout.kind} {path} is missing: {folder} has {layout.count(folder)} "
                              f"{layout.kind}s on disk but {expected}; {hint}") from None
    for i, blob in zip(unique, blobs):
        if not blob:
            raise LayoutError(f"{layout.kind} {folder / layout.file_name(int(i))} is empty; {hint}")
    try:
        decoded = decode(blobs)
    except (RuntimeError, ValueError) as error:
        bad = _first_undecodable(folder, unique, blobs, decode, layout)
        raise LayoutError(f"cannot decode {bad} ({error}): the JPEG is truncated or corrupt; {hint}") from None
    try:
        return np.stack([decoded[j] for j in inverse.reshape(-1)])  # repeats by reference
    except ValueError:
        sizes = sorted({f.shape[:2] for f in decoded})
        raise LayoutError(f"the {layout.kind}s of {folder} have different sizes {sizes}; {hint}") from None


def _first_undecodable(folder: Path, unique: np.ndarray, blobs: list[bytes], decode: Callable,
                       layout: _ImageLayout) -> Path:
    """Find the file that made a batched decode fail (only called on the error path)."""
    for i, blob in zip(unique, blobs):
        try:
            decode([blob])
        except (RuntimeError, ValueError):
            return folder / layout.file_name(int(i))
    return folder


def read_frames(video_dir: Path, indices: np.ndarray, decoder: str = DEFAULT_DECODER,
                expected_frames: int | None = None) -> torch.Tensor:
    """uint8 RGB frames ``(len(indices), 3, H, W)`` of one video (channels-last memory); errors as
    ``_read_images``."""
    frames = _read_images(video_dir, indices, _RGB_LAYOUT, DECODERS[decoder],
                          f"the CSV says {expected_frames}", _redo_hint(video_dir))  # (N, H, W, 3)
    return torch.from_numpy(frames).permute(0, 3, 1, 2)  # (N, 3, H, W)


def read_flow_frames(component_dir: Path, indices: np.ndarray, decoder: str = DEFAULT_DECODER,
                     expected_frames: int | None = None, hint: str = "") -> torch.Tensor:
    """uint8 flow frames ``(len(indices), 3, H, W)`` of one component: the single channel replicated to
    3 (a broadcast view, no copy) so that the RGB backbones take it. ``indices`` are flow indices."""
    frames = _read_images(component_dir, indices, _FLOW_LAYOUT, partial(DECODERS[decoder], gray=True),
                          f"the CSV's frame count implies {expected_frames}", hint)  # (N, H, W)
    return torch.from_numpy(frames).unsqueeze(1).expand(-1, 3, -1, -1)  # (N, 3, H, W)


# ---------------------------------------------------------------- allocator


# ---------------------------------------------------------------- splits

def holdout_split(records: list[VideoRecord], val_size: float,
                  seed: int = HOLDOUT_SEED) -> tuple[list[VideoRecord], list[VideoRecord]]:
    """(train, val): ``val_size`` rows (a count, or a fraction when < 1) drawn without replacement
    with ``default_rng(seed)``; train keeps every other row, in CSV order. Disjoint, union = input."""
    count = int(round(val_size * len(records))) if val_size < 1 else int(val_size)
    if not 0 < count < len(records):
        raise ValueError(f"--val-size {val_size} must leave at least one video on each side of the hold-out; "
                         f"the train split has {len(records)} videos")
    val_rows = np.sort(np.random.default_rng(seed).choice(len(records), size=count, replace=False))
    is_val = np.zeros(len(records), dtype=bool)
    is_val[val_rows] = True
    return ([r for r, v in zip(records, is_val) if not v], [records[i] for i in val_rows])


# ---------------------------------------------------------------- the dataset

class VideoFrameDataset(Dataset):
    """Clips from frame folders; ``sampler`` (one of SAMPLERS) picks the frames and the augmentation.

    ``modality`` (one of MODALITIES) says what the clips are made of: "rgb" and "res" read the RGB
    frames (residuals are taken from them downstream); "u" / "v" read that flow component from
    ``flow_root`` (layout in dataset/layout.py) for the "iic", "finetune" and "eval" samplers.
    """

    def __init__(self, records: list[VideoRecord], frame_root: Path, sampler: str,
                 class_names: list[str] | None = None, num_classes: int | None = None, seed: int = 0,
                 num_frames: int = 16, stride: int = 4, size: int = 112,
                 resize: tuple[int, int] = (128, 171), resize_quirk: bool = False,
                 per_frame_jitter: bool = False, decoder: str = DEFAULT_DECODER, modality: str = "rgb",
                 flow_root: Path | None = None, hflip: bool = True, video_root: Path | None = None,
                 max_bad_videos: float = DEFAULT_MAX_BAD_VIDEOS, uint8: bool = False, clip_input: str = "rgb"):
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; choose one of {SAMPLERS}")
        if decoder not in DECODERS:
            raise ValueError(f"unknown JPEG decoder {decoder!r}; choose one of {sorted(DECODERS)}")
        if modality not in MODALITIES:
            raise ValueError(f"unknown --modality {modality!r}; choose one of {', '.join(MODALITIES)}")
        self.flow_component = modality if modality in FLOW_COMPONENTS else None
        if self.flow_component and sampler not in FLOW_SAMPLERS:
            raise ValueError(f"--modality {modality} (optical flow) is for IIC pretraining, finetuning, testing and "
                             f"retrieval; the {sampler!r} sampler (DualVar) reads RGB frames only")
        if self.flow_component and flow_root is None:
            raise ValueError(f"--modality {modality} needs the flow root (--flow-root)")
        check_clip_input(clip_input)
        if clip_input != "rgb" and (sampler == "iic" or self.flow_component):
            what = "IIC's views (RGB and its residual)" if sampler == "iic" else f"--modality {modality} (optical flow)"
            raise ValueError(f"--clip-input {clip_input} is for RGB clips; {what} already fix the network's input: "
                             "leave --clip-input at rgb")
        self.records = records
        self.frame_root = Path(frame_root)
        self.flow_root = Path(flow_root) if flow_root is not None else None
        self.video_root = Path(video_root) if video_root is not None else None
        self.max_bad_videos = max_bad_videos
        # videos that failed to decode, shared with the DataLoader workers like the epoch
        self._bad = torch.zeros(len(records), dtype=torch.bool).share_memory_()
        self.sampler = sampler
        self.modality = modality
        self.class_names = list(class_names or [])
        self.num_classes = num_classes if num_classes is not None else len(self.class_names)
        self.seed = seed
        self.num_frames = num_frames
        self.stride = stride
        self.size = size
        self.clip_input = clip_input
        self.decoded_frames = frames_to_decode(num_frames, clip_input)  # per clip: T, or T + 1 for differences
        self.decoder = decoder
        self.uint8 = uint8  # clips leave the workers as bytes; to_device makes them the float clips below
        self.clip_dtype = torch.uint8 if uint8 else torch.float32
        # shared memory, so that set_epoch reaches persistent DataLoader workers too
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()

        def transform(recipe: str, normalize: bool = True) -> ClipTransform:
            return ClipTransform(recipe, size=size, resize=tuple(resize), resize_quirk=resize_quirk,
                                 per_frame_jitter=per_frame_jitter, hflip=hflip, normalize=normalize, uint8=uint8)
        self.full = transform("pretrain")
        self.crop_only = transform("crop_only")
        self.iic = transform("crop_only", normalize=False)
        self.finetune = transform("finetune")
        self.eval = transform("eval")
        self.flow_eval = transform("eval", normalize=False)

    def to_device(self, batch: dict, device: torch.device) -> dict:
        """A batch of this dataset's items on ``device`` (non-blocking from pinned memory), its uint8 clips turned
        into the float clips described above: ImageNet-normalised RGB, [0, 1] for IIC's clips and for flow; then
        the network's input (``--clip-input``: the T + 1 decoded frames become T differences)."""
        normalized = self.sampler != "iic" and not self.flow_component
        moved = {key: value.to(device, non_blocking=True) if torch.is_tensor(value) else value
                 for key, value in batch.items()}
        return {key: to_network_input(to_float_clips(value, normalized and key != "flow"), self.clip_input)
                if key in ("clip", "clips", "flow") else value for key, value in moved.items()}

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(epoch)

    @property
    def epoch(self) -> int:
        return int(self._epoch.item())

    def __len__(self) -> int:
        return len(self.records)

    def video_path(self, record: VideoRecord) -> Path:
        """The record's frame folder, or its video file (a video CSV row)."""
        return record.path(self.video_root if is_video_file(record.frame_dir) else self.frame_root)

    def frames(self, record: VideoRecord, indices: np.ndarray) -> torch.Tensor:
        """uint8 RGB ``(len(indices), 3, H, W)`` frames ``indices`` of a record, from its video or frame folder."""
        path = self.video_path(record)
        if is_video_file(record.frame_dir):
            return read_video_frames(path, indices, expected_frames=record.num_frames)
        return read_frames(path, indices, self.decoder, expected_frames=record.num_frames)

    def resized_frames(self, load: Callable[[np.ndarray], torch.Tensor], indices: np.ndarray) -> torch.Tensor:
        """uint8 ``(len(indices), 3, *resize_hw)``, channels-last memory: each distinct frame of ``indices`` decoded
        and resized once (A, B and A' share frames, and a clip clamped at a video's end repeats frames), so that
        the views crop views of the result."""
        unique, inverse = np.unique(indices, return_inverse=True)
        resized = self.full.resize_frames(load(unique))  # (U, 3, h, w)
        # the repeats and the order, by whole (h, w, 3) frames: one memcpy-fast copy
        return torch.from_numpy(resized.permute(0, 2, 3, 1).numpy()[inverse.reshape(-1)]).permute(0, 3, 1, 2)

    def flow_frames(self, record: VideoRecord, rgb_indices: np.ndarray) -> torch.Tensor:
        """uint8 ``(N, 3, H, W)`` flow frames of this dataset's component at RGB frame ``rgb_indices``."""
        hint = (f"re-run {flow_command(self.frame_root, self.flow_root)} (it redoes incomplete videos), "
                "after process_data/src/write_csv.py if the RGB frames changed")
        return read_flow_frames(flow_dir(self.flow_root, self.flow_component, record.frame_dir),
                                sampling.flow_indices(rgb_indices, record.num_frames), self.decoder,
                                expected_frames=expected_flow_frames(record.num_frames), hint=hint)

    def flipped_flow(self, frames: torch.Tensor, flip: bool) -> torch.Tensor:
        """A left-right flip negates the horizontal motion: u -> -u is 255 - value in the quantised range."""
        return 255 - frames if flip and self.flow_component == "u" else frames

    def __getitem__(self, index: int) -> dict:
        keep_freed_memory_for_reuse()
        row = index
        rng = np.random.default_rng([self.seed, self.epoch, index])
        while True:
            try:
                item = self._item(self.records[row], rng)
            except VideoReadError as error:
                if self.sampler == "eval":  # a test or retrieval result must cover the videos it names
                    raise
                row = self._replacement(row, error)
                rng = np.random.default_rng([self.seed, self.epoch, index, row])
                continue
            item.update(index=index, label=self.records[index].label)
            return item

    def _replacement(self, row: int, error: VideoReadError) -> int:
        """Record video ``row`` as bad and name another video of its class (any video when unlabelled) in
        its place; LayoutError once more than ``max_bad_videos`` of the split have failed."""
        self._bad[row] = True
        bad = int(self._bad.sum())
        print(f"warning: {error}; replaced by another video of its class ({bad} bad video(s) so far, "
              f"at most {self.max_bad_videos:.1%} of {len(self.records)} allowed by --max-bad-videos)",
              file=sys.stderr, flush=True)
        if bad > self.max_bad_videos * len(self.records):
            raise LayoutError(
                f"{bad} of {len(self.records)} videos failed to decode, more than --max-bad-videos "
                f"{self.max_bad_videos} allows (the last: {error}); check the videos named above (re-encode "
                "them with process_data/src/reencode_videos.py, or drop their rows with "
                "process_data/src/write_csv.py --source video), or raise --max-bad-videos")
        label = self.records[row].label
        candidates = [i for i, r in enumerate(self.records)
                      if (label < 0 or r.label == label) and not self._bad[i]]
        if not candidates:
            raise LayoutError(f"every video of class {label} failed to decode (the last: {error})")
        return int(np.random.default_rng([self.seed, self.epoch, row]).choice(candidates))

    def _item(self, record: VideoRecord, rng: np.random.Generator) -> dict:
        video_dir = self.video_path(record)
        length = record.num_frames
        if length < 1:
            hint = ("re-run process_data/src/write_csv.py --source video" if is_video_file(record.frame_dir)
                    else _redo_hint(video_dir))
            raise LayoutError(f"video {video_dir} has num_frames={length} in the CSV; {hint}")

        def load(indices: np.ndarray) -> torch.Tensor:
            return self.frames(record, indices)

        # the finetune and eval clips of a flow modality are flow frames; IIC's "clip" is always RGB
        load_clip = partial(self.flow_frames, record) if self.flow_component and self.sampler != "iic" else load
        item = {}
        T = self.decoded_frames  # the network's T, or T + 1 frames for differences (``to_device`` takes them)
        if self.sampler in ("dualvar", "two_view"):
            idx_a, idx_b = sampling.dualvar_clip_pair(length, rng, T, self.stride)
            indices = np.concatenate([idx_a, idx_b])
            frames = self.resized_frames(load, indices)  # (2T, 3, h, w): A's and B's frames decoded once
            frames_a, frames_b = frames[:T], frames[T:]
            views = 3 if self.sampler == "dualvar" else 2
            clips = torch.empty(views, 3, T, self.size, self.size, dtype=self.clip_dtype)
            (self.crop_only if rng.random() < CROP_ONLY_P else self.full)(frames_a, rng, out=clips[0])
            self.full(frames_b, rng, out=clips[1])
            if self.sampler == "dualvar":
                self.full(frames_a, rng, out=clips[2])  # A': A's frames, augmented independently
            item["clips"] = clips  # (V, 3, T, H, W)
        elif self.sampler == "iic":  # RGB only: decoded_frames is the network's T
            indices = sampling.iic_clip_indices(length, rng, T)
            crop = self.iic.draw(rng, T)  # one box per clip, shared by the RGB clip and its flow
            item["clip"] = self.iic.apply(load(indices), crop)  # (3, T, H, W) in [0, 1]
            if self.flow_component:
                item["flow"] = self.iic.apply(self.flow_frames(record, indices), crop)  # (3, T, H, W) in [0, 1]
        elif self.sampler == "finetune":
            frames = load_clip(sampling.finetune_clip_indices(length, rng, T, self.stride))
            if self.flow_component:  # crop and flip only: colour jitter means nothing for motion
                view = ViewParams(*self.iic.crop_box(rng), flip=bool(rng.random() < 0.5))
                item["clip"] = self.iic.apply(self.flipped_flow(frames, view.flip), view)
            else:
                item["clip"] = self.finetune(frames, rng)
        else:
            indices = sampling.eval_clip_indices(length, T, self.stride, NUM_EVAL_CLIPS)  # (10, T)
            frames = load_clip(indices.reshape(-1)).unflatten(0, indices.shape)  # (10, T, 3, H, W)
            clips = torch.empty(NUM_EVAL_CLIPS, 3, T, self.size, self.size, dtype=self.clip_dtype)
            centre_crop = self.flow_eval if self.flow_component else self.eval
            for clip_frames, clip in zip(frames, clips):
                centre_crop(clip_frames, rng, out=clip)
            item["clips"] = clips  # (10, 3, T, H, W)
        return item


# ---------------------------------------------------------------- command line

def _val_size(text: str) -> float:
    value = float(text)
    if value <= 0 or (value >= 1 and value != int(value)):
        raise argparse.ArgumentTypeError(f"expected a count (e.g. 800) or a fraction in (0, 1), got {text!r}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1], got {text!r}")
    return value


# The clip flags that the evaluation scripts take from the checkpoint's configuration unless given, and their values
# where it records none (the defaults of add_data_args).
CLIP_FALLBACKS = {"num_frames": 16, "size": 112, "resize": [128, 171], "clip_input": "rgb"}


def defaults_from_checkpoint(parser: argparse.ArgumentParser, fallbacks: dict) -> None:
    """Make the flags of ``fallbacks`` default to the checkpoint's values (None until it is read), saying so in
    --help."""
    parser.set_defaults(**dict.fromkeys(fallbacks))
    for action in parser._actions:
        if action.dest in fallbacks:
            action.help += f"; default: the checkpoint's value, else {fallbacks[action.dest]}"


def add_data_args(parser: argparse.ArgumentParser, training: bool = True) -> argparse.ArgumentParser:
    """The data flags; without ``training`` (the scripts that only evaluate) not those that only training reads,
    which keep their defaults."""
    group = parser.add_argument_group("data")
    group.add_argument("--dataset", default="demo",
                       help=f"registered dataset ({', '.join(REGISTRY)}) or the path of a CSV folder "
                            "(train_split0k.csv, test_split0k.csv, ClassInd.txt)")
    group.add_argument("--data-root", default=None,
                       help="folder holding <dataset>/frames and <dataset>/csv; default $VSSL_DATA_ROOT, "
                            "else <repo>/data")
    group.add_argument("--frame-root", default=None, help="override the dataset's frame folder root")
    group.add_argument("--csv-dir", default=None, help="override the dataset's CSV folder")
    group.add_argument("--flow-root", default=None,
                       help="optical flow for --modality u / v, laid out as <flow-root>/{u,v}/<Class>/<video>/"
                            "frame000001.jpg; default <data-root>/<dataset>/tvl1_flow (a CSV folder: its sibling "
                            "tvl1_flow); written by process_data/src/extract_flow.py")
    group.add_argument("--video-root", default=None,
                       help="video files of a CSV written by process_data/src/write_csv.py --source video (rows "
                            "<Class>/<video>.mp4); default <data-root>/<dataset>/videos (a CSV folder: its sibling "
                            "videos)")
    if training:
        group.add_argument("--max-bad-videos", type=_fraction, default=DEFAULT_MAX_BAD_VIDEOS,
                           help="training replaces a video that fails to decode by another of its class and names "
                                "it on stderr; it stops once more than this fraction of the split's videos has failed")
    group.add_argument("--split", type=int, default=1, help="official split number k (split0k CSVs)")
    group.add_argument("--val-size", type=_val_size, default=None,
                       help="videos held out of the train split for validation (seed 666): a count, or a "
                            "fraction < 1; default 800 for real datasets, 0.2 for the demo and CSV folders")
    group.add_argument("--num-frames", type=int, default=CLIP_FALLBACKS["num_frames"],
                       help="frames per clip (T) that the network sees")
    group.add_argument("--clip-input", default=CLIP_FALLBACKS["clip_input"], choices=CLIP_INPUTS,
                       help="what the network sees of a clip: rgb = its frames (the papers'); diff = the differences "
                            "of consecutive sampled frames, from T + 1 frames decoded and augmented as one clip "
                            "(dataset/clip_input.py; not for IIC, whose views are fixed)")
    group.add_argument("--stride", type=int, default=4,
                       help="temporal stride between clip frames (4 for DualVar pretraining, 2 for "
                            "finetuning and testing; IIC always uses 1)")
    group.add_argument("--size", type=int, default=CLIP_FALLBACKS["size"], help="crop side in pixels")
    group.add_argument("--resize", type=int, nargs=2, default=CLIP_FALLBACKS["resize"], metavar=("H", "W"),
                       help="frames are resized to H x W before cropping")
    group.add_argument("--resize-quirk", action="store_true",
                       help="resize to W x H instead, as the authors' code really did (faithful reproduction)")
    if training:
        group.add_argument("--per-frame-jitter", action="store_true",
                           help="draw colour-jitter factors per frame instead of once per clip")
        group.add_argument("--no-hflip", action="store_true",
                           help="never mirror finetuning clips: for classes that a mirror image turns into each "
                                "other (the demo's MoveLeft / MoveRight, clockwise / anticlockwise)")
    else:
        parser.set_defaults(max_bad_videos=DEFAULT_MAX_BAD_VIDEOS, per_frame_jitter=False, no_hflip=False)
    group.add_argument("--workers", type=int, default=default_workers(),
                       help="DataLoader worker processes per process; default: this node's cores per process, less "
                            "one, at most 8")
    return parser


def _load_split(paths: DatasetPaths, split: str, k: int, val_size: float | None) -> list[VideoRecord]:
    if split == "test":
        return read_split_csv(paths.split_csv("test", k))
    records = read_split_csv(paths.split_csv("train", k))
    if split == "trainval":
        return records
    train, val = holdout_split(records, paths.default_val_size if val_size is None else val_size)
    return train if split == "train" else val


def build_dataset(args: argparse.Namespace, split: str, sampler: str,
                  modality: str | None = None, uint8: bool = False) -> VideoFrameDataset:
    """The dataset of ``args.dataset`` (see add_data_args) for ``split`` in SPLITS with ``sampler``.

    ``modality`` (one of MODALITIES) defaults to ``args.modality`` when the script has that flag (IIC's
    train_ssl.py), else "rgb"; a flow modality checks the flow root before any item is read. ``uint8``: clips
    as bytes, for a DataLoader whose batches go through ``dataset.to_device``.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
    modality = modality or getattr(args, "modality", None) or "rgb"
    paths = resolve_dataset(args.dataset, args.data_root, args.frame_root, args.csv_dir,
                            getattr(args, "flow_root", None), getattr(args, "video_root", None))
    records = _load_split(paths, split, args.split, args.val_size)
    labels = [r.label for r in records]
    if paths.num_classes and max(labels) >= paths.num_classes:
        raise LayoutError(f"a label in the {split} CSV of {paths.csv_dir} is {max(labels)}, but the dataset has "
                          f"{paths.num_classes} classes; re-run process_data/src/write_csv.py")
    flow_root = paths.check_flow_root() if modality in FLOW_COMPONENTS else None
    dataset = VideoFrameDataset(
        records, paths.frame_root, sampler, class_names=paths.class_names, num_classes=paths.num_classes,
        seed=getattr(args, "seed", 0), num_frames=args.num_frames,
        stride=1 if sampler == "iic" else args.stride, size=args.size, resize=tuple(args.resize),
        resize_quirk=args.resize_quirk, per_frame_jitter=args.per_frame_jitter, modality=modality,
        flow_root=flow_root, hflip=not args.no_hflip, video_root=paths.video_root,
        max_bad_videos=getattr(args, "max_bad_videos", DEFAULT_MAX_BAD_VIDEOS), uint8=uint8,
        clip_input=getattr(args, "clip_input", None) or "rgb")
    dataset.csv_path = paths.split_csv("test" if split == "test" else "train", args.split)
    check_video_files(records, paths.video_root, dataset.csv_path)
    check_frame_counts([r for r in records if not is_video_file(r.frame_dir)], paths.frame_root, dataset.csv_path)
    return dataset


def check_video_files(records: list[VideoRecord], video_root: Path | None, csv_path: Path | None = None) -> None:
    """Raise LayoutError unless every video row of the CSV names an existing file (one stat per video: their
    frame counts were checked by write_csv.py, and a video that fails to decode is handled while training)."""
    videos = [r for r in records if is_video_file(r.frame_dir)]
    if not videos:
        return
    missing = [r.path(video_root) for r in videos if not r.path(video_root).is_file()]
    if missing:
        raise LayoutError(f"{len(missing)} of the {len(videos)} videos that {csv_path or 'the CSV'} names do not "
                          f"exist, e.g. {missing[0]}: point --video-root at the folder that "
                          "process_data/src/write_csv.py --source video read, or re-run it")


def _count_cache_path(frame_root: Path) -> Path:
    cache_home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    key = hashlib.sha1(str(Path(frame_root).resolve()).encode()).hexdigest()[:16]
    return cache_home / "vssl" / "frame_counts" / f"{key}.json"


def check_frame_counts(records: list[VideoRecord], frame_root: Path, csv_path: Path | None = None) -> None:
    """Raise LayoutError unless every record's folder holds the CSV's number of frames, so that a run fails at
    its start instead of hours in, when it first samples a missing frame.

    A directory listing per folder, cached by the folder's mtime (adding, removing or renaming a frame changes
    it) in $XDG_CACHE_HOME/vssl/frame_counts/: a later start costs one stat per folder.
    """
    cache_path = _count_cache_path(frame_root)
    try:
        cache = json.loads(cache_path.read_text())
    except (OSError, ValueError):
        cache = {}
    changed, wrong = False, []
    for record in records:
        folder = record.path(frame_root)
        try:
            mtime = os.stat(folder).st_mtime_ns
        except OSError:
            wrong.append((folder, 0, record.num_frames))
            continue
        cached = cache.get(str(folder))
        if cached is None or cached[0] != mtime:
            cached = cache[str(folder)] = [mtime, count_frames(folder)]
            changed = True
        if cached[1] != record.num_frames:
            wrong.append((folder, cached[1], record.num_frames))
    if changed:
        try:  # a cache is an optimisation: a read-only home only costs the listing next time
            write_text(cache_path, json.dumps(cache))
        except OSError:
            pass
    if wrong:
        folder, on_disk, in_csv = wrong[0]
        raise LayoutError(
            f"{len(wrong)} of {len(records)} frame folders do not hold the number of frames that "
            f"{csv_path or 'the CSV'} says, e.g. {folder}: {on_disk} on disk, {in_csv} in the CSV. If the frames on disk are right, re-run "
            f"process_data/src/write_csv.py; if a folder is incomplete, {_redo_hint(folder)}")


def require_labels(dataset: VideoFrameDataset, purpose: str) -> None:
    """Raise LayoutError naming the CSV file and line of the first video without a class (a missing or
    negative label), which ``purpose`` (finetuning, testing, retrieval) cannot do without."""
    unlabelled = next((r for r in dataset.records if r.label < 0), None)
    if unlabelled is None:
        return
    csv_path = getattr(dataset, "csv_path", None)
    line = "?"
    if csv_path is not None and Path(csv_path).is_file():
        with open(csv_path) as f:
            line = next((n for n, text in enumerate(f, start=1)
                         if text.split(",", 1)[0].strip() == unlabelled.frame_dir), "?")
    count = sum(r.label < 0 for r in dataset.records)
    raise LayoutError(f"{csv_path or 'the split CSV'}:{line}: video {unlabelled.frame_dir} has no class label "
                      f"(a missing or negative third column; {count} such row(s)), but {purpose} needs the class of "
                      "every video: fix the CSV or re-create it with process_data/src/write_csv.py")
