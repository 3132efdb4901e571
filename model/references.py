"""Features with no learning, the references every table of the miniature reports beside the networks.

Each maps ImageNet-normalised RGB clips (N, 3, T, H, W) to (N, D, 1, 1, 1), shaped like a backbone's last
feature map, so that retrieve.py pools, averages over clips, searches and probes them exactly as it does a
network's features (``retrieve.py --ckpt colour-stats`` / ``--ckpt motion-stats``):

- colour statistics (6 numbers): each channel's mean and standard deviation over the clip, the appearance a
  method can learn without any temporal modelling (METHOD.md §1.4);
- motion statistics (10 numbers): dense optical flow between consecutive frames (OpenCV's Farneback on the grey
  frames), summarised as the mean and standard deviation of the horizontal and vertical flow, of the speed, and
  of the radial and tangential flow about the crop's centre. They see the direction of motion, growth and spin,
  so they show where appearance ends and motion begins.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from dataset.transforms import GRAY_WEIGHTS, unnormalize

# Farneback's parameters for clips of a few dozen pixels: 2 pyramid levels and a 7-pixel window follow motions
# of a few pixels per frame without smoothing a 32-pixel crop into one vector.
FARNEBACK = dict(pyr_scale=0.5, levels=2, winsize=7, iterations=3, poly_n=5, poly_sigma=1.1, flags=0)


class ColourStatistics(torch.nn.Module):
    """(N, 3, T, H, W) -> (N, 6, 1, 1, 1): each channel's mean and standard deviation over the clip."""

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        flat = clips.float().flatten(2)  # (N, 3, T·H·W)
        return torch.cat([flat.mean(dim=2), flat.std(dim=2)], dim=1)[:, :, None, None, None]


def flow_statistics(grey: np.ndarray) -> np.ndarray:
    """uint8 grey frames (T, H, W) of one clip -> the 10 motion statistics (float32) of ``MotionStatistics``."""
    frames, height, width = grey.shape
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    dx, dy = xs - (width - 1) / 2, ys - (height - 1) / 2
    radius = np.maximum(np.hypot(dx, dy), 0.5)
    flows = np.stack([cv2.calcOpticalFlowFarneback(grey[t], grey[t + 1], None, **FARNEBACK)
                      for t in range(frames - 1)]) if frames > 1 else np.zeros((1, height, width, 2), np.float32)
    u, v = flows[..., 0], flows[..., 1]  # (T - 1, H, W) pixels per frame, x to the right, y down
    fields = (u, v, np.hypot(u, v), (u * dx + v * dy) / radius, (v * dx - u * dy) / radius)
    return np.array([f.mean() for f in fields] + [f.std() for f in fields], dtype=np.float32)


class MotionStatistics(torch.nn.Module):
    """(N, 3, T, H, W) -> (N, 10, 1, 1, 1): optical-flow statistics of each clip (computed on the CPU)."""

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        weights = torch.tensor(GRAY_WEIGHTS, dtype=torch.float32, device=clips.device)
        grey = torch.einsum("nc...,c->n...", unnormalize(clips.float()), weights)
        grey = (grey.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()  # (N, T, H, W)
        features = np.stack([flow_statistics(clip) for clip in grey])  # (N, 10)
        return torch.from_numpy(features).to(clips.device)[:, :, None, None, None]


# --ckpt name -> the reference
REFERENCES = {"colour-stats": ColourStatistics, "motion-stats": MotionStatistics}
