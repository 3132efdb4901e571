"""Frame-folder datasets: CSV rows -> decoded, sampled, augmented clips (METHOD.md §2-3).

Every random choice of item i in epoch e comes from ``np.random.default_rng([seed, e, i])``, so an
item is a pure function of (seed, epoch, index): any number of DataLoader workers gives the same
batches, no two workers share a stream, and a resumed run sees the same data.

Items are dicts with "index" (row in the split) and "label" (-1 when unlabelled) plus what the sampling recipe
(dataset/recipes.py) makes: its views stacked under "clips" (V, 3, T, H, W), or its one view under "clip"
(3, T, H, W) and, for a recipe that reads flow beside it, the same frames' flow under "flow". DualVar's "dualvar"
recipe gives views A, B, A' (A' = A's frames, augmented again), "two_view" A and B (model/dualvar.py); IIC's
"iic" one clip in [0, 1], cropped only (model/iic.py); "finetune" one clip, "eval" 10 centre crops.
With ``clip_input="diff"`` (dataset/clip_input.py) the RGB clips hold T + 1 frames, which ``to_device`` turns
into the T frame differences the network takes.

Video files: a CSV row whose first column ends in a video extension (``<Class>/<video>.mp4``, written by
``write_csv.py --source video``) is read from ``video_root`` by dataset/video_reader.py, by frame index
exactly as a frame folder (frame i = the i-th decoded frame = ``image_{i+1:05d}.jpg``), for every recipe.
Each sample decodes the union of its clips' frames once. A video that fails to decode in a training recipe
is named on stderr and replaced by another video of its class (drawn with (seed, epoch, row) among those
not known to be bad); the run stops with a LayoutError once more than ``max_bad_videos`` (a fraction of the
split, default 1 %) of the videos have failed in this process and its DataLoader workers. The "eval" recipe
(testing, retrieval) never replaces a video: its error stops the run. Optical flow keeps its extracted folders.

Optical flow (``modality`` "u" or "v", METHOD.md §6): RGB frame i reads flow frame min(i, L_flow - 1),
L_flow = max(L - 1, 1), where flow frame t is the motion from RGB frame t to t + 1 (so the last RGB
frame reuses the last motion). The one quantised component is replicated to 3 channels and mapped
from 0..255 to [0, 1] (128 = no motion), never ImageNet-normalised, in every recipe, so that
pretraining, finetuning, testing and retrieval see the same input. Crops: one box per clip, shared by
RGB and flow in "iic" (flow takes no colour work); "finetune" flow clips get a random crop and a
left-right flip, which negates u (255 - value), and no colour jitter; "eval" flow clips are centre
crops as for RGB.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from dataset import sampling
from dataset.clip_input import FLOW_MODALITIES, MODALITIES, check_clip_input, frames_to_decode, to_network_input
from dataset.frame_reader import DECODERS, DEFAULT_DECODER, read_flow_frames, read_frames, redo_hint
from dataset.layout import LayoutError, VideoRecord, expected_flow_frames, flow_dir, is_video_file
from dataset.local_dataset import flow_command
from dataset.recipes import CLIP_SAMPLERS, SamplingRecipe, View
from dataset.transforms import ClipTransform, ViewParams, to_float_clips
from dataset.video_reader import VideoReadError, read_video_frames
from utils.malloc import keep_freed_memory_for_reuse

DEFAULT_MAX_BAD_VIDEOS = 0.01


# the attribute of VideoFrameDataset that holds the transform of each augmentation of dataset/recipes.py (RGB views)
TRANSFORM_OF_AUGMENTATION = {"pretrain": "full", "crop": "crop", "finetune": "finetune", "eval": "eval"}


class VideoFrameDataset(Dataset):
    """Clips from frame folders or video files; ``recipe`` (dataset/recipes.py) picks the frames, the views and
    their augmentation.

    ``modality`` (one of MODALITIES) says what the clips are made of: "rgb" and "res" read the RGB
    frames (residuals are taken from them downstream); "u" / "v" read that flow component from
    ``flow_root`` (layout in dataset/layout.py), for the recipes that read flow. ``csv_path`` is the split file
    the records came from, for messages.
    """

    def __init__(self, records: list[VideoRecord], frame_root: Path, recipe: SamplingRecipe,
                 class_names: list[str] | None = None, num_classes: int | None = None, seed: int = 0,
                 num_frames: int = 16, stride: int = 4, size: int = 112,
                 resize: tuple[int, int] = (128, 171), resize_quirk: bool = False,
                 per_frame_jitter: bool = False, decoder: str = DEFAULT_DECODER, modality: str = "rgb",
                 flow_root: Path | None = None, hflip: bool = True, video_root: Path | None = None,
                 max_bad_videos: float = DEFAULT_MAX_BAD_VIDEOS, uint8: bool = False, clip_input: str = "rgb",
                 csv_path: Path | None = None):
        if not isinstance(recipe, SamplingRecipe):
            raise TypeError(f"a VideoFrameDataset takes a SamplingRecipe (dataset/recipes.py), got {recipe!r}")
        if decoder not in DECODERS:
            raise ValueError(f"unknown JPEG decoder {decoder!r}; choose one of {sorted(DECODERS)}")
        if modality not in MODALITIES:
            raise ValueError(f"unknown --modality {modality!r}; choose one of {', '.join(MODALITIES)}")
        self.flow_component = modality if modality in FLOW_MODALITIES else None
        if self.flow_component and recipe.flow == "none":
            raise ValueError(f"--modality {modality} (optical flow) is for IIC pretraining, finetuning, testing and "
                             f"retrieval; the {recipe.name!r} sampler ({recipe.method}) reads RGB frames only")
        if self.flow_component and flow_root is None:
            raise ValueError(f"--modality {modality} needs the flow root (--flow-root)")
        check_clip_input(clip_input)
        if clip_input != "rgb" and (recipe.fixed_input or self.flow_component):
            what = recipe.fixed_input or f"--modality {modality} (optical flow)"
            raise ValueError(f"--clip-input {clip_input} is for RGB clips; {what} already fix the network's input: "
                             "leave --clip-input at rgb")
        self.records = records
        self.frame_root = Path(frame_root)
        self.flow_root = Path(flow_root) if flow_root is not None else None
        self.video_root = Path(video_root) if video_root is not None else None
        self.max_bad_videos = max_bad_videos
        # videos that failed to decode, shared with the DataLoader workers like the epoch
        self._bad = torch.zeros(len(records), dtype=torch.bool).share_memory_()
        self.recipe = recipe
        self.csv_path = csv_path
        self.modality = modality
        self.class_names = list(class_names or [])
        self.num_classes = num_classes if num_classes is not None else len(self.class_names)
        self.seed = seed
        self.num_frames = num_frames
        self.stride = recipe.stride if recipe.stride is not None else stride
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
        self.crop = transform("crop_only", normalize=False)
        self.finetune = transform("finetune")
        self.eval = transform("eval")
        self.flow_eval = transform("eval", normalize=False)

    def to_device(self, batch: dict, device: torch.device) -> dict:
        """A batch of this dataset's items on ``device`` (non-blocking from pinned memory), its uint8 clips turned
        into the float clips described above: ImageNet-normalised RGB, [0, 1] for IIC's clips and for flow; then
        the network's input (``--clip-input``: the T + 1 decoded frames become T differences)."""
        normalized = self.recipe.normalized and not self.flow_component
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
                if not self.recipe.replaces_bad_videos:  # a test or retrieval result must cover the videos it names
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
                    else redo_hint(video_dir))
            raise LayoutError(f"video {video_dir} has num_frames={length} in the CSV; {hint}")
        recipe = self.recipe
        flow_clips = self.flow_component is not None and recipe.flow == "instead"
        # the network's T frames per clip, or T + 1 for differences (``to_device`` takes them)
        indices = CLIP_SAMPLERS[recipe.clips](length, rng, self.decoded_frames, self.stride, recipe.num_clips)
        if recipe.resize_once:  # views that share frames crop views of one decoded and resized copy
            frames = self.resized_frames(partial(self.frames, record), indices.reshape(-1))
        else:
            frames = (self.flow_frames if flow_clips else self.frames)(record, indices.reshape(-1))
        frames = frames.unflatten(0, indices.shape)  # (clips, T, 3, h, w)
        views = torch.empty(len(recipe.views), 3, indices.shape[1], self.size, self.size,
                            dtype=self.clip_dtype) if recipe.stacked else [None]
        for view, out in zip(recipe.views, views):
            transform, params = self._draw(view, indices.shape[1], rng, flow_clips)
            view_frames = self.flipped_flow(frames[view.clip], params.flip) if flow_clips else frames[view.clip]
            clip = transform.apply(view_frames, params, out)
        if recipe.stacked:
            return {"clips": views}  # (V, 3, T, H, W)
        item = {"clip": clip}  # (3, T, H, W)
        if self.flow_component and recipe.flow == "beside":  # the same frames' flow, cropped as the clip
            item["flow"] = transform.apply(self.flow_frames(record, indices[view.clip]), params)
        return item

    def _draw(self, view: View, num_frames: int, rng: np.random.Generator,
              flow: bool) -> tuple[ClipTransform, ViewParams]:
        """The transform of ``view`` and every random choice of it, drawn from ``rng``; a flow view is only
        cropped, and flipped when its augmentation flips (``flipped_flow``)."""
        if flow:
            if view.augment == "finetune":  # crop and flip only: colour jitter means nothing for motion
                return self.crop, ViewParams(*self.crop.crop_box(rng), flip=bool(rng.random() < 0.5))
            return self.flow_eval, self.flow_eval.draw(rng, num_frames)
        transform = getattr(self, TRANSFORM_OF_AUGMENTATION[view.augment])
        if view.crop_only_p and rng.random() < view.crop_only_p:
            transform = self.crop_only
        return transform, transform.draw(rng, num_frames)
