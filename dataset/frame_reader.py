"""Frames by index from JPEG frame folders (``image_00001.jpg, ...``, optical flow ``frame000001.jpg, ...``):
a registry of JPEG decoders, each distinct file read and decoded once, and errors that name the folder or the file
and how to extract it again."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

from dataset.layout import LayoutError, count_flow_frames, count_frames, flow_frame_name, frame_name

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


def redo_hint(video_dir: Path) -> str:
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
                          f"the CSV says {expected_frames}", redo_hint(video_dir))  # (N, H, W, 3)
    return torch.from_numpy(frames).permute(0, 3, 1, 2)  # (N, 3, H, W)


def read_flow_frames(component_dir: Path, indices: np.ndarray, decoder: str = DEFAULT_DECODER,
                     expected_frames: int | None = None, hint: str = "") -> torch.Tensor:
    """uint8 flow frames ``(len(indices), 3, H, W)`` of one component: the single channel replicated to
    3 (a broadcast view, no copy) so that the RGB backbones take it. ``indices`` are flow indices."""
    frames = _read_images(component_dir, indices, _FLOW_LAYOUT, partial(DECODERS[decoder], gray=True),
                          f"the CSV's frame count implies {expected_frames}", hint)  # (N, H, W)
    return torch.from_numpy(frames).unsqueeze(1).expand(-1, 3, -1, -1)  # (N, 3, H, W)
