"""Frame-index samplers of METHOD.md §2.

Pure functions of the video length ``num_frames`` (L) and a NumPy generator: they return 0-based
int64 frame indices, every index in [0, L - 1]. Clamped or padded positions repeat frames, so
callers decode the unique indices only.
"""

from __future__ import annotations

import numpy as np


def _check_length(num_frames: int) -> None:
    if num_frames < 1:
        raise ValueError(f"a video needs at least one frame, got num_frames={num_frames}")


def centred_clip_indices(num_frames: int, centre: int, clip_len: int = 16, stride: int = 4) -> np.ndarray:
    """``centre + (k - clip_len // 2) * stride`` for k = 0..clip_len-1, clamped to [0, L-1]."""
    _check_length(num_frames)
    offsets = (np.arange(clip_len, dtype=np.int64) - clip_len // 2) * stride
    return np.clip(centre + offsets, 0, num_frames - 1)


def dualvar_clip_pair(num_frames: int, rng: np.random.Generator, clip_len: int = 16,
                      stride: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Clips A and B of DualVar pretraining: independent centres ~ U{0..L-1}; with probability 0.5
    both are reversed in time together (the authors' ``rand_flip``)."""
    _check_length(num_frames)
    clip_a = centred_clip_indices(num_frames, int(rng.integers(0, num_frames)), clip_len, stride)
    clip_b = centred_clip_indices(num_frames, int(rng.integers(0, num_frames)), clip_len, stride)
    if rng.random() < 0.5:
        clip_a, clip_b = clip_a[::-1].copy(), clip_b[::-1].copy()
    return clip_a, clip_b


def iic_clip_indices(num_frames: int, rng: np.random.Generator, clip_len: int = 16) -> np.ndarray:
    """``clip_len`` consecutive frames, start ~ U{0..L-clip_len}; a shorter video starts at 0 and
    repeats its last frame."""
    _check_length(num_frames)
    start = int(rng.integers(0, max(num_frames - clip_len, 0) + 1))
    return np.minimum(start + np.arange(clip_len, dtype=np.int64), num_frames - 1)


def finetune_clip_indices(num_frames: int, rng: np.random.Generator, clip_len: int = 16,
                          stride: int = 2) -> np.ndarray:
    """``clip_len`` frames at ``stride``, start uniform over the starts that fit. A video too short for
    a whole clip gives the frames it has (0, stride, ...) padded to ``clip_len`` by repeating the
    first frame in front or the last frame at the end (coin flip)."""
    _check_length(num_frames)
    span = (clip_len - 1) * stride + 1
    if num_frames >= span:
        start = int(rng.integers(0, num_frames - span + 1))
        return start + np.arange(clip_len, dtype=np.int64) * stride
    available = np.arange(0, num_frames, stride, dtype=np.int64)[:clip_len]
    pad = clip_len - len(available)
    if rng.random() < 0.5:
        return np.concatenate([np.full(pad, available[0]), available])
    return np.concatenate([available, np.full(pad, available[-1])])


def eval_clip_indices(num_frames: int, clip_len: int = 16, stride: int = 2,
                      num_clips: int = 10) -> np.ndarray:
    """``(num_clips, clip_len)`` indices of the 10-clip evaluation; no randomness.

    Span S = clip_len * stride; centres evenly spaced from min(S/2, L) to max(that, L - S/2); each
    clip starts at max(0, centre - S/2) (rounded down) and indices are clamped to L-1, so every
    video, however short, yields exactly ``num_clips`` clips.
    """
    _check_length(num_frames)
    half_span = clip_len * stride / 2
    first = min(half_span, num_frames)
    last = max(first, num_frames - half_span)
    centres = np.linspace(first, last, num_clips)
    starts = np.floor(np.maximum(0.0, centres - half_span)).astype(np.int64)  # (num_clips,)
    indices = starts[:, None] + np.arange(clip_len, dtype=np.int64)[None, :] * stride
    return np.minimum(indices, num_frames - 1)


def flow_indices(rgb_indices: np.ndarray, num_frames: int) -> np.ndarray:
    """Flow-frame indices for RGB frame indices of a video of ``num_frames`` (L) frames.

    Flow frame t is the motion from RGB frame t to t + 1; a video has max(L - 1, 1) of them, so RGB
    frame i maps to flow frame min(i, L_flow - 1) (the last RGB frame reuses the last motion).
    """
    _check_length(num_frames)
    return np.minimum(rgb_indices, max(num_frames - 1, 1) - 1)
