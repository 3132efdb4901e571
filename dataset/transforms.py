"""Clip augmentation on whole clips (METHOD.md §3).

Every random parameter is drawn once per clip from the caller's NumPy generator and applied to all
frames (one crop box, one flip decision, one set of jitter factors and order, one blur sigma), so a
clip stays temporally consistent. ``per_frame_jitter`` draws the four jitter factors per frame
instead (an option; off by default).

Input: uint8 frames ``(T, 3, H, W)`` as decoded. Output: float32 ``(3, T, size, size)``, ImageNet
normalised (or in [0, 1] with ``normalize=False``), written into the caller's buffer when given; with
``uint8=True`` the [0, 1] clip as uint8 0..255 instead (a quarter of the bytes through the DataLoader's shared
memory and the host-to-device copy), which ``to_float_clips`` turns into the float clip on the device.

The pixel work runs in OpenCV on channels-last NumPy clips ``(T, S, S, 3)`` (SIMD, one call per op
on the whole clip where frames cannot bleed into each other), for speed:
- the uint8 frames are resized (torchvision's antialiased bilinear, in PyTorch's uint8 kernel; once per
  distinct frame when views share frames, see ``resize_frames``), then cropped (and flipped) as views; a
  view without jitter or blur goes straight from uint8 to the planar normalised output;
- brightness, contrast and saturation are affine colour maps (3x4 matrices, per frame for contrast,
  whose grey mean differs per frame). Consecutive maps are composed into one and applied lazily;
  only a factor > 1, which can leave [0, 1], forces applying them and clamping as torchvision does
  (a factor <= 1 mixes values in [0, 1] convexly). The Gaussian blur is linear with weights summing
  to one, so it commutes with pending maps, and the last pending map is folded into normalisation;
- hue goes through OpenCV's float32 HSV (H in degrees, no quantisation);
- the colour maps and hue equal torchvision's float definitions to ~1e-6 (tests compare them).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GRAY_WEIGHTS = np.array([0.2989, 0.587, 0.114])  # ITU-R 601-2 luma, as torchvision's rgb_to_grayscale

# Per-view recipes of METHOD.md §3. jitter_p 0.64 = 0.8 (RandomApply) x 0.8 (inner ColorJitter p)
# in the authors' pipeline.
RECIPES = {
    "pretrain": dict(jitter_p=0.64, blur_p=0.5, flip=False, random_crop=True),
    "crop_only": dict(jitter_p=0.0, blur_p=0.0, flip=False, random_crop=True),
    "finetune": dict(jitter_p=0.8, blur_p=0.0, flip=True, random_crop=True),
    "eval": dict(jitter_p=0.0, blur_p=0.0, flip=False, random_crop=False),
}

BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)  # jitter op ids, in torchvision's ColorJitter order

# Blur taps lighter than this (relative to the centre tap) are dropped: below float32 resolution
# of [0, 1] values, they only cost time (all of them for sigma < 0.16).
_NEGLIGIBLE_TAP = 1e-8

# The per-clip images are too small for OpenCV's thread pool to pay off, and changing the pool size
# inside a forked DataLoader worker deadlocks on the parent's pool state: fix it once, at import,
# in the parent.
cv2.setNumThreads(1)


# ---------------------------------------------------------------- colour maps
# A colour map is an affine map of RGB, float64 (T, 3, 4): [M | o] per frame, out = M @ rgb + o.
# ``factor`` is a float or a (T,) array (one factor per frame).

def _flat(x: np.ndarray) -> np.ndarray:
    """(T, H, W, 3) -> (T * H, W, 3), a view: pixelwise OpenCV ops see the clip as one tall image."""
    if not x.flags.c_contiguous:
        raise ValueError("the colour ops take a C-contiguous (T, H, W, 3) float32 clip")
    return x.reshape(-1, x.shape[-2], 3)


def _frame_factors(factor, frames: int) -> np.ndarray:
    factor = np.asarray(factor, dtype=np.float64).reshape(-1)
    return factor if len(factor) == frames else np.full(frames, factor[0])


def _scaled_identity(f: np.ndarray) -> np.ndarray:
    maps = np.zeros((len(f), 3, 4))
    maps[:, [0, 1, 2], [0, 1, 2]] = f[:, None]
    return maps  # (T, 3, 4)


def brightness_map(factor, frames: int) -> np.ndarray:
    return _scaled_identity(_frame_factors(factor, frames))


def contrast_map(factor, rgb_means: np.ndarray) -> np.ndarray:
    """Blend with each frame's mean grey level; ``rgb_means`` (T, 3) are the frames' channel means."""
    f = _frame_factors(factor, len(rgb_means))
    maps = _scaled_identity(f)
    maps[:, :, 3] = ((1 - f) * (rgb_means @ GRAY_WEIGHTS))[:, None]
    return maps


def saturation_map(factor, frames: int) -> np.ndarray:
    """Blend with the pixel's own grey level: f * rgb + (1 - f) * (w . rgb) on every channel."""
    f = _frame_factors(factor, frames)
    maps = _scaled_identity(f)
    maps[:, :, :3] += (1 - f)[:, None, None] * GRAY_WEIGHTS
    return maps


def compose(outer: np.ndarray, inner: np.ndarray | None) -> np.ndarray:
    """The map ``outer(inner(rgb))``; (T, 3, 4) each (or broadcastable)."""
    if inner is None:
        return outer
    composed = outer[..., :3] @ inner  # (T, 3, 4): M_o [M_i | o_i]
    composed[..., 3] += outer[..., 3]
    return composed


def _split_offsets(maps: np.ndarray) -> tuple[np.ndarray, np.ndarray | None] | None:
    """(shared 3x4 map, per-frame offsets (T, 3) added after it, or None) when all frames share the
    3x3 part (as with per-clip factors: contrast differs per frame by an offset only); else None."""
    if (maps[:, :, :3] != maps[:1, :, :3]).any():
        return None
    residual = maps[:, :, 3] - maps[0, :, 3]  # (T, 3)
    return maps[0], (residual if residual.any() else None)


def apply_map(x: np.ndarray, maps: np.ndarray) -> np.ndarray:
    """Apply colour maps in place to a float32 clip ``x`` (T, H, W, 3).

    One OpenCV call on the whole clip when the frames share the 3x3 part, plus one NumPy call for
    per-frame offsets (equal on all channels after brightness, contrast and saturation); else per frame.
    """
    split = _split_offsets(maps)
    if split is None:
        for frame, frame_map in zip(x, maps.astype(np.float32)):
            cv2.transform(frame, frame_map, dst=frame)
        return x
    shared, offsets = split
    flat = _flat(x)
    cv2.transform(flat, shared.astype(np.float32), dst=flat)
    if offsets is not None:
        if (offsets == offsets[:, :1]).all():
            x.reshape(len(x), -1)[...] += offsets[:, :1].astype(np.float32)  # (T, H * W * 3) + (T, 1)
        else:
            for frame, frame_offsets in zip(x, offsets):
                cv2.add(frame, (*map(float, frame_offsets), 0.0), dst=frame)
    return x


def clamp(x: np.ndarray, lower: bool = True) -> np.ndarray:
    """Clamp in place to [0, 1] (to <= 1 only when ``lower`` is False)."""
    flat = _flat(x)
    cv2.threshold(flat, 1.0, 1.0, cv2.THRESH_TRUNC, dst=flat)
    if lower:
        cv2.threshold(flat, 0.0, 0.0, cv2.THRESH_TOZERO, dst=flat)
    return x


def channel_means(x: np.ndarray) -> np.ndarray:
    return np.array([cv2.mean(frame)[:3] for frame in x])  # (T, 3)


# The torchvision colour ops, in place on float32 (T, H, W, 3) clips in [0, 1]:

def adjust_brightness(x: np.ndarray, factor) -> np.ndarray:
    return clamp(apply_map(x, brightness_map(factor, len(x))), lower=False)


def adjust_contrast(x: np.ndarray, factor) -> np.ndarray:
    return clamp(apply_map(x, contrast_map(factor, channel_means(x))))


def adjust_saturation(x: np.ndarray, factor) -> np.ndarray:
    return clamp(apply_map(x, saturation_map(factor, len(x))))


def adjust_hue(x: np.ndarray, shift) -> np.ndarray:
    """Rotate the HSV hue by ``shift`` (in turns, [-0.5, 0.5]); value and saturation are kept."""
    flat = _flat(x)
    hsv = cv2.cvtColor(flat, cv2.COLOR_RGB2HSV)  # float32: H in degrees [0, 360), S and V in [0, 1]
    # HSV->RGB wraps hues in [0, 720) but not negative ones, hence the shift taken modulo one turn
    degrees = 360.0 * np.remainder(_frame_factors(shift, len(x)), 1.0)
    if (degrees == degrees[0]).all():
        cv2.add(hsv, (float(degrees[0]), 0.0, 0.0, 0.0), dst=hsv)
    else:
        for frame_hsv, d in zip(hsv.reshape(x.shape), degrees):
            cv2.add(frame_hsv, (float(d), 0.0, 0.0, 0.0), dst=frame_hsv)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB, dst=flat).reshape(x.shape)


def gaussian_kernel(sigma: float, kernel_size: int) -> np.ndarray:
    """torchvision's 1-D kernel (float32), with negligible outer taps dropped."""
    half = (kernel_size - 1) * 0.5
    taps = np.linspace(-half, half, kernel_size, dtype=np.float32)
    kernel = np.exp(-0.5 * (taps / np.float32(sigma)) ** 2)
    kernel /= kernel.sum()
    keep = int((kernel >= _NEGLIGIBLE_TAP * kernel.max()).sum())  # odd: the kernel is symmetric
    drop = (kernel_size - keep) // 2
    return kernel[drop:kernel_size - drop]


def gaussian_blur(x: np.ndarray, sigma: float, kernel_size: int, out: np.ndarray | None = None) -> np.ndarray:
    """Gaussian blur of each frame of a float32 (T, H, W, 3) clip with reflect padding (torchvision's
    kernel and border); into ``out`` (may be ``x``) when given."""
    kernel = gaussian_kernel(sigma, kernel_size)
    if out is None:
        out = np.empty(x.shape, np.float32)
    if len(kernel) == 1:  # sigma so small that every neighbour weighs below float precision
        np.copyto(out, x)
        return out
    rows = np.empty(x.shape, np.float32)
    # horizontal pass in one call (rows never cross frames), vertical pass frame by frame
    cv2.filter2D(_flat(x), -1, kernel.reshape(1, -1), dst=_flat(rows), borderType=cv2.BORDER_REFLECT_101)
    for frame, frame_out in zip(rows, out):
        cv2.filter2D(frame, -1, kernel.reshape(-1, 1), dst=frame_out, borderType=cv2.BORDER_REFLECT_101)
    return out


# ---------------------------------------------------------------- the clip transform

_STATS: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}


def to_float_clips(clips: torch.Tensor, normalize: bool) -> torch.Tensor:
    """Clips (..., 3, T, H, W) from a ``uint8=True`` transform -> float32 x / 255 in [0, 1], ImageNet normalised
    when ``normalize``, on the clips' device (float clips are returned as they are). The statistics are kept
    per device, so that no host-to-device copy is made per batch."""
    if clips.dtype != torch.uint8:
        return clips
    x = clips.float().div_(255)
    if not normalize:
        return x
    key = (x.device, x.dtype)
    if key not in _STATS:
        _STATS[key] = tuple(torch.tensor(v, dtype=x.dtype, device=x.device).view(3, 1, 1, 1)
                            for v in (IMAGENET_MEAN, IMAGENET_STD))
    mean, std = _STATS[key]
    return x.sub_(mean).div_(std)


def unnormalize(clips: torch.Tensor) -> torch.Tensor:
    """ImageNet-normalised clips (..., 3, T, H, W) back to [0, 1] pixel values."""
    shape = (3, 1, 1, 1)
    mean = torch.tensor(IMAGENET_MEAN, dtype=clips.dtype, device=clips.device).view(shape)
    std = torch.tensor(IMAGENET_STD, dtype=clips.dtype, device=clips.device).view(shape)
    return clips * std + mean


@dataclass
class ViewParams:
    """Every random choice of one view; jitter factors are (n,) arrays, n = 1 or T (per frame)."""

    top: int
    left: int
    flip: bool = False
    jitter_order: tuple[int, ...] = ()  # empty: no jitter
    jitter_factors: tuple[np.ndarray, ...] = ()  # brightness, contrast, saturation, hue shift
    blur_sigma: float | None = None


@dataclass
class ClipTransform:
    """One view's augmentation; ``recipe`` is a key of RECIPES.

    ``resize``: the (H, W) every frame is (conceptually) resized to before cropping; the authors'
    code really used (171, 128) because it passed (128, 171) to a (width, height) API, which
    ``resize_quirk`` reproduces. ``blur_kernel`` is 10% of the crop side rounded to odd, as SimCLR.
    """

    recipe: str = "pretrain"
    size: int = 112
    resize: tuple[int, int] = (128, 171)
    resize_quirk: bool = False
    per_frame_jitter: bool = False
    hflip: bool = True  # False: recipes never mirror (the flip is still drawn, so nothing else changes)
    normalize: bool = True
    uint8: bool = False  # ship round(255 x) of the [0, 1] clip; `normalize` then applies in to_float_clips
    jitter_strength: tuple[float, float, float, float] = (0.8, 0.8, 0.8, 0.2)
    blur_sigma: tuple[float, float] = (0.1, 2.0)

    def __post_init__(self):
        if self.recipe not in RECIPES:
            raise ValueError(f"unknown augmentation recipe {self.recipe!r}; choose one of {sorted(RECIPES)}")
        rh, rw = self.resize_hw
        if self.size > min(rh, rw):
            raise ValueError(f"--size {self.size} is larger than the resized frame {rh}x{rw} (--resize)")
        self.blur_kernel = int(round(0.1 * self.size)) // 2 * 2 + 1
        mean, std = np.array(IMAGENET_MEAN), np.array(IMAGENET_STD)
        # output = scale * x + offset per channel, x in [0, 1]
        self._scale = 1 / std if self.normalize else np.ones(3)
        self._offset = -mean / std if self.normalize else np.zeros(3)
        self._normalise_map = np.zeros((1, 3, 4))  # (1, 3, 4)
        self._normalise_map[0, [0, 1, 2], [0, 1, 2]] = self._scale
        self._normalise_map[0, :, 3] = self._offset
        if self.uint8:  # the output is 255 x: the same colour work, written as bytes
            self._scale, self._offset = np.full(3, 255.0), np.zeros(3)
            self._normalise_map = _scaled_identity(np.full(1, 255.0))

    @property
    def resize_hw(self) -> tuple[int, int]:
        h, w = self.resize
        return (w, h) if self.resize_quirk else (h, w)

    def crop_box(self, rng: np.random.Generator) -> tuple[int, int]:
        """Top-left corner of the crop in resized-frame coordinates."""
        rh, rw = self.resize_hw
        if RECIPES[self.recipe]["random_crop"]:
            return int(rng.integers(0, rh - self.size + 1)), int(rng.integers(0, rw - self.size + 1))
        return (rh - self.size) // 2, (rw - self.size) // 2

    def draw(self, rng: np.random.Generator, num_frames: int) -> ViewParams:
        recipe = RECIPES[self.recipe]
        params = ViewParams(*self.crop_box(rng))
        params.flip = recipe["flip"] and rng.random() < 0.5 and self.hflip
        if recipe["jitter_p"] > 0 and rng.random() < recipe["jitter_p"]:
            b, c, s, h = self.jitter_strength
            n = num_frames if self.per_frame_jitter else 1
            params.jitter_factors = (rng.uniform(1 - b, 1 + b, n), rng.uniform(1 - c, 1 + c, n),
                                     rng.uniform(1 - s, 1 + s, n), rng.uniform(-h, h, n))
            params.jitter_order = tuple(int(i) for i in rng.permutation(4))  # random per clip, as ColorJitter
        if recipe["blur_p"] > 0 and rng.random() < recipe["blur_p"]:
            params.blur_sigma = float(rng.uniform(*self.blur_sigma))
        return params

    def resize_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 (T, 3, H, W) -> uint8 (T, 3, *resize_hw), returned as it is when already that size.

        torchvision's resize (bilinear, antialiased when shrinking) through PyTorch's uint8 kernel, which is
        several times faster than OpenCV's area resize at non-integer ratios. Channels-last frames (as decoded)
        give channels-last frames, so that ``apply`` sees them as (T, H, W, 3) without a copy. Views that share
        frames (DualVar's A and A') resize them once, through this, and then crop views of the result.
        """
        if tuple(frames.shape[-2:]) == self.resize_hw:
            return frames
        return F.interpolate(frames, size=self.resize_hw, mode="bilinear", antialias=True, align_corners=False)

    def crop(self, frames: np.ndarray, top: int, left: int, flip: bool = False) -> np.ndarray:
        """uint8 (T, H, W, 3) -> uint8 (T, size, size, 3), a strided view: resize to resize_hw
        (``resize_frames``), crop at (top, left), flip left-right when ``flip``."""
        if frames.shape[1:3] != self.resize_hw:
            frames = self.resize_frames(torch.from_numpy(frames).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
        step = -1 if flip else 1
        return frames[:, top:top + self.size, left:left + self.size, :][:, :, ::step]

    def __call__(self, frames: torch.Tensor, rng: np.random.Generator,
                 out: torch.Tensor | None = None) -> torch.Tensor:
        """uint8 (T, 3, H, W) -> float32 (3, T, size, size) (uint8 with ``uint8``), written into ``out`` when
        given."""
        return self.apply(frames, self.draw(rng, frames.shape[0]), out)

    def apply(self, frames: torch.Tensor, params: ViewParams, out: torch.Tensor | None = None) -> torch.Tensor:
        t = frames.shape[0]
        dtype = torch.uint8 if self.uint8 else torch.float32
        direct = out is not None and out.device.type == "cpu" and out.dtype == dtype \
            and out.is_contiguous() and out.shape == (3, t, self.size, self.size)
        result = out if direct else torch.empty(3, t, self.size, self.size, dtype=dtype)
        planes = result.numpy().reshape(3, t * self.size, self.size)  # (3, T * S, S), the output's memory
        # the decoder's (T, H, W, 3) memory seen through the (T, 3, H, W) tensor: a free view
        clip = self.crop(frames.permute(0, 2, 3, 1).numpy(), params.top, params.left, params.flip)

        if not params.jitter_order and params.blur_sigma is None:  # uint8 straight to the output
            clip = np.ascontiguousarray(clip).reshape(-1, self.size, 3)  # (T * S, S, 3)
            for channel, (plane, scale, offset) in enumerate(zip(planes, self._scale, self._offset)):
                if self.uint8:
                    cv2.extractChannel(clip, channel, dst=plane)
                    continue
                uint8_plane = cv2.extractChannel(clip, channel)
                cv2.addWeighted(uint8_plane, scale / 255, uint8_plane, 0, offset, dst=plane, dtype=cv2.CV_32F)
        else:
            x = np.empty(clip.shape, np.float32)  # (T, S, S, 3) in [0, 1], C order whatever the input's
            np.multiply(clip, np.float32(1 / 255), out=x)
            pending = self._jitter(x, params)
            if params.blur_sigma is not None:  # commutes with the pending map (affine; the weights sum to 1)
                x = gaussian_blur(x, params.blur_sigma, self.blur_kernel, out=x)
            maps = compose(self._normalise_map, pending)
            if self.uint8:  # 255 x in float, then rounded to the nearest byte (values lie in [0, 255] up to float
                scaled = np.empty(planes.shape, np.float32)  # error, so the absolute value changes nothing)
                self._write_planes(x, maps, scaled)
                for plane, scaled_plane in zip(planes, scaled):
                    cv2.convertScaleAbs(scaled_plane, dst=plane)
            else:
                self._write_planes(x, maps, planes)
        if out is not None and not direct:
            return out.copy_(result)
        return result

    @staticmethod
    def _write_planes(x: np.ndarray, maps: np.ndarray, planes: np.ndarray) -> None:
        """Apply colour maps (T or 1, 3, 4) to float32 (T, S, S, 3) ``x`` and write the channels to
        ``planes`` (3, T * S, S): one pass per channel (a 1x4 map row yields one channel)."""
        split = _split_offsets(maps)
        if split is None:  # per-frame maps (per-frame jitter): apply them first, in place
            apply_map(x, maps)
            split = _scaled_identity(np.ones(1))[0], None
        shared, offsets = split
        shared = shared.astype(np.float32)
        flat = _flat(x)
        for channel, plane in enumerate(planes):
            cv2.transform(flat, shared[channel:channel + 1], dst=plane)
            if offsets is not None:
                plane.reshape(len(x), -1)[...] += offsets[:, channel:channel + 1].astype(np.float32)

    @staticmethod
    def _jitter(x: np.ndarray, params: ViewParams) -> np.ndarray | None:
        """Apply the jitter ops in ``params.jitter_order`` in place to float32 (T, S, S, 3) ``x``.

        Returns the colour maps (T, 3, 4) still to be applied (None when none are pending): the
        affine ops accumulate into one map and are applied only where a clamp or hue needs them.
        """
        frames = len(x)
        pending = None
        for op in params.jitter_order:
            factor = params.jitter_factors[op]
            if op == HUE:
                if pending is not None:
                    apply_map(x, pending)
                    pending = None
                adjust_hue(x, factor)
                continue
            if op == BRIGHTNESS:
                op_map = brightness_map(factor, frames)
            elif op == SATURATION:
                op_map = saturation_map(factor, frames)
            else:  # the grey mean of the image as it is after the pending maps (means are linear)
                means = channel_means(x)
                if pending is not None:
                    means = np.einsum("tij,tj->ti", pending[..., :3], means) + pending[..., 3]
                op_map = contrast_map(factor, means)
            pending = compose(op_map, pending)
            if (factor > 1).any():  # the only case that can leave [0, 1]
                apply_map(x, pending)
                pending = None
                clamp(x, lower=op != BRIGHTNESS)
        return pending
