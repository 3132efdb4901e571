"""Frames by index straight from video files, through PyAV (FFmpeg, bundled in its wheels).

Frame i of a video is its i-th frame in presentation order, the frame that frame extraction writes as
``image_{i+1:05d}.jpg``, so a sampler's indices mean the same frames from a video as from its folder.

How a read works (``read_video_frames``):
- demux the video stream once, without decoding (a few milliseconds for a 10 s clip), into a table of
  the frames' presentation timestamps and keyframe flags: it maps frame indices to timestamps exactly,
  also for variable frame rates and B-frames;
- for the needed indices, sorted and without repeats (the union of all of a sample's clips), seek to
  the keyframe at or before the first one, decode forward and keep only the needed frames; when the
  next needed frame lies beyond another keyframe, seek again instead of decoding through the gap;
- a frame that no other frame references (most B-frames) is not decoded unless it is needed;
- one decoder thread: each DataLoader worker is one decoder, and on a busy machine FFmpeg's own
  threads only cost time (docs/video_source.md gives the measurement).

``probe`` gives a video's frame count and rate. The count comes from the container when its declared
count equals the number of frames the demuxer finds (MP4 and AVI indexes are exact); otherwise (no
declared count, as in WebM, or a truncated file) every frame is decoded and counted.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dataset.layout import LayoutError

# torch is imported where a tensor is made: process_data/src/write_csv.py probes videos through this module
# and starts without it (about 3 s per process)
if TYPE_CHECKING:
    import torch


_conversion = threading.local()  # to_rgb's swscale context, one per thread


class VideoReadError(LayoutError):
    """A video cannot be opened or decoded, or lacks a needed frame; the message names the file and why."""


@dataclass(frozen=True)
class VideoInfo:
    num_frames: int
    fps: float | None  # None when the container states no rate
    source: str  # "container" (declared and confirmed by the demuxer) or "counted" (decoded and counted)
    declared: int  # the container's own count, 0 when it declares none


@dataclass(frozen=True)
class FrameTable:
    """Presentation timestamps (stream time base) and keyframe flags of a video's frames, in order."""

    pts: np.ndarray  # (L,) int64
    keyframe: np.ndarray  # (L,) bool; frame 0 always counts as one (decoding can always start there)

    def __len__(self) -> int:
        return len(self.pts)


def _av():
    import av
    # FFmpeg would log a line per damaged packet; the errors that matter reach the caller as exceptions
    av.logging.set_level(av.logging.PANIC)
    return av


def _open(path: Path):
    """(container, its first video stream), decoding on one thread; VideoReadError when it cannot."""
    av = _av()
    try:
        container = av.open(str(path))
    except FileNotFoundError:
        raise VideoReadError(f"video {path} does not exist") from None
    except (av.FFmpegError, OSError, UnicodeDecodeError) as error:
        raise VideoReadError(f"cannot open video {path}: {_reason(error)}") from None
    if not container.streams.video:
        container.close()
        raise VideoReadError(f"video {path} has no video stream")
    stream = container.streams.video[0]
    stream.codec_context.thread_count = 1
    stream.thread_type = "SLICE"
    return container, stream


def _reason(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:200]


def frame_table(container, stream) -> FrameTable:
    """Demux (no decoding) ``stream`` from the start into its FrameTable; the container is left at its end."""
    pts, keys = [], []
    for packet in container.demux(stream):
        if packet.pts is None or packet.is_discard or packet.size == 0:
            continue  # the demuxer's final flush packet, or a frame an edit list cuts out
        pts.append(packet.pts)
        keys.append(packet.is_keyframe)
    order = np.argsort(pts, kind="stable")  # decode order -> presentation order
    pts_sorted = np.asarray(pts, dtype=np.int64)[order]
    keyframe = np.asarray(keys, dtype=bool)[order] if keys else np.zeros(0, bool)
    if len(keyframe):
        keyframe[0] = True
    return FrameTable(pts_sorted, keyframe)


def _fps(stream) -> float | None:
    rate = stream.average_rate or stream.guessed_rate
    return float(rate) if rate else None


def shortfall(decoded: int, declared: int) -> str:
    """Why ``decoded`` frames are too few for a container that declares ``declared`` ('' when they are not), the
    one rule by which frame extraction and write_csv.py --source video call a video truncated: counts in
    headers may be off by a frame or two, so only a shortfall beyond max(2, 2 %) counts."""
    if declared and declared - decoded > max(2, 0.02 * declared):
        return f"truncated video: {decoded} of the {declared} frames its container declares could be decoded"
    return ""


def count_decoded_frames(path: Path) -> int:
    """Decode every frame of the video and count them (VideoReadError when decoding fails)."""
    container, stream = _open(path)
    av = _av()
    count = 0
    try:
        for _ in container.decode(stream):
            count += 1
    except (av.FFmpegError, OSError) as error:
        raise VideoReadError(f"cannot decode video {path} after {count} frames: {_reason(error)}") from None
    finally:
        container.close()
    return count


def probe(path: str | os.PathLike, count: bool = False) -> VideoInfo:
    """Frame count and rate of a video; ``count`` decodes and counts the frames even when the container's
    count is confirmed. VideoReadError for a file that cannot be opened or demuxed."""
    path = Path(path)
    av = _av()
    container, stream = _open(path)
    try:
        declared = max(int(stream.frames or 0), 0)
        fps = _fps(stream)
        try:
            demuxed = len(frame_table(container, stream))
        except (av.FFmpegError, OSError) as error:
            raise VideoReadError(f"cannot read the packets of video {path}: {_reason(error)}") from None
    finally:
        container.close()
    if declared and declared == demuxed and not count:
        return VideoInfo(declared, fps, "container", declared)
    return VideoInfo(count_decoded_frames(path), fps, "counted", declared)


def read_video_frames(path: str | os.PathLike, indices: np.ndarray,
                      expected_frames: int | None = None) -> torch.Tensor:
    """uint8 RGB frames ``(len(indices), 3, H, W)`` (channels-last memory) of frames ``indices`` (0-based,
    repeats allowed) of a video; each distinct frame is decoded once. VideoReadError names the file and the
    reason when the video cannot be read or has fewer frames than needed (``expected_frames``: the CSV's count)."""
    path = Path(path)
    indices = np.asarray(indices, dtype=np.int64)
    unique, inverse = np.unique(indices, return_inverse=True)
    av = _av()
    container, stream = _open(path)
    try:
        try:
            table = frame_table(container, stream)
            if len(unique) and (unique[0] < 0 or unique[-1] >= len(table)):
                raise VideoReadError(
                    f"video {path} has {len(table)} frames, but frame {int(unique[-1]) + 1} is needed "
                    f"(the CSV says {expected_frames}): re-run process_data/src/write_csv.py --source video")
            decoded = _decode_indices(container, stream, table, unique, path)
        except (av.FFmpegError, OSError) as error:
            raise VideoReadError(f"cannot decode video {path}: {_reason(error)}") from None
    finally:
        container.close()
    try:
        frames = np.stack([decoded[j] for j in inverse.reshape(-1)])  # (N, H, W, 3), repeats by reference
    except ValueError:
        raise VideoReadError(f"the frames of video {path} change size mid-stream; re-encode it with "
                             "process_data/src/reencode_videos.py") from None
    import torch
    return torch.from_numpy(frames).permute(0, 3, 1, 2)  # (N, 3, H, W)


def _decode_indices(container, stream, table: FrameTable, unique: np.ndarray, path: Path) -> list[np.ndarray]:
    """The (H, W, 3) frames of sorted distinct ``unique`` indices: seek to the keyframe at or before each
    run of needed frames, decode forward and keep only the needed ones."""
    index_of_pts = {int(p): i for i, p in enumerate(table.pts)}
    keyframes = np.flatnonzero(table.keyframe)
    key_before = keyframes[np.searchsorted(keyframes, unique, side="right") - 1]  # (len(unique),)
    needed = set(unique.tolist())
    frames: dict[int, np.ndarray] = {}
    position = len(table)  # index of the last decoded frame; past the end forces the first seek
    decoder = None
    for target, key in zip(unique.tolist(), key_before.tolist()):
        if target in frames:
            continue
        if decoder is None or key > position or target <= position:
            decoder = _seek(container, stream, table, key, target, keyframes, index_of_pts, needed, path)
            position = -1
        for frame in decoder:
            index = index_of_pts.get(frame.pts)
            if index is None:
                continue
            position = index
            if index in needed and index not in frames:
                frames[index] = to_rgb(frame)
            if index >= target:
                break
        if target not in frames:
            raise VideoReadError(f"video {path}: frame {target + 1} of {len(table)} cannot be decoded "
                                 "(the file is truncated or damaged)")
    return [frames[i] for i in unique.tolist()]


def _decode_needed(container, stream, index_of_pts: dict, needed: set):
    """Decoded frames from the container's position on. A frame that no other frame references (most B-frames)
    and that is not needed is not decoded at all (FFmpeg's skip_frame, set per packet): about a third of the work
    of decoding a typical H.264 stream."""
    context = stream.codec_context
    context.skip_frame = "DEFAULT"  # a generator abandoned at a seek may have left it skipping
    skipping = False
    for packet in container.demux(stream):
        index = index_of_pts.get(packet.pts)
        skip = index is not None and index not in needed
        if skip != skipping:
            context.skip_frame = "NONREF" if skip else "DEFAULT"
            skipping = skip
        yield from packet.decode()


def _seek(container, stream, table: FrameTable, key: int, target: int, keyframes: np.ndarray,
          index_of_pts: dict, needed: set, path: Path):
    """A decoding generator positioned so that its first frame is at or before frame ``target``.

    Seeking by the keyframe's timestamp lands on it in most containers; a demuxer that seeks by decoding
    timestamps may land one keyframe late, which the first decoded frame shows: then seek one keyframe earlier.
    """
    for candidate in keyframes[:np.searchsorted(keyframes, key, side="right")][::-1]:
        container.seek(int(table.pts[int(candidate)]), stream=stream, backward=True, any_frame=False)
        decoder = _decode_needed(container, stream, index_of_pts, needed)
        for frame in decoder:
            index = index_of_pts.get(frame.pts)
            if index is None:
                continue
            if index <= target:
                return _chain(frame, decoder)
            break  # landed after the target: one keyframe earlier
        else:
            return iter(())
    raise VideoReadError(f"video {path}: cannot seek back to frame {target + 1}")


def to_rgb(frame, format: str = "rgb24") -> np.ndarray:
    """(H, W, 3) uint8 of a decoded frame in ``format`` (rgb24, or bgr24 for OpenCV), converted by swscale,
    which reads full-range (JPEG, as in Motion-JPEG AVI) and limited-range YUV each by its own scale.

    One conversion context per thread is kept between frames, with one swscale thread: PyAV's
    ``frame.to_ndarray(format=...)`` builds a context and starts swscale's thread pool for every frame,
    6 to 27 times slower on small frames (docs/video_source.md)."""
    reformatter = getattr(_conversion, "reformatter", None)
    if reformatter is None:
        reformatter = _conversion.reformatter = _av().video.reformatter.VideoReformatter()
    return reformatter.reformat(frame, format=format, threads=1).to_ndarray()


def _chain(first, rest):
    yield first
    yield from rest
