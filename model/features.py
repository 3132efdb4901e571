"""Features of a frozen backbone for retrieval, kNN, the linear probe and embeddings: per clip (global average, or
IIC's max-pooled conv5), per video (the mean over its clips), optionally with IIC's view 2 beside RGB."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dataset.transforms import unnormalize
from model.iic import residual_frames

LAYERS = ("pool", "conv5")


def residual_view(clips: torch.Tensor) -> torch.Tensor:
    """IIC's view 2 from normalised RGB clips: (x_t − x_{t−1} + 1) / 2 on [0, 1] pixels (METHOD.md §6)."""
    return residual_frames(unnormalize(clips))


def clip_features(backbone: torch.nn.Module, clips: torch.Tensor, layer: str) -> torch.Tensor:
    """(N, 3, T, H, W) -> (N, D): global average pool, or conv5 max-pooled (1, 2, 2) and flattened."""
    feature_map = backbone(clips)  # (N, C, T', H', W')
    if layer == "pool":
        return feature_map.mean(dim=(2, 3, 4))  # (N, C)
    return F.max_pool3d(feature_map, kernel_size=(1, 2, 2), stride=(1, 2, 2), ceil_mode=True).flatten(1)


def video_features(backbone: torch.nn.Module, clips: torch.Tensor, layer: str, merge: bool) -> torch.Tensor:
    """(B, n_clips, 3, T, H, W) normalised clips -> (B, D) mean clip features (D doubles with ``merge``)."""
    flat = clips.flatten(0, 1)  # (B·n_clips, 3, T, H, W)
    views = [flat, residual_view(flat)] if merge else [flat]
    features = torch.cat([clip_features(backbone, view, layer) for view in views], dim=1)  # (B·n_clips, D)
    return features.unflatten(0, clips.shape[:2]).float().mean(dim=1)  # (B, D)
